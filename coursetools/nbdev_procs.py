"""nbdev processors: `export_procs` (the package) and `doc_procs` (`nbdev-docs`, `nbdev-proc-nbs`, `nbdev-preview`),
both configured in pyproject.toml's `[tool.nbdev]`."""
import re

_MARKER = re.compile(r'^[ \t]*### (BEGIN|END) SOLUTION[ \t]*\n?', re.MULTILINE)


def strip_solution_markers(cell):
    "Drop nbgrader's solution markers from exported code, so the package reads as plain Python."
    if cell.cell_type == 'code' and 'SOLUTION' in cell.source:
        cell.source = _MARKER.sub('', cell.source)


class student_docs:
    """Docs from nbdev's own commands show what a student sees: every solution region becomes the exercise's stub
    and every hidden test is removed, by nbgrader's preprocessors (as `make release` does), outputs of those
    cells dropped. nbdev runs doc processors after its own, on the cells it kept."""

    def __init__(self, nb):
        self.nb = nb

    def begin(self):
        from .notebooks import exercises
        from .release import ExerciseStubs
        from nbgrader.preprocessors import ClearHiddenTests
        self.stubs, self.hidden = ExerciseStubs(), ClearHiddenTests()
        self.stubs._names = exercises(self.nb)

    def __call__(self, cell):
        meta = cell.get('metadata', {}).get('nbgrader', {})
        if cell.cell_type != 'code' or not (meta or 'BEGIN SOLUTION' in cell.source or 'HIDDEN TESTS' in cell.source):
            return
        if not meta.get('solution') and 'BEGIN SOLUTION' in cell.source:
            meta = cell.metadata.setdefault('nbgrader', {})   # nbgrader clears regions only in solution cells
            meta.update(solution=True, grade_id=meta.get('grade_id', ''))
        self.stubs.preprocess_cell(cell, {'language': 'python'}, 0)
        self.hidden.preprocess_cell(cell, {'language': 'python'}, 0)
        if meta.get('solution') or meta.get('grade'):
            cell.outputs = []
