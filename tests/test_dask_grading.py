"""Autograding on Dask (issue 18): a real `dask scheduler` and two `dask worker` processes on 127.0.0.1.

- Through `--scheduler`, a batch gets the grades, flags, scrubbed outputs and feedback of nbgrader's own
  `nbgrader autograde` (the local cluster's runs are those of tests/test_workflow.py), the tasks ran on those two
  workers (each result names its worker), each kernel in the sandbox (issue 12) whatever the workers' own
  UNSAFE_NO_SANDBOX says, and a submission printing another module's solutions is scrubbed and flagged.
- A worker without bubblewrap stops the batch before anything is graded; the coordinator's UNSAFE_NO_SANDBOX=1
  travels with the tasks (every submission flagged "graded without a sandbox").
- A worker killed in the middle of a task: the task is run again elsewhere; killed twice, the submission is flagged
  "grading failed twice"; the batch completes, the gradebook is consistent, and a second run changes nothing.
- An interrupted coordinator keeps what it graded; the same command again grades the rest.

Everything started here is bounded (two workers of one thread, loopback only) and killed at the end.
"""
import contextlib
import copy
import csv
import hashlib
import html
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

pytest.importorskip('distributed')

from conftest import ROOT
from coursetools import course
from coursetools.grading import nbgrader
from coursetools.notebooks import fill_solutions, graded_cells, load, secret_lines
from test_workflow import (A, TIMEOUT, WRONG_UNBROADCAST, _add_after, _cell, _outputs, check_gradebook_consistent,
                           small_course)

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


B = '01_nn'


def course_of(tmp, names=(A,)):
    "A course directory with module 00 (graded); cells may take 120 s (the machine may be loaded: no timeout flags)."
    tmp.mkdir(parents=True, exist_ok=True)
    root = small_course(tmp, list(names))
    course.write_config(root, timeout=120)
    return root


def _solved(course_dir):
    release_nb = nbformat.read(course_dir / 'release' / A / f'{A}.ipynb', as_version=4)
    return fill_solutions(release_nb, nbformat.read(ROOT / 'nbs' / f'{A}.ipynb', as_version=4))


PROBE = 'import os\nprint("outside visible:", os.path.exists({!r}))'


def submissions(course_dir, cases, probe=None):
    """Place notebooks in submitted/: 'solved', 'cheat' (flags, a failed test), 'crash' (the kernel dies), 'copier'
    (the untouched release, printing and using module 01's reference source, which the sandbox withholds while 00
    is graded, and printing a solution line of module 01 it made up from pieces). `probe`: a path whose existence
    'copier' prints (absent in the sandbox)."""
    solved = _solved(course_dir)
    for sid in cases:
        nb = copy.deepcopy(solved)
        if sid == 'copier':
            nb = nbformat.read(course_dir / 'release' / A / f'{A}.ipynb', as_version=4)
            line = sorted(secret_lines(load(ROOT / 'nbs' / f'{B}.ipynb')))[0]
            _add_after(nb, 'test_00_01_unbroadcast',
                       'import inspect, tinytorch.nn\nprint(inspect.getsource(tinytorch.nn))\n'
                       f'print("".join(reversed({line[::-1]!r})))\nprint(tinytorch.nn.Linear)')
            if probe:
                _add_after(nb, 'test_00_01_unbroadcast', PROBE.format(str(probe)))
        elif sid == 'cheat':
            nb.cells[_cell(nb, 'ex00_01_unbroadcast')].source += WRONG_UNBROADCAST
            _add_after(nb, 'ex00_01_unbroadcast', 'import builtins, fastcore.test\n'
                       'fastcore.test.test = lambda *args, **kwargs: None')
        elif sid == 'crash':
            _add_after(nb, 'test_00_04_matmul', 'import os\nos._exit(1)')
        dest = course_dir / 'submitted' / sid / A
        dest.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, dest / f'{A}.ipynb')


@contextlib.contextmanager
def dask_cluster(tmp, workers=2, worker_env=None):
    """`dask scheduler` and `workers` x `dask worker` (one thread each, with a nanny) on 127.0.0.1; the scheduler
    retries a task once when its worker dies and gives a worker only the task it runs; `worker_env`: changes to the workers' environment. Yields (address,
    client); everything is killed at the end."""
    from distributed import Client
    env = dict(os.environ, DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES='1',
               DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION='1.0')
    env.pop('UNSAFE_NO_SANDBOX', None)
    sched_file = tmp / 'scheduler.json'
    procs = []

    def start(*args, env=env):
        log = open(tmp / f'dask-{len(procs)}.log', 'w')
        procs.append(subprocess.Popen([str(BIN / 'dask'), *args], cwd=tmp, env=env, stdout=log, stderr=log,
                                      stdin=subprocess.DEVNULL, start_new_session=True))
    client = None
    try:
        start('scheduler', '--host', '127.0.0.1', '--port', '0', '--dashboard-address', '127.0.0.1:0',
              '--scheduler-file', str(sched_file))
        deadline = time.time() + 60
        while not sched_file.exists():
            assert time.time() < deadline and procs[0].poll() is None, (tmp / 'dask-0.log').read_text()
            time.sleep(0.2)
        for i in range(workers):
            start('worker', '--scheduler-file', str(sched_file), '--host', '127.0.0.1', '--nthreads', '1',
                  '--nworkers', '1', '--no-dashboard', '--memory-limit', '0', '--name', f'w{i}',
                  '--local-directory', str(tmp / f'w{i}'), env=dict(env, **(worker_env or {})))
        client = Client(scheduler_file=str(sched_file), timeout='30s')
        client.wait_for_workers(workers, timeout=120)
        yield client.scheduler.address, client
    finally:
        if client is not None:
            client.close()
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def coursetools(*args, **kw):
    return subprocess.run([sys.executable, '-m', 'coursetools', *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=1200, **kw)


def gradebook_state(course_dir) -> dict:
    "Per student what autograding wrote into the gradebook: scores, review flags, comments, flagged, penalty."
    state = {}
    with course.gradebook(course_dir) as gb:
        for sub in gb.assignment_submissions(A):
            for nb in sub.notebooks:
                state[sub.student.id] = {
                    'grades': {g.name: (g.auto_score, g.manual_score, g.needs_manual_grade) for g in nb.grades},
                    'comments': {c.name: c.auto_comment for c in nb.comments},
                    'flagged': nb.flagged, 'penalty': nb.late_submission_penalty,
                    'timestamp': str(sub.timestamp)}
    return state


def graded_flags(course_dir, sid):
    nb = nbformat.read(course_dir / 'autograded' / sid / A / f'{A}.ipynb', as_version=4)
    return nb.metadata.get('tinytorch', {}).get('flags'), [c.source for c in nb.cells], \
        [[o.get('ename') for o in c.get('outputs', []) if o.get('output_type') == 'error']
         for c in nb.cells if c.cell_type == 'code']


def feedback_text(course_dir, sid):
    page = re.sub(r'\s+', ' ', (course_dir / 'feedback' / sid / A / f'{A}.html').read_text())
    if sid == 'crash':      # whether the dying cell got its execution count before the kernel died is a race
        page = re.sub(r'In&nbsp;\[\d*\]:|In \[\d*\]:', 'In [ ]:', page)
    return page


def test_scheduler_grades_like_nbgrader_in_the_sandbox(tmp_path):
    """Graded through `--scheduler` on two `dask worker`s whose own environment says UNSAFE_NO_SANDBOX=1 (the
    coordinator's says nothing: the sandbox holds): the gradebook, the graded notebooks (flags, cells, errors) and
    the feedback are nbgrader's own `nbgrader autograde`'s; the course has modules 00 and 01, the submissions are
    module 00's, and the one printing module 01's reference source (its solutions) has them scrubbed and flagged
    on the workers as in place."""
    cases = ['solved', 'cheat', 'crash', 'copier']
    remote = course_of(tmp_path / 'remote', (A, B))
    submissions(remote, cases, probe=tmp_path)
    plain = tmp_path / 'plain' / 'course'
    shutil.copytree(remote, plain)

    with dask_cluster(tmp_path, worker_env={'UNSAFE_NO_SANDBOX': '1'}) as (address, client):
        workers = set(client.scheduler_info()['workers'])
        r = coursetools('autograde', str(remote), A, '--scheduler', address, '--no-progress',
                        env={k: v for k, v in os.environ.items() if k != 'UNSAFE_NO_SANDBOX'})
        assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((remote / 'reports' / f'{A}.json').read_text())
    ran_on = {s: v['worker'] for s, v in report['submissions'].items()}
    assert set(ran_on) == set(cases) and set(ran_on.values()) <= workers, (ran_on, workers)
    assert f'on the Dask cluster at {address}' in r.stdout and 'each kernel in a bubblewrap sandbox' in r.stdout

    nbgrader(plain, 'autograde', A, '--force')                   # nbgrader's own command, in place
    full = sum(g['points'] for g in graded_cells(load(ROOT / 'nbs' / f'{A}.ipynb')))
    subs = report['submissions']
    assert report['sandbox'] is True
    assert not [f for s in subs.values() for f in s['flags'] if 'graded without a sandbox' in f], subs
    assert subs['solved']['score'] == full and not subs['solved']['flags']
    assert subs['cheat']['cells']['test_00_01_unbroadcast'] == 0 and any('patches `fastcore`' in f
                                                                         for f in subs['cheat']['flags'])
    assert any('kernel died' in f for f in subs['crash']['flags']) and 0 < subs['crash']['score'] < full
    assert subs['copier']['score'] == 0
    assert [f for f in subs['copier']['flags'] if "held lines of the course's solutions" in f], subs['copier']
    assert [f for f in subs['copier']['flags'] if 'withheld' in f and 'tinytorch.nn.Linear' in f], subs['copier']
    states = {d: gradebook_state(d) for d in (remote, plain)}
    for sid in cases:                    # nbgrader in place does not set `flagged` (course.autograde does)
        mine = {k: v for k, v in states[remote][sid].items() if k != 'flagged'}
        theirs = {k: v for k, v in states[plain][sid].items() if k != 'flagged'}
        assert mine == theirs, f'{sid}: the Dask run and `nbgrader autograde` disagree'
        assert states[remote][sid]['flagged'] == bool(subs[sid]['flags'])
        assert graded_flags(remote, sid) == graded_flags(plain, sid), sid
        assert subs[sid]['flags'] == graded_flags(remote, sid)[0], sid
    secrets = secret_lines(load(ROOT / 'nbs' / f'{B}.ipynb'))
    copied = {d: _outputs(d, 'copier') for d in (remote, plain)}
    assert copied[remote] == copied[plain] and 'outside visible: False' in copied[remote], copied[remote][:300]
    assert f'tinytorch.nn is withheld while {A} is graded' in copied[remote] and 'class ' not in copied[remote]
    assert not [l for l in secrets if l in copied[remote]]
    for d in (remote, plain):
        course.feedback(d, A, log=lambda *_: None)
    for sid in cases:
        assert feedback_text(remote, sid) == feedback_text(plain, sid), sid
    assert not [l for l in secrets if l in html.unescape(feedback_text(remote, 'copier'))]
    rows = {r['student']: r for r in csv.DictReader(course.grades(remote, log=lambda *_: None).open())}
    assert "held lines of the course's solutions" in rows['copier']['flags'] and not rows['solved']['flags']


def test_workers_without_bubblewrap_and_the_opt_out(tmp_path, monkeypatch):
    """A `dask worker` without bwrap: the batch stops before grading, naming the worker; a task reaching such a
    worker later is refused there (not graded). The coordinator's UNSAFE_NO_SANDBOX=1 travels with the tasks:
    graded there, flagged "graded without a sandbox" in the report, the CSV and the graded notebook."""
    from coursetools import dask_grading, sandbox
    course_dir = course_of(tmp_path)
    submissions(course_dir, ['solved'])
    no_bwrap = {'PATH': str(tmp_path / 'empty')}
    with dask_cluster(tmp_path, workers=1, worker_env=no_bwrap) as (address, client):
        monkeypatch.delenv('UNSAFE_NO_SANDBOX', raising=False)
        with pytest.raises(sandbox.SandboxUnavailable, match=r'the worker tcp://127\.0\.0\.1:\d+ cannot grade in the '
                                                             r'sandbox: bwrap \(bubblewrap\) is not installed'):
            course.autograde(course_dir, A, scheduler=address, log=lambda *_: None, progress=False)
        assert not (course_dir / 'autograded').exists() and not (course_dir / 'reports' / f'{A}.json').exists()
        monkeypatch.setenv('UNSAFE_NO_SANDBOX', '1')
        report = course.autograde(course_dir, A, scheduler=address, log=lambda *_: None, progress=False)
    s = report['submissions']['solved']
    assert report['sandbox'] is False and s['graded'] and s['score'] == sum(
        g['points'] for g in graded_cells(load(ROOT / 'nbs' / f'{A}.ipynb')))
    assert s['flags'] == [sandbox.UNSAFE_FLAG] == graded_flags(course_dir, 'solved')[0], s['flags']
    row = next(csv.DictReader(course.grades(course_dir, log=lambda *_: None).open()))
    assert 'graded without a sandbox' in row['flags']

    # a worker that joined after the check: its first task checks, and refuses (here, in this process)
    monkeypatch.setenv('PATH', str(tmp_path / 'empty'))
    monkeypatch.setattr(dask_grading, '_REFERENCE', {})
    with course.gradebook(course_dir) as gb:
        common = dask_grading.common_payload(course_dir, A, gb, 'course')
        job = dask_grading.student_payload(course_dir, A, 'solved', gb)
    r = dask_grading.grade_submission(common, job)
    assert not r['success'] and not r['files'] and 'cannot grade in the sandbox' in r['failure'], r
# a lambda: cloudpickle sends it by value (the workers cannot import this test module)
_executing = lambda dask_worker: [str(k) for k in dask_worker.state.executing]  # noqa: E731


def _kill_when_running(client, key_part, deadline, killed_before=()):
    "SIGKILL the worker process that is executing a task whose key contains `key_part`; returns its address."
    while time.time() < deadline:
        for addr, keys in client.run(_executing).items():
            if addr not in killed_before and any(key_part in k for k in keys):
                pid = client.run(os.getpid, workers=[addr])[addr]
                os.kill(pid, signal.SIGKILL)
                return addr
        time.sleep(0.2)
    raise AssertionError(f'no worker ever ran {key_part}')


def test_worker_killed_mid_batch(tmp_path):
    cases = ['a_solved', 'victim', 'z_solved']
    course_dir = course_of(tmp_path)
    solved = _solved(course_dir)
    for sid in cases:
        dest = course_dir / 'submitted' / sid / A
        dest.mkdir(parents=True)
        nbformat.write(solved, dest / f'{A}.ipynb')
    with dask_cluster(tmp_path) as (address, client):
        coordinator = subprocess.Popen([sys.executable, '-m', 'coursetools', 'autograde', str(course_dir), A,
                                        '--scheduler', address, '--no-progress'], stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
        try:
            deadline = time.time() + 600
            first = _kill_when_running(client, f'grade-{A}-victim-', deadline)       # retried elsewhere
            time.sleep(1)
            _kill_when_running(client, f'grade-{A}-victim-', deadline, killed_before={first})   # twice: flagged
            out, _ = coordinator.communicate(timeout=900)
        finally:
            if coordinator.poll() is None:
                coordinator.kill()
                coordinator.wait()
        assert coordinator.returncode == 0, out
        report = json.loads((course_dir / 'reports' / f'{A}.json').read_text())
        subs = report['submissions']
        full = sum(g['points'] for g in graded_cells(load(ROOT / 'nbs' / f'{A}.ipynb')))
        assert subs['victim']['flags'] and 'grading failed twice' in subs['victim']['flags'][0], subs['victim']
        assert subs['victim']['score'] == 0 and not subs['victim']['graded']
        for sid in cases:
            if sid != 'victim':
                assert subs[sid]['graded'] and subs[sid]['score'] == full and not subs[sid]['flags'], (sid, subs[sid])
        check_gradebook_consistent({'report': report}, course_dir)

        def snapshot():
            con = sqlite3.connect(course_dir / 'gradebook.db')
            try:
                tables = [t for (t,) in con.execute("select name from sqlite_master where type='table'")]
                db = {t: sorted(map(repr, con.execute(f'select * from {t}'))) for t in tables}
            finally:
                con.close()
            files = {str(p.relative_to(course_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
                     for p in (course_dir / 'autograded').rglob('*') if p.is_file()}
            return db, files
        before = snapshot()
        again = coursetools('autograde', str(course_dir), A, '--scheduler', address, '--no-progress')
        assert again.returncode == 0, again.stdout + again.stderr
        assert snapshot() == before, 'a second run changed the gradebook or the graded notebooks'
        assert json.loads((course_dir / 'reports' / f'{A}.json').read_text())['submissions'] == subs
        assert '3 graded before and unchanged: kept' in again.stdout and 'kept as failed: victim' in again.stdout


def test_interrupted_batch_resumes(tmp_path):
    "Ctrl-C in the coordinator: what was graded stays recorded; the same command grades the rest, --regrade all."
    cases = ['s1', 's2']
    course_dir = course_of(tmp_path)
    submissions(course_dir, ['solved'])
    for sid in cases:
        shutil.copytree(course_dir / 'submitted' / 'solved', course_dir / 'submitted' / sid)
    shutil.rmtree(course_dir / 'submitted' / 'solved')
    p = subprocess.Popen([sys.executable, '-m', 'coursetools', 'autograde', str(course_dir), A, '--jobs', '1',
                          '--no-progress'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         stdin=subprocess.DEVNULL)
    lines = []
    try:
        for line in p.stdout:
            lines.append(line)
            if re.match(r'  s\d: [\d.]+ s on ', line):
                p.send_signal(signal.SIGINT)
                break
        out = ''.join(lines) + p.communicate(timeout=120)[0]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130 and 'interrupted: ' in out, out
    report = json.loads((course_dir / 'reports' / f'{A}.json').read_text())
    first = set(report['submissions'])
    assert 1 <= len(first) < len(cases), out
    with course.gradebook(course_dir) as gb:
        recorded = {s.student.id for s in gb.assignment_submissions(A)}
        assert recorded == first and all(s.score > 0 for s in gb.assignment_submissions(A))
    rest = course.autograde(course_dir, A, jobs=1, log=lambda *_: None)
    assert rest['kept'] == len(first) and rest['graded'] == len(cases) - len(first)
    assert set(rest['submissions']) == set(cases)
    check_gradebook_consistent({'report': rest}, course_dir)


def test_a_worker_keeps_its_private_course_for_the_batch(tmp_path):
    """A worker thread builds its private course once per batch (config, source/, release/; the release notebook and
    its protection plan read once): a submission brings its files and a fresh gradebook and takes them out after,
    so the next one is graded alone; a private course whose files changed, or another assignment's batch, gets a
    new one."""
    import threading
    from coursetools import autograding, dask_grading
    course_dir = course_of(tmp_path)
    submissions(course_dir, ['cheat', 'solved'])
    with course.gradebook(course_dir) as gb:
        common = dask_grading.common_payload(course_dir, A, gb, 'course')
        cheat, solved = (dask_grading.student_payload(course_dir, A, s, gb) for s in ('cheat', 'solved'))
    full = sum(g['points'] for g in graded_cells(load(ROOT / 'nbs' / f'{A}.ipynb')))
    first = dask_grading.grade_submission(common, cheat)
    ws = dask_grading._WORKSPACES[threading.get_ident()]
    assert first['success'] and any('patches `fastcore`' in f for f in first['flags'][f'{A}.ipynb']), first['error']
    assert sorted(p.name for p in ws.root.iterdir()) == ['nbgrader_config.py', 'release', 'source']
    read = [k for k in autograding._CACHE if str(k[0]).startswith(str(ws.root))]
    second = dask_grading.grade_submission(common, solved)
    assert dask_grading._WORKSPACES[threading.get_ident()] is ws and second['success'], second['error']
    assert [k for k in autograding._CACHE if str(k[0]).startswith(str(ws.root))] == read and len(read) == 1
    scores = {c: s for nb in second['notebooks'].values() for c, (s, _) in nb['grades'].items()}
    assert sum(scores.values()) == full and second['flags'] == {f'{A}.ipynb': []}, second['flags']

    released = ws.root / 'release' / A / f'{A}.ipynb'
    released.write_text(released.read_text().replace('def ', 'def  ', 1))      # changed under the worker: rebuilt
    third = dask_grading.grade_submission(common, solved)
    rebuilt = dask_grading._WORKSPACES[threading.get_ident()]
    assert rebuilt is not ws and not ws.root.exists() and third['notebooks'] == second['notebooks']
    assert not [k for k in autograding._CACHE if str(k[0]).startswith(str(ws.root))]
    other = dict(common, source={**common['source'], 'extra.txt': b'data'})
    dask_grading.grade_submission(other, solved)
    assert dask_grading._WORKSPACES[threading.get_ident()] is not rebuilt and not rebuilt.root.exists()
