"""The `tinytorch` command of the student kit.

    tinytorch check 00           run nbs/00_*.ipynb and report every exercise: passed, failed, not attempted
    tinytorch export             export your notebooks into your tinytorch package (nbdev-export)

Runs inside the kit (the folder with pyproject.toml and nbs/). Needs nbclient and nbdev, never nbgrader.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from .notebooks import STUB, course_notebooks, exercise_titles, graded_cells, load, module_name, nbgrader_meta

NOT_RUN = 'NotRun'
_ANSI = re.compile(r'\x1b\[[0-9;]*[A-Za-z]')


def find_root(start=None) -> Path:
    "The kit (or course repository) containing `start`: the nearest folder with nbs/ and an nbdev pyproject.toml."
    p = Path(start or Path.cwd()).resolve()
    for d in [p, *p.parents]:
        f = d / 'pyproject.toml'
        if f.exists() and '[tool.nbdev]' in f.read_text(encoding='utf-8') and (d / 'nbs').is_dir():
            return d
    raise SystemExit(f'tinytorch: no course folder here ({p}): run this inside your tinytorch folder '
                     '(the one with pyproject.toml and nbs/)')


def find_notebook(root: Path, name: str) -> Path:
    "`00`, `00_tensor`, `tensor`, `00_tensor.ipynb` or a path -> the notebook."
    p = Path(name)
    if p.suffix == '.ipynb' and p.exists():
        return p.resolve()
    stem = p.stem if p.suffix == '.ipynb' else name
    notebooks = course_notebooks(root / 'nbs')
    for nb in notebooks:
        if stem in (nb.stem, nb.stem[:2], nb.stem[3:]):
            return nb
    names = ', '.join(nb.stem for nb in notebooks)
    raise SystemExit(f'tinytorch: no notebook {name!r} in {root / "nbs"} (there are: {names})')


def _kernel_env() -> dict:
    env = dict(os.environ, IN_TEST='1')     # IN_TEST: the notebook's last cell does not export during a check
    env.setdefault('MPLBACKEND', 'Agg')
    return env


def execute(path: Path, timeout: int = 300):
    """Run a notebook in a fresh kernel, errors allowed, `timeout` seconds per cell. Returns (nb, problem):
    the executed notebook (code cells that never ran get a `NotRun` error) and what stopped it early, or None."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name='python3', allow_errors=True,
                            interrupt_on_timeout=True, raise_on_iopub_timeout=False,
                            error_on_timeout={'ename': 'CellTimeoutError', 'evalue': f'no result after {timeout} s',
                                              'traceback': [f'CellTimeoutError: no result after {timeout} s']},
                            resources={'metadata': {'path': str(path.parent)}})
    problem, ran = None, set()
    with client.setup_kernel(env=_kernel_env(), stderr=subprocess.DEVNULL):
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != 'code':
                continue
            try:
                client.execute_cell(cell, index)
                ran.add(index)
            except (DeadKernelError, CellTimeoutError) as e:
                problem = f'the kernel died in cell {index} ({type(e).__name__}): later cells did not run'
                cell.setdefault('outputs', []).append(nbformat.v4.new_output(
                    'error', ename='KernelDied', evalue=problem, traceback=[]))
                ran.add(index)
                break
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == 'code' and index not in ran and cell.source.strip():
            cell.outputs = [nbformat.v4.new_output('error', ename=NOT_RUN, evalue=problem or 'not run', traceback=[])]
    return nb, problem


def _first_error(cell):
    "(ename, evalue) of the cell's first error, or ('stderr', text) when it wrote to stderr, or None."
    for o in cell.get('outputs', []):
        if o.get('output_type') == 'error':
            return o.get('ename', ''), _ANSI.sub('', o.get('evalue', ''))
    for o in cell.get('outputs', []):
        if o.get('output_type') == 'stream' and o.get('name') == 'stderr':
            return 'stderr', _ANSI.sub('', o.get('text', ''))
    return None


def _short(text: str, n: int = 300) -> str:
    text = text.strip()
    return text if len(text) <= n else text[:n] + ' ...'


def classify(nb, module_prefix: str) -> dict:
    """The report of an executed student notebook: every exercise with its graded cells, each one
    passed / failed (with the message) / not attempted, and the points of the visible tests."""
    titles = exercise_titles(nb)
    cells = {nbgrader_meta(c).get('grade_id'): c for c in nb.cells if nbgrader_meta(c).get('grade')}
    tests = []
    for g in graded_cells(nb):
        cell = cells[g['grade_id']]
        err = _first_error(cell)
        t = dict(g, status='passed', score=g['points'], message='')
        if err is not None:
            ename, evalue = err
            t['score'] = 0.0
            stub = STUB.search(f'NotImplementedError({evalue}') if ename == 'NotImplementedError' else None
            if stub:
                needed = f'{stub.group(1)}.{stub.group(2)}'
                t['needs'] = needed
                if needed == g['exercise']:
                    t['status'], t['message'] = 'not attempted', f'Exercise {needed} is not done yet'
                elif stub.group(1) == module_prefix:
                    t['status'] = 'blocked'
                    t['message'] = f'needs Exercise {needed} ({titles.get(needed, "")}) first'
                else:
                    t['status'] = 'blocked'
                    t['message'] = (f'needs Exercise {needed} of module {stub.group(1)}, still a stub in your '
                                    f'tinytorch package: solve it in that notebook, then run `tinytorch export`')
            elif ename == NOT_RUN:
                t['status'], t['message'] = 'failed', f'not run: {evalue}'
            elif ename == 'stderr':
                t['status'], t['message'] = 'failed', f'wrote to stderr (graded as failed): {_short(evalue)}'
            else:
                t['status'] = 'failed'
                t['message'] = _short(f'{ename}: {evalue}' if evalue else ename)
                if ename in ('ModuleNotFoundError', 'ImportError') and 'tinytorch' in evalue:
                    t['message'] += ' (is your package installed? `pip install -e .` in your tinytorch folder)'
        tests.append(t)
    exercises = []
    for key, title in titles.items():
        own = [t for t in tests if t['exercise'] == key]
        exercises.append({'exercise': key, 'title': title, 'status': _overall(own, key) if own else 'untested',
                          'tests': own, 'score': sum(t['score'] for t in own), 'points': sum(t['points'] for t in own)})
    orphans = [t for t in tests if t['exercise'] is None]
    if orphans:
        exercises.append({'exercise': None, 'title': 'checks of the module as a whole', 'tests': orphans,
                             'status': _overall(orphans, None),
                             'score': sum(t['score'] for t in orphans), 'points': sum(t['points'] for t in orphans)})
    first_error = None                  # the notebook's first error, unless it is an exercise not done yet
    for i, c in enumerate(nb.cells):
        err = _first_error(c) if c.cell_type == 'code' else None
        if err and err[0] != 'stderr':
            if err[0] not in ('NotImplementedError', NOT_RUN):
                first_error = f'cell {i}: {_short(err[0] + ": " + err[1], 200)}'
            break
    return {'exercises': exercises, 'score': sum(t['score'] for t in tests),
            'points': sum(t['points'] for t in tests), 'first_error': first_error,
            'passed': all(t['status'] == 'passed' for t in tests)}


def _overall(tests: list, key) -> str:
    "One status for an exercise from its graded cells."
    statuses = {t['status'] for t in tests}
    if statuses == {'passed'}:
        return 'passed'
    if 'failed' in statuses:
        return 'failed'
    return 'not attempted' if 'not attempted' in statuses else 'blocked'


def _stale_exports(root: Path, notebook: Path) -> list:
    "Lower-numbered notebooks changed since their module was last exported (the package may be out of date)."
    stale = []
    for nb_path in course_notebooks(root / 'nbs'):
        if nb_path.name >= notebook.name:
            break
        mod = module_name(load(nb_path))
        py = root / 'tinytorch' / f'{mod}.py'
        if mod and (not py.exists() or py.stat().st_mtime < nb_path.stat().st_mtime - 1):
            stale.append(nb_path.name)
    return stale


SYMBOL = {'passed': 'ok  ', 'failed': 'FAIL', 'not attempted': 'todo', 'blocked': 'wait', 'untested': '    '}


def render(report: dict, name: str, seconds: float) -> str:
    lines = [f'{name}: checked in {seconds:.0f} s']
    for ex in report['exercises']:
        head = f"Exercise {ex['exercise']}: {ex['title']}" if ex['exercise'] else ex['title']
        if ex['status'] == 'untested':
            lines.append(f"  {SYMBOL['untested']} {head}  (tested together with the next exercise)")
            continue
        lines.append(f"  {SYMBOL[ex['status']]} {head}  [{ex['status']}, {ex['score']:g}/{ex['points']:g} points]")
        for t in ex['tests']:
            if t['status'] != 'passed':
                lines.append(f"         {t['grade_id']}: {t['message']}")
    lines.append(f"visible tests: {report['score']:g}/{report['points']:g} points "
                 '(your instructor also runs hidden tests of the same exercises)')
    if report.get('first_error'):
        lines.append(f"first error outside the tests: {report['first_error']}")
    for hint in report.get('hints', []):
        lines.append(f'hint: {hint}')
    return '\n'.join(lines)


def check(name: str, root=None, timeout: int = 300) -> dict:
    root = find_root(root)
    path = find_notebook(root, name)
    start = time.perf_counter()
    nb, problem = execute(path, timeout=timeout)
    report = classify(nb, path.stem[:2])
    report.update(notebook=str(path), seconds=round(time.perf_counter() - start, 2), problem=problem, hints=[])
    stale = _stale_exports(root, path)
    if stale:
        report['hints'].append(f"{', '.join(stale)} changed after your last export: run `tinytorch export` so "
                               'this notebook imports your latest code')
    if problem:
        report['hints'].append(problem)
    return report


def export(root=None) -> dict:
    "Export every notebook of the kit into its tinytorch package; check that each module compiles."
    root = find_root(root)
    os.environ.pop('IN_TEST', None)         # nbdev_export does nothing when IN_TEST is set
    from nbdev.doclinks import nbdev_export
    cwd = os.getcwd()
    os.chdir(root)
    try:
        nbdev_export()
    finally:
        os.chdir(cwd)
    modules, errors, todo = {}, [], {}
    for nb_path in course_notebooks(root / 'nbs'):
        mod = module_name(load(nb_path))
        if not mod:
            continue
        py = root / 'tinytorch' / f'{mod}.py'
        modules[nb_path.name] = str(py.relative_to(root))
        if not py.exists():
            continue
        text = py.read_text(encoding='utf-8')
        try:
            compile(text, str(py), 'exec')
        except SyntaxError as e:
            errors.append(f'{py.relative_to(root)}, line {e.lineno}: {e.msg} (fix it in nbs/{nb_path.name})')
        stubs = list(dict.fromkeys(f'{a}.{b}' for a, b in STUB.findall(text)))
        if stubs:
            todo[nb_path.name] = stubs
    return {'modules': modules, 'errors': errors, 'todo': todo}


def main(argv=None):
    parser = argparse.ArgumentParser(prog='tinytorch', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    chk = sub.add_parser('check', help='run a notebook and report its exercises')
    chk.add_argument('module', help='00, 00_tensor, tensor or a path to the notebook')
    chk.add_argument('--timeout', type=int, default=300, help='seconds per cell (default 300)')
    chk.add_argument('--json', action='store_true', help='print the report as JSON')
    exp = sub.add_parser('export', help='export your notebooks into your tinytorch package')
    exp.add_argument('--json', action='store_true')
    args = parser.parse_args(argv)
    if args.command == 'check':
        report = check(args.module, timeout=args.timeout)
        print(json.dumps(report, indent=1) if args.json else
              render(report, Path(report['notebook']).name, report['seconds']))
        return 0 if report['passed'] else 1
    report = export()
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for nb_name, py in report['modules'].items():
            todo = report['todo'].get(nb_name)
            left = f"  (still to do: {', '.join(todo)})" if todo else ''
            print(f'exported nbs/{nb_name} -> {py}{left}')
        for e in report['errors']:
            print(f'error: {e}')
    return 1 if report['errors'] else 0


if __name__ == '__main__':
    sys.exit(main())
