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


def graded_cells(nb: dict) -> list:
    """Every graded cell, in order: {'grade_id', 'points', 'exercise'}.

    A graded cell belongs to the exercise whose `### Exercise NN.M:` heading is the last one above it
    (None before the first heading)."""
    current, found = None, []
    for cell in nb['cells']:
        if cell['cell_type'] == 'markdown':
            for m in EXERCISE.finditer(source(cell)):
                current = m.group(1)
        meta = nbgrader_meta(cell)
        if meta.get('grade') and cell['cell_type'] == 'code':
            found.append({'grade_id': meta['grade_id'], 'points': float(meta.get('points', 0)), 'exercise': current})
    return found


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
