"""Every module notebook as course material: its structure, its student release, and an nbgrader round trip.

New notebooks in nbs/ are picked up automatically."""
import ast
import copy
import json
import re
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from conftest import ROOT
from coursetools import grading
from coursetools.notebooks import (SOLUTION, course_notebooks, exercise_of, exercises, fill_solutions,
                                   graded_id_problems, load, nbgrader_meta, secret_lines, source)
from coursetools.release import student_version

NOTEBOOKS = course_notebooks(ROOT / 'nbs')
params = pytest.mark.parametrize('path', NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])


def test_there_are_module_notebooks():
    assert any(p.stem == '00_tensor' for p in NOTEBOOKS)


@params
def test_structure(path):
    nb = load(path)
    cells = nb['cells']
    assert source(cells[0]).strip().startswith('#| default_exp '), 'first cell must be `#| default_exp <module>`'
    names = exercises(nb)                               # raises for a solution cell without an exercise heading
    assert names, 'a module notebook has exercises'
    problems = graded_id_problems(nb, path.stem[:2])    # test_NN_K_name checks Exercise NN.K, test_NN_name the module
    assert not problems, problems
    ids = [nbgrader_meta(c)['grade_id'] for c in cells if nbgrader_meta(c)]
    assert len(ids) == len(set(ids)), f'duplicate grade_id: {sorted(i for i in ids if ids.count(i) > 1)}'
    graded = [c for c in cells if nbgrader_meta(c).get('grade')]
    assert graded, 'no graded test cells'
    for c in graded:
        meta = nbgrader_meta(c)
        assert meta['locked'] and meta.get('points', 0) > 0, meta['grade_id']
        assert '### BEGIN HIDDEN TESTS' in source(c), f"{meta['grade_id']} has no hidden-test part"
    for c in cells:
        meta, src = nbgrader_meta(c), source(c)
        if meta.get('solution') and c['cell_type'] == 'code':
            regions = SOLUTION.findall(src)
            assert regions, f"solution cell {meta['grade_id']} has no solution region"
            for body in regions:
                code = [l for l in body.splitlines() if l.strip() and not l.strip().startswith('#')]
                assert code and not all(l.strip() in ('pass', '...') for l in code), \
                    f"empty solution region in {meta['grade_id']}"
        elif 'BEGIN SOLUTION' in src:
            pytest.fail(f'solution region outside a solution cell: {src[:80]!r}')
        assert not c.get('outputs') and c.get('execution_count') is None, \
            f'commit notebooks without outputs: {src[:60]!r}'


def test_graded_ids_name_their_exercise():
    "A graded cell's id says which exercise it checks (or that it checks the module); a wrong one is refused."
    assert [exercise_of(g) for g in ('test_00_10_softmax', 'test_03_04_same_merges', 'test_00_training')] == \
           ['00.10', '03.4', None]
    nb = load(ROOT / 'nbs' / '00_tensor.ipynb')
    cell = next(c for c in nb['cells'] if nbgrader_meta(c).get('grade_id') == 'test_00_10_softmax')
    cell['metadata']['nbgrader']['grade_id'] = 'test_00_13_softmax'
    problems = graded_id_problems(nb, '00')
    assert any('Exercise 00.13, which the notebook does not have' in p for p in problems), problems
    assert any('Exercise 00.10 has no graded cell' in p for p in problems), problems
    cell['metadata']['nbgrader']['grade_id'] = 'softmax_check'
    assert any("'softmax_check': name it test_00_K_" in p for p in graded_id_problems(nb, '00'))


_CONSTANT_CALLS = ('np.array', 'np.zeros', 'np.ones', 'np.eye', 'np.full', 'np.arange', 'np.float32', 'np.int64')


def _constant(node) -> bool:
    "An expression that is plainly an expected value: a literal, or np.array/np.zeros/... of literals."
    try:
        ast.literal_eval(node)
        return True
    except ValueError:
        pass
    if isinstance(node, ast.Call) and ast.unparse(node.func) in _CONSTANT_CALLS:
        return all(_constant(a) for a in node.args)
    return isinstance(node, ast.Attribute) and ast.unparse(node).startswith('np.')


@params
def test_graded_checks_put_the_students_value_first(path):
    """`tinytorch check` says "yours" for the first argument of test_eq/test_close and "expected" for the second
    (coursetools/check_kernel.py): no graded cell may put a plain expected value first."""
    from IPython.core.inputtransformer2 import TransformerManager
    reversed_calls, calls = [], 0
    for c in load(path)['cells']:
        if not nbgrader_meta(c).get('grade'):
            continue
        for node in ast.walk(ast.parse(TransformerManager().transform_cell(source(c)))):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ('test_eq', 'test_close', 'test_ne') \
                    and len(node.args) >= 2:
                calls += 1
                if _constant(node.args[0]) and not _constant(node.args[1]):
                    reversed_calls.append(ast.unparse(node)[:100])
    assert calls and not reversed_calls, reversed_calls


def test_check_messages_say_which_value_is_which(tmp_path):
    "In the kernel of `tinytorch check`: the same comparisons, messages that name yours and the expected value."
    script = tmp_path / 'cell.py'
    script.write_text(
        'import numpy as np\n'
        'from coursetools.check_kernel import install\n'
        'install()\n'
        'from fastcore.test import test_eq, test_close, test_fail\n'
        'def failure(f):\n'
        '    try:\n'
        '        f()\n'
        '    except AssertionError as e:\n'
        '        return str(e)\n'
        '    return None\n'
        'got = np.array([1.0, 2.0, 3.0])\n'
        'print(repr(failure(lambda: test_eq(got, got.reshape(3, 1)))))\n'
        'print(repr(failure(lambda: test_close(got, np.array([1.0, 2.5, 3.0]), eps=1e-3))))\n'
        'print(repr(failure(lambda: test_fail(lambda: 1 / 0, contains="modulo"))))\n'
        'print(repr(failure(lambda: test_eq(got, np.array([1.0, 2.0, 3.0])))))\n'
        'print(repr(failure(lambda: test_close(got, got + 1e-6))))\n'
        'print(repr(failure(lambda: test_fail(lambda: 1 / 0, contains="division"))))\n')
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=ROOT)
    out = [ast.literal_eval(line) for line in r.stdout.splitlines()]
    assert len(out) == 6, r.stderr
    eq, close, fail = out[:3]
    assert eq.startswith('test_eq(got, got.reshape(3, 1)): not equal\n  yours    (got): array([1., 2., 3.])\n'
                         '  expected (got.reshape(3, 1)):\n'), eq
    assert eq.endswith('the shapes differ: yours (3,), expected (3, 1)'), eq
    assert close.startswith('test_close(got, np.array([1.0, 2.5, 3.0])): not close enough (allowed difference '
                            '0.001)') and 'largest difference 0.5 at index (1,)' in close, close
    assert fail == "test_fail: expected an error whose message contains 'modulo', got ZeroDivisionError: " \
                   "division by zero", fail
    assert out[3:] == [None, None, None], 'what passes must still pass'


@params
def test_nbgrader_metadata_survives_nbdev_clean(path, tmp_path):
    from nbdev.clean import clean_nb
    from nbdev.config import get_config
    cfg = get_config(ROOT)
    assert list(cfg.allowed_cell_metadata_keys) == ['nbgrader', 'deletable', 'editable']
    nb = load(path)
    cleaned = copy.deepcopy(nb)
    clean_nb(cleaned, allowed_cell_metadata_keys=cfg.allowed_cell_metadata_keys)
    before = [c['metadata'] for c in nb['cells']]
    assert [c['metadata'] for c in cleaned['cells']] == before
    assert sum('nbgrader' in m for m in before) >= 2


@params
def test_release_leaks_nothing(path):
    nb = load(path)
    released = student_version(nbformat.read(path, as_version=4))
    text = '\n'.join(c.source for c in released.cells)
    secrets = secret_lines(nb)
    assert secrets, 'expected solution and hidden-test lines to check'
    leaked = sorted(secrets & {line.strip() for line in text.splitlines()})   # whole lines: a hint in the
                                                                               # prose may quote part of one
    assert not leaked, f'solution or hidden-test lines in the student release: {leaked[:5]}'
    assert 'BEGIN SOLUTION' not in text and 'BEGIN HIDDEN TESTS' not in text
    stubs = re.findall(r'raise NotImplementedError\("Exercise (\d\d\.\d+): ', text)
    assert set(stubs) == {name.split(':')[0] for name in exercises(nb).values()}


@params
def test_release_stops_at_first_stub(path, tmp_path):
    released = student_version(nbformat.read(path, as_version=4))
    first = next(iter(exercises(load(path)).values()))
    client = NotebookClient(released, timeout=300, kernel_name='python3', resources={'metadata': {'path': str(tmp_path)}})
    with pytest.raises(CellExecutionError) as err:
        client.execute()
    assert err.value.ename == 'NotImplementedError'
    assert f'Exercise {first}' in err.value.evalue


@pytest.mark.slow
@params
def test_nbgrader_round_trip(path, tmp_path):
    """Through the course directory's nbgrader pipeline (coursetools/autograding.py): the student version with
    every solution filled back in gets full marks and no cell raises; the untouched student version gets 0 on
    every graded cell, without a crash."""
    root = grading.make_course(tmp_path / 'course')
    assignment = grading.add_assignment(root, path)
    released = root / 'release' / assignment / path.name
    assert released.exists()
    solved = fill_solutions(nbformat.read(released, as_version=4), nbformat.read(path, as_version=4))
    nbformat.write(solved, tmp_path / path.name)
    grading.submit(root, assignment, 'solved', tmp_path / path.name)
    grading.submit(root, assignment, 'untouched', released)
    report = grading.autograde(root, assignment, jobs=0)

    full = grading.cell_grades(root, assignment, path.stem, 'solved')
    assert full and all(score == top for score, top in full.values()), \
        {k: v for k, v in full.items() if v[0] != v[1]}
    graded = json.loads((root / 'autograded' / 'solved' / assignment / path.name).read_text())
    errors = [source(c)[:80] for c in graded['cells'] for o in c.get('outputs', []) if o.get('output_type') == 'error']
    assert not errors, (f'cells that raised in the solved notebook: {errors} (the last cell must be '
                        '`if is_nbdev(): nbdev_export()`, see CONTRIBUTING.md)')
    assert not report['submissions']['solved']['flags'], report['submissions']['solved']['flags']

    zero = grading.cell_grades(root, assignment, path.stem, 'untouched')
    assert zero.keys() == full.keys()
    assert all(score == 0 for score, _ in zero.values()), {k: v for k, v in zero.items() if v[0]}


def test_instructor_commands_name_a_wrong_course_or_assignment(tmp_path, capsys):
    "autograde/feedback/grades/collect on a folder that is no course, or an assignment it lacks: one line, exit 2."
    from coursetools.__main__ import main as coursetools_main

    def error(*argv) -> str:
        with pytest.raises(SystemExit) as stop:
            coursetools_main(list(map(str, argv)))
        assert stop.value.code == 2
        return capsys.readouterr().err.strip().splitlines()[-1]
    course = tmp_path / 'course'
    assert 'has no nbgrader_config.py' in error('autograde', course, '00_tensor')
    assert 'has no nbgrader_config.py' in error('grades', course)
    (course / 'source' / '00_tensor').mkdir(parents=True)
    (course / 'source' / '01_nn').mkdir()
    (course / 'nbgrader_config.py').write_text('c = get_config()\n')
    assert "has no assignment '99_nope'; its assignments are 00_tensor, 01_nn" in error('autograde', course, '99_nope')
    assert "has no assignment '0_tensor'" in error('feedback', course, '0_tensor')
    assert 'the export folder' in error('collect', course, '00_tensor', tmp_path / 'no-export')
    (course / 'source' / '00_tensor' / '00_tensor.ipynb').write_text('{}')
    (course / 'reports').mkdir()                   # one submission, and it could not be graded (no notebook in it)
    (course / 'reports' / '00_tensor.json').write_text(json.dumps({'submissions': {'s1': {
        'graded': False, 'max_score': 10, 'flags': ['no notebook in the submission: scored 0']}}}))
    assert coursetools_main(['feedback', str(course), '00_tensor']) == 0      # nothing graded yet: said, not an error
    assert 'no autograded submission of 00_tensor' in capsys.readouterr().out
    page = (course / 'feedback' / 's1' / '00_tensor' / '00_tensor.html').read_text()
    assert 'could not be graded' in page and 'no notebook in the submission' in page   # its page is still written
