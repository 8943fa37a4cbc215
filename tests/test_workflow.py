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
import importlib
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
from coursetools.notebooks import (HIDDEN, SOLUTION, course_notebooks, exercise_of, exercise_titles, exercises,
                                   fill_solutions, graded_cells, hidden_tests, load, module_name, nbgrader_meta,
                                   public_lines, secret_lines, source)
from coursetools.release import kit_stubs, release, student_version
from coursetools.student import classify, execute, render

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


def unzip(archive, dest):
    "Unpack a zip as README's `unzip tinytorch-kit.zip` does (file times kept: `tinytorch check` compares them)."
    if shutil.which('unzip'):
        subprocess.run(['unzip', '-q', str(archive)], cwd=dest, check=True)
        return
    with zipfile.ZipFile(archive) as z:
        for info in z.infolist():
            path = Path(z.extract(info, dest))
            stamp = time.mktime(info.date_time + (0, 0, -1))
            os.utime(path, (stamp, stamp))


@pytest.fixture(scope='module')
def kit(tmp_path_factory):
    "The kit as a student gets it: `make release`'s tinytorch-kit.zip, unpacked with README's command."
    released = release(ROOT / 'nbs', tmp_path_factory.mktemp('release') / '_release')
    student = tmp_path_factory.mktemp('student')
    unzip(released / 'tinytorch-kit.zip', student)
    assert sorted(p.name for p in student.iterdir()) == ['kit']
    return student / 'kit'


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
    check_locked_cells_say_so(kit)
    lines = {l.strip() for p in kit.rglob('*') if p.is_file() for l in p.read_text(errors='replace').splitlines()}
    lines |= {l.strip() for p in course_notebooks(kit / 'nbs') for c in load(p)['cells']
              for l in source(c).splitlines()}
    public = {l.strip() for path in NOTEBOOKS for c in load(path)['cells']      # a line public in some module
              for l in HIDDEN.sub('', SOLUTION.sub('', source(c))).splitlines()}  # is no secret in another
    secrets = {line for path in NOTEBOOKS for line in secret_lines(load(path))} - public
    leaked = sorted(secrets & lines)
    assert not leaked, f'solution or hidden-test lines in the kit: {leaked[:5]}'


def check_locked_cells_say_so(kit):
    """Every locked code cell of the kit's notebooks starts with a line that says it is read-only (what it is, for
    a test: which exercise); no other cell does, and the marker never reaches the package."""
    from coursetools.release import LOCKED_MARK
    for path in NOTEBOOKS:
        cells = nbformat.read(kit / 'nbs' / path.name, as_version=4).cells
        for c in cells:
            meta = nbgrader_meta(c)
            first = c.source.split('\n', 1)[0] if c.cell_type == 'code' else ''
            locked = c.cell_type == 'code' and meta.get('locked') and not meta.get('solution')
            assert first.endswith(LOCKED_MARK) == bool(locked), (path.name, meta.get('grade_id'), first)
            if meta.get('grade'):
                ex = exercise_of(meta['grade_id'])
                assert first == (f'# graded test of Exercise {ex} (read-only)' if ex else
                                 f'# graded check of module {path.stem[:2]} as a whole (read-only)'), first
            elif locked:
                assert first in ('# given code (read-only)', '#| given code (read-only)'), first
                assert first.startswith('#|') == c.source.split('\n', 1)[1].startswith('#|'), \
                    'the marker of a cell with nbdev directives must be a directive line (nbdev skips it)'
    assert not [p for p in (kit / 'tinytorch').glob('*.py') if LOCKED_MARK in p.read_text()]


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


def records(report):
    return report['exercises'] + report['module_checks']


def check_report_shape(report, path):
    """What every `tinytorch check --json` report holds: one record per exercise of the notebook, in order, one per
    module check (`test_NN_name`), each with one of the four statuses and consistent points."""
    nb = load(path)
    assert [r['exercise'] for r in report['exercises']] == list(exercise_titles(nb))
    assert [r['check'] for r in report['module_checks']] == [g['grade_id'] for g in graded_cells(nb)
                                                             if g['exercise'] is None]
    for r in records(report):
        assert r['status'] in ('passed', 'failed', 'todo', 'blocked'), r
        assert 0 <= r['points'] <= r['max_points'] and (r['points'] == r['max_points']) == (r['status'] == 'passed')
        assert (r['blocked_by'] is not None) == (r['status'] == 'blocked'), r
        if r['blocked_by']:
            assert re.fullmatch(r'\d\d\.\d+', r['blocked_by']) and r['blocked_by'] != r.get('exercise')
            assert f"Exercise {r['blocked_by']}" in r['message']
    points = {}
    for g in graded_cells(nb):
        points[g['exercise']] = points.get(g['exercise'], 0) + g['points']
    assert {r['exercise']: r['max_points'] for r in report['exercises']} == \
           {k: v for k, v in points.items() if k is not None}
    assert report['max_points'] == sum(points.values())
    assert report['passed'] == all(r['status'] == 'passed' for r in records(report))


def untouched_exercises(kit, path) -> set:
    "The exercises of a kit notebook whose solution cells are all still the released stubs."
    stubs = {nbgrader_meta(c)['grade_id']: c.source for c in student_version(nbformat.read(
        ROOT / 'nbs' / path.name, as_version=4)).cells if nbgrader_meta(c).get('solution')}
    mine = {nbgrader_meta(c)['grade_id']: c.source for c in nbformat.read(kit / 'nbs' / path.name, as_version=4).cells
            if nbgrader_meta(c).get('solution')}
    by_exercise = {}
    for gid, title in exercises(load(path)).items():
        by_exercise.setdefault(title.split(':')[0], []).append(mine.get(gid) == stubs[gid])
    return {ex for ex, same in by_exercise.items() if all(same)}


def check_json(kit, module, path):
    "`tinytorch check NN --json` in the kit, read and checked for shape and for the one promise: untouched = todo."
    r = tinytorch(kit, 'check', module, '--json')
    assert r.returncode in (0, 1), r.stdout[-2000:] + r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert r.returncode == (0 if report['passed'] else 1)
    check_report_shape(report, path)
    untouched = untouched_exercises(kit, path)
    for rec in report['exercises']:
        if rec['exercise'] in untouched:
            assert rec['status'] == 'todo', f"untouched Exercise {rec['exercise']} reported {rec['status']}: {rec}"
    return report


@pytest.mark.slow
@params
def test_check_untouched_kit(kit, path):
    "On the kit as released, every exercise is todo (never failed) and every module check blocked by one of them."
    report = check_json(kit, path.stem[:2], path)
    assert all(r['status'] == 'todo' for r in report['exercises'])
    assert all(r['status'] == 'blocked' for r in report['module_checks'])
    assert report['points'] == 0 and report['other_errors'] == []
    first = report['exercises'][0]
    assert first['message'].startswith('not done yet: replace the `raise NotImplementedError(...)` line in cell ')
    if path.stem == '00_tensor':
        from coursetools.student import render
        human = render(report)
        assert '  todo     Exercise 00.1: implement unbroadcast  [0/2]' in human.splitlines()
        assert 'checks of module 00 as a whole' in human


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
    failing = [(r.get('exercise') or r['check'], r['message']) for r in records(report) if r['status'] != 'passed']
    assert not failing and report['passed'], failing
    check_report_shape(report, path)
    assert report['points'] == report['max_points'] == sum(g['points'] for g in graded_cells(load(path)))
    assert report['other_errors'] == [] and not report['hints']


@pytest.mark.slow
def test_unsolved_dependency_names_the_exercise(kit, tmp_path):
    later = [p for p in NOTEBOOKS if p.stem[:2] != '00' and 'tinytorch.tensor' in json.dumps(load(p))]
    if not later:
        pytest.skip('no module imports tinytorch.tensor yet')
    d = tmp_path / 'tinytorch'
    shutil.copytree(kit, d)
    solve(d, {later[0].stem})                     # module N solved, module 00 untouched
    assert tinytorch(d, 'export').returncode == 0
    report = check_json(d, later[0].stem[:2], later[0])
    blocked = [r for r in records(report) if r['status'] == 'blocked']
    assert blocked and not report['passed']
    assert {r['status'] for r in records(report)} <= {'passed', 'blocked'}, 'module N is solved: nothing failed'
    for r in blocked:
        assert r['blocked_by'].startswith('00.'), r
        assert 'still a stub in your tinytorch package. Solve it in nbs/00_tensor.ipynb, run `tinytorch export`' \
            in r['message'], r['message']


def _executed(cells):
    """An executed notebook from (kind, source, nbgrader metadata or None, error or None) tuples; an error is
    (ename, evalue, traceback entries as IPython prints them)."""
    nb = nbformat.v4.new_notebook()
    count = 0
    for kind, src, meta, err in cells:
        if kind == 'md':
            nb.cells.append(nbformat.v4.new_markdown_cell(src))
            continue
        count += 1
        cell = nbformat.v4.new_code_cell(src, execution_count=count)
        if meta:
            cell.metadata['nbgrader'] = dict(meta, schema_version=3)
        if err:
            cell.outputs = [nbformat.v4.new_output('error', ename=err[0], evalue=err[1],
                                                   traceback=[e.replace('N]', f'{count}]', 1) for e in err[2]])]
        nb.cells.append(cell)
    return nb


def test_check_traces_errors_to_their_cause(tmp_path):
    """Without a kernel: a NameError three cells after a given cell stopped by another module's stub is traced to
    that stub (the module check is blocked by it, with the command); a wrong solution that raises names the
    student's line, in their cell or in their package."""
    pkg = tmp_path / 'tinytorch'
    pkg.mkdir()
    (pkg / 'tensor.py').write_text('def helper(x):\n    return x.missing\n')
    test = {'grade': True, 'solution': False, 'locked': True, 'points': 2}
    nb = _executed([
        ('md', '### Exercise 99.1: implement f', None, None),
        ('code', '#| export\ndef f(x):\n    y = x + 1\n    return y.nope', {'solution': True, 'grade': False,
                                                                              'grade_id': 'ex99_01_f'}, None),
        ('code', '# graded test of Exercise 99.1 (read-only)\ntest_eq(f(1), 2)', dict(test, grade_id='test_99_01_f'),
         ('AttributeError', "'int' object has no attribute 'nope'",
          ['---', 'Cell In[N], line 2\n----> 2 test_eq(f(1), 2)\n', 'Cell In[1], line 4, in f(x)\n----> 4 return y.nope\n'])),
        ('code', 'from tinytorch.tensor import helper\nvocab = build_vocab(words)\nlosses = train(vocab)', None,
         ('NotImplementedError', 'Exercise 98.2: implement build_vocab',
          ['Cell In[N], line 2\n----> 2 vocab = build_vocab(words)\n'])),
        ('code', 'fig = plot(losses)', None, ('NameError', "name 'losses' is not defined", ['Cell In[N], line 1\n'])),
        ('code', 'final = losses[-1]\nhelper(final)', None, ('NameError', "name 'losses' is not defined", [])),
        ('code', '# graded check of module 99 as a whole (read-only)\ntest_eq(final < 1, True)',
         dict(test, grade_id='test_99_training'), ('NameError', "name 'final' is not defined", ['Cell In[N], line 2'])),
        ('code', 'helper(3)', None, ('AttributeError', "'int' object has no attribute 'missing'",
                                      ['Cell In[N], line 1\n', f'File {pkg}/tensor.py:2, in helper(x)\n'])),
    ])
    catalogue = {'98.2': {'title': 'implement build_vocab', 'notebook': 'nbs/98_words.ipynb', 'stub_in_notebook': True}}
    report = classify(nb, '99', root=tmp_path, catalogue=catalogue)
    ex, = report['exercises']
    assert (ex['exercise'], ex['status'], ex['cell']) == ('99.1', 'failed', 3)
    assert ex['message'] == "AttributeError: 'int' object has no attribute 'nope'"
    assert ex['where'] == {'cell': 2, 'line': 4, 'yours': True, 'code': 'return y.nope'}
    check, = report['module_checks']
    assert (check['check'], check['status'], check['blocked_by']) == ('test_99_training', 'blocked', '98.2')
    assert check['message'] == ('needs Exercise 98.2 (implement build_vocab) first: it is still a stub in your '
                                'tinytorch package. Solve it in nbs/98_words.ipynb, run `tinytorch export`, then '
                                'check again')
    other, = report['other_errors']                     # the student's own cell, failing in their package
    assert other['cell'] == 8 and other['where'] == {'file': 'tinytorch/tensor.py', 'line': 2, 'function': 'helper',
                                                     'yours': True, 'code': 'return x.missing'}
    assert '  checks of module 99 as a whole (no single exercise):' in render(report).splitlines()


def solve_partly(kit, stem, keep=(), edit=None):
    """Solve the kit's notebook `stem` from the instructor's, but leave the solution cells `keep` as released (the
    stubs) and apply `edit` ({grade_id: function of the source}: a wrong solution)."""
    path = Path(kit) / 'nbs' / f'{stem}.ipynb'
    nb = nbformat.read(path, as_version=4)
    stubs = {nbgrader_meta(c)['grade_id']: c.source for c in nb.cells if nbgrader_meta(c).get('solution')}
    fill_solutions(nb, nbformat.read(ROOT / 'nbs' / path.name, as_version=4))
    for c in nb.cells:
        gid = nbgrader_meta(c).get('grade_id')
        if gid in keep:
            c.source = stubs[gid]
        if edit and gid in edit:
            changed = edit[gid](c.source)
            assert changed != c.source, f'the edit of {gid} changed nothing'
            c.source = changed
    nbformat.write(nb, path)


def by_name(report) -> dict:
    return {r.get('exercise') or r['check']: r for r in records(report)}


def _nb(stem):
    return ROOT / 'nbs' / f'{stem}.ipynb'


@pytest.mark.slow
def test_check_student_ahead(kit, tmp_path):
    """Module 04 solved before two exercises it builds on (01.1 and 03.1 still stubs): 04's exercises pass, its
    training check is blocked by 03.1 with the command to run; 03.1 solved but not exported: the report says to
    export; exported: the same check is now blocked by 01.1, the next stub on its way. In 01, 01.1 is todo and the
    module check waits for it."""
    d = tmp_path / 'tinytorch'
    shutil.copytree(kit, d)
    for stem in ('00_tensor', '02_optim', '04_embeddings'):
        solve_partly(d, stem)
    solve_partly(d, '01_nn', keep={'ex01_01_named_parameters'})
    solve_partly(d, '03_tokenization', keep={'ex03_01_build_vocab'})
    assert tinytorch(d, 'export').returncode == 0
    r = by_name(check_json(d, '04', _nb('04_embeddings')))
    assert {k: v['status'] for k, v in r.items()} == {**{f'04.{k}': 'passed' for k in range(1, 6)},
                                                    'test_04_fast_backward': 'passed', 'test_04_profiler': 'passed',
                                                    'test_04_training': 'blocked'}
    assert r['test_04_training']['blocked_by'] == '03.1'
    assert ('needs Exercise 03.1 (implement build_vocab) first: it is still a stub in your tinytorch package. '
            'Solve it in nbs/03_tokenization.ipynb, run `tinytorch export`, then check again') \
        == r['test_04_training']['message']

    r = by_name(check_json(d, '01', _nb('01_nn')))
    assert r['01.1']['status'] == 'todo' and r['test_01_training']['blocked_by'] == '01.1'
    assert re.search(r'it is still a stub in cell \d+ \(`class Module:`\)', r['test_01_training']['message'])

    solve_partly(d, '03_tokenization')                    # solved in the notebook, not exported yet
    report = check_json(d, '04', _nb('04_embeddings'))
    r = by_name(report)['test_04_training']
    assert r['blocked_by'] == '03.1' and 'you solved it in nbs/03_tokenization.ipynb, but your tinytorch package ' \
        'still has the stub. Run `tinytorch export`' in r['message'], r
    assert any('03_tokenization.ipynb changed after your last export' in h for h in report['hints'])
    assert tinytorch(d, 'export').returncode == 0
    r = by_name(check_json(d, '04', _nb('04_embeddings')))['test_04_training']
    assert (r['status'], r['blocked_by']) == ('blocked', '01.1'), r


def readme_examples() -> dict:
    """{command: [lines]}: the example outputs in README's "For students" (in plain ``` blocks, a line `$ command`
    starts one)."""
    text = (ROOT / 'README.md').read_text(encoding='utf-8')
    section = text[text.index('## For students'):text.index('## For instructors')]
    examples, block, current = {}, None, None
    for line in section.splitlines():
        if line.strip().startswith('```'):
            block = None if block is not None else (line.strip() == '```' and len(line) - len(line.lstrip()))
            current = None
        elif block is not False and block is not None:
            line = line[block:]
            if line.startswith('$ '):
                current = examples.setdefault(line[2:].strip(), [])
            elif current is not None:
                current.append(line)
    return examples


def check_readme_example(lines, output):
    """Every line of a README example is a line of the real output, in order: `...` alone skips lines, ` ...` at
    the end stands for the rest of the line; seconds and cell/line numbers may differ (others edit the notebooks)."""
    def norm(s):
        s = re.sub(r'checked in \d+ s', 'checked in N s', s.rstrip())
        return re.sub(r'\b(cell|line) \d+', r'\1 N', s)
    out = [norm(l) for l in output.splitlines()]
    i = 0
    for line in lines:
        if line.strip() == '...':
            continue
        want = norm(line)
        prefix = want.endswith(' ...')
        want = want[:-4] if prefix else want
        while i < len(out) and not (out[i].startswith(want) if prefix else out[i] == want):
            i += 1
        assert i < len(out), f'README shows a line the command does not print (in this order): {line!r}\n{output}'
        i += 1


WRONG_MUL = {'ex00_02_mul': lambda s: s.replace('unbroadcast(grad * x, y.shape)', 'grad * x')}   # forgets y's sum


@pytest.mark.slow
def test_check_student_in_progress(kit, tmp_path):
    """Module 00 half done (00.1, 00.4, 00.5 solved, 00.2 solved wrongly, 00.3 and the rest untouched) and exported,
    module 01 solved: in 00, 00.2 failed with yours/expected, 00.3 todo, 00.4 and 00.5 blocked by 00.3, the rest
    todo, the module checks blocked; in 01, the exercises that run backward are blocked by 00.3, the command named."""
    d = tmp_path / 'tinytorch'
    shutil.copytree(kit, d)
    solve_partly(d, '00_tensor', keep={gid for gid in exercises(load(_nb('00_tensor')))
                                       if gid not in ('ex00_01_unbroadcast', 'ex00_02_mul', 'ex00_04_matmul',
                                                      'ex00_05_exp')}, edit=WRONG_MUL)
    solve_partly(d, '01_nn')
    exported = tinytorch(d, 'export')
    assert exported.returncode == 0
    report = check_json(d, '00', _nb('00_tensor'))
    r = by_name(report)
    assert r['00.1']['status'] == 'passed'
    wrong = r['00.2']
    cell = 1 + next(i for i, c in enumerate(load(d / 'nbs' / '00_tensor.ipynb')['cells'])
                    if nbgrader_meta(c).get('grade_id') == 'test_00_02_mul')       # as JupyterLab counts
    assert wrong['status'] == 'failed' and wrong['cell'] == cell and wrong['where']['code'].startswith('test_eq(gy, ')
    assert wrong['message'].startswith('AssertionError: test_eq(gy, x.sum(axis=0)): not equal\n  yours    (gy):\n')
    assert '\n  expected (x.sum(axis=0)): array([3., 5., 7.])\n' in wrong['message']
    assert wrong['message'].endswith('the shapes differ: yours (2, 3), expected (3,)')
    assert r['00.3']['status'] == 'todo'
    assert [(r[k]['status'], r[k]['blocked_by']) for k in ('00.4', '00.5')] == [('blocked', '00.3')] * 2
    assert all(r[f'00.{k}']['status'] == 'todo' for k in range(6, 13))
    assert {(r[k]['status'], r[k]['blocked_by']) for k in ('test_00_join', 'test_00_training')} == {('blocked', '00.3')}
    human = render(report).splitlines()
    assert '  failed   Exercise 00.2: implement Mul.backward  [0/1]' in human
    assert '  blocked  Exercise 00.4: implement MatMul.backward  [0/3]' in human

    report01 = check_json(d, '01', _nb('01_nn'))
    examples = readme_examples()                       # README "For students" shows this very student
    assert set(examples) == {'.venv/bin/tinytorch check 00', '.venv/bin/tinytorch export',
                             '.venv/bin/tinytorch check 01'}, examples
    check_readme_example(examples['.venv/bin/tinytorch check 00'], render(report))
    check_readme_example(examples['.venv/bin/tinytorch export'], exported.stdout)
    check_readme_example(examples['.venv/bin/tinytorch check 01'], render(report01))
    r = by_name(report01)
    blocked = {k for k, v in r.items() if v['status'] == 'blocked'}
    assert blocked and {r[k]['blocked_by'] for k in blocked} == {'00.3'}
    assert {v['status'] for k, v in r.items() if k not in blocked} == {'passed'}
    assert all('Solve it in nbs/00_tensor.ipynb, run `tinytorch export`' in r[k]['message'] for k in blocked)


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
        'tampered': (full - points('test_00_12_gelu', 'test_00_training'),
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
    assert crash['test_00_05_exp'] == crash['test_00_training'] == 0


def check_cheat_needs_the_guards(course_dir):
    "The same cheat run plainly (as `tinytorch check` does) passes the test it should fail: the guard matters."
    nb, _ = execute(course_dir / 'submitted' / 'cheat' / A / f'{A}.ipynb', timeout=60)
    report = classify(nb, '00')
    tests = {t['grade_id']: t for r in report['exercises'] + report['module_checks'] for t in r['tests']}
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


def hidden_test_lines():
    "Hidden-test lines of module 00 that no visible line contains (what a leak check looks for)."
    source_nb = load(ROOT / 'nbs' / f'{A}.ipynb')
    shown = '\n'.join(public_lines(source_nb))   # a hidden line that is part of a visible one is no secret
    hidden = [l.strip() for region in hidden_tests(source_nb) for l in region.splitlines()
              if len(l.strip()) > 12 and not l.strip().startswith('#') and l.strip() not in shown]
    assert hidden, 'no hidden-test line to look for'
    return hidden


def assert_no_hidden_tests_in_feedback(course_dir):
    "Every feedback file generated in the course directory, as a student reads it: no hidden-test line."
    import html
    hidden = hidden_test_lines()
    files = [p for p in (course_dir / 'feedback').rglob('*') if p.is_file()]
    assert files, 'no feedback generated'
    for page in files:
        raw = page.read_text(errors='replace')
        text = html.unescape(re.sub(r'<[^>]+>', '', raw))
        leaked = [h for h in hidden if h in text or h in html.unescape(raw)]
        assert not leaked, f'hidden tests in the feedback file {page}: {leaked[:3]}'
    return files


def check_feedback_without_hidden_tests(batch, course_dir):
    pages = course.feedback(course_dir, A, log=lambda *_: None)
    assert set(pages) == set(batch['report']['submissions'])
    assert_no_hidden_tests_in_feedback(course_dir)
    assert 'not valid JSON' in Path(pages['invalid_json']).read_text()
    assert 'kernel died' in html_text(pages['crash'])


def html_text(page) -> str:
    import html
    return html.unescape(Path(page).read_text())


def check_grades_csv(batch, course_dir):
    out = course.grades(course_dir, log=lambda *_: None)
    rows = {r['student']: r for r in csv.DictReader(out.open())}
    header = next(csv.reader(out.open()))
    nb = load(ROOT / 'nbs' / f'{A}.ipynb')
    exercises = list(dict.fromkeys(g['exercise'] for g in graded_cells(nb) if g['exercise'])) + ['00.module']
    assert exercises[:2] == ['00.1', '00.2'] and len(exercises) == len(exercise_titles(nb)) + 1
    assert header[0] == 'student' and header[-2:] == ['total', 'flags']
    assert header[1:1 + len(exercises) + 1] == exercises + [A]
    assert float(rows['solved']['00.module']) == points('test_00_join', 'test_00_training')
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


# ---------------------------------------------------------------------------------------------- the grading sandbox

VICTIM = 'Zoë Ünal-Ørsted 李'          # an honest student graded after the attackers (a Unicode id, end to end)


def _attacks(course_dir, port):
    """{student: cells added after test_00_01_unbroadcast of a solved notebook}: the attacks of issue 12, each
    bounded if the sandbox fails (at most 300 forks, address space reserved and never touched, loopback only)."""
    course = str(course_dir)
    seen = [course, str(ROOT / 'nbs'), str(ROOT / 'tests'), str(ROOT / 'README.md')]   # none is in the sandbox
    return {
        'forger': [f"import sqlite3\ndb = sqlite3.connect({course + '/gradebook.db'!r})\n"
                   "db.execute('UPDATE grade SET manual_score = (SELECT max_score FROM grade_cells "
                   "WHERE grade_cells.id = grade.cell_id)')\ndb.commit()\nprint('forged')"],
        'planter': [f"for d in [{course + '/source/' + A!r}, {course + '/submitted/' + VICTIM + '/' + A!r}]:\n"
                    "    try:\n"
                    "        open(d + '/numpy.py', 'w').write('raise ImportError(\"planted\")\\n')\n"
                    "        print('planted in', d)\n"
                    "    except OSError as e:\n"
                    "        print('refused', type(e).__name__)"],
        'leaker': [f"print(open({course + '/source/' + A + '/' + A + '.ipynb'!r}).read())",
                   "print('\\n'.join(In))",             # IPython's history: the tests run before this cell
                   "import os\nprint('seen:', [p for p in " + repr(seen) + " if os.path.exists(p)], "
                   "sorted(set(os.listdir(" + repr(str(Path.home())) + ")) - {'.pyenv'}))"],
        'forkbomb': ["import os, time\npids = []\nfor i in range(300):\n    try:\n        pid = os.fork()\n"
                     "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n"
                     "    pids.append(pid)\nprint('forked', len(pids))\nfor pid in pids:\n    os.kill(pid, 9)\n"
                     "    os.waitpid(pid, 0)"],
        'hog': ["import mmap\nm = mmap.mmap(-1, 20 * 2**30, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | "
                "getattr(mmap, 'MAP_NORESERVE', 0x4000))   # address space only: never touched\nprint('mapped 20 GB')",
                "big = np.empty(20 * 2**30, dtype=np.uint8)\nprint('allocated 20 GB')"],
        'caller': [f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
                   "s.sendall(b'hello from a grading kernel')\nprint('connected')"],
        # an untouched notebook that prints the reference module and uses it: module 00 and the later ones are
        # withheld while 00 is graded (stubs), so it prints no solution and scores 0
        'copier': ["import inspect, tinytorch.tensor\nprint(inspect.getsource(tinytorch.tensor))\n"
                   "print(tinytorch.tensor.Tensor)"],
    }


def _outputs(course_dir, student, assignment=A) -> str:
    nb = nbformat.read(course_dir / 'autograded' / student / assignment / f'{assignment}.ipynb', as_version=4)
    return '\n'.join(o.get('text', '') + o.get('evalue', '') for c in nb.cells if c.cell_type == 'code'
                     for o in c.get('outputs', []))


@pytest.mark.slow
def test_attacks_on_the_grader_are_contained(solved_kit, tmp_path):
    """Issue 12's attacks, each a submission that also solves everything: the forged gradebook row, the planted
    `numpy.py`, the printed hidden tests, the write into another student's folder, a fork bomb, a 20 GB
    allocation, a socket to 127.0.0.1. Each graded with the full score its honest part earns, flagged with what
    it tried; the attack failed; the batch completes; an honest student graded after them keeps full marks; the
    gradebook holds only the autograder's scores; no feedback file holds a hidden-test line."""
    course_dir = small_course(tmp_path, [A])
    solved = solved_kit[0] / 'nbs' / f'{A}.ipynb'
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(8)
    listener.setblocking(False)
    attacks = _attacks(course_dir, listener.getsockname()[1])
    for student, cells in attacks.items():
        nb = nbformat.read(course_dir / 'release' / A / f'{A}.ipynb' if student == 'copier' else solved, as_version=4)
        for code in reversed(cells):
            _add_after(nb, 'test_00_01_unbroadcast', code)
        nbformat.write(nb, tmp_path / f'{student}.ipynb')
        _submit(course_dir, A, student, tmp_path / f'{student}.ipynb')
    _submit(course_dir, A, VICTIM, solved)
    victim_files = sorted(p.name for p in (course_dir / 'submitted' / VICTIM / A).iterdir())
    source_files = sorted(p.name for p in (course_dir / 'source' / A).iterdir())
    try:
        report = course.autograde(course_dir, A, students=list(attacks), jobs=2, log=lambda *_: None)
        with pytest.raises(BlockingIOError):       # nobody connected to the host's loopback
            listener.accept()
    finally:
        listener.close()
    full = points()
    subs = report['submissions']
    assert report['sandbox'] is True and set(subs) == set(attacks)
    expect = {'forger': 'tried to open the database', 'planter': 'tried to write outside its folder',
              'leaker': 'held hidden-test lines', 'forkbomb': 'started processes', 'hog': 'ran out of memory',
              'caller': 'tried to connect a socket'}
    expect['copier'] = 'tried to use the reference solutions, withheld'
    for student, flag in expect.items():
        s = subs[student]
        assert s['graded'] and s['score'] == (0 if student == 'copier' else full), (student, s['score'], s['flags'])
        assert any(flag in f for f in s['flags']), (student, flag, s['flags'])
    assert any('tried to read outside its folder' in f and 'source' in f for f in subs['leaker']['flags'])
    assert len(subs['copier']['flags']) == 1, subs['copier']['flags']   # importing and reading the stub is none
    out = {student: _outputs(course_dir, student) for student in attacks}
    assert 'forged' not in out['forger']
    assert 'planted in' not in out['planter'] and out['planter'].count('refused') == 2
    assert sorted(p.name for p in (course_dir / 'source' / A).iterdir()) == source_files
    assert sorted(p.name for p in (course_dir / 'submitted' / VICTIM / A).iterdir()) == victim_files
    forked = re.search(r'forked (\d+)', out['forkbomb'])
    assert forked and int(forked.group(1)) < 100, out['forkbomb'][-500:]     # the sandbox allows 64 tasks
    assert 'mapped 20 GB' not in out['hog'] and 'allocated 20 GB' not in out['hog']
    assert len([f for f in subs['hog']['flags'] if 'ran out of memory' in f]) == 2, subs['hog']['flags']
    assert 'connected' not in out['caller']
    hidden = hidden_test_lines()
    assert not [h for h in hidden if h in out['leaker']], 'hidden tests left in an output of the graded notebook'
    assert 'seen: [] []' in out['leaker'], out['leaker'][-300:]     # no course, no repository, nothing of the home
    secrets = secret_lines(load(ROOT / 'nbs' / f'{A}.ipynb'))      # solutions and hidden tests
    withheld = f'tinytorch.tensor is withheld while {A} is graded'
    assert withheld in out['copier'] and 'class Tensor' not in out['copier']
    assert not [l for l in secrets if l in out['copier']]

    (course_dir / 'source' / A / 'numpy.py').write_text('raise ImportError("planted")\n')   # as if planted earlier
    victim = course.autograde(course_dir, A, students=[VICTIM], jobs=0, log=lambda *_: None)['submissions'][VICTIM]
    assert victim['score'] == full, victim
    assert any('`numpy.py`' in f for f in victim['flags']), victim['flags']
    with course.gradebook(course_dir) as gb:           # only the autograder's scores, for every student
        grades = [g for sid in list(attacks) + [VICTIM] for nb in gb.find_submission(A, sid).notebooks
                  for g in nb.grades]
        assert grades and all(g.manual_score is None for g in grades)
        assert all(float(gb.find_submission(A, sid).score) == (0 if sid == 'copier' else full)
                   for sid in list(attacks) + [VICTIM])
    pages = course.feedback(course_dir, A, log=lambda *_: None)
    assert set(pages) == set(attacks) | {VICTIM}
    assert_no_hidden_tests_in_feedback(course_dir)
    assert 'held hidden-test lines' in html_text(pages['leaker'])
    import html
    copier = html.unescape(re.sub(r'<[^>]+>', '', Path(pages['copier']).read_text()))
    assert withheld in copier and not [l for l in secrets if l in copier]
    rows = {r['student']: r for r in csv.DictReader(course.grades(course_dir, log=lambda *_: None).open())}
    assert float(rows[VICTIM]['total']) == full and float(rows['forger']['total']) == full
    assert 'tried to open the database' in rows['forger']['flags']


# ---------------------------------------------------------------------------------------------- withheld solutions

W = '06_attention'        # a module with modules before it (which it uses) and after it (which import from it)
# Ways a solution cell could take the reference package's own solutions inside a grading kernel: `{m}` is the graded
# module (tinytorch.<m>), `{names}` what the instructor's solution cell defines, `{attrs}` / `{take}` copy them out
# of the module / the dict `ref`. Each must fail in the sandbox.
ROUTES = {
    'from-import': 'from tinytorch.{m} import {names}',
    'package-attribute': 'import tinytorch\nref = tinytorch.{m}\n{attrs}',
    'importlib': 'import importlib\nref = importlib.import_module("tinytorch.{m}")\n{attrs}',
    'source-text': 'import pathlib, tinytorch\nref = {{"__name__": "copied", "__package__": "tinytorch"}}\n'
                   'exec(pathlib.Path(tinytorch.__file__).with_name("{m}.py").read_text(), ref)\n{take}',
    'bytecode': 'import glob, marshal, os, tinytorch\nref = {{"__name__": "copied", "__package__": "tinytorch"}}\n'
                'pyc = glob.glob(os.path.join(os.path.dirname(tinytorch.__file__), "__pycache__", "{m}.*.pyc"))[0]\n'
                'exec(marshal.loads(open(pyc, "rb").read()[16:]), ref)\n{take}',
    'modidx': 'import importlib.util, os, tinytorch\nfrom tinytorch._modidx import d\n'
              'rel = next(iter(d["syms"]["tinytorch.{m}"].values()))[1]\n'
              'spec = importlib.util.spec_from_file_location("tinytorch.copied", os.path.join(os.path.dirname('
              'os.path.dirname(tinytorch.__file__)), rel))\n'
              'ref = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(ref)\n{attrs}',
    'getsource': 'import inspect, tinytorch\nref = {{"__name__": "copied", "__package__": "tinytorch"}}\n'
                 'exec(inspect.getsource(tinytorch.{m}), ref)\n{take}',
    'later-module': 'import importlib\nref = {{}}\nfor later in {later!r}:\n'
                    '    ref.update(vars(importlib.import_module("tinytorch." + later)))\n{take}',
}


def borrowed(solution_cells, module, later, offset) -> dict:
    """{grade_id: (route, code)}: solution cell i takes its names from the reference package through route
    i + offset (`later-module` only for a cell whose names a later module imports)."""
    routes = list(ROUTES)
    found = {}
    for i, (gid, names) in enumerate(solution_cells.items()):
        route = routes[(i + offset) % len(routes)]
        if route == 'later-module' and not all(any(hasattr(importlib.import_module(f'tinytorch.{l}'), n)
                                                   for l in later) for n in names):
            route = routes[(i + offset + 1) % len(routes)]
        take, attrs = '\n'.join(f'{n} = ref[{n!r}]' for n in names), '\n'.join(f'{n} = ref.{n}' for n in names)
        found[gid] = (route, ROUTES[route].format(m=module, names=', '.join(names), take=take, attrs=attrs,
                                                  later=later))
    return found


@pytest.mark.slow
def test_reference_solutions_are_withheld(tmp_path):
    """A grading kernel imports the reference package (each module graded on its own), whose graded module holds
    that module's solutions. In the sandbox the graded module and every later one are withheld, and no compiled
    copy is left: solution cells that take the reference code through any route in ROUTES score as an untouched
    notebook (0 on every graded cell), flagged where they touched a withheld module; the honest solution, which
    imports the modules before it, keeps full marks. The modules before it stay readable: printing one's source
    (module 00's solutions) is scrubbed and flagged."""
    import py_compile
    from coursetools.autograding import bindings
    from coursetools.notebooks import module_name
    source_nb = load(ROOT / 'nbs' / f'{W}.ipynb')
    module = module_name(source_nb)
    later = [module_name(load(p)) for p in NOTEBOOKS if p.stem > W]
    # the bytecode route needs a compiled copy where an instructor's checkout would have one
    py_compile.compile(str(ROOT / 'tinytorch' / f'{module}.py'), doraise=True)
    cells = {nbgrader_meta(c)['grade_id']: sorted(bindings(source(c), kinds=('def', 'assign')))
             for c in source_nb['cells'] if nbgrader_meta(c).get('solution')}
    course_dir = small_course(tmp_path, [A, W])       # module 00 in source/: its solution lines are scrubbed
    release_nb = nbformat.read(course_dir / 'release' / W / f'{W}.ipynb', as_version=4)
    honest = fill_solutions(copy.deepcopy(release_nb), source_nb)
    nbformat.write(honest, tmp_path / 'honest.ipynb')
    _submit(course_dir, W, 'honest', tmp_path / 'honest.ipynb')
    plans = {}
    for k, student in enumerate(['borrower_a', 'borrower_b']):
        plans[student] = borrowed(cells, module, later, offset=k * len(cells))
        nb = copy.deepcopy(release_nb)
        for c in nb.cells:
            gid = nbgrader_meta(c).get('grade_id')
            if gid in plans[student]:
                c.source = plans[student][gid][1]
        if student == 'borrower_b':
            nb.cells.append(nbformat.v4.new_code_cell('import inspect, tinytorch.tensor\n'
                                                      'print(inspect.getsource(tinytorch.tensor))'))
        nbformat.write(nb, tmp_path / f'{student}.ipynb')
        _submit(course_dir, W, student, tmp_path / f'{student}.ipynb')
    used = {route for plan in plans.values() for route, _ in plan.values()}
    assert used == set(ROUTES), set(ROUTES) - used
    report = course.autograde(course_dir, W, jobs=2, log=lambda *_: None)
    subs = report['submissions']
    full = sum(g['points'] for g in graded_cells(source_nb))
    assert subs['honest']['score'] == full > 0 and not subs['honest']['flags'], subs['honest']
    # {student: {grade_id of a solution cell: (route, points of its graded cells)}}: all 0, as the untouched release
    got = {student: {gid: (route, sum(subs[student]['cells'][g['grade_id']] for g in graded_cells(source_nb)
                                      if g['exercise'] == exercise_of('test_' + gid[2:])))
                     for gid, (route, _) in plan.items()} for student, plan in plans.items()}
    assert all(subs[s]['score'] == 0 for s in plans), got
    for student in plans:
        assert [f for f in subs[student]['flags'] if 'withheld' in f and f'tinytorch.{module}' in f], \
            subs[student]['flags']
    out = _outputs(course_dir, 'borrower_a', W)
    assert f'tinytorch.{module} is withheld while {W} is graded' in out, out[-2000:]
    out = _outputs(course_dir, 'borrower_b', W)
    assert 'class Tensor' in out and not [l for l in secret_lines(load(ROOT / 'nbs' / f'{A}.ipynb')) if l in out]
    assert [f for f in subs['borrower_b']['flags'] if "held lines of the course's solutions" in f]



def _binds(args) -> dict:
    "{target: source} of the --ro-bind arguments of a bwrap command line."
    return {args[i + 2]: args[i + 1] for i, a in enumerate(args) if a == '--ro-bind'}


def test_package_view_withholds_the_graded_module_and_the_later_ones(tmp_path):
    """What a grading kernel sees of the package: the graded module and every later one (by the notebook nbdev's
    header names) as stubs, copies of them under other names left out, `__pycache__` with the kept modules' compiled
    files only; the stub imports, defines nothing, and says why on any name."""
    import importlib.util
    from coursetools.sandbox import package_view
    pkg = tmp_path / 'pkg'
    (pkg / '__pycache__').mkdir(parents=True)
    (pkg / '.ipynb_checkpoints').mkdir()
    header = '"""doc"""\n\n# AUTOGENERATED! DO NOT EDIT! File to edit: ../nbs/{}.ipynb.\n\ndef f():\n    return {!r}\n'
    for name, nb in [('a', '00_a'), ('b', '01_b'), ('c', '02_c'), ('b_old', '01_b')]:
        (pkg / f'{name}.py').write_text(header.format(nb, name))
    (pkg / 'b.py~').write_text(header.format('01_b', 'b'))
    (pkg / '.ipynb_checkpoints' / 'b-checkpoint.py').write_text(header.format('01_b', 'b'))
    (pkg / '__init__.py').write_text('from .a import *\nfrom .b import *\nfrom .c import *\n')
    (pkg / '_modidx.py').write_text('d = {}\n')
    (pkg / 'b_copy.py').write_text('def f():\n    return "b"\n')       # a copy without nbdev's header: unknown
    for pyc in ['a.cpython-311.pyc', '__init__.cpython-311.pyc', 'b.cpython-311.pyc', 'b.cpython-311.opt-1.pyc',
                'c.cpython-312.pyc', 'gone.cpython-311.pyc']:
        (pkg / '__pycache__' / pyc).write_bytes(b'compiled')
    args, withheld = package_view(pkg, 'b', '01_b', tmp_path / 'view')
    assert withheld == ['b', 'b_copy', 'b_old', 'c']
    binds = _binds(args)
    assert set(binds) == {str(pkg / n) for n in ['__init__.py', '_modidx.py', 'a.py', 'b.py', 'b_copy.py', 'b_old.py',
                                                  'c.py', '__pycache__']}
    assert all(binds[str(pkg / n)] == str(pkg / n) for n in ['_modidx.py', 'a.py'])
    init = Path(binds[str(pkg / '__init__.py')]).read_text()         # the package's, and a __getattr__ naming why
    assert init.startswith((pkg / '__init__.py').read_text()) and 'def __getattr__(name):' in init
    assert repr({'f': "tinytorch.b, which is withheld while 01_b is graded: your notebook's own cells define it."}
                )[1:-1] in init
    assert sorted(p.name for p in Path(binds[str(pkg / '__pycache__')]).iterdir()) == ['a.cpython-311.pyc']
    assert args[:4] == ['--perms', '0755', '--tmpfs', str(pkg)] and args[-2:] == ['--remount-ro', str(pkg)]
    stubs = {n: Path(binds[str(pkg / f'{n}.py')]) for n in withheld}
    assert not [n for n, p in stubs.items() if 'return' in p.read_text()]
    spec = importlib.util.spec_from_file_location('tinytorch.b', stubs['b'])
    b = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(b)
    assert b.__all__ == [] and not hasattr(b, '__wrapped__')
    with pytest.raises(ImportError, match="tinytorch.b is withheld while 01_b is graded: your notebook's own cells"):
        b.f
    assert 'tinytorch.c is withheld while 01_b is graded: it comes after 01_b' in stubs['c'].read_text()
    assert 'tinytorch.b_copy is withheld while 01_b is graded: no notebook exported it' in stubs['b_copy'].read_text()


def test_grading_kernel_sees_the_modules_before_the_graded_one_only(tmp_path):
    """In the sandbox, grading 06_attention: `import tinytorch` works and gives every name of the modules before it
    (none of attention's and later ones'); the withheld modules raise an ImportError saying why."""
    from coursetools import sandbox
    import tinytorch
    modules = sandbox.exported_modules(ROOT / 'tinytorch')
    box = sandbox.Sandbox()
    top = sandbox.scratch()
    try:
        assert box.withhold('attention', modules['attention'], top / 'withheld') == \
            [m for m in sorted(modules) if modules[m] >= modules['attention']]
        box.prepare(top / 'work', top / 'ipc', top / 'home')
        code = ('import json, os, tinytorch\n'
                'out = {"names": sorted(n for n in dir(tinytorch) if not n.startswith("_")),\n'
                '       "cache": os.listdir(os.path.join(os.path.dirname(tinytorch.__file__), "__pycache__"))}\n'
                'for stmt in ["from tinytorch.attention import causal_mask", "tinytorch.transformer.GPT", '
                '"from tinytorch.nn import Linear", "from tinytorch import MultiheadAttention", '
                '"from tinytorch import Linear, GPT", "tinytorch.no_such_name"]:\n'
                '    try:\n        exec(stmt)\n        out[stmt] = "ok"\n'
                '    except (ImportError, AttributeError) as e:\n        out[stmt] = type(e).__name__ + ": " + str(e)\n'
                'print(json.dumps(out))')
        r = subprocess.run(box.command([sys.executable, '-c', code], top / 'work', top / 'ipc', top / 'home'),
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        out = json.loads(r.stdout)
    finally:
        shutil.rmtree(top, ignore_errors=True)
    before = [m for m in modules if modules[m] < modules['attention']]
    kept = {n for m in before for n in getattr(importlib.import_module(f'tinytorch.{m}'), '__all__', [])}
    assert kept and kept <= set(out['names']) <= {n for n in dir(tinytorch) if not n.startswith('_')}
    assert not ({'MultiheadAttention', 'causal_mask', 'GPT'} & set(out['names']))
    assert not [f for f in out['cache'] if f.split('.')[0] not in set(before) | {'__init__', '_modidx'}]
    assert out['from tinytorch.attention import causal_mask'] == ("ImportError: tinytorch.attention is withheld "
                                                                 "while 06_attention is graded: your notebook's own "
                                                                 "cells define it.")
    assert out['tinytorch.transformer.GPT'].startswith('ImportError: tinytorch.transformer is withheld while 06_')
    assert out['from tinytorch.nn import Linear'] == 'ok'
    assert out['from tinytorch import MultiheadAttention'] == (       # the package names the module, and why
        "ImportError: MultiheadAttention comes from tinytorch.attention, which is withheld while 06_attention is "
        "graded: your notebook's own cells define it.")
    assert out['from tinytorch import Linear, GPT'].startswith(
        'ImportError: GPT comes from tinytorch.transformer, which is withheld while 06_attention is graded: it comes')
    assert out['tinytorch.no_such_name'] == "AttributeError: module 'tinytorch' has no attribute 'no_such_name'"


@pytest.mark.slow
def test_unsafe_no_sandbox_flags_every_submission(solved_kit, tmp_path, monkeypatch):
    """UNSAFE_NO_SANDBOX=1 grades without the sandbox and flags every submission "graded without a sandbox": in
    the report, the CSV and the gradebook (the formgrader shows the notebook flagged, with the note on top)."""
    course_dir = small_course(tmp_path, [A])
    _submit(course_dir, A, 'honest', solved_kit[0] / 'nbs' / f'{A}.ipynb')
    monkeypatch.setenv('UNSAFE_NO_SANDBOX', '1')
    report = course.autograde(course_dir, A, jobs=0, log=lambda *_: None)
    s = report['submissions']['honest']
    assert report['sandbox'] is False and s['score'] == points()
    assert [f for f in s['flags'] if 'graded without a sandbox' in f] == s['flags'] != []
    row = next(csv.DictReader(course.grades(course_dir, log=lambda *_: None).open()))
    assert 'graded without a sandbox' in row['flags']
    with course.gradebook(course_dir) as gb:
        assert all(nb.flagged for nb in gb.find_submission(A, 'honest').notebooks)
    graded = nbformat.read(course_dir / 'autograded' / 'honest' / A / f'{A}.ipynb', as_version=4)
    assert 'graded without a sandbox' in graded.cells[0].source


def test_no_bwrap_stops_before_grading(tmp_path):
    """Without bwrap, `python -m coursetools autograde` (the first step of `make grade`) grades nothing: it exits
    non-zero saying why and how to install bubblewrap."""
    course_dir = small_course(tmp_path, [A])
    _submit(course_dir, A, 'honest', course_dir / 'release' / A / f'{A}.ipynb')
    env = {k: v for k, v in os.environ.items() if k != 'UNSAFE_NO_SANDBOX'}
    env['PATH'] = str(tmp_path / 'empty')              # no bwrap on the path
    r = subprocess.run([sys.executable, '-m', 'coursetools', 'autograde', str(course_dir), A], cwd=ROOT, env=env,
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
    assert r.returncode == 2, r.stdout + r.stderr
    assert 'apt-get install bubblewrap' in r.stderr and 'UNSAFE_NO_SANDBOX=1' in r.stderr
    assert not (course_dir / 'autograded').exists()
    from coursetools import sandbox
    assert sandbox.check() == '', 'bwrap is installed here and should start'


def test_audit_records_become_flags():
    "What the audit hook records (coursetools/guard.py) becomes flags; anything else in the channel is flagged too."
    from coursetools.autograding import audit_flags
    records = [{'event': 'open', 'path': f'/c/source/{i}'} for i in range(5)] + [
        {'event': 'write', 'path': '/c/gradebook.db'}, {'event': 'connect', 'address': "('127.0.0.1', 80)"},
        {'event': 'process', 'how': 'os.fork', 'what': "''"}, {'event': 'process', 'how': 'os.fork'},
        {'event': 'withheld', 'module': 'tinytorch.attention', 'name': 'causal_mask'},
        {'event': 'sys.addaudithook'}, 'not json', {'event': 'end'}]
    found = audit_flags(records, sandboxed=True, completed=True, max_processes=64)
    assert found[0] == 'tried to read outside its folder: `/c/source/0`, `/c/source/1`, `/c/source/2` (and 2 more)' \
        ': the sandbox stopped it'
    assert found[1:] == ['tried to write outside its folder: `/c/gradebook.db`: the sandbox stopped it',
                         "tried to connect a socket to `('127.0.0.1', 80)`: the sandbox has no network",
                         'started processes (os.fork x2): at most 64 at once in the sandbox',
                         'tried to use the reference solutions, withheld while this module is graded: '
                         '`tinytorch.attention.causal_mask`: it got an ImportError',
                         "tried to add its own audit hook (which sees the tests' code): refused",
                         "wrote into the grader's audit channel"]
    assert audit_flags([{'event': 'end'}], True, True, 64) == []
    assert audit_flags([], True, False, 64) == []            # the kernel died: no end marker expected
    assert 'closed or silenced' in audit_flags([], True, True, 64)[0]
    assert 'without a sandbox' in audit_flags([{'event': 'write', 'path': '/x'}], False, True, 64)[0]


def test_hidden_lines_are_scrubbed_from_every_output():
    "Every kind of output of every cell, and only hidden lines that are not visible elsewhere in the course."
    from coursetools.autograding import HIDDEN_MARK, hidden_lines, scrub_outputs
    nb = nbformat.read(ROOT / 'nbs' / f'{A}.ipynb', as_version=4)
    lines = hidden_lines(nb)
    assert set(lines) == set(hidden_test_lines())
    secret = lines[0]
    cell = nbformat.v4.new_code_cell('print(leak)', outputs=[
        nbformat.v4.new_output('stream', name='stdout', text=f'a\n{secret}\nb'),
        nbformat.v4.new_output('execute_result', data={'text/plain': repr(secret), 'text/html': [secret]},
                               execution_count=1),
        nbformat.v4.new_output('display_data', data={'application/json': {'k': secret}}),
        nbformat.v4.new_output('error', ename='E', evalue=secret, traceback=[f'  {secret}'])])
    nb.cells.append(cell)
    found = scrub_outputs(nb, lines)
    assert found == {len(nb.cells) - 1: 6}
    text = json.dumps(cell.outputs)
    assert secret not in text and text.count(HIDDEN_MARK) == 6


def test_student_ids_keep_their_letters(tmp_path):
    """Student ids: NFC-normalised, letters of every script kept, only what a path or nbgrader's patterns cannot
    hold replaced; two folders that give one id are flagged (collect)."""
    import unicodedata
    from coursetools.course import student_id
    assert student_id('Zoë Ünal-Ørsted 李') == 'Zoë Ünal-Ørsted 李'
    assert student_id(unicodedata.normalize('NFD', 'Zoë Ünal-Ørsted 李')) == 'Zoë Ünal-Ørsted 李'
    assert student_id('Zoë Ünal-Ørsted 李_12345_assignsubmission_file_') == 'Zoë Ünal-Ørsted 李_12345'
    assert student_id('a/b*c?[d]\x00e') == 'a_b_c_d_e'
    assert student_id('..') == 'student' and student_id('  Anna   Maria ') == 'Anna Maria'
    assert student_id('Ольга_7_assignsubmission_file_', r'^(.*)_\d+_assign') == 'Ольга'
    course_dir = small_course(tmp_path, [A])
    export = tmp_path / 'export'
    for name in ('Zoë Ünal-Ørsted 李', unicodedata.normalize('NFD', 'Zoë Ünal-Ørsted 李')):
        (export / name).mkdir(parents=True)
        (export / name / 'notes.txt').write_text('nothing')
    collected = course.collect(course_dir, A, export)
    assert set(collected) == {'Zoë Ünal-Ørsted 李', 'Zoë Ünal-Ørsted 李_2'}
    assert any('gives the same id' in f for f in collected['Zoë Ünal-Ørsted 李_2']['flags'])


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


def test_locked_cells_without_the_read_only_line_are_not_edited():
    "A notebook from a kit made before the `(read-only)` first lines existed: its locked cells are not 'edited'."
    from coursetools.autograding import flags, restructure
    from coursetools.release import strip_locked_marker
    src = nbformat.read(ROOT / 'nbs' / '00_tensor.ipynb', as_version=4)
    released = student_version(src)
    locked = [c for c in released.cells if c.cell_type == 'code' and c.metadata.get('nbgrader', {}).get('locked')]
    assert locked and all(c.source.splitlines()[0].endswith('(read-only)') for c in locked)
    old = copy.deepcopy(released)
    for c in old.cells:
        c.source = strip_locked_marker(c.source)
    assert not [f for f in flags(restructure(old, released, src)) if 'edited' in f]
    edited = copy.deepcopy(old)
    cell = next(c for c in edited.cells if c.metadata.get('nbgrader', {}).get('grade'))
    cell.source += '\nassert True'
    assert [f for f in flags(restructure(edited, released, src)) if 'edited' in f]
