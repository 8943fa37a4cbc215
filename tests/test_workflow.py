"""The student's and the instructor's workflow, end to end (issue 8).

Student: the kit from `make release`, filled in as a student who solved everything would (solution cells from
the instructor notebooks), `tinytorch export`, `tinytorch check` -> every exercise passed, autograde -> full
marks; the untouched kit -> 0, no crash. The student's package shadows the reference one through PYTHONPATH,
as an editable install in the student's own venv would (no venv is created here).

Instructor: a course directory (`python -m coursetools init`), an LMS export with one folder per student and
every kind of bad submission, collect, parallel autograde, feedback, grades CSV, the formgrader.

The autograding half of the student path (the solved student version gets full marks, the untouched one 0, for
every module) is tests/test_course.py::test_nbgrader_round_trip. The bad submissions are graded in one batch,
in one test (xdist_group does not hold tests together under pytest 9 + pytest-xdist 3.8, so a batch shared by
several tests could be graded once per worker).
"""
import copy
import csv
import json
import os
import re
import shlex
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT
from coursetools import course
from coursetools.notebooks import (HIDDEN, SOLUTION, course_notebooks, exercise_titles, fill_solutions,
                                   graded_cells, hidden_tests, load, module_name, nbgrader_meta, public_lines,
                                   secret_lines, source)
from coursetools.release import kit_stubs, release, student_version
from coursetools.student import classify, execute

NOTEBOOKS = course_notebooks(ROOT / 'nbs')
params = pytest.mark.parametrize('path', NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
BIN = Path(sys.executable).parent
TIMEOUT = 10                      # seconds per cell in the test course (the endless loop costs this much)


def tinytorch(kit, *args):
    "Run the student's `tinytorch` command in `kit`, with the kit's package first on the path."
    exe = BIN / 'tinytorch'
    assert exe.exists(), 'the `tinytorch` console script is missing: run `make setup` (pyproject [project.scripts])'
    env = {k: v for k, v in os.environ.items() if k != 'IN_TEST'}
    env['PYTHONPATH'] = str(kit)
    return subprocess.run([str(exe), *args], cwd=kit, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=1800)


def solve(kit, names=None):
    "Fill the solution cells of the kit's notebooks (or only `names`) in from the instructor notebooks."
    for p in course_notebooks(Path(kit) / 'nbs'):
        if names is None or p.stem in names:
            solved = fill_solutions(nbformat.read(p, as_version=4), nbformat.read(ROOT / 'nbs' / p.name, as_version=4))
            nbformat.write(solved, p)


@pytest.fixture(scope='module')
def kit(tmp_path_factory):
    return release(ROOT / 'nbs', tmp_path_factory.mktemp('kit') / 'tinytorch')


@pytest.fixture(scope='module')
def solved_kit(kit, tmp_path_factory):
    d = tmp_path_factory.mktemp('solved') / 'tinytorch'
    shutil.copytree(kit, d)
    solve(d)
    r = tinytorch(d, 'export', '--json')
    assert r.returncode == 0, r.stdout + r.stderr
    return d, json.loads(r.stdout)


# ---------------------------------------------------------------------------------------------- the student

def test_kit_is_a_student_project(kit):
    import tomllib
    cfg = tomllib.loads((kit / 'pyproject.toml').read_text())
    assert cfg['project']['name'] == 'tinytorch'
    assert cfg['project']['scripts']['tinytorch'] == 'coursetools.student:main'
    runtime = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['dependencies']
    assert set(runtime) <= set(cfg['project']['dependencies']), 'the kit must install what the package imports'
    nbdev = cfg['tool']['nbdev']
    assert (nbdev['lib_path'], nbdev['nbs_path']) == ('tinytorch', 'nbs') and 'export_procs' not in nbdev
    assert nbdev['allowed_cell_metadata_keys'] == ['nbgrader', 'deletable', 'editable']
    assert [p.name for p in course_notebooks(kit / 'nbs')] == [p.name for p in NOTEBOOKS]
    assert (kit / 'tinytorch' / '__init__.py').read_text() == (ROOT / 'tinytorch' / '__init__.py').read_text()
    assert not (kit / 'coursetools' / 'grading.py').exists() and (kit / 'coursetools' / 'student.py').exists()
    stubs = kit_stubs(kit)
    for path in NOTEBOOKS:
        nb = load(path)
        released = nbformat.read(kit / 'nbs' / path.name, as_version=4)
        assert [c.source for c in released.cells] == \
               [c.source for c in student_version(nbformat.read(path, as_version=4)).cells]
        given = [c for c in released.cells if c.cell_type == 'code' and c.source.strip()
                 and not nbgrader_meta(c).get('solution') and not nbgrader_meta(c).get('grade')]
        assert given and all(nbgrader_meta(c).get('locked') and c.metadata.get('editable') is False for c in given)
        py = f'tinytorch/{module_name(nb)}.py'
        assert set(stubs[py]) == set(exercise_titles(nb)), f'{py} should stub every exercise of {path.name}'
    lines = {l.strip() for p in kit.rglob('*') if p.is_file() for l in p.read_text(errors='replace').splitlines()}
    lines |= {l.strip() for p in course_notebooks(kit / 'nbs') for c in load(p)['cells']
              for l in source(c).splitlines()}
    public = {l.strip() for path in NOTEBOOKS for c in load(path)['cells']      # a line public in some module
              for l in HIDDEN.sub('', SOLUTION.sub('', source(c))).splitlines()}  # is no secret in another
    secrets = {line for path in NOTEBOOKS for line in secret_lines(load(path))} - public
    leaked = sorted(secrets & lines)
    assert not leaked, f'solution or hidden-test lines in the kit: {leaked[:5]}'


def test_student_package_shadows_the_reference(kit):
    code = ('import tinytorch, coursetools; print(tinytorch.__file__); print(coursetools.__file__)\n'
            'import numpy\ntry:\n    tinytorch.tensor.unbroadcast(numpy.ones(3), (1,))\n'
            'except NotImplementedError as e:\n    print(e)')
    r = subprocess.run([sys.executable, '-c', code], env=dict(os.environ, PYTHONPATH=str(kit)), cwd='/',
                       capture_output=True, text=True)
    lines = r.stdout.splitlines()
    assert lines[0] == str(kit / 'tinytorch' / '__init__.py') and lines[1].startswith(str(kit)), r.stderr
    assert lines[2] == 'Exercise 00.1: implement unbroadcast'
    plain = subprocess.run([sys.executable, '-c', 'import tinytorch; print(tinytorch.__file__)'], cwd='/',
                           capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                                 if k != 'PYTHONPATH'})
    assert plain.stdout.strip() == str(ROOT / 'tinytorch' / '__init__.py')


@pytest.mark.slow
def test_check_untouched_kit(kit):
    r = tinytorch(kit, 'check', '00', '--json')
    assert r.returncode == 1, r.stderr
    report = json.loads(r.stdout)
    assert report['score'] == 0 and report['points'] > 0
    statuses = {ex['exercise']: ex['status'] for ex in report['exercises']}
    assert statuses['00.1'] == 'not attempted'
    assert set(statuses.values()) <= {'not attempted', 'blocked', 'untested', 'failed'}
    first = next(t for ex in report['exercises'] for t in ex['tests'])
    assert first['message'] == 'Exercise 00.1 is not done yet'
    from coursetools.student import render
    human = render(report, '00_tensor.ipynb', report['seconds'])
    assert 'Exercise 00.1: implement unbroadcast' in human and 'not attempted' in human and 'visible tests: 0/' in human


def test_solved_kit_exports_the_reference_package(solved_kit):
    kit, report = solved_kit
    assert report['errors'] == [] and report['todo'] == {}
    for path in NOTEBOOKS:
        py = f'{module_name(load(path))}.py'
        assert (kit / 'tinytorch' / py).read_text() == (ROOT / 'tinytorch' / py).read_text(), \
            f'the student-built tinytorch/{py} differs from the reference'


@pytest.mark.slow
@params
def test_check_solved_module(solved_kit, path, monkeypatch):
    "`tinytorch check` on each module of the solved, exported kit: every exercise passed (run in-process here)."
    from coursetools.student import check
    kit, _ = solved_kit
    monkeypatch.setenv('PYTHONPATH', str(kit))         # the kernel imports the student's package
    monkeypatch.delenv('IN_TEST', raising=False)
    report = check(path.stem[:2], root=kit)
    failing = [(t['grade_id'], t['message']) for ex in report['exercises'] for t in ex['tests'] if t['status'] != 'passed']
    assert not failing and report['passed'], failing
    assert report['score'] == report['points'] == sum(g['points'] for g in graded_cells(load(path)))
    assert report['first_error'] is None and not report['hints']


@pytest.mark.slow
def test_unsolved_dependency_names_the_exercise(kit, tmp_path):
    later = [p for p in NOTEBOOKS if p.stem[:2] != '00' and 'tinytorch.tensor' in json.dumps(load(p))]
    if not later:
        pytest.skip('no module imports tinytorch.tensor yet')
    d = tmp_path / 'tinytorch'
    shutil.copytree(kit, d)
    solve(d, {later[0].stem})                     # module N solved, module 00 untouched
    assert tinytorch(d, 'export').returncode == 0
    r = tinytorch(d, 'check', later[0].stem[:2], '--json')
    report = json.loads(r.stdout)
    blocked = [t for ex in report['exercises'] for t in ex['tests'] if t['status'] == 'blocked']
    assert blocked and r.returncode == 1
    assert all(re.match(r'needs Exercise 00\.\d+ of module 00', t['message']) for t in blocked), blocked
    assert '`tinytorch export`' in blocked[0]['message']


QUICK_DEMO = [('--preset', 'tiny'), ('--epochs', '2'), ('--train-size', '512'), ('--out', 'demo'),
              ('--no-progress', None)]


@pytest.mark.slow
def test_demo_trains_on_the_student_package(solved_kit, tmp_path):
    """`make demo` (module 08's reversal-task training), run on the student-built package: its recipe's
    `python -m tinytorch.<module> ...` with the solved kit first on the path (make itself is not run: its
    `setup` prerequisite may reinstall the venv), shortened with the options in QUICK_DEMO that it accepts."""
    m = re.search(r'^demo:.*\n\t(.+)$', (ROOT / 'Makefile').read_text(), re.MULTILINE)
    if not m:
        pytest.skip('no `make demo` yet (module 08, the reversal-task demo): once it exists, this test runs it '
                    'on the student-built package')
    command = shlex.split(m.group(1).replace('$(BIN)/python', sys.executable).replace('$(PYTHON)', sys.executable))
    settings = {}
    while command and re.match(r'^[A-Z_][A-Z0-9_]*=', command[0]):     # VAR=value before the command
        key, value = command.pop(0).split('=', 1)
        settings[key] = value
    kit, _ = solved_kit
    module = command[command.index('-m') + 1] if '-m' in command else None
    if module and module.startswith('tinytorch.') and \
            not (kit / 'tinytorch' / (module.split('.')[1] + '.py')).exists():
        pytest.skip(f'`make demo` runs {module}, which no notebook exports yet: the student\'s package has no '
                    f'{module} (export it from a module notebook so students build it too)')
    probe = tmp_path / 'probe'                    # records which tinytorch the demo imported
    probe.mkdir()
    (probe / 'sitecustomize.py').write_text(
        'import atexit, sys\n'
        'def _record():\n'
        '    m = sys.modules.get("tinytorch")\n'
        '    if m is not None:\n'
        f'        open({str(tmp_path / "imported.txt")!r}, "a").write(m.__file__ + "\\n")\n'
        'atexit.register(_record)\n')
    env = dict(os.environ, **settings, PYTHONPATH=f'{probe}{os.pathsep}{kit}')
    usage = subprocess.run(command + ['--help'], cwd=tmp_path, env=env, capture_output=True, text=True).stdout
    for option, value in QUICK_DEMO:              # a short run: the point is that it trains on the student's code
        if option in usage:
            command += [option] + ([value] if value else [])
    r = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                       timeout=1800)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    imported = set((tmp_path / 'imported.txt').read_text().split())
    assert imported == {str(kit / 'tinytorch' / '__init__.py')}, imported
    assert any((tmp_path / 'demo').iterdir()), 'the demo wrote nothing'
    losses = [float(x) for x in re.findall(r'epoch\s+\d+\s+loss\s+([\d.]+)', r.stdout)]
    if len(losses) >= 2:
        assert losses[-1] < losses[0], f'the training loss did not go down: {losses}'


# ---------------------------------------------------------------------------------------------- the instructor

@pytest.fixture(scope='module')
def course_dir(tmp_path_factory):
    return Path(course.init(tmp_path_factory.mktemp('term') / 'course', nbs=ROOT / 'nbs', timeout=TIMEOUT)['root'])


def _submit(root, assignment, student, nb_path):
    dest = root / 'submitted' / student / assignment
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shutil.copy(nb_path, dest / f'{assignment}.ipynb')


def small_course(tmp, names) -> Path:
    "A course directory with only the module notebooks `names` (no kit): quicker to make."
    nbs = tmp / 'nbs'
    nbs.mkdir()
    for name in names:
        (nbs / f'{name}.ipynb').symlink_to(ROOT / 'nbs' / f'{name}.ipynb')
    return Path(course.init(tmp / 'course', nbs=nbs, timeout=TIMEOUT, kit=False)['root'])


def test_course_directory(course_dir, kit):
    assert (course_dir / 'nbgrader_config.py').read_text().count('coursetools') >= 1
    assert (course_dir / 'gradebook.db').exists()
    assert course.assignments(course_dir) == [p.stem for p in NOTEBOOKS]
    for path in NOTEBOOKS:
        nbgrader_release = nbformat.read(course_dir / 'release' / path.stem / path.name, as_version=4)
        kit_nb = nbformat.read(kit / 'nbs' / path.name, as_version=4)
        assert [(c.source, c.metadata) for c in nbgrader_release.cells] == [(c.source, c.metadata) for c in kit_nb.cells], \
            f'the kit and nbgrader release different student versions of {path.name}'
    with zipfile.ZipFile(course_dir / 'tinytorch-kit.zip') as z:
        assert {'kit/pyproject.toml', 'kit/nbs/00_tensor.ipynb', 'kit/tinytorch/tensor.py'} <= set(z.namelist())


# ---------------------------------------------------------------------------------------------- bad submissions

A = '00_tensor'


def _cell(nb, grade_id):
    return next(i for i, c in enumerate(nb.cells) if nbgrader_meta(c).get('grade_id') == grade_id)


def _add_after(nb, grade_id, code):
    nb.cells.insert(_cell(nb, grade_id) + 1, nbformat.v4.new_code_cell(code))


WRONG_UNBROADCAST = '\nunbroadcast = lambda grad, shape: grad        # wrong: no reduction\n'


def _bad_submissions(root, kit, solved_kit, tmp):
    """An LMS export (one folder per student, named `<case>_<number>_assignsubmission_file_`), one case per
    folder. Returns the export folder."""
    release_nb = nbformat.read(kit / 'nbs' / f'{A}.ipynb', as_version=4)
    solved = nbformat.read(solved_kit / 'nbs' / f'{A}.ipynb', as_version=4)
    export = tmp / 'lms-export'
    cases = {}

    def variant(edit, base=solved):
        nb = copy.deepcopy(base)
        edit(nb)
        return nbformat.writes(nb).encode()

    # a student who zipped their whole kit folder (their own tinytorch/ included)
    buf = tmp / 'kit.zip'
    with zipfile.ZipFile(buf, 'w') as z:
        for p in solved_kit.rglob('*'):
            if p.is_file():
                z.write(p, Path('my-tinytorch') / p.relative_to(solved_kit))
    cases['solved'] = ('tinytorch.zip', buf.read_bytes())

    def scratch(nb):                      # a student's own cell that imports what the course imports: no flag
        _add_after(nb, 'ex00_01_unbroadcast', 'import numpy as np\nfrom fastcore.test import test_eq\n'
                   'scratch = np.arange(3)\nscratch')
    cases['untouched'] = (f'{A}.ipynb', variant(scratch, base=release_nb))

    def tampered(nb):
        nb.cells[_cell(nb, 'test_00_01_unbroadcast')].source = 'pass'
        nb.cells[_cell(nb, 'test_00_01_unbroadcast')].metadata.nbgrader['points'] = 100
        del nb.cells[_cell(nb, 'test_00_03_backward')]
        nb.cells.insert(0, nb.cells.pop(_cell(nb, 'test_00_04_matmul')))
        del nb.cells[_cell(nb, 'ex00_12_gelu')]
        nb.cells[_cell(nb, 'test_00_05_exp')].outputs = [
            nbformat.v4.new_output('stream', name='stdout', text='y' * 50_000_000)]   # a 50 MB file
    cases['tampered'] = (f'{A}.ipynb', variant(tampered))

    def cheat(nb):                        # a wrong solution, and cells that make the tests pass anyway
        nb.cells[_cell(nb, 'ex00_01_unbroadcast')].source += WRONG_UNBROADCAST
        nb.cells.insert(_cell(nb, 'ex00_01_unbroadcast'), nbformat.v4.new_code_cell(
            'def test_eq(a, b): pass\ndef test_close(a, b, eps=1e-5): pass\ndef gradcheck(*args, **kwargs): return True'))
        _add_after(nb, 'ex00_01_unbroadcast', 'import builtins, fastcore.test\n'
                   'fastcore.test.test = lambda *args, **kwargs: None\nbuiltins.isinstance = isinstance')
    cases['cheat'] = (f'{A}.ipynb', variant(cheat))

    cases['crash'] = (f'{A}.ipynb', variant(lambda nb: _add_after(nb, 'test_00_04_matmul', 'import os\nos._exit(1)')))

    def runaway(nb):
        nb.cells.insert(0, nbformat.v4.new_code_cell('import not_a_module_anyone_has'))   # an error at import
        _add_after(nb, 'test_00_01_unbroadcast', 'while True:\n    pass')
        _add_after(nb, 'test_00_03_backward', 'import sys\nsys.exit(3)')
        _add_after(nb, 'test_00_05_exp', "print('x' * 50_000_000)")
    cases['runaway'] = (f'{A}.ipynb', variant(runaway))

    cases['invalid_json'] = (f'{A}.ipynb', b'{"cells": [ this is not json')
    cases['empty'] = (f'{A}.ipynb', b'')
    other = [p for p in NOTEBOOKS if p.stem != A][0]
    cases['other_module'] = (f'{A}.ipynb', (kit / 'nbs' / other.name).read_bytes())
    cases['no_notebook'] = ('notes.txt', b'I could not finish, sorry')
    for i, (case, (name, data)) in enumerate(cases.items()):
        folder = export / f'{case}_{1000 + i}_assignsubmission_file_'
        folder.mkdir(parents=True)
        (folder / name).write_bytes(data)
    return export


@pytest.mark.slow
def test_bad_submissions_batch(kit, solved_kit, tmp_path):
    """A class's LMS export with every kind of bad submission, collected and autograded on 2 processes: each one
    graded or flagged with a reason, the gradebook consistent, the grades CSV and the feedback right, the same
    grades when graded again."""
    course_dir = small_course(tmp_path, [A])
    export = _bad_submissions(course_dir, kit, solved_kit[0], tmp_path)
    collected = course.collect(course_dir, A, export, id_regex=r'^(.*)_\d+_assignsubmission')
    lines = []
    report = course.autograde(course_dir, A, students=list(collected), jobs=2, log=lines.append)
    batch = {'collected': collected, 'report': report, 'log': lines}
    check_graded_or_flagged(batch)
    check_cheat_needs_the_guards(course_dir)
    check_gradebook_consistent(batch, course_dir)
    check_parallel_report(batch)
    check_grades_csv(batch, course_dir)
    check_feedback_without_hidden_tests(batch, course_dir)
    check_rerun_gives_the_same_grades(batch, course_dir)


def points(*grade_ids):
    cells = {g['grade_id']: g['points'] for g in graded_cells(load(ROOT / 'nbs' / f'{A}.ipynb'))}
    return sum(cells[g] for g in grade_ids) if grade_ids else sum(cells.values())


def points_through(grade_id):
    """Points of the graded cells up to and including `grade_id`, in notebook order (a kernel that dies after it
    keeps exactly these)."""
    ids = [g['grade_id'] for g in graded_cells(load(ROOT / 'nbs' / f'{A}.ipynb'))]
    return points(*ids[:ids.index(grade_id) + 1])


def check_graded_or_flagged(batch):
    subs = batch['report']['submissions']
    full = points()
    expect = {   # case: (score, flags that must be there)
        'solved': (full, []),
        'untouched': (0, []),
        'tampered': (full - points('test_00_13_gelu', 'test_00_14_training'),
                     ['`test_00_01_unbroadcast` was edited', '`test_00_03_backward` was deleted', 'cells were moved',
                      'solution cell `ex00_12_gelu` was deleted', '50 MB of outputs: removed']),
        'cheat': (None, ['redefines `test_eq`', 'redefines `gradcheck`', 'patches `fastcore`', 'patches `builtins`']),
        'crash': (points_through('test_00_04_matmul'), ['kernel died']),
        'runaway': (full, [f'ran longer than {TIMEOUT} s', 'MB of output: truncated']),
        'invalid_json': (0, ['not valid JSON']),
        'empty': (0, ['the file is empty']),
        'other_module': (0, ['notebook of another module']),
        'no_notebook': (0, ['no notebook in the submission']),
    }
    assert set(subs) == set(expect)
    for case, (score, flags) in expect.items():
        s = subs[case]
        assert s['max_score'] == full, case
        if score is not None:
            assert s['score'] == score, (case, s['score'], s['flags'])
        for f in flags:
            assert any(f in g for g in s['flags']), (case, f, s['flags'])
        assert bool(s['flags']) == bool(flags), (case, s['flags'])
        assert s['graded'] == (case not in ('invalid_json', 'empty', 'other_module', 'no_notebook')), case
    assert subs['cheat']['cells']['test_00_01_unbroadcast'] == 0, 'the cheat passed the test'
    crash = subs['crash']['cells']
    assert crash['test_00_05_exp'] == crash['test_00_14_training'] == 0


def check_cheat_needs_the_guards(course_dir):
    "The same cheat run plainly (as `tinytorch check` does) passes the test it should fail: the guard matters."
    nb, _ = execute(course_dir / 'submitted' / 'cheat' / A / f'{A}.ipynb', timeout=60)
    tests = {t['grade_id']: t for ex in classify(nb, '00')['exercises'] for t in ex['tests']}
    assert tests['test_00_01_unbroadcast']['status'] == 'passed'


def check_gradebook_consistent(batch, course_dir):
    db = course_dir / 'gradebook.db'
    con = sqlite3.connect(db)
    try:
        assert con.execute('PRAGMA integrity_check').fetchone()[0] == 'ok'
    finally:
        con.close()
    subs = batch['report']['submissions']
    n_cells = len(graded_cells(load(ROOT / 'nbs' / f'{A}.ipynb')))
    with course.gradebook(course_dir) as gb:
        for sid, s in subs.items():
            sub = gb.find_submission(A, sid)
            grades = [g for nb in sub.notebooks for g in nb.grades]
            assert len(grades) == n_cells
            assert all(g.auto_score is not None and not g.needs_manual_grade for g in grades), sid
            assert float(sub.score) == s['score'], sid
            assert all(nb.flagged == bool(s['flags']) for nb in sub.notebooks), sid


def check_parallel_report(batch):
    report = batch['report']
    assert report['jobs'] == 2 and report['graded'] == 6
    assert all(s['seconds'] > 0 for s in report['submissions'].values() if s['graded'])
    assert report['seconds_per_submission'] > 0 and report['wall_seconds'] > 0
    assert any('processes' in line and 'per submission' in line for line in batch['log'])


def check_rerun_gives_the_same_grades(batch, course_dir):
    again = ['crash', 'cheat', 'tampered', 'invalid_json']
    first = {s: batch['report']['submissions'][s] for s in again}
    report = course.autograde(course_dir, A, students=again, jobs=2, regrade=True, log=lambda *_: None)
    assert report['graded'] == 3 and report['kept'] == 0        # invalid_json: not gradable, zero again
    for s in again:
        assert report['submissions'][s]['cells'] == first[s]['cells'], s
        assert report['submissions'][s]['flags'] == first[s]['flags'], s


def check_feedback_without_hidden_tests(batch, course_dir):
    pages = course.feedback(course_dir, A, log=lambda *_: None)
    assert set(pages) == set(batch['report']['submissions'])
    source_nb = load(ROOT / 'nbs' / f'{A}.ipynb')
    shown = '\n'.join(public_lines(source_nb))   # a hidden line that is part of a visible one is no secret
    hidden = [l.strip() for region in hidden_tests(source_nb) for l in region.splitlines()
              if len(l.strip()) > 12 and not l.strip().startswith('#') and l.strip() not in shown]
    assert hidden, 'no hidden-test line to look for'
    import html
    for sid, page in pages.items():
        text = html.unescape(re.sub(r'<[^>]+>', '', Path(page).read_text()))
        assert not [h for h in hidden if h in text], f'hidden tests in the feedback of {sid}'
    assert 'not valid JSON' in Path(pages['invalid_json']).read_text()
    assert 'kernel died' in html.unescape(Path(pages['crash']).read_text())


def check_grades_csv(batch, course_dir):
    out = course.grades(course_dir, log=lambda *_: None)
    rows = {r['student']: r for r in csv.DictReader(out.open())}
    header = next(csv.reader(out.open()))
    nb = load(ROOT / 'nbs' / f'{A}.ipynb')
    exercises = list(dict.fromkeys(g['exercise'] for g in graded_cells(nb)))
    assert header[0] == 'student' and header[-2:] == ['total', 'flags']
    assert header[1:1 + len(exercises) + 1] == exercises + [A]
    for sid, s in batch['report']['submissions'].items():
        row = rows[sid]
        assert float(row[A]) == s['score'] == sum(float(row[e]) for e in exercises), sid
        assert bool(row['flags']) == bool(s['flags'])
    assert not list(course_dir.glob('.grades.csv.tmp*'))


@pytest.mark.slow
def test_grading_is_isolated_from_the_students_package(kit, solved_kit, tmp_path, monkeypatch):
    """Module N is graded against the reference package: a submission whose own module-00 is unsolved (its kit,
    with stubs, next to the notebook and on PYTHONPATH) still gets full marks for module N."""
    later = [p for p in NOTEBOOKS if p.stem[:2] != '00' and 'tinytorch.tensor' in json.dumps(load(p))]
    if not later:
        pytest.skip('no module imports tinytorch.tensor yet')
    path = later[0]
    course_dir = small_course(tmp_path, [path.stem])
    monkeypatch.setenv('PYTHONPATH', str(kit))               # an instructor shell with a student kit on the path
    assert course.reference_package() == str(ROOT / 'tinytorch')
    _submit(course_dir, path.stem, 'isolated', solved_kit[0] / 'nbs' / path.name)
    shutil.copytree(kit / 'tinytorch', course_dir / 'submitted' / 'isolated' / path.stem / 'tinytorch')
    report = course.autograde(course_dir, path.stem, students=['isolated'], jobs=0, log=lambda *_: None)
    s = report['submissions']['isolated']
    assert s['score'] == s['max_score'] > 0, s
    assert any('its own `tinytorch`' in f for f in s['flags'])


@pytest.mark.slow
def test_time_limits_of_a_grading_kernel(tmp_path):
    "Per cell: an endless loop is interrupted. Per notebook: past the budget nothing more runs; the tests left fail."
    from coursetools.autograding import GradingExecute, flags

    def test_cell(gid, src):
        cell = nbformat.v4.new_code_cell(src)
        cell.metadata['nbgrader'] = {'grade': True, 'solution': False, 'locked': True, 'grade_id': gid, 'points': 1,
                                     'schema_version': 3}
        return cell
    nb = nbformat.v4.new_notebook(cells=[test_cell('t1', 'x = 1'), nbformat.v4.new_code_cell('while True: pass'),
                                         nbformat.v4.new_code_cell('while True: pass'), test_cell('t2', 'assert x')])
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nb, _ = GradingExecute(timeout=2, notebook_timeout=3).preprocess(nb, {'metadata': {'path': str(tmp_path)}})
    assert not [o for o in nb.cells[0].outputs if o.output_type == 'error']
    assert [o.ename for o in nb.cells[1].outputs if o.output_type == 'error'][-1] == 'CellTimeoutError'
    assert [o.ename for o in nb.cells[3].outputs] == ['NotRun']
    found = flags(nb)
    assert any('ran longer than 2 s' in f for f in found) and any('longer than 3 s in all' in f for f in found), found


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_formgrader_in_the_course_directory(course_dir):
    """JupyterLab has nbgrader's extension, and a Jupyter server started in the course directory serves the
    formgrader with the course's assignments (its API, as the formgrader page loads them)."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    lab = subprocess.run([str(BIN / 'jupyter'), 'labextension', 'list'], cwd=course_dir, env=env,
                         capture_output=True, text=True)
    assert re.search(r'@jupyter/nbgrader\S* v[\d.]+ \S*enabled', re.sub(r'\x1b\[[0-9;]*m', '', lab.stdout + lab.stderr))
    port, token = _free_port(), 'tinytorch-test'
    args = [str(BIN / 'jupyter'), 'server', '--no-browser', '--ip=127.0.0.1', f'--port={port}',
            f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={course_dir}']
    if os.geteuid() == 0:
        args.append('--allow-root')
    server = subprocess.Popen(args, cwd=course_dir, env=dict(env, HOME=str(course_dir / '.home')),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                req = urllib.request.Request(f'http://127.0.0.1:{port}/formgrader/api/assignments',
                                             headers={'Authorization': f'token {token}'})
                assignments = json.load(urllib.request.urlopen(req, timeout=5))
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.5)
        assert {a['name'] for a in assignments} >= {p.stem for p in NOTEBOOKS}
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
