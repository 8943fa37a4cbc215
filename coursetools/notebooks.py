"""Reading the course notebooks: exercises, solution regions and hidden tests."""
import json
import re
from pathlib import Path

EXERCISE = re.compile(r'^#{2,4} Exercise (\d\d\.\d+): (.+?)\s*$', re.MULTILINE)
SOLUTION = re.compile(r'^[ \t]*### BEGIN SOLUTION[^\n]*\n(.*?)^[ \t]*### END SOLUTION', re.MULTILINE | re.DOTALL)
HIDDEN = re.compile(r'^[ \t]*### BEGIN HIDDEN TESTS[^\n]*\n(.*?)^[ \t]*### END HIDDEN TESTS', re.MULTILINE | re.DOTALL)


def course_notebooks(nbs: Path) -> list:
    "The module notebooks of the course (`NN_name.ipynb`), in order."
    return sorted(p for p in Path(nbs).glob('[0-9][0-9]_*.ipynb'))


def load(path) -> dict:
    return json.loads(Path(path).read_text(encoding='utf-8'))


def source(cell) -> str:
    src = cell['source']
    return src if isinstance(src, str) else ''.join(src)


def nbgrader_meta(cell) -> dict:
    return cell.get('metadata', {}).get('nbgrader', {})


def exercises(nb: dict) -> dict:
    """Map each solution cell's grade_id to its exercise, e.g. {'ex00_01_unbroadcast': '00.1: implement unbroadcast'}.

    An exercise is announced by a markdown heading `### Exercise NN.M: title`; it covers the solution cells that
    follow it, up to the next such heading. A solution cell before any heading is an error.
    """
    current, found = None, {}
    for cell in nb['cells']:
        if cell['cell_type'] == 'markdown':
            m = EXERCISE.search(source(cell))
            if m:
                current = f'{m.group(1)}: {m.group(2)}'
        meta = nbgrader_meta(cell)
        if meta.get('solution') and cell['cell_type'] == 'code':
            if current is None:
                raise ValueError(f"solution cell {meta.get('grade_id')!r} has no '### Exercise NN.M: ...' heading above it")
            found[meta['grade_id']] = current
    return found


def solution_regions(nb: dict) -> list:
    "The text of every solution region in the notebook."
    return [m.group(1) for c in nb['cells'] if c['cell_type'] == 'code' for m in SOLUTION.finditer(source(c))]


def hidden_tests(nb: dict) -> list:
    "The text of every hidden-test region in the notebook."
    return [m.group(1) for c in nb['cells'] if c['cell_type'] == 'code' for m in HIDDEN.finditer(source(c))]


def public_lines(nb: dict) -> set:
    "Stripped lines of the notebook outside every solution and hidden-test region (what students see anyway)."
    public = set()
    for c in nb['cells']:
        text = HIDDEN.sub('', SOLUTION.sub('', source(c)))
        public.update(line.strip() for line in text.splitlines())
    return public


def secret_lines(nb: dict, public: set = frozenset()) -> set:
    """Lines of solutions and hidden tests that must never reach a student or the public site.

    A line counts only if it is substantial (over 12 characters, not a comment) and does not also appear outside
    every solution and hidden-test region, in this notebook or in `public` (the other notebooks' public lines:
    a line such as `rng = np.random.default_rng(6)` shown in one module is no secret in another)."""
    public = public_lines(nb) | set(public)
    shown = '\n'.join(public)              # leak checks search text, so a line inside a public line is public
    lines = set()
    for region in solution_regions(nb) + hidden_tests(nb):
        for line in region.splitlines():
            s = line.strip()
            if len(s) > 12 and not s.startswith('#') and s not in public and s not in shown:
                lines.add(s)
    return lines


STUB = re.compile(r'NotImplementedError\(["\']?Exercise (\d\d)\.(\d+)')
_DEFAULT_EXP = re.compile(r'^#\|\s*default_exp\s+(\S+)', re.MULTILINE)
_MARKER = re.compile(r'^[ \t]*### (BEGIN|END) SOLUTION[^\n]*\n?', re.MULTILINE)


def module_name(nb: dict):
    "The module a notebook exports to (`#| default_exp tensor` -> 'tensor'), or None."
    for cell in nb['cells']:
        if cell['cell_type'] == 'code':
            m = _DEFAULT_EXP.search(source(cell))
            if m:
                return m.group(1)
    return None


def exercise_titles(nb: dict) -> dict:
    "{'00.1': 'implement unbroadcast', ...} in notebook order."
    return {m.group(1): m.group(2) for c in nb['cells'] if c['cell_type'] == 'markdown'
            for m in EXERCISE.finditer(source(c))}


# Graded test ids name what they check: `test_NN_K_name` checks Exercise NN.K (an exercise may have several such
# cells); `test_NN_name` (no exercise number) is a check of module NN as a whole, e.g. its end-to-end training run.
TEST_ID = re.compile(r'^test_(\d\d)_(?:(\d+)_)?([A-Za-z]\w*)$')


def exercise_of(grade_id: str):
    "The exercise a graded cell checks, from its id: 'test_00_10_softmax' -> '00.10'; a module check -> None."
    m = TEST_ID.match(grade_id or '')
    return f'{m.group(1)}.{int(m.group(2))}' if m and m.group(2) else None


def module_checks_label(prefix: str) -> str:
    "The name the module-level checks of module `prefix` go by (a grades CSV column): '00' -> '00.module'."
    return f'{prefix}.module'


def graded_cells(nb: dict) -> list:
    """Every graded cell, in order: {'grade_id', 'points', 'exercise', 'index'}.

    `exercise` is the exercise the cell checks, read from its id (`test_NN_K_...` -> 'NN.K'), or None for a check
    of the module as a whole (`test_NN_name`); `index` is the cell's 0-based position in the notebook."""
    return [{'grade_id': nbgrader_meta(c)['grade_id'], 'points': float(nbgrader_meta(c).get('points', 0)),
             'exercise': exercise_of(nbgrader_meta(c)['grade_id']), 'index': i}
            for i, c in enumerate(nb['cells']) if nbgrader_meta(c).get('grade') and c['cell_type'] == 'code']


def graded_id_problems(nb: dict, prefix: str) -> list:
    """What is wrong with the graded cells' ids of module `prefix` ('00'): each must be `test_NN_K_name` for an
    exercise NN.K of the notebook, below that exercise's solution cells, or `test_NN_name` for a module check;
    every exercise must have a graded cell. Returns messages (empty when all is well)."""
    problems, solution_at = [], {}
    names = exercises(nb)
    for i, c in enumerate(nb['cells']):
        meta = nbgrader_meta(c)
        if meta.get('solution') and c['cell_type'] == 'code':
            solution_at[names[meta['grade_id']].split(':')[0]] = i
    titles = exercise_titles(nb)
    tested = set()
    for g in graded_cells(nb):
        m = TEST_ID.match(g['grade_id'])
        if not m or m.group(1) != prefix:
            problems.append(f"graded cell {g['grade_id']!r}: name it test_{prefix}_K_<what> (checks Exercise "
                            f"{prefix}.K) or test_{prefix}_<what> (a check of the module as a whole)")
        elif g['exercise'] is not None:
            if g['exercise'] not in titles:
                problems.append(f"graded cell {g['grade_id']!r} checks Exercise {g['exercise']}, which the notebook "
                                f"does not have (its exercises: {', '.join(titles)})")
            elif g['index'] < solution_at.get(g['exercise'], -1):
                problems.append(f"graded cell {g['grade_id']!r} comes before Exercise {g['exercise']}'s solution cell")
            tested.add(g['exercise'])
    problems += [f'Exercise {k} has no graded cell test_{prefix}_{k.split(".")[1]}_<what>'
                 for k in titles if k not in tested]
    return problems


def strip_solution_markers(text: str) -> str:
    "Code with nbgrader's `### BEGIN SOLUTION` / `### END SOLUTION` lines removed."
    return _MARKER.sub('', text)


def fill_solutions(student_nb, instructor_nb):
    """A student notebook with every solution cell filled in from the instructor notebook (matched by grade_id,
    markers removed), as a student who solved everything would hand it in. Works on nbformat nodes or dicts."""
    solved = {nbgrader_meta(c)['grade_id']: strip_solution_markers(source(c))
              for c in instructor_nb['cells'] if nbgrader_meta(c).get('solution')}
    for cell in student_nb['cells']:
        gid = nbgrader_meta(cell).get('grade_id')
        if nbgrader_meta(cell).get('solution') and gid in solved:
            cell['source'] = solved[gid]
    return student_nb
