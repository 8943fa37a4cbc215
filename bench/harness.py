"""Timing harness: interleaved, repeated runs of ours and a reference; medians and paired ratios.

A benchmark module `bench/bench_<topic>.py` defines `cases(quick: bool) -> list[Case]`. Each case times `ours`
against `ref` (PyTorch where installed, or another reference such as a naive implementation). For each of
`repeats` rounds the harness calls ours then ref (the order alternates each round), each `number` times, and
records the per-call time; the reported ratio is the median of the per-round ratios ours/ref (paired, so that
machine noise that hits both cancels out). `python -m bench --clock cpu` times by the process's CPU time instead of
elapsed time: on a shared, loaded machine its ratios are much steadier (time lost waiting for a core is not counted).
`--clock user` counts only the user part of that CPU time, leaving out the page faults that the kernel serves for
the process (ours and the reference share one allocator, so either one's faults move with the other's allocations).
"""
import gc
import resource
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional


@dataclass
class Case:
    group: str                       # table section, e.g. 'embedding forward'
    name: str                        # the grid point, e.g. 'V=50000 D=768 B=32 T=512'
    ours: Callable[[], object]
    ref: Optional[Callable[[], object]] = None   # None: no reference available (e.g. torch not installed)
    ref_name: str = 'torch'
    target: Optional[float] = None   # the target for ours/ref (median); None: report only
    number: int = 0                  # calls per timing; 0 = choose so one timing takes ~20 ms
    repeats: int = 0                 # paired rounds; 0 = the run's default (15, or 3 with --quick)
    extra: dict = field(default_factory=dict)   # anything else worth reporting (e.g. GB/s, max error)


def _calls_for(fn, budget=0.02) -> int:
    t0 = time.perf_counter(); fn(); dt = time.perf_counter() - t0
    return max(1, min(10_000, int(budget / max(dt, 1e-7))))


def _user_time() -> float:
    "This process's user CPU time in seconds (not the kernel's page-fault work done for it)."
    return resource.getrusage(resource.RUSAGE_SELF).ru_utime


CLOCKS = dict(wall=time.perf_counter,   # elapsed time: what a user waits for (the default)
              cpu=time.process_time,     # this process's CPU time: far steadier on a shared, loaded machine
              user=_user_time)           # its user part only: ours and the reference share one allocator, and
                                         # either one's page faults move with the other's allocations


def _time(fn, number: int, clock=time.perf_counter) -> float:
    t0 = clock()
    for _ in range(number):
        fn()
    return (clock() - t0) / number


def measure(case: Case, repeats: int = 15, clock: str = 'wall') -> dict:
    "Time one case with the `clock` named in CLOCKS ('wall', 'cpu' or 'user'); returns a row for the table."
    repeats = case.repeats or repeats
    case.ours()                                   # warm up (caches, lazy allocations)
    if case.ref: case.ref()
    n = case.number or _calls_for(case.ours)
    m = case.number or (_calls_for(case.ref) if case.ref else 0)
    ours, refs, ratios = [], [], []
    gc.disable()
    try:
        for r in range(repeats):
            pair = [('ours', case.ours, n), ('ref', case.ref, m)]
            if r % 2: pair.reverse()
            got = {}
            for who, fn, k in pair:
                if fn is not None:
                    got[who] = _time(fn, k, CLOCKS[clock])
            ours.append(got['ours'])
            if 'ref' in got:
                refs.append(got['ref']); ratios.append(got['ours'] / got['ref'])
    finally:
        gc.enable()
    row = dict(group=case.group, name=case.name, ours_ms=statistics.median(ours) * 1e3,
               ref=case.ref_name if case.ref else None,
               ref_ms=statistics.median(refs) * 1e3 if refs else None,
               ratio=statistics.median(ratios) if ratios else None, target=case.target, clock=clock)
    row['met'] = None if row['ratio'] is None or case.target is None else row['ratio'] <= case.target
    row.update(case.extra)
    return row
