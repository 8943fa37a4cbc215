"""Autograding on Dask: one task per (student, assignment); only the coordinating process writes the gradebook.

    coordinator (coursetools.course.autograde)                    worker (any Dask worker, or this process)
    ------------------------------------------                    -----------------------------------------
    reads the gradebook's record of the assignment                writes them into a private temporary course
    (cells, checksums, points, due date), the course's            directory (once per batch: `Workspace`),
    nbgrader_config.py, source/ and release/ of the               with a fresh copy of its own SQLite gradebook
    assignment, and each submission's files          --task-->    per submission, runs nbgrader's autograde there
                                                                  (the course's sanitize and autograde
                                                                  preprocessors, so every kernel runs through
                                                                  GradingExecute), and sends back the graded
    records each result as it arrives: the graded    <--result--  folder, the scores, comments, timestamp and
    folder into autograded/<student>/<assignment>/,               late penalty from the private gradebook, the
    the scores into the gradebook, the report                     flags, the log and its own address

The private gradebook gets the assignment exactly as the course's gradebook holds it, so nbgrader's own
OverwriteCells, SaveAutoGrades and AssignLatePenalties run unchanged on the worker, and the coordinator copies
their results into the course's gradebook: the formgrader and `nbgrader generate_feedback` see what
`nbgrader autograde` would have written. What does not change within a batch (the private course's config,
source/ and release/, the notebooks and protection plan the grading plug-ins read from them, the gradebook with
the assignment in it) is built once per worker thread, not once per submission.

Every kernel runs in the bubblewrap sandbox (coursetools/sandbox.py: nbgrader's autograde on the worker goes
through GradingExecute). Each worker checks once that it can (`warm_up`: the workers present at the start are
checked before any task, and one that cannot stops the batch; a later one checks in its first task and refuses to
grade). The workers of the coordinator's own local cluster (same machine, interpreter and environment) take the
coordinator's checks, made just before; one that a nanny restarts checks in its first task. UNSAFE_NO_SANDBOX is read by the coordinator only and travels with the tasks (`common['unsafe']`, set as
GradingExecute.no_sandbox on the worker): a worker's own environment cannot turn the sandbox off, nor on; each
result says how it was graded, and the coordinator flags every submission graded without the sandbox. The
solution and hidden-test lines of the whole course travel too (`common['secrets']`): the scrubbing of outputs
on the worker is that of the course directory, though the worker holds only one assignment.

A worker that dies in a task (killed, out of memory) gets the task retried by the scheduler on another worker
`allowed-failures` times (1 for a local cluster; start a scheduler with DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=1,
and DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION=1.0 so that only the task a worker runs counts its death),
after which the submission is flagged "grading failed twice" and the batch goes on.
"""
import atexit
import contextlib
import datetime
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

RETRIES = 1                 # a task whose worker dies is run once more, elsewhere (scheduler allowed-failures)
SATURATION = 1.0            # tasks a worker holds per thread (scheduler worker-saturation): only the one it runs


# ---------------------------------------------------------------------------------------------- what a task carries

def folder_files(folder: Path) -> dict:
    "{relative path: bytes} of every file under `folder` (none if it does not exist)."
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob('*')) if p.is_file()} if folder.is_dir() else {}


def files_digest(files: dict) -> str:
    "A fingerprint of a submission (its files' names and contents): a changed submission is graded again."
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b'\0' + hashlib.sha256(files[name]).digest())
    return h.hexdigest()


def assignment_spec(gb, assignment: str) -> dict:
    """The course gradebook's record of `assignment` (what nbgrader's generate_assignment saved): due date,
    notebooks, their kernelspec, graded, solution, task and source cells with points and checksums."""
    a = gb.find_assignment(assignment)
    notebooks = []
    for nb in a.notebooks:
        notebooks.append({
            'name': nb.name, 'kernelspec': nb.kernelspec,
            'grade_cells': [{'name': c.name, 'max_score': c.max_score, 'cell_type': c.cell_type}
                            for c in nb.grade_cells],
            'solution_cells': [c.name for c in nb.solution_cells],
            'task_cells': [{'name': c.name, 'max_score': c.max_score, 'cell_type': c.cell_type}
                           for c in nb.task_cells],
            'source_cells': [{'name': c.name, 'cell_type': c.cell_type, 'locked': c.locked, 'source': c.source,
                              'checksum': c.checksum} for c in nb.source_cells]})
    return {'name': a.name, 'duedate': a.duedate.isoformat() if a.duedate else None, 'notebooks': notebooks}


def common_payload(root: Path, assignment: str, gb, course_id: str, unsafe: bool = False) -> dict:
    """What every task of one assignment shares: the grading config, source/ and release/, the gradebook's record,
    the solution and hidden-test lines of the whole course (scrubbed from the outputs: the worker's private course
    holds only this assignment), and the coordinator's sandbox decision (`unsafe`: UNSAFE_NO_SANDBOX=1 where the
    batch was started; the workers' own environment does not count)."""
    from .autograding import course_secrets
    return {'assignment': assignment, 'course_id': course_id,
            'config': (root / 'nbgrader_config.py').read_text(),
            'source': folder_files(root / 'source' / assignment),
            'release': folder_files(root / 'release' / assignment),
            'spec': assignment_spec(gb, assignment),
            'secrets': course_secrets(root), 'unsafe': bool(unsafe)}


def extension(gb, assignment: str, student: str):
    "The student's extension of `assignment` in seconds, if the gradebook has one."
    try:
        sub = gb.find_submission(assignment, student)
        return sub.extension.total_seconds() if sub.extension else None
    except Exception:
        return None


def student_payload(root: Path, assignment: str, student: str, gb=None) -> dict:
    """One task's own part: the submission's files, and the student's extension if the gradebook `gb` has one
    (without `gb`: set later, see `extension`)."""
    files = folder_files(root / 'submitted' / student / assignment)
    return {'student': student, 'files': files, 'digest': files_digest(files),
            'extension': extension(gb, assignment, student) if gb is not None else None}


# ---------------------------------------------------------------------------------------------- the worker's side

_TEMPLATES = {}             # private gradebooks already built by this process, by the spec's fingerprint
_REFERENCE = {}


def _write_files(folder: Path, files: dict):
    for name, data in files.items():
        p = folder / name
        if '..' in Path(name).parts or Path(name).is_absolute():
            raise ValueError(f'unsafe path in a grading task: {name!r}')
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def _private_gradebook(spec: dict, course_id: str) -> Path:
    "A SQLite gradebook holding only this assignment, as the course's gradebook has it (built once per process)."
    key = hashlib.sha256(json.dumps([spec, course_id], sort_keys=True).encode()).hexdigest()
    path = _TEMPLATES.get(key)
    if path and path.exists():
        return path
    from nbgrader import api
    from .course import _fast_alembic_version
    api.get_alembic_version = _fast_alembic_version
    folder = Path(tempfile.mkdtemp(prefix='tinytorch-gradebook-'))
    atexit.register(shutil.rmtree, folder, True)
    path = folder / 'gradebook.db'
    with api.Gradebook(f'sqlite:///{path}', course_id) as gb:
        duedate = spec['duedate']
        gb.update_or_create_assignment(spec['name'], duedate=duedate)
        for nb in spec['notebooks']:
            gb.update_or_create_notebook(nb['name'], spec['name'], kernelspec=nb['kernelspec'])
            for c in nb['grade_cells']:
                gb.update_or_create_grade_cell(c['name'], nb['name'], spec['name'], max_score=c['max_score'],
                                               cell_type=c['cell_type'])
            for name in nb['solution_cells']:
                gb.update_or_create_solution_cell(name, nb['name'], spec['name'])
            for c in nb['task_cells']:
                gb.update_or_create_task_cell(c['name'], nb['name'], spec['name'], max_score=c['max_score'],
                                              cell_type=c['cell_type'])
            for c in nb['source_cells']:
                gb.update_or_create_source_cell(c['name'], nb['name'], spec['name'], cell_type=c['cell_type'],
                                                locked=c['locked'], source=c['source'], checksum=c['checksum'])
    _TEMPLATES[key] = path
    return path


def where() -> str:
    "The Dask worker's address when run in a task, else host:pid of this process."
    try:
        from distributed import get_worker
        return get_worker().address
    except (ImportError, ValueError):
        return f'{socket.gethostname()}:{os.getpid()}'


def _import_grading():
    "nbgrader and the grading plug-ins imported (a worker's first submission need not wait for them)."
    import nbgrader.apps  # noqa: F401
    from . import autograding  # noqa: F401


def warm_up(unsafe: bool = False, dask_worker=None, checked: str = None) -> str:
    """Once per worker process, before its first submission: import nbgrader and the grading plug-ins, check that
    `tinytorch` is the reference package, never a student kit, and (unless `unsafe`: the coordinator's opt-out)
    that a grading kernel can run in the bubblewrap sandbox on this machine. Raises otherwise (the sandbox:
    SandboxUnavailable, naming the worker: `dask_worker`, which `Client.run` passes). Returns the package's folder.
    `checked`: the reference package's folder as the coordinator found it, when the coordinator has just made both
    checks itself for this worker: a worker of its local cluster (same machine, interpreter and environment);
    a worker it did not start always checks."""
    _import_grading()
    if checked and 'ref' not in _REFERENCE:
        _REFERENCE['ref'] = checked
        if not unsafe:
            _REFERENCE['sandbox'] = True
    if 'ref' not in _REFERENCE:
        from .course import reference_package
        _REFERENCE['ref'] = reference_package()
    if not unsafe:
        from . import sandbox
        if 'sandbox' not in _REFERENCE:         # checked once per process; a failure is checked again next time
            why = sandbox.check()
            if why:
                name = dask_worker.address if dask_worker else where()
                raise sandbox.SandboxUnavailable(
                    f'the worker {name} cannot grade in the sandbox: {why}. Not grading there (the coordinator can '
                    f'set {sandbox.OPT_OUT}=1 to grade without it, every submission flagged)')
            _REFERENCE['sandbox'] = True
    return _REFERENCE['ref']


def _fingerprint(common: dict) -> str:
    "What a worker's private course is built from: the same fingerprint, the same private course."
    h = hashlib.sha256()
    for part in (common['assignment'], common['course_id'], common['config'], files_digest(common['source']),
                 files_digest(common['release']), json.dumps([common['spec'], common.get('secrets')], sort_keys=True)):
        h.update(hashlib.sha256(part.encode()).digest())
    return h.hexdigest()


_WORKSPACES = {}            # per worker thread: its private course directory (the assignment of the batch)
_PRIVATE = []               # the folders of those private courses (their SQLite files are not synced to disk)


_KEPT = ('nbgrader_config.py', 'source', 'release')   # what stays in a private course from one submission to the next


def _stat(root: Path) -> dict:
    "{path: (size, mtime)} of the files of a private course that stay (see Workspace)."
    found = {}
    for name in _KEPT:
        p = root / name
        for f in sorted(p.rglob('*')) if p.is_dir() else [p] if p.exists() else []:
            st = f.lstat()
            found[f.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns, f.is_file())
    return found


def _unsynced_private_gradebooks():
    """A private gradebook is a throwaway copy: SQLite need not wait for the disk at each of nbgrader's commits
    (`PRAGMA synchronous=OFF`, journal in memory). Only databases inside a private course; the course's own
    gradebook (the coordinator's) keeps SQLite's defaults. Installed once per process."""
    if _REFERENCE.get('sqlite'):
        return
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def connect(dbapi_connection, record):
        try:
            files = [row[2] for row in dbapi_connection.execute('PRAGMA database_list').fetchall()]
        except Exception:
            return
        if any(f and any(f.startswith(root) for root in _PRIVATE) for f in files):
            dbapi_connection.execute('PRAGMA synchronous=OFF')
            dbapi_connection.execute('PRAGMA journal_mode=MEMORY')
    event.listen(Engine, 'connect', connect)
    _REFERENCE['sqlite'] = True


class Workspace:
    """A worker thread's private course directory for the assignment of a batch: nbgrader_config.py, source/ and
    release/ written once, the nbgrader configuration loaded once, the course's secrets registered once, so that
    nbgrader and the grading plug-ins find them unchanged from one submission to the next (the release and source
    notebooks and their protection plan are read once, autograding's `_course_notebooks`). Each submission brings
    its own files and a fresh copy of the private gradebook into it, and takes them out after (`clear`). Built
    again when the assignment changes (another fingerprint) or when a file of it is not as written (`intact`)."""

    def __init__(self, common: dict, key: str):
        from .autograding import given_secrets
        from .course import load_config
        self.key, self.assignment = key, common['assignment']
        self.root = Path(tempfile.mkdtemp(prefix='tinytorch-grading-'))
        self.prefixes = list(dict.fromkeys([str(self.root) + os.sep, os.path.realpath(self.root) + os.sep]))
        _PRIVATE.extend(self.prefixes)
        (self.root / 'nbgrader_config.py').write_text(common['config'])
        _write_files(self.root / 'source' / self.assignment, common['source'])
        _write_files(self.root / 'release' / self.assignment, common['release'])
        self.written = _stat(self.root)
        self.template = _private_gradebook(common['spec'], common['course_id'])
        self.db_url = f"sqlite:///{self.root / 'gradebook.db'}"
        cfg = load_config(self.root)
        cfg.CourseDirectory.root = str(self.root)             # whatever the config says: the private copy only
        cfg.CourseDirectory.db_url = self.db_url
        cfg.CourseDirectory.course_id = common['course_id']
        cfg.Restructure.course_root = str(self.root)
        for name in ('ScrubHiddenTests', 'HideHiddenTests'):
            getattr(cfg, name).course_root = str(self.root)
        self.config = cfg
        given_secrets(self.root, common.get('secrets'))
        atexit.register(shutil.rmtree, self.root, True)

    def intact(self) -> bool:
        return self.root.is_dir() and _stat(self.root) == self.written

    def clear(self):
        "Take out what a submission brought in or left: only the files written at the start stay."
        for p in sorted(self.root.iterdir()):
            if p.name in _KEPT:
                continue
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)

    def remove(self):
        from . import autograding
        autograding.given_secrets(self.root, None)
        for k in [k for k in autograding._CACHE if str(k[0]).startswith(tuple(self.prefixes))]:
            autograding._CACHE.pop(k, None)         # the notebooks read from here (read once per private course)
        for prefix in self.prefixes:
            if prefix in _PRIVATE:
                _PRIVATE.remove(prefix)
        shutil.rmtree(self.root, ignore_errors=True)


def workspace(common: dict) -> Workspace:
    "This thread's private course for `common`'s assignment (see Workspace), built when needed."
    import threading
    key, me = _fingerprint(common), threading.get_ident()
    ws = _WORKSPACES.get(me)
    if ws is not None and (ws.key != key or not ws.intact()):
        ws.remove()
        ws = None
    if ws is None:
        ws = _WORKSPACES[me] = Workspace(common, key)
    return ws


def grade_submission(common: dict, job: dict) -> dict:
    """One Dask task: autograde one submission in this worker thread's private course directory (see the module's
    docstring and Workspace). Never touches the course's gradebook. Returns the graded folder, scores, comments,
    the flags of the graded notebook and the log."""
    start, t0 = time.time(), time.perf_counter()
    assignment, student = common['assignment'], job['student']
    unsafe = bool(common.get('unsafe'))
    out = {'student': student, 'worker': where(), 'start': start, 'success': False, 'error': '', 'log': '',
           'files': {}, 'notebooks': {}, 'timestamp': None, 'digest': job['digest'], 'unsafe': unsafe, 'flags': {}}
    from .sandbox import SandboxUnavailable
    ws = None
    try:
        try:
            warm_up(unsafe)
        except SandboxUnavailable as e:
            out['failure'] = f'not graded: {e}'
            raise
        _unsynced_private_gradebooks()
        ws = workspace(common)
        ws.clear()
        _write_files(ws.root / 'submitted' / student / assignment, job['files'])
        shutil.copy(ws.template, ws.root / 'gradebook.db')
        db_url = ws.db_url

        import warnings
        from sqlalchemy.exc import SAWarning
        warnings.filterwarnings('ignore', category=SAWarning)
        from nbgrader.api import Gradebook
        from nbgrader.apps import NbGraderAPI
        from nbgrader.coursedir import CourseDirectory
        cfg = ws.config
        cfg.GradingExecute.no_sandbox = unsafe                # the coordinator's decision, not this environment's
        if job.get('extension'):
            with Gradebook(db_url, common['course_id']) as gb:
                gb.update_or_create_student(student)
                gb.update_or_create_submission(assignment, student,
                                               extension=datetime.timedelta(seconds=job['extension']))
        r = NbGraderAPI(coursedir=CourseDirectory(config=cfg), config=cfg).autograde(
            assignment, student, force=True, create=True)
        out.update(success=bool(r['success']), error=r.get('error') or '', log=r.get('log') or '')
        out['files'] = folder_files(ws.root / 'autograded' / student / assignment)
        for name, data in out['files'].items():            # the grader's flags, read here (plain JSON, no schema)
            if name.endswith('.ipynb'):
                try:
                    out['flags'][name] = json.loads(data).get('metadata', {}).get('tinytorch', {}).get('flags', [])
                except ValueError:
                    pass
        with Gradebook(db_url, common['course_id']) as gb:
            try:
                sub = gb.find_submission(assignment, student)
            except Exception:
                sub = None
            if sub is not None:
                from .course import _load_cells
                cells = _load_cells(gb, sub)                  # noqa: F841 (one query, not one per grade)
                out['timestamp'] = sub.timestamp.isoformat() if sub.timestamp else None
                for nb in sub.notebooks:
                    out['notebooks'][nb.name] = {
                        'late_submission_penalty': nb.late_submission_penalty,
                        'grades': {g.name: [g.auto_score, g.needs_manual_grade] for g in nb.grades},
                        'comments': {c.name: c.auto_comment for c in nb.comments}}
    except Exception:
        import traceback
        out['error'] = (out['error'] + '\n' + traceback.format_exc()).strip()
        out['success'] = False
    finally:
        if ws is not None:
            ws.clear()
    out['seconds'] = round(time.perf_counter() - t0, 2)
    out['end'] = time.time()
    return out


# ---------------------------------------------------------------------------------------------- the coordinator's side

def _has_bokeh() -> bool:
    import importlib.util
    return importlib.util.find_spec('bokeh') is not None


def dashboard(client):
    """The Dask dashboard's address, or None when the scheduler serves none (its HTTP server only shows the
    dashboard when bokeh is installed where the scheduler runs)."""
    try:
        if 'dashboard' not in client.scheduler_info().get('services', {}):
            return None
        return client.dashboard_link if client.run_on_scheduler(_has_bokeh) else None
    except Exception:
        return None


class Progress:
    "The batch's progress bar (tqdm): submissions done, running, failed."

    def __init__(self, total: int, enabled: bool, log=print):
        from tqdm.auto import tqdm
        self.log = log
        self.bar = tqdm(total=total, unit='submission', disable=not enabled, dynamic_ncols=True, file=sys.stderr)
        self.failed = 0
        self.running = 0

    def write(self, text):
        if self.bar.disable:
            self.log(text)
        else:
            self.bar.write(text)

    def update(self, done=0, failed=0, running=None):
        self.failed += failed
        if running is not None:
            self.running = running
        self.bar.set_postfix_str(f'running {self.running}, failed {self.failed}', refresh=False)
        self.bar.update(done)
        if not done:
            self.bar.refresh()

    def close(self):
        self.bar.close()


class Recording:
    """Ctrl-C while a result is being recorded takes effect once that record is complete, so that autograded/, the
    gradebook and the report never disagree about a submission. `install()` for the batch (main thread only, where
    Python delivers signals), `with rec.record():` around each record, `uninstall()` at the end."""

    def __init__(self):
        self.busy = self.pending = False
        self.previous = None

    def _handler(self, signum, frame):
        if self.busy:
            self.pending = True
        else:
            raise KeyboardInterrupt

    def install(self):
        import signal
        import threading
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def uninstall(self):
        import signal
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None

    @contextlib.contextmanager
    def record(self):
        self.busy = True
        try:
            yield
        finally:
            self.busy = False
            if self.pending:
                self.pending = False
                raise KeyboardInterrupt


def _killed(result_student: str, job: dict, attempts: int, error) -> dict:
    times = {1: 'once', 2: 'twice'}.get(attempts, f'{attempts} times')
    return {'student': result_student, 'worker': None, 'success': False, 'seconds': 0.0, 'start': None, 'end': None,
            'files': {}, 'notebooks': {}, 'timestamp': None, 'digest': job['digest'], 'log': '',
            'error': f'{type(error).__name__}: {error}',
            'failure': f'grading failed {times} (the worker died each time: killed, out of memory or crashed)'}


# A local cluster's settings. allowed-failures 1: a task whose worker dies is run once more. worker-saturation 1:
# a worker holds only the task it runs, so a worker that dies (a submission's fault) counts against that
# submission alone, never against one queued behind it. No statistical profiler in the workers (it samples the
# grading thread every 10 ms, for a dashboard that is usually not there), and the periodic upkeep of the
# scheduler, the nannies and the workers slowed down: with Dask's defaults an idle local cluster of 2 workers took
# 0.9 CPU s per 20 s (4.6% of a core; 0.17 s with these), from the event loops' 20 ms tick, the nannies' memory
# polls every 100 ms, the system monitors every 0.5 s and work stealing every 100 ms (nothing to steal when the
# scheduler holds the queue).
# The worker processes fork from one process that imported these once (multiprocessing's fork server), instead of
# each starting a new interpreter and importing them again (~2 s of CPU per worker).
PRELOAD = ('distributed', 'dask', 'msgpack', 'cloudpickle', 'tornado', 'toolz', 'numpy', 'nbgrader.apps',
           'coursetools.autograding', 'coursetools.dask_grading')
LOCAL_CONFIG = {'distributed.scheduler.allowed-failures': RETRIES,
                'distributed.worker.multiprocessing-method': 'forkserver',
                'distributed.scheduler.worker-saturation': SATURATION,
                'distributed.scheduler.work-stealing': False,
                'distributed.worker.profile.enabled': False,
                'distributed.admin.tick.interval': '1s',
                'distributed.admin.system-monitor.interval': '5s',
                'distributed.worker.memory.monitor-interval': '1s'}


class LocalStart:
    """A local Dask cluster of `workers` single-threaded worker processes (with nannies), started in a background
    thread so that it starts, and its workers import nbgrader, while the coordinator prepares the batch.
    `get()` waits for it: (cluster, client); `close()` stops it."""

    def __init__(self, workers: int):
        import threading
        self.workers = workers
        self.cluster = self.client = self.error = None
        self.thread = threading.Thread(target=self._start, name='tinytorch-local-cluster', daemon=True)
        self.thread.start()

    def _start(self):
        import logging
        try:
            if LOCAL_CONFIG.get('distributed.worker.multiprocessing-method') == 'forkserver':
                _start_forkserver()     # first: it imports while this process imports Dask and starts the scheduler
            import dask
            import distributed
            with dask.config.set(LOCAL_CONFIG):
                self.cluster = distributed.LocalCluster(n_workers=self.workers, threads_per_worker=1,
                                                        processes=True, dashboard_address=':0',
                                                        silence_logs=logging.ERROR)
            self.client = distributed.Client(self.cluster)
            self.client.run(_import_grading)
        except BaseException as e:          # raised in the coordinator's thread, by get()
            self.error = e

    def get(self):
        self.thread.join()
        if self.error is not None:
            self.close()
            raise self.error
        return self.cluster, self.client

    def close(self):
        self.thread.join()
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        if self.cluster is not None or self.error is not None:
            _stop_forkserver()
        self.cluster = self.client = self.error = None


def _start_forkserver():
    """Start multiprocessing's fork server for the workers, importing PRELOAD (Dask's nannies then start their
    worker processes from it)."""
    import multiprocessing
    from multiprocessing import forkserver
    multiprocessing.get_context('forkserver').set_forkserver_preload(list(PRELOAD))
    forkserver.ensure_running()


def _stop_forkserver():
    """Stop multiprocessing's fork server, if this process started one: the next batch starts its own, with the
    modules as they are then (and each batch in a process costs what `make grade` costs)."""
    import multiprocessing.forkserver as fs
    stop = getattr(getattr(fs, '_forkserver', None), '_stop', None)
    if stop is not None and getattr(fs._forkserver, '_forkserver_pid', None) is not None:
        stop()


def run(common: dict, jobs: list, record, scheduler=None, workers=None, log=print, progress=None, local=None,
        checked=None) -> dict:
    """Grade `jobs` (student payloads) on Dask and call `record(result)` in this process as each one finishes
    (it returns a line to print, or None).
    `scheduler`: the address of a running scheduler; else `local` (a LocalStart by the caller, closed
    here), else a new local cluster of `workers` processes (default: the cores). `checked`: the reference
    package's folder when this process has checked it and the sandbox (see warm_up): trusted by a local cluster's
    workers only. Returns {'workers', 'dashboard', 'scheduler'}."""
    from distributed import Client, as_completed
    from distributed.scheduler import KilledWorker
    progress = sys.stderr.isatty() if progress is None else progress
    if scheduler:
        if local is not None:
            local.close()
            local = None
        checked = None
        client = Client(scheduler, timeout='30s')
        allowed = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures)
        saturation = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.WORKER_SATURATION)
    else:
        local = local or LocalStart(workers or os.cpu_count() or 1)
        client = None
        try:
            _, client = local.get()
        finally:
            if client is None:
                local.close()
        allowed, saturation = RETRIES, SATURATION
    bar = None
    guard = Recording().install()
    try:
        info = {'scheduler': client.scheduler.address, 'dashboard': dashboard(client),
                'workers': len(client.scheduler_info().get('workers', {}))}
        log(f"Dask: scheduler {info['scheduler']}, {info['workers']} workers"
            + (f", dashboard {info['dashboard']}" if info['dashboard'] else ' (no dashboard: bokeh not installed)'))
        if allowed != RETRIES:
            log(f'note: this scheduler retries a task {allowed} times when its worker dies '
                f'(distributed.scheduler.allowed-failures); the course expects {RETRIES}: start it with '
                f'DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES={RETRIES}')
        if saturation != SATURATION:
            log(f'note: this scheduler queues {saturation} tasks per worker thread (distributed.scheduler.'
                f'worker-saturation): a worker that dies counts against the submissions queued on it too; start it '
                f'with DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION={SATURATION}')
        # the workers there now (later ones warm up in their first task): a worker without a usable sandbox
        # stops the batch before anything is graded, as `preflight` does here
        warmed = client.run(warm_up, common['unsafe'], checked=checked, on_error='return')
        refused = {w: e for w, e in warmed.items() if isinstance(e, BaseException)}
        if refused:
            from .sandbox import SandboxUnavailable
            if any(isinstance(e, SandboxUnavailable) for e in refused.values()):
                raise SandboxUnavailable('not grading: ' + '; '.join(str(e) for e in refused.values()))
            raise next(iter(refused.values()))
        shared = client.scatter(common, broadcast=False, hash=False)
        token = uuid.uuid4().hex[:8]
        futures = {client.submit(grade_submission, shared, job, key=f"grade-{common['assignment']}-{job['student']}-{token}",
                                 pure=False): job for job in jobs}
        bar = Progress(len(futures), progress, log)
        nthreads = sum(client.nthreads().values()) or 1
        pending = set(futures)
        bar.update(running=min(len(pending), nthreads))
        # results are fetched as each task ends (with_results): a worker that dies later cannot lose them
        for f, value in as_completed(futures, with_results=True, raise_errors=False):
            pending.discard(f)
            job = futures[f]
            if isinstance(value, dict):
                result = value
            else:                                             # (type, exception, traceback), or CancelledError
                error = value[1] if isinstance(value, tuple) else value
                if isinstance(error, KilledWorker):
                    result = _killed(job['student'], job, allowed + 1, error)
                else:
                    result = _killed(job['student'], job, 1, error)
                    result['failure'] = f'grading failed ({type(error).__name__}: {str(error)[:120]})'
            failed = not result['success']
            with guard.record():
                line = record(result)
            if line:
                bar.write(line)
            bar.update(done=1, failed=int(failed), running=min(len(pending), nthreads))
            f.release()
    finally:
        guard.uninstall()
        if bar is not None:
            bar.close()
        if local is not None:
            local.close()
        else:
            client.close()
    return info
