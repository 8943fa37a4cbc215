"""`python -m bench.notebooks [--only SUBSTRING] [--markdown]`: how long each module notebook takes to run.

Each instructor notebook (solutions in, `nbs/NN_*.ipynb`, however many there are) runs top to bottom in a fresh
kernel with one BLAS thread, one notebook at a time; the cell that calls `nbdev_export()` is skipped (it writes
the package, it teaches nothing). Per notebook the table gives the wall time of its cells, the CPU time its
kernel used for them, and its slowest cell (wall and CPU, index among all cells, first line). The course's
budget (issue 15): at most 20 s per notebook and 5 s per cell, on one core of a quiet machine. On a busy machine
wall time grows with the load while the kernel's CPU time does not (much): the table shows both, with the load
average before and after, and judges the budget on each. A benchmark, not a test: nothing asserts a time.

Results go to `bench/results/notebooks.json` (`--out`); `--markdown` prints the table as Markdown for the README.
"""
import os

for var in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
    os.environ[var] = '1'                     # the kernels inherit the environment

import argparse, datetime, json, platform, sys, time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BUDGET_NOTEBOOK, BUDGET_CELL = 20.0, 5.0      # seconds, one core, quiet machine


def _first_line(src: str) -> str:
    "The first line of a cell that says something (not an nbdev directive such as `#| export`)."
    lines = [l.strip() for l in src.splitlines() if l.strip() and not l.strip().startswith('#|')]
    return lines[0] if lines else ''


def _kernel_cpu(client) -> float:
    "CPU seconds (user + system, all threads, waited-for children) used so far by the client's kernel process."
    import psutil
    pid = getattr(client.km.provisioner, 'pid', None)
    if pid is None:
        return float('nan')
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def time_notebook(path, timeout: int = 600, executed=None) -> dict:
    """Run one notebook in a fresh kernel; wall and kernel CPU seconds per code cell, in order (`executed`: a
    folder to write the executed notebook to)."""
    import subprocess
    import nbformat
    from nbclient import NotebookClient
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == 'code' and 'nbdev_export()' in cell.source:
            cell.source = ''                  # the export cell: writes tinytorch/, not part of the lesson
    cells, marks = [], {}
    client = NotebookClient(nb, timeout=timeout, kernel_name='python3', allow_errors=True,
                            resources={'metadata': {'path': str(path.parent)}})

    def before(cell, cell_index, **_):
        marks[cell_index] = (time.perf_counter(), _kernel_cpu(client))

    def after(cell, cell_index, **_):
        t0, c0 = marks.pop(cell_index)
        error = next((o for o in cell.get('outputs', []) if o.get('output_type') == 'error'), None)
        cells.append(dict(index=cell_index, wall=time.perf_counter() - t0, cpu=_kernel_cpu(client) - c0,
                          first_line=_first_line(cell.source),
                          error=f"{error['ename']}: {error['evalue']}"[:200] if error else None))

    client.on_cell_execute, client.on_cell_executed = before, after
    t0 = time.perf_counter()
    client.execute(stderr=subprocess.DEVNULL)      # the kernel's own log lines (TCP warnings) are noise here
    if executed is not None:
        Path(executed).mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, Path(executed) / path.name)
    none = dict(index=None, wall=0.0, cpu=0.0, first_line='(no code)', error=None)
    return dict(notebook=path.name, wall=sum(c['wall'] for c in cells), cpu=sum(c['cpu'] for c in cells),
                with_kernel_start=time.perf_counter() - t0, slowest=max(cells, key=lambda c: c['wall'], default=none),
                slowest_cpu_cell=max(cells, key=lambda c: c['cpu'], default=none),
                errors=[c for c in cells if c['error']], cells=cells)


def verdict(row: dict) -> str:
    "Within budget judged on wall time, on the kernel's CPU time, or neither."
    wall = row['wall'] <= BUDGET_NOTEBOOK and row['slowest']['wall'] <= BUDGET_CELL
    cpu = row['cpu'] <= BUDGET_NOTEBOOK and row['slowest_cpu_cell']['cpu'] <= BUDGET_CELL
    if row['errors']:
        return f"ERRORS in {len(row['errors'])} cell(s)"
    return 'within' if wall and cpu else 'within in CPU time only' if cpu else 'OVER'


def table(rows: list, markdown: bool = False, by: str = 'wall') -> str:
    "The table: one row per notebook, its slowest cell by wall time or (`by='cpu'`, for a busy machine) CPU time."
    key = 'slowest' if by == 'wall' else 'slowest_cpu_cell'
    head = ['notebook', 'wall (s)', 'kernel CPU (s)', f'slowest cell ({by}): wall (s)', 'CPU (s)', 'cell',
            'first line', 'budget 20 s / 5 s']
    body = [[r['notebook'], f"{r['wall']:.1f}", f"{r['cpu']:.1f}", f"{r[key]['wall']:.2f}", f"{r[key]['cpu']:.2f}",
             str(r[key]['index']), r[key]['first_line'][:60], verdict(r)] for r in rows]
    if markdown:
        cell = lambda c: c.replace('|', '\\|')
        fmt = lambda cells: '| ' + ' | '.join(cells) + ' |'
        return '\n'.join([fmt(head), '|' + '---|' * len(head)]
                         + [fmt([cell(c) if i != 6 else f'`{c}`' for i, c in enumerate(b)]) for b in body])
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    line = lambda cells: '  '.join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return '\n'.join([line(head)] + [line(b) for b in body])


def machine() -> dict:
    import numpy
    cpu = platform.processor()
    try:
        cpu = next(l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name'))
    except (OSError, StopIteration):
        pass
    return dict(date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'), cpu=cpu,
                cpus=os.cpu_count(), python=platform.python_version(), numpy=numpy.__version__, threads=1)


def _caption(meta: dict) -> str:
    return (f"Notebook times, {meta['date']}: {meta['cpu']} ({meta['cpus']} cores), Python {meta['python']}, "
            f"NumPy {meta['numpy']}, one BLAS thread, a fresh kernel per notebook; load average before "
            f"{meta['load_before'][0]}, after {meta['load_after'][0]} (1 min). Budget: {BUDGET_NOTEBOOK:g} s per "
            f"notebook, {BUDGET_CELL:g} s per cell, one core of a quiet machine.\n")


def main(argv=None) -> int:
    from coursetools.notebooks import course_notebooks
    p = argparse.ArgumentParser(prog='python -m bench.notebooks', description=__doc__.split('\n')[0])
    p.add_argument('--nbs', default=str(ROOT / 'nbs'), help='the folder of module notebooks')
    p.add_argument('--only', default='', help='the notebooks whose name contains this')
    p.add_argument('--timeout', type=int, default=600, help='per-cell timeout, seconds')
    p.add_argument('--out', default=str(ROOT / 'bench' / 'results' / 'notebooks.json'))
    p.add_argument('--markdown', action='store_true', help='print the table as Markdown')
    p.add_argument('--executed', help='also write the executed notebooks into this folder')
    p.add_argument('--by', choices=('wall', 'cpu'), default='wall',
                   help="the slowest cell by wall time (default) or by the kernel's CPU time (on a busy machine)")
    p.add_argument('--table', metavar='JSON', help='print the table of an earlier run (its JSON) instead of running')
    args = p.parse_args(argv)
    if args.table:
        report = json.loads(Path(args.table).read_text())
        print(_caption(report['meta']))
        print(table(report['notebooks'], args.markdown, args.by))
        return 0
    paths = [q for q in course_notebooks(Path(args.nbs)) if args.only in q.name]
    meta = machine()
    load_before = os.getloadavg()
    rows = []
    for q in paths:
        row = time_notebook(q, args.timeout, args.executed)
        rows.append(row)
        s = row['slowest']
        print(f"{row['notebook']:<32} {row['wall']:6.1f} s wall  {row['cpu']:6.1f} s CPU  slowest cell {s['index']} "
              f"{s['wall']:.2f} s ({s['first_line'][:50]})  {verdict(row)}", file=sys.stderr, flush=True)
        for c in row['errors']:
            print(f"  cell {c['index']} raised {c['error']}", file=sys.stderr)
    meta['load_before'], meta['load_after'] = [round(x, 2) for x in load_before], [round(x, 2) for x in os.getloadavg()]
    print('\n' + _caption(meta))
    print(table(rows, args.markdown, args.by))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix('.tmp')
    tmp.write_text(json.dumps(dict(meta=meta, notebooks=rows), indent=1))
    tmp.replace(out)
    print(f"\nwritten to {out}", file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
