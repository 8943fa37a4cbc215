"""The student release: nbgrader's own preprocessors, with a stub per exercise that names it."""
import re
from pathlib import Path

from nbgrader.preprocessors import (CheckCellMetadata, ClearHiddenTests, ClearMarkScheme, ClearOutput,
                                    ClearSolutions, ComputeChecksums, LockCells)
import nbformat

from .notebooks import course_notebooks, exercises, nbgrader_meta


class ExerciseStubs(ClearSolutions):
    """`ClearSolutions` whose stub says which exercise it is: raise NotImplementedError("Exercise 00.3: ...")."""

    def preprocess(self, nb, resources):
        self._names = exercises(nb)
        return super().preprocess(nb, resources)

    def preprocess_cell(self, cell, resources, cell_index):
        name = self._names.get(nbgrader_meta(cell).get('grade_id'))
        if name is not None:
            msg = f'Exercise {name}'.replace('\\', '\\\\').replace('"', '\\"')
            self.code_stub = dict(self.code_stub, python=f'raise NotImplementedError("{msg}")')
        return super().preprocess_cell(cell, resources, cell_index)


# The order of nbgrader's GenerateAssignment, less the steps that need a gradebook.
PREPROCESSORS = [LockCells, ExerciseStubs, ClearOutput, CheckCellMetadata, ComputeChecksums,
                 ClearHiddenTests, ClearMarkScheme, ComputeChecksums, CheckCellMetadata]


def student_version(nb):
    "The student version of an instructor notebook (an nbformat node), as `nbgrader generate_assignment` makes it."
    resources = {}
    for cls in PREPROCESSORS:
        nb, resources = cls().preprocess(nb, resources)
    return nb


def release(nbs='nbs', out='_release') -> list:
    "Write the student version of every module notebook in `nbs` to `out`; return the paths written."
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in course_notebooks(Path(nbs)):
        nb = student_version(nbformat.read(path, as_version=4))
        dest = out / path.name
        tmp = dest.with_suffix('.ipynb.tmp')
        nbformat.write(nb, tmp)
        tmp.replace(dest)
        written.append(dest)
    return written
