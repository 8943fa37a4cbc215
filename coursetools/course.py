"""Running a term: a course directory (nbgrader's layout, SQLite gradebook) and the commands around nbgrader.

    python -m coursetools init DIR                        course directory: config, gradebook, assignments, kit
    python -m coursetools collect DIR 00_tensor FOLDER    an LMS export (one folder per student) -> submitted/
    python -m coursetools autograde DIR 00_tensor         grade every submission on Dask (all cores, or --scheduler)
    python -m coursetools feedback DIR 00_tensor          feedback/<student>/00_tensor/00_tensor.html
    python -m coursetools grades DIR                      DIR/grades.csv: one column per exercise, and totals

nbgrader runs in-process (its import and its gradebook creation are the slow parts of the `nbgrader` command);
autograding runs one Dask task per submission (a local cluster of one worker process per core, or any cluster by
its scheduler's address), and only this process writes the gradebook (coursetools/dask_grading.py). The grading
plug-ins are in coursetools/autograding.py; every grading kernel runs in the sandbox of coursetools/sandbox.py
(`preflight` checks it can here, before anything is graded; each Dask worker checks it can there). (`_grade_one`
below, nbgrader in place with the gradebook sessions serialised by a file lock, is the former process pool: kept
as the baseline of `grading-bench`.)
"""
import csv
import html
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import unicodedata
import zipfile
from pathlib import Path

import nbformat

from .notebooks import course_notebooks, graded_cells, module_checks_label, module_name

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / 'course' / 'nbgrader_config.py'
BIG_OUTPUTS = 5_000_000          # bytes of outputs in a submitted file worth a flag


# ---------------------------------------------------------------------------------------------- nbgrader in-process

def _fast_alembic_version():
    "nbgrader runs `alembic heads` in a subprocess to create a gradebook (~8 s here); ask alembic directly."
    from alembic.script import ScriptDirectory
    import nbgrader
    return ScriptDirectory(os.path.join(os.path.dirname(nbgrader.__file__), 'alembic')).get_current_head()


_LOCK = {'file': None, 'depth': 0}


def _serialise_gradebook(root: Path, wait: float = 300):
    """Hold an exclusive file lock while a Gradebook session is open, so that parallel grader processes never
    write to the SQLite gradebook at once. (After `wait` seconds a process goes ahead anyway and relies on
    SQLite's own busy timeout, so a session that is never closed cannot stop the batch.)"""
    import fcntl
    from nbgrader import api
    if getattr(api.Gradebook, '_tinytorch_lock', False):
        return
    _LOCK['file'] = open(root / '.gradebook.lock', 'a+')
    init, close = api.Gradebook.__init__, api.Gradebook.close

    def acquire():
        if _LOCK['depth'] == 0:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(_LOCK['file'], fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.01)
        _LOCK['depth'] += 1

    def release():
        _LOCK['depth'] -= 1
        if _LOCK['depth'] == 0:
            fcntl.flock(_LOCK['file'], fcntl.LOCK_UN)

    def locked_init(self, *args, **kwargs):
        acquire()
        self._tinytorch_locked = True
        try:
            init(self, *args, **kwargs)
        except BaseException:
            self._tinytorch_locked = False
            release()
            raise

    def locked_close(self):
        try:
            close(self)
        finally:
            if getattr(self, '_tinytorch_locked', False):
                self._tinytorch_locked = False
                release()

    api.Gradebook.__init__, api.Gradebook.close = locked_init, locked_close
    api.Gradebook._tinytorch_lock = True


def load_config(root):
    from traitlets.config.loader import PyFileConfigLoader
    return PyFileConfigLoader('nbgrader_config.py', path=str(root)).load_config()


_APIS = {}


def nbgrader_api(root):
    "An in-process nbgrader API for the course directory `root` (one per process)."
    root = Path(root).resolve()
    if root not in _APIS:
        import warnings
        from sqlalchemy.exc import SAWarning
        warnings.filterwarnings('ignore', category=SAWarning)      # nbgrader's own session warnings: harmless
        import nbgrader.api
        from nbgrader.apps import NbGraderAPI
        from nbgrader.coursedir import CourseDirectory
        nbgrader.api.get_alembic_version = _fast_alembic_version
        _serialise_gradebook(root)
        cfg = load_config(root)
        _APIS[root] = NbGraderAPI(coursedir=CourseDirectory(config=cfg), config=cfg)
    return _APIS[root]


def gradebook(root):
    from nbgrader.api import Gradebook
    api = nbgrader_api(root)
    return Gradebook(api.coursedir.db_url, api.coursedir.course_id)


def _check(result: dict, what: str):
    if not result.get('success'):
        raise RuntimeError(f"{what} failed:\n{result.get('log', '')}\n{result.get('error', '')}")
    return result


def _atomic_write(path: Path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
    tmp.write_text(text, encoding='utf-8')
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- init

def assignments(root) -> list:
    "The course's assignments (one per module notebook), in order."
    return sorted(p.name for p in (Path(root) / 'source').iterdir() if p.is_dir()) \
        if (Path(root) / 'source').is_dir() else []


def source_notebook(root, assignment) -> Path:
    found = sorted((Path(root) / 'source' / assignment).glob('*.ipynb'))
    if len(found) != 1:
        raise FileNotFoundError(f'expected one notebook in {Path(root) / "source" / assignment}, found {len(found)}')
    return found[0]


def write_config(root, timeout=None):
    "Copy the template nbgrader_config.py into `root` (kept if it exists); `timeout` overrides the per-cell limit."
    root = Path(root)
    cfg = root / 'nbgrader_config.py'
    if not cfg.exists():
        shutil.copy(TEMPLATE, cfg)
    if timeout is not None:
        text = cfg.read_text()
        text = re.sub(r'^c\.Execute\.timeout = .*$', f'c.Execute.timeout = {int(timeout)}', text, flags=re.MULTILINE)
        cfg.write_text(text)
    return cfg


def add_assignment(root, notebook) -> str:
    "Copy an instructor notebook into source/<stem>/ and generate its student version (release/) and gradebook entry."
    notebook = Path(notebook)
    assignment = notebook.stem
    src = Path(root) / 'source' / assignment
    src.mkdir(parents=True, exist_ok=True)
    shutil.copy(notebook, src / notebook.name)
    _check(nbgrader_api(root).generate_assignment(assignment, force=True, create=True),
           f'generate_assignment {assignment}')
    return assignment


def init(root, nbs=ROOT / 'nbs', timeout=None, kit=True) -> dict:
    """A course directory at `root`: nbgrader_config.py (from course/), the SQLite gradebook, one assignment per
    module notebook of `nbs` (source/ and release/), and the student kit (kit/ and tinytorch-kit.zip)."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    write_config(root, timeout)
    done = [add_assignment(root, nb) for nb in course_notebooks(Path(nbs))]
    out = {'root': str(root), 'assignments': done}
    if kit:
        from .release import build_kit
        released = [root / 'release' / a / source_notebook(root, a).name for a in done]
        build_kit(released, root / 'kit')
        archive = shutil.make_archive(str(root / 'tinytorch-kit'), 'zip', root, 'kit')
        out.update(kit=str(root / 'kit'), zip=archive)
    return out


# ---------------------------------------------------------------------------------------------- collect

# What a student id cannot hold: it is a folder name and part of nbgrader's glob patterns (control characters,
# path separators, glob's wildcards, characters other systems forbid in file names).
_NOT_IN_ID = re.compile(r'[\x00-\x1f\x7f/\\*?\[\]<>:"|]+')


def student_id(folder_name: str, id_regex=None) -> str:
    """A student id nbgrader can use in paths and patterns, from an LMS folder name: the first group of `id_regex`
    (or its match), else the folder name less Moodle's `_assignsubmission_file_`; Unicode normalised (NFC, so
    the same name typed two ways is one id), letters of every script kept (`Zoë Ünal-Ørsted 李`), only what a
    path or a pattern cannot hold replaced by `_`."""
    name = re.sub(r'_assignsubmission_\w*$', '', folder_name)      # Moodle's folder suffix
    if id_regex:
        m = re.search(id_regex, folder_name)
        if m:
            name = m.group(1) if m.groups() else m.group(0)
    sid = _NOT_IN_ID.sub('_', unicodedata.normalize('NFC', name))
    sid = re.sub(r'\s+', ' ', sid).strip(' _.-')
    return sid or 'student'


def _candidates(folder: Path):
    "(name, bytes, mtime) of every .ipynb in a student's folder, also inside zip files."
    for p in sorted(folder.rglob('*')):
        parts = set(p.relative_to(folder).parts)
        if parts & {'.ipynb_checkpoints', '__MACOSX'} or p.name.startswith('.') or not p.is_file():
            continue
        if p.suffix == '.ipynb':
            yield str(p.relative_to(folder)), p.read_bytes(), p.stat().st_mtime
        elif p.suffix == '.zip':
            try:
                with zipfile.ZipFile(p) as z:
                    for info in z.infolist():
                        inner = Path(info.filename)
                        if inner.suffix == '.ipynb' and not {'.ipynb_checkpoints', '__MACOSX'} & set(inner.parts):
                            yield f'{p.name}/{info.filename}', z.read(info), time.mktime(info.date_time + (0, 0, -1))
            except zipfile.BadZipFile:
                continue


def inspect_file(data: bytes, module: str):
    "(notebook or None, problem or None, output bytes) for a submitted file."
    if not data.strip():
        return None, 'the file is empty', 0
    try:
        raw = json.loads(data.decode('utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f'the file is not valid JSON ({str(e)[:80]})', 0
    try:
        nb = nbformat.reads(json.dumps(raw), as_version=4)
        nbformat.validate(nb)
    except Exception as e:
        return None, f'the file is not a Jupyter notebook ({str(e).splitlines()[0][:80]})', 0
    outputs = sum(len(json.dumps(c.get('outputs', []))) for c in nb.cells if c.cell_type == 'code')
    other = module_name(nb)
    if other != module:
        return None, f'this is the notebook of another module ({other or "unknown"}), not {module}', outputs
    return nb, None, outputs


def collect(root, assignment, folder, id_regex=None) -> dict:
    """Copy an LMS export (one folder per student) into submitted/<student>/<assignment>/: for each student the
    notebook of this module (outputs removed), chosen by content. Files that cannot be graded (empty, not JSON,
    another module's notebook, none at all) are recorded with the reason, and scored 0 by `autograde`.
    Returns {student: {'file', 'gradable', 'flags'}}; also kept in reports/<assignment>.collect.json."""
    root, folder = Path(root).resolve(), Path(folder)
    src = source_notebook(root, assignment)
    module = module_name(nbformat.read(src, as_version=4))
    record_path = root / 'reports' / f'{assignment}.collect.json'
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    taken = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(('.', '__'))):
        sid = student_id(sub.name, id_regex)
        flags = []
        if sid in taken:
            n = 2
            while f'{sid}_{n}' in taken:
                n += 1
            flags.append(f'the folder {sub.name!r} gives the same id as {taken[sid]!r}: graded as {sid}_{n}')
            sid = f'{sid}_{n}'
        taken[sid] = sub.name
        good, bad = [], []
        for name, data, mtime in _candidates(sub):
            nb, problem, outputs = inspect_file(data, module)
            (good if nb is not None else bad).append((name, nb, problem, outputs, mtime))
        chosen = None
        if good:
            good.sort(key=lambda g: (Path(g[0]).name != src.name, -g[4]))
            chosen = good[0]
            if len(good) > 1:
                flags.append(f'several notebooks of {module}: graded {chosen[0]} (others: '
                             f'{", ".join(g[0] for g in good[1:])})')
            if chosen[3] > BIG_OUTPUTS:
                flags.append(f'the notebook held {chosen[3] / 1e6:.0f} MB of outputs: removed before grading')
        elif bad:
            bad.sort(key=lambda b: Path(b[0]).name != src.name)
            flags.append(f'{bad[0][0]}: {bad[0][2]}: scored 0')
        else:
            flags.append('no notebook in the submission: scored 0')
        dest = root / 'submitted' / sid / assignment
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        if chosen:
            nb = chosen[1]
            for c in nb.cells:
                if c.cell_type == 'code':
                    c.outputs, c.execution_count = [], None
            nbformat.write(nb, dest / src.name)
        record[sid] = {'folder': sub.name, 'file': chosen[0] if chosen else None, 'gradable': bool(chosen),
                       'flags': flags}
    _atomic_write(record_path, json.dumps(record, indent=1, sort_keys=True))
    return {sid: record[sid] for sid in taken}


# ---------------------------------------------------------------------------------------------- autograde

def reference_package(threads: int = 1) -> str:
    """The `tinytorch` a grading kernel imports (coursetools.autograding.grading_env): it must be the reference
    package, never a student kit. Returns its folder; raises if it is a kit or missing."""
    from .autograding import grading_env
    code = ('import pathlib, re, tinytorch; p = pathlib.Path(tinytorch.__file__).parent; print(p); '
            "print(' '.join(f.name for f in sorted(p.glob('*.py')) "
            "if re.search(r'NotImplementedError\\(.Exercise \\d', f.read_text())))")
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run([sys.executable, '-c', code], cwd=tmp, env=grading_env(threads), capture_output=True,
                           text=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RuntimeError(f'the grading environment cannot import tinytorch:\n{r.stderr[-2000:]}')
    path, stubs = (r.stdout.splitlines() + ['', ''])[:2]
    if stubs.strip():
        raise RuntimeError(f'the grading environment imports a student kit ({path}: stubs in {stubs}); grade '
                           "with the reference package (the course repository's .venv)")
    return path


def preflight(log=print) -> bool:
    """Before grading anything: True when grading kernels can run in the sandbox (coursetools/sandbox.py); False
    when the instructor opted out (UNSAFE_NO_SANDBOX=1, every submission is then flagged); raises
    SandboxUnavailable, saying why and how to install bubblewrap, otherwise."""
    from . import sandbox
    if sandbox.disabled():
        log(f'{sandbox.OPT_OUT}=1: grading WITHOUT a sandbox; every submission is flagged "graded without a sandbox"')
        return False
    why = sandbox.check()
    if why:
        raise sandbox.SandboxUnavailable(
            f'not grading: {why}.\nEvery grading kernel runs in a bubblewrap sandbox, so that a submission cannot '
            f'read the hidden tests or change the gradebook. To grade anyway, without it (every submission is '
            f'flagged "graded without a sandbox"), set {sandbox.OPT_OUT}=1.')
    return True


_WORKER = {}


def _worker_init(root):
    _WORKER['api'] = nbgrader_api(root)


def _grade_one(assignment, student):
    start, t0 = time.time(), time.perf_counter()
    r = _WORKER['api'].autograde(assignment, student, force=True, create=True)
    return {'student': student, 'seconds': round(time.perf_counter() - t0, 2), 'success': bool(r['success']),
            'start': start, 'end': time.time(), 'error': r.get('error') or '', 'log': r.get('log') or ''}


def _submitted(root, assignment) -> dict:
    "{student: gradable} for the folders in submitted/<student>/<assignment>/ (collect makes one per student)."
    return {d.parent.name: any(d.glob('*.ipynb'))
            for d in sorted(Path(root, 'submitted').glob(f'*/{assignment}')) if d.is_dir()}


def _zero(gb, assignment, student):
    "A submission scored 0 on every graded cell (nothing to grade), as nbgrader scores a missing notebook."
    gb.update_or_create_student(student)
    sub = gb.update_or_create_submission(assignment, student)
    for nb in sub.notebooks:
        for g in nb.grades:
            g.auto_score, g.needs_manual_grade = 0, False
    gb.db.commit()
    return sub


def _load_cells(gb, sub) -> list:
    """The course cells of a submission's grades and comments, loaded into the gradebook's session in one query
    (`grade.name` then reads the loaded cell instead of querying the gradebook once per grade). Keep the list
    referenced while using them."""
    from nbgrader.api import BaseCell
    ids = {x.cell_id for nb in sub.notebooks for x in list(nb.grades) + list(nb.comments)}
    return gb.db.query(BaseCell).filter(BaseCell.id.in_(ids)).all() if ids else []


def _scores(gb, submission_id: str, notebook_ids: list):
    """({graded cell: score}, max score) of a submission as the gradebook computes them (nbgrader's `Grade.score`,
    `SubmittedAssignment.max_score`), in two queries."""
    from nbgrader.api import BaseCell, Grade, SubmittedAssignment
    rows = gb.db.query(BaseCell.name, Grade.score).select_from(Grade).join(BaseCell, Grade.cell_id == BaseCell.id) \
        .filter(Grade.notebook_id.in_(notebook_ids)).all() if notebook_ids else []
    top = gb.db.query(SubmittedAssignment.max_score).filter(SubmittedAssignment.id == submission_id).scalar()
    return {name: float(score) for name, score in rows}, float(top or 0.0)


def _replace_folder(dest: Path, files: dict):
    "Write `files` ({relative path: bytes}) as the folder `dest`, replacing what was there (swapped in whole)."
    tmp = dest.with_name(f'.{dest.name}.tmp{os.getpid()}')
    if tmp.exists():
        shutil.rmtree(tmp)
    for name, data in files.items():
        p = tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    tmp.mkdir(parents=True, exist_ok=True)
    old = dest.with_name(f'.{dest.name}.old{os.getpid()}')
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def autograde(root, assignment, students=None, jobs=None, scheduler=None, regrade=False, log=print,
              progress=None) -> dict:
    """Autograde every submission of `assignment` (or only `students`) on Dask (coursetools/dask_grading.py): a
    local cluster of `jobs` worker processes (default: all cores), or the cluster whose scheduler is at
    `scheduler`; `jobs=0` grades in this process, one at a time. Only this process writes the gradebook, each
    result as it arrives, so an interrupted batch keeps what was graded; running again grades the rest
    (submissions already graded and unchanged are kept unless `regrade`). Every submission ends up in the
    gradebook with a score on every graded cell: graded, or 0 with the reason. Returns the report (also written
    to reports/<assignment>.json): per student score, seconds, worker and flags."""
    from . import dask_grading
    root = Path(root).resolve()
    jobs = (os.cpu_count() or 1) if jobs is None else jobs      # 0: in this process, one at a time
    src = source_notebook(root, assignment)
    todo = _submitted(root, assignment)
    if students is not None:
        todo = {s: g for s, g in todo.items() if s in set(students)}
    record_path = root / 'reports' / f'{assignment}.collect.json'
    collected = json.loads(record_path.read_text()) if record_path.exists() else {}
    report_path = root / 'reports' / f'{assignment}.json'
    report = json.loads(report_path.read_text()) if report_path.exists() else {'submissions': {}}
    payloads = {s: dask_grading.student_payload(root, assignment, s) for s in todo}
    before = report['submissions']         # graded (or failed and flagged) in an earlier run, and unchanged since
    kept = [s for s in todo if not regrade and before.get(s, {}).get('digest') == payloads[s]['digest']
            and (not before[s]['graded'] or (root / 'autograded' / s / assignment).is_dir())]
    failed = [s for s in kept if todo[s] and not before[s]['graded']]
    gradable = [s for s, ok in todo.items() if ok and s not in kept]
    # a local cluster starts now, in the background (its workers import nbgrader), while this process checks
    # the grading environment and reads the assignment
    local = dask_grading.LocalStart(min(jobs, len(gradable))) if gradable and jobs and not scheduler else None
    try:
        ref = reference_package()
        from . import sandbox
        # The opt-out is read here, once, and travels with every task (common['unsafe']): a worker grades in the
        # sandbox or not as this process decided, whatever its own environment says.
        unsafe = sandbox.disabled()
        if scheduler:         # the kernels run on the cluster's machines: each worker checks its own bwrap
            sandboxed = not unsafe
            if unsafe:
                preflight(log)
        else:
            sandboxed = preflight(log)
            if sandboxed:
                dask_grading._REFERENCE['sandbox'] = True    # checked just now: this process grades when jobs=0
        logdir = root / 'reports' / 'logs' / assignment
        logdir.mkdir(parents=True, exist_ok=True)
        api = nbgrader_api(root)
        with gradebook(root) as gb:
            common = dask_grading.common_payload(root, assignment, gb, api.coursedir.course_id, unsafe=unsafe)
            for s in todo:
                payloads[s]['extension'] = dask_grading.extension(gb, assignment, s)
    except BaseException:
        if local is not None:
            local.close()
        raise
    where = f'the Dask cluster at {scheduler}' if scheduler else \
        'this process' if jobs == 0 else f'{min(jobs, max(len(gradable), 1))} local Dask worker processes'
    log(f'autograding {len(gradable)} submissions of {assignment} on {where}; tinytorch = {ref}'
        + (f' ({len(kept)} graded before and unchanged: kept; --regrade grades them again)' if kept else '')
        + (f"; kept as failed: {', '.join(failed)} (--regrade --student ID grades one again)" if failed else '')
        + ('; each kernel in a bubblewrap sandbox' if sandboxed else '; WITHOUT a sandbox'))
    results, saved = {}, [time.monotonic()]

    def save(force=False):
        if force or time.monotonic() - saved[0] > 2:
            _atomic_write(report_path, json.dumps(report, indent=1, sort_keys=True))
            saved[0] = time.monotonic()

    def record(r, sid=None) -> str:
        "One result into autograded/, the gradebook and the report (r None: nothing gradable, scored 0)."
        sid = sid or r['student']
        flags = list(collected.get(sid, {}).get('flags', []))
        with gradebook(root) as gb:
            if r is None:
                if not flags:
                    flags.append('no notebook in the submission: scored 0')
                sub = _zero(gb, assignment, sid)
            else:
                results[sid] = r
                (logdir / f'{sid}.log').write_text(r['log'] + r['error'])
                if r['files']:
                    _replace_folder(root / 'autograded' / sid / assignment, r['files'])
                gb.update_or_create_student(sid)
                sub = gb.update_or_create_submission(assignment, sid,
                                                     **({'timestamp': r['timestamp']} if r['timestamp'] else {}))
                if r['success'] and src.name in r['files']:
                    cells = _load_cells(gb, sub)             # (kept referenced: the session holds them weakly)
                    for nb in sub.notebooks:                 # what nbgrader's SaveAutoGrades wrote on the worker
                        got = r['notebooks'].get(nb.notebook.name, {})
                        for g in nb.grades:
                            if g.name in got.get('grades', {}):
                                g.auto_score = got['grades'][g.name][0]
                                g.needs_manual_grade = g.manual_score is not None or g.auto_score is None
                        for c in nb.comments:
                            if c.name in got.get('comments', {}):
                                c.auto_comment = got['comments'][c.name]
                        if got:
                            nb.late_submission_penalty = got.get('late_submission_penalty')
                    got = r.get('flags', {}).get(src.name)            # the worker read them from the notebook
                    if got is None:
                        got = json.loads(r['files'][src.name]).get('metadata', {}).get('tinytorch', {}).get('flags', [])
                    flags += got
                    if r.get('unsafe') and sandbox.UNSAFE_FLAG not in flags:
                        flags.append(sandbox.UNSAFE_FLAG)    # the worker said so, whatever its notebook says
                else:
                    if r.get('unsafe') and r.get('start'):   # it may have run some of the submission's code
                        flags.append(sandbox.UNSAFE_FLAG)
                    last = (r['error'] or r['log']).strip().splitlines()[-1:] or ['']
                    flags.append(r.get('failure') or f'grading failed ({last[0][:120]})')
                    flags[-1] += f': scored 0, see reports/logs/{assignment}/{sid}.log'
                    for nb in sub.notebooks:                 # a failed run leaves no score: make it 0
                        for g in nb.grades:
                            if g.auto_score is None and g.manual_score is None:
                                g.auto_score, g.needs_manual_grade = 0, False
            for nb in sub.notebooks:
                nb.flagged = bool(flags)
            ids = (sub.id, [nb.id for nb in sub.notebooks])
            gb.db.commit()
            scores, max_score = _scores(gb, *ids)
            report['submissions'][sid] = {
                'score': sum(scores.values()), 'max_score': max_score, 'cells': scores,
                'seconds': r['seconds'] if r else 0.0, 'graded': bool(r and r['success']), 'flags': flags,
                'worker': r['worker'] if r else None, 'digest': payloads[sid]['digest']}
        save()
        if r is None:
            return None
        return f"  {sid}: {r['seconds']:.1f} s" + (f" on {r['worker']}" if r['worker'] else '') + \
            ('' if r['success'] else f' ({flags[-1]})')

    start = time.perf_counter()
    info = {}
    try:
        for sid, ok in todo.items():
            if not ok and sid not in kept:
                record(None, sid)
        jobs_list = [payloads[s] for s in gradable]
        if jobs_list and jobs == 0 and not scheduler:
            guard = dask_grading.Recording().install()
            try:
                for job in jobs_list:
                    r = dask_grading.grade_submission(common, job)
                    with guard.record():
                        log(record(r))
            finally:
                guard.uninstall()
        elif jobs_list:
            # a local cluster's workers trust this process's checks of the reference package and the sandbox
            # (same machine, interpreter and environment); a scheduler's workers check for themselves
            info = dask_grading.run(common, jobs_list, record, scheduler=scheduler,
                                    workers=min(jobs, len(jobs_list)) or 1, log=log, progress=progress, local=local,
                                    checked=None if scheduler else ref)
    except KeyboardInterrupt:
        save(force=True)
        log(f'interrupted: {len(results)} submissions graded and recorded in this run; run the same command again '
            f'to grade the other {len(gradable) - len(results)}')
        raise
    finally:
        if local is not None:
            local.close()                    # (run closes it; here when nothing reached run)
    wall = time.perf_counter() - start
    first = min((r['start'] for r in results.values() if r['start']), default=None)
    last = max((r['end'] for r in results.values() if r['end']), default=None)
    grading = last - first if first is not None else 0.0
    ran = [r for r in results.values() if r['start']]
    report.update(assignment=assignment, notebook=src.stem, jobs=jobs, scheduler=scheduler or info.get('scheduler'),
                  sandbox=sandboxed,
                  workers=info.get('workers', 0), wall_seconds=round(wall, 2), grading_seconds=round(grading, 2),
                  first_start=first, last_end=last,
                  graded=len(results), kept=len(kept), seconds_per_submission=round(
                      sum(r['seconds'] for r in ran) / len(ran), 2) if ran else 0.0)
    save(force=True)
    for sid in todo:
        s = report['submissions'][sid]
        note = f"  flagged: {'; '.join(s['flags'])}" if s['flags'] else ''
        log(f"{sid:>24}  {s['score']:g}/{s['max_score']:g}  {s['seconds']:.1f} s{note}")
    engine = f"{info.get('workers', 0)} Dask workers of {scheduler}" if scheduler else \
        f'{max(jobs, 1)} processes' + (' (Dask)' if jobs else '')
    log(f'{len(results)} graded in {wall:.1f} s with {engine} ({grading:.1f} s from the first '
        f"submission's start to the last one's end; {report['seconds_per_submission']:.1f} s per submission; "
        f'{sum(1 for s in todo if not todo[s])} not gradable; {len(kept)} kept from before)')
    return report


# ---------------------------------------------------------------------------------------------- feedback

FEEDBACK_PAGE = '''<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{assignment}: feedback</title></head>
<body><h1>{assignment}</h1><p>Your submission could not be graded, so it scored 0 of {max_score:g} points:</p>
<ul>{reasons}</ul><p>Ask your instructor if this is a mistake.</p></body></html>
'''


def feedback(root, assignment, log=print) -> dict:
    "HTML feedback for every student: feedback/<student>/<assignment>/<notebook>.html (hidden tests kept hidden)."
    root = Path(root).resolve()
    if any((root / 'autograded').glob(f'*/{assignment}')):     # nbgrader fails when it has no notebook to render
        _check(nbgrader_api(root).generate_feedback(assignment, force=True), f'generate_feedback {assignment}')
    else:
        log(f"no autograded submission of {assignment} yet: feedback only for those that could not be graded")
    src = source_notebook(root, assignment)
    report_path = root / 'reports' / f'{assignment}.json'
    report = json.loads(report_path.read_text()) if report_path.exists() else {'submissions': {}}
    pages = {}
    for sid, s in report['submissions'].items():
        page = root / 'feedback' / sid / assignment / f'{src.stem}.html'
        if not s['graded']:
            reasons = ''.join(f'<li>{html.escape(f)}</li>' for f in s['flags'])
            _atomic_write(page, FEEDBACK_PAGE.format(assignment=html.escape(assignment), max_score=s['max_score'],
                                                     reasons=reasons))
        if page.exists():
            pages[sid] = str(page)
    log(f'feedback for {len(pages)} students in {root / "feedback"}')
    return pages


# ---------------------------------------------------------------------------------------------- grades

def grades(root, out=None, log=print) -> Path:
    """Write the grades CSV: one row per student, one column per exercise (the points of its graded cells
    `test_NN_K_...`), one for the checks of the module as a whole (`NN.module`: cells `test_NN_name`), a total
    per module, the total, and the flags. Written atomically."""
    root = Path(root).resolve()
    out = Path(out) if out else root / 'grades.csv'
    columns, modules = [], []
    with gradebook(root) as gb:
        known = {a.name for a in gb.assignments}
        students = sorted(s.id for s in gb.students)
        rows = {s: {'student': s} for s in students}
        flags = {s: [] for s in students}
        for a in assignments(root):
            if a not in known:
                continue
            src = nbformat.read(source_notebook(root, a), as_version=4)
            cells = graded_cells(src)
            module = module_checks_label(a[:2])     # the checks of the module as a whole, after its exercises
            key = {c['grade_id']: c['exercise'] or module for c in cells}
            cols = list(dict.fromkeys([c['exercise'] for c in cells if c['exercise']] +
                                      [module for c in cells if not c['exercise']]))
            columns += cols + [a]
            modules.append(a)
            report_path = root / 'reports' / f'{a}.json'
            report = json.loads(report_path.read_text()) if report_path.exists() else {'submissions': {}}
            for s in students:
                row = rows[s]
                for c in cols:
                    row[c] = 0.0
                try:
                    sub = gb.find_submission(a, s)
                except Exception:
                    row[a] = 0.0
                    continue
                for nb in sub.notebooks:
                    for g in nb.grades:
                        row[key.get(g.name, module)] = row.get(key.get(g.name, module), 0.0) + float(g.score)
                row[a] = sum(row[c] for c in cols)
                flags[s] += [f'{a}: {f}' for f in report['submissions'].get(s, {}).get('flags', [])]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=['student'] + columns + ['total', 'flags'], lineterminator='\n')
    w.writeheader()
    for s in students:
        row = rows[s]
        row['total'] = sum(row.get(a, 0.0) for a in modules)
        row['flags'] = ' | '.join(flags[s])
        w.writerow({k: (f'{v:g}' if isinstance(v, float) else v) for k, v in row.items()})
    _atomic_write(out, buf.getvalue())
    log(f'wrote {out}: {len(students)} students, {len(columns)} columns')
    return out


# ---------------------------------------------------------------------------------------------- figures

def _pool_autograde(root, assignment, students, jobs) -> list:
    """The former autograding pool (before Dask), kept as the baseline of `bench`: `jobs` spawned processes, each
    running nbgrader's autograde in place against the course's gradebook (sessions serialised by a file lock).
    Returns the per-submission results."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    reference_package()
    with ProcessPoolExecutor(max_workers=min(jobs, len(students)), initializer=_worker_init, initargs=(str(root),),
                             mp_context=multiprocessing.get_context('spawn')) as pool:
        results = list(pool.map(_grade_one, [assignment] * len(students), students))
    with gradebook(root) as gb:
        for r in results:
            r['score'] = float(gb.find_submission(assignment, r['student']).score)
    return results


def _cpu_seconds():
    """(CPU seconds of this process, of its ended and waited-for child processes): the pool's workers and the
    Dask workers are counted when they end; the grading kernels are not (bubblewrap's process namespace)."""
    import resource
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, children.ru_utime + children.ru_stime


def bench(modules=None, students=4, jobs=(1, 2), nbs=ROOT / 'nbs', engines=('dask',), repeat=1, log=print,
          sandbox_rounds=0) -> dict:
    """Grading figures: for each module, `students` copies of a solved submission autograded with each of `jobs`
    processes, by each engine: 'dask' (`autograde`: a local Dask cluster, the coordinator writing the gradebook)
    and 'pool' (the former process pool, `_pool_autograde`). Wall time is the whole command's, cluster or pool
    start included. With `repeat` > 1 the engines alternate that many times and each keeps its fastest run (the
    least disturbed by other load). Returns {module: {engine: {jobs: {'wall', 'grading', 'per_submission',
    'per_minute', 'runs', 'start' (s before the first submission starts), 'end' (s after the last one ends),
    'cpu_coordinator', 'cpu_processes' (CPU s of this process and of its other processes, kernels not counted),
    'load' (1-minute load average at the start)}}}}. `sandbox_rounds` > 0: instead, the cost of the sandbox: that many rounds, each
    grading the copies on Dask with the sandbox and without (UNSAFE_NO_SANDBOX=1), in alternating order, on
    `jobs[0]` processes; {module: {'sandbox': [...], 'none': [...], 'overhead'}}."""
    if sandbox_rounds:
        return _bench_sandbox(modules, students, jobs[0], nbs, log, sandbox_rounds)
    from .notebooks import fill_solutions
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / 'course'
        notebooks = [p for p in course_notebooks(Path(nbs)) if not modules or p.stem[:2] in modules or p.stem in modules]
        init(root, nbs=nbs, kit=False)
        for path in notebooks:
            a = path.stem
            solved = fill_solutions(nbformat.read(root / 'release' / a / path.name, as_version=4),
                                    nbformat.read(path, as_version=4))
            names = [f's{i:02d}' for i in range(students)]
            for sid in names:
                dest = root / 'submitted' / sid / a
                dest.mkdir(parents=True, exist_ok=True)
                nbformat.write(solved, dest / path.name)
            figures[a] = {e: {} for e in engines}
            order = [(j, rep, e) for j in jobs for rep in range(repeat) for e in engines]   # engines alternated:
            for j, rep, engine in order:                                                 # load changes hit both
                load = os.getloadavg()[0]
                cpu0 = _cpu_seconds()
                t0, w0 = time.perf_counter(), time.time()
                if engine == 'pool':
                    results = _pool_autograde(root, a, names, j)
                    wall, w1 = time.perf_counter() - t0, time.time()
                    with gradebook(root) as gb:
                        full = all(r['score'] == float(gb.find_submission(a, r['student']).max_score)
                                   for r in results)
                    first, last = min(r['start'] for r in results), max(r['end'] for r in results)
                    per = sum(r['seconds'] for r in results) / len(results)
                else:
                    r = autograde(root, a, jobs=j, regrade=True, log=lambda *_: None, progress=False)
                    wall, w1 = time.perf_counter() - t0, time.time()
                    full = all(s['score'] == s['max_score'] for s in r['submissions'].values())
                    first, last, per = r['first_start'], r['last_end'], r['seconds_per_submission']
                cpu = [round(b - a, 2) for a, b in zip(cpu0, _cpu_seconds())]
                grading = last - first
                fig = {'wall': round(wall, 2), 'grading': round(grading, 2), 'per_submission': round(per, 2),
                       'per_minute': round(60 * students / wall, 2), 'full_marks': full,
                       'start': round(first - w0, 2), 'end': round(w1 - last, 2), 'cpu_coordinator': cpu[0],
                       'cpu_processes': cpu[1], 'load': round(load, 2)}
                runs = figures[a][engine].get(j, {}).get('runs', []) + [round(wall, 2)]
                if j not in figures[a][engine] or wall < figures[a][engine][j]['wall']:
                    figures[a][engine][j] = fig
                figures[a][engine][j]['runs'] = runs
                log(f"{a}: {students} submissions, {engine}, {j} process(es), run {rep + 1}: {wall:.1f} s wall "
                    f"({fig['per_minute']:.1f} submissions/min; {grading:.1f} s grading, {fig['start']:.1f} s before "
                    f"the first submission starts, {fig['end']:.1f} s after the last one ends), "
                    f"{per:.2f} s per submission; CPU s: {cpu[0]:.1f} this process, {cpu[1]:.1f} its other "
                    f"processes (kernels not counted); load {load:.1f}" + ('' if full else ' (NOT full marks!)'))
                if 'pool' in engines and 'dask' in engines and rep == repeat - 1 and engine == engines[-1]:
                    d, p = figures[a]['dask'][j], figures[a]['pool'][j]
                    median = statistics.median(d['runs']) / statistics.median(p['runs']) - 1
                    log(f"{a}: Dask against the former pool with {j} process(es): {100 * (d['wall'] / p['wall'] - 1):+.1f}% "
                        f"wall, {100 * (d['grading'] / p['grading'] - 1):+.1f}% grading (fastest runs); "
                        f"{100 * median:+.1f}% wall by the median of the runs")
            for engine in engines:
                if len(jobs) > 1:
                    base = figures[a][engine][jobs[0]]
                    for j in jobs[1:]:
                        log(f"{a}: {engine} speed-up with {j} processes: {base['wall'] / figures[a][engine][j]['wall']:.2f}x "
                            f"wall, {base['grading'] / figures[a][engine][j]['grading']:.2f}x grading")
    return figures


def _bench_sandbox(modules, students, jobs, nbs, log, rounds) -> dict:
    from .notebooks import fill_solutions
    from .sandbox import OPT_OUT
    figures = {}
    saved = os.environ.get(OPT_OUT)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / 'course'
        notebooks = [p for p in course_notebooks(Path(nbs)) if not modules or p.stem[:2] in modules or p.stem in modules]
        init(root, nbs=nbs, kit=False)
        try:
            for path in notebooks:
                a = path.stem
                solved = fill_solutions(nbformat.read(root / 'release' / a / path.name, as_version=4),
                                        nbformat.read(path, as_version=4))
                for i in range(students):
                    dest = root / 'submitted' / f's{i:02d}' / a
                    dest.mkdir(parents=True, exist_ok=True)
                    nbformat.write(solved, dest / path.name)
                seconds = {'sandbox': [], 'none': []}
                for k in range(rounds):
                    for mode in (('sandbox', 'none') if k % 2 == 0 else ('none', 'sandbox')):
                        if mode == 'none':
                            os.environ[OPT_OUT] = '1'
                        else:
                            os.environ.pop(OPT_OUT, None)
                        r = autograde(root, a, jobs=jobs, regrade=True, log=lambda *_: None, progress=False)
                        assert all(s['score'] == s['max_score'] for s in r['submissions'].values()), r
                        seconds[mode] += [s['seconds'] for s in r['submissions'].values()]
                mean = {m: sum(v) / len(v) for m, v in seconds.items()}
                overhead = mean['sandbox'] / mean['none'] - 1
                figures[a] = {'sandbox': seconds['sandbox'], 'none': seconds['none'], 'mean': mean,
                              'overhead': overhead, 'jobs': jobs, 'rounds': rounds, 'students': students}
                log(f"{a}: {mean['sandbox']:.2f} s per submission in the sandbox, {mean['none']:.2f} s without "
                    f"({overhead * 100:+.1f}%; {rounds} alternating rounds of {students} submissions, "
                    f"{jobs} process(es))")
        finally:
            if saved is None:
                os.environ.pop(OPT_OUT, None)
            else:
                os.environ[OPT_OUT] = saved
    return figures
