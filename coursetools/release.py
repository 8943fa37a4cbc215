"""The student release: nbgrader's own preprocessors, with a stub per exercise that names it, and the student kit.

The kit (`make release` -> `_release/`) is what a student gets: the student notebooks in `nbs/`, the `tinytorch`
package exported from them (every exercise a stub that raises `NotImplementedError("Exercise NN.M: ...")`), a
`pyproject.toml` that makes it an nbdev project and an installable package, and the `tinytorch` command
(`tinytorch check`, `tinytorch export`, from `coursetools/student.py`); `_release/tinytorch-kit.zip` is the same kit
zipped under `kit/`, as an instructor hands it out.

Locked cells (given code and graded tests) start with a comment saying so (`# graded test of Exercise 00.1
(read-only)`): added at release, so the source notebooks and the docs' code stay as written, and the checksums
and the cells nbgrader restores at autograding include it.
"""
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from nbgrader.preprocessors import (CheckCellMetadata, ClearHiddenTests, ClearMarkScheme, ClearOutput,
                                    ClearSolutions, ComputeChecksums, LockCells, NbGraderPreprocessor)
import nbformat

from .notebooks import STUB, course_notebooks, exercise_of, exercises, graded_id_problems, load, nbgrader_meta

ROOT = Path(__file__).resolve().parent.parent
KIT_MARKER = '.tinytorch-kit'
# The files of coursetools a student needs (the `tinytorch` command): no nbgrader, no solutions.
KIT_TOOLS = ('__init__.py', 'notebooks.py', 'student.py', 'check_kernel.py')


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


LOCKED_MARK = '(read-only)'


def locked_marker(cell, module: str = None) -> str:
    """The first line that tells a student in JupyterLab that a locked cell is read-only: `# graded test of Exercise
    00.1 (read-only)`, `# graded check of module 00 as a whole (read-only)`, `# given code (read-only)`. A cell that
    starts with nbdev directives (`#| export`) gets it as a directive line (`#| given code (read-only)`), which nbdev
    skips: a plain comment there would end the directives and be exported into the package."""
    meta = nbgrader_meta(cell)
    if meta.get('grade'):
        ex = exercise_of(meta.get('grade_id'))
        what = f'graded test of Exercise {ex}' if ex else \
            f"graded check of module {module or meta.get('grade_id', '')[5:7]} as a whole"
    else:
        what = 'given code'
    prefix = '#|' if cell.source.lstrip().startswith('#|') else '#'
    return f'{prefix} {what} {LOCKED_MARK}'


def strip_locked_marker(text: str) -> str:
    "A cell's source without the first line `locked_marker` gave it (the docs show the code as written)."
    first, _, rest = text.partition('\n')
    return rest if first.rstrip().endswith(LOCKED_MARK) and first.lstrip().startswith('#') else text


class LockGivenCells(NbGraderPreprocessor):
    """Lock every given code cell (neither solution nor test): nbgrader metadata `locked: true` and a grade_id
    `given_<cell id>`, so that `LockCells` makes it read-only, `SaveCells` records it, and at autograding
    `OverwriteCells` restores it if a student edited it. Then give every locked code cell (given code and graded
    tests) a first line that says so (`locked_marker`): JupyterLab shows locked cells like the others. Runs before
    `LockCells` and `ComputeChecksums`, so the released cells, their checksums and the cells nbgrader restores all
    carry the marker."""

    def preprocess(self, nb, resources):
        taken = {nbgrader_meta(c).get('grade_id') for c in nb.cells}
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != 'code' or not cell.source.strip() or nbgrader_meta(cell):
                continue
            gid = f"given_{cell.get('id') or i}"
            while gid in taken:
                gid += '_'
            taken.add(gid)
            cell.metadata['nbgrader'] = {'grade': False, 'solution': False, 'locked': True, 'grade_id': gid,
                                         'schema_version': 3}
        for cell in nb.cells:
            meta = nbgrader_meta(cell)
            if cell.cell_type == 'code' and (meta.get('locked') or meta.get('grade')) and not meta.get('solution'):
                first = cell.source.split('\n', 1)[0]
                if not first.rstrip().endswith(LOCKED_MARK):
                    cell.source = locked_marker(cell) + '\n' + cell.source
        return nb, resources


# The order of nbgrader's GenerateAssignment, less the steps that need a gradebook (the course's
# nbgrader_config.py runs the same list with SaveCells, see coursetools/autograding.py).
PREPROCESSORS = [LockGivenCells, LockCells, ExerciseStubs, ClearOutput, CheckCellMetadata, ComputeChecksums,
                 ClearHiddenTests, ClearMarkScheme, ComputeChecksums, CheckCellMetadata]


def student_version(nb):
    "The student version of an instructor notebook (an nbformat node), as `nbgrader generate_assignment` makes it."
    resources = {}
    for cls in PREPROCESSORS:
        nb, resources = cls().preprocess(nb, resources)
    return nb


def _version() -> str:
    m = re.search(r'__version__\s*=\s*["\']([^"\']+)', (ROOT / 'tinytorch' / '__init__.py').read_text())
    return m.group(1) if m else '0.1.0'


# What a student needs beyond the package's own runtime dependencies: export, check, JupyterLab.
STUDENT_TOOLS = ['nbdev>=3.3', 'jupyterlab>=4', 'ipykernel', 'nbclient']


def _dependencies() -> str:
    "The reference package's runtime dependencies (the kit's package imports the same), and the student's tools."
    import json
    import tomllib
    runtime = tomllib.loads((ROOT / 'pyproject.toml').read_text()).get('project', {}).get('dependencies', [])
    return json.dumps(list(dict.fromkeys(runtime + STUDENT_TOOLS)))


def _urls() -> str:
    "The reference package's [project.urls] (nbdev derives the docs links in the exported modules from them)."
    import tomllib
    urls = tomllib.loads((ROOT / 'pyproject.toml').read_text()).get('project', {}).get('urls', {})
    return '\n[project.urls]\n' + ''.join(f'{k} = "{v}"\n' for k, v in urls.items()) if urls else ''


KIT_PYPROJECT = '''\
# Your tinytorch: the package you build in the tinytorch course, exported from your notebooks in nbs/.
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "tinytorch"
version = "{version}"
description = "A transformer built from scratch in NumPy, one notebook at a time"
requires-python = ">=3.11"
dependencies = {dependencies}

[project.scripts]
tinytorch = "coursetools.student:main"
{urls}
[tool.setuptools.packages.find]
include = ["tinytorch", "coursetools"]

# `tinytorch export` (nbdev-export) writes tinytorch/ from the notebooks in nbs/.
[tool.nbdev]
lib_path = "tinytorch"
nbs_path = "nbs"
doc_path = "_docs"
# nbdev-clean keeps nbgrader's cell metadata (the ids your instructor grades by).
allowed_cell_metadata_keys = ["nbgrader", "deletable", "editable"]
jupyter_hooks = false
put_version_in_init = false
'''

KIT_README = '''\
# tinytorch: your course folder

You build a transformer from scratch in NumPy, one notebook at a time. Each notebook in `nbs/` is a chapter with
exercises; the package `tinytorch/` is exported from your notebooks, and later notebooks import it, so the
transformer you train at the end runs on code you wrote.

## Set up (once)

```sh
python3 -m venv .venv                  # Python 3.11 or newer
.venv/bin/pip install -e .             # your tinytorch package, the `tinytorch` command, JupyterLab
.venv/bin/jupyter lab                  # as root: add --allow-root
```

## Work

1. Open `nbs/00_tensor.ipynb` and work through it from the top. Every exercise cell raises
   `NotImplementedError("Exercise 00.1: ...")` until you replace that line with your code. The locked cell under
   an exercise tests it; your instructor's grading adds hidden tests of the same things.
2. Check a notebook at any time (it runs the whole notebook, your file is not changed):
   `.venv/bin/tinytorch check 00` -> every exercise: passed, failed (why, and where), todo (your stub is still
   there) or blocked (by an earlier exercise, which it names). Cells are numbered as JupyterLab counts them.
3. When a notebook passes, export it into your package: `.venv/bin/tinytorch export`. The next notebooks import
   your code from `tinytorch`: an exercise you have not solved yet shows up there as
   `NotImplementedError("Exercise 00.3: ...")`, naming the exercise to finish (and export).
4. Hand in the notebook files themselves (`nbs/NN_name.ipynb`), as your instructor asks. Do not rename them.
   Cells marked `(read-only)` on their first line are locked: they are restored before grading, so editing
   them gains nothing.
'''


def _clear_kit(out: Path):
    "Remove an earlier kit (or an old-style release folder of notebooks) before writing a new one."
    if not out.exists():
        return
    entries = [p for p in out.iterdir()]
    if (out / KIT_MARKER).exists() or all(p.suffix == '.ipynb' for p in entries):
        shutil.rmtree(out)
    elif entries:
        raise FileExistsError(f'{out} exists and is not a tinytorch kit: refusing to overwrite it')


def export_kit(kit) -> subprocess.CompletedProcess:
    "Run nbdev's export in the kit (its notebooks -> its tinytorch/), in a fresh interpreter."
    env = {k: v for k, v in os.environ.items() if k != 'IN_TEST'}   # IN_TEST makes nbdev_export a no-op
    code = 'from nbdev.doclinks import nbdev_export; nbdev_export()'
    r = subprocess.run([sys.executable, '-c', code], cwd=kit, env=env, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RuntimeError(f'nbdev export failed in {kit}:\n{r.stdout}\n{r.stderr}')
    return r


def build_kit(notebooks, out) -> Path:
    """Write the student kit to `out` from student notebooks (already released): pyproject.toml, README.md,
    nbs/, tinytorch/ (exported with nbdev) and the `tinytorch` command. Returns `out`."""
    out = Path(out)
    _clear_kit(out)
    (out / 'nbs').mkdir(parents=True)
    (out / KIT_MARKER).write_text('A tinytorch student kit, written by `python -m coursetools release`.\n')
    (out / 'pyproject.toml').write_text(KIT_PYPROJECT.format(version=_version(), urls=_urls(), dependencies=_dependencies()))
    (out / 'README.md').write_text(KIT_README)
    (out / '.gitignore').write_text(f'.venv/\n__pycache__/\n*.egg-info/\n.ipynb_checkpoints/\n_docs/\n{KIT_ZIP}\n')
    for nb in notebooks:
        shutil.copy(nb, out / 'nbs' / Path(nb).name)
    (out / 'tinytorch').mkdir()
    shutil.copy(ROOT / 'tinytorch' / '__init__.py', out / 'tinytorch' / '__init__.py')
    (out / 'coursetools').mkdir()
    for name in KIT_TOOLS:
        shutil.copy(ROOT / 'coursetools' / name, out / 'coursetools' / name)
    export_kit(out)
    return out


def kit_stubs(kit) -> dict:
    "{'tinytorch/tensor.py': ['00.1', ...]}: the exercises still stubbed out in a kit's package."
    found = {}
    for py in sorted(Path(kit, 'tinytorch').glob('*.py')):
        ids = list(dict.fromkeys(f'{a}.{b}' for a, b in STUB.findall(py.read_text(encoding='utf-8'))))
        if ids:
            found[f'tinytorch/{py.name}'] = ids
    return found


def write_student_notebooks(nbs, out) -> list:
    "Write the student version of every module notebook in `nbs` to the folder `out`; return the paths written."
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in course_notebooks(Path(nbs)):
        problems = graded_id_problems(load(path), path.stem[:2])
        if problems:
            raise ValueError(f'{path.name}: ' + '; '.join(problems))
        nb = student_version(nbformat.read(path, as_version=4))
        dest = out / path.name
        tmp = dest.with_suffix('.ipynb.tmp')
        nbformat.write(nb, tmp)
        tmp.replace(dest)
        written.append(dest)
    return written


KIT_ZIP = 'tinytorch-kit.zip'
_NOT_ZIPPED = ('.venv', '__pycache__', '.ipynb_checkpoints', '_docs')


def zip_kit(kit, dest=None, folder: str = 'kit') -> Path:
    """Zip a kit as README "For students" unpacks it (`unzip tinytorch-kit.zip && cd kit`): every file under
    `folder/`, without the zip itself, a venv or caches. `dest` defaults to `kit/tinytorch-kit.zip`; written
    atomically. Returns `dest`."""
    kit = Path(kit)
    dest = Path(dest) if dest else kit / KIT_ZIP
    tmp = dest.with_name(dest.name + '.tmp')
    with zipfile.ZipFile(tmp, 'w', zipfile.ZIP_DEFLATED) as z:
        for p in sorted(kit.rglob('*')):
            rel = p.relative_to(kit)
            if p in (dest, tmp) or any(part in _NOT_ZIPPED or part.endswith('.egg-info') for part in rel.parts):
                continue
            z.write(p, f'{folder}/{rel.as_posix()}')
    tmp.replace(dest)
    return dest


def release(nbs='nbs', out='_release') -> Path:
    """Write the student kit for the notebooks in `nbs` to `out` (see the module docstring), and the same kit
    zipped as `out/tinytorch-kit.zip` (what an instructor hands out); return `out`."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        notebooks = write_student_notebooks(nbs, tmp)
        kit = build_kit(notebooks, out)
    zip_kit(kit)
    return kit
