"""`python -m bench [--quick] [--only SUBSTRING]`: run every bench/bench_*.py, print one table, write JSON.

Threads are pinned to one (NumPy's BLAS and PyTorch alike) before anything imports them, so that the
comparison is kernel against kernel.
"""
import os

for var in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
    os.environ[var] = '1'

import argparse, datetime, importlib, json, platform, pkgutil, sys  # noqa: E402
from pathlib import Path  # noqa: E402

from .harness import measure  # noqa: E402


def torch_or_none():
    "PyTorch, pinned to one thread, or None where it is not installed."
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    return torch


def _fmt(v, spec):
    return '—' if v is None else format(v, spec)


def main(argv=None):
    parser = argparse.ArgumentParser(prog='python -m bench')
    parser.add_argument('--quick', action='store_true', help='small grid, few repeats (a smoke run)')
    parser.add_argument('--only', default='', help='run the benchmark modules whose name contains this')
    parser.add_argument('--out', default='bench/results/latest.json')
    parser.add_argument('--clock', choices=('wall', 'cpu', 'user'), default='wall',
                        help="'cpu': time by process CPU time (steadier ratios when the machine is shared); "
                             "'user': its user part only (without page faults)")
    args = parser.parse_args(argv)
    here = Path(__file__).parent
    rows = []
    for mod in sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith('bench_')):
        if args.only not in mod:
            continue
        cases = importlib.import_module(f'bench.{mod}').cases(quick=args.quick)
        for case in cases:
            row = measure(case, repeats=3 if args.quick else 15, clock=args.clock)
            rows.append(row)
            print(f"{row['group']:<28} {row['name']:<34} ours {_fmt(row['ours_ms'], '9.3f')} ms  "
                  f"{row['ref'] or 'ref':>6} {_fmt(row['ref_ms'], '9.3f')} ms  ratio {_fmt(row['ratio'], '6.2f')}  "
                  f"target {_fmt(row['target'], '4.2f')}  {'' if row['met'] is None else ('met' if row['met'] else 'MISSED')}",
                  flush=True)
    torch = torch_or_none()
    import numpy
    meta = dict(date=datetime.date.today().isoformat(), machine=platform.machine(), processor=platform.processor(),
                cpus=os.cpu_count(), python=platform.python_version(), numpy=numpy.__version__,
                torch=torch.__version__ if torch else None, threads=1, clock=args.clock)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix('.tmp')
    tmp.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    tmp.replace(out)
    missed = [r for r in rows if r['met'] is False]
    print(f"\n{len(rows)} rows, {sum(r['met'] is True for r in rows)} targets met, {len(missed)} missed; "
          f"written to {out} ({meta['date']}, numpy {meta['numpy']}, torch {meta['torch']}, 1 thread)")
    return 0


if __name__ == '__main__':
    sys.exit(main())
