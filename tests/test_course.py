"""Every module notebook as course material: its structure, its student release, and an nbgrader round trip.

New notebooks in nbs/ are picked up automatically."""
import copy
import json
import re

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
