"""nbgrader course directories: generate an assignment from an instructor notebook, autograde submissions,
and read the grades back per graded cell."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

CONFIG = '''\
# nbgrader configuration of a tinytorch course directory (written by coursetools).
from coursetools.release import ExerciseStubs
from nbgrader.preprocessors import (ClearHiddenTests, ClearMarkScheme, ClearOutput, CheckCellMetadata,
                                    ComputeChecksums, IncludeHeaderFooter, InstantiateTests, LockCells, SaveCells)

c = get_config()
c.CourseDirectory.root = {root!r}
c.CourseDirectory.course_id = 'tinytorch'
c.CourseDirectory.db_url = 'sqlite:///' + {db!r}
# The student stub names its exercise ("Exercise 00.3: ..."), as in `make release`.
c.GenerateAssignment.preprocessors = [IncludeHeaderFooter, InstantiateTests, LockCells, ExerciseStubs, ClearOutput,
                                      CheckCellMetadata, ComputeChecksums, SaveCells, ClearHiddenTests,
                                      ClearMarkScheme, ComputeChecksums, CheckCellMetadata]
c.Execute.timeout = {timeout}
'''


def make_course(root, timeout: int = 120) -> Path:
    "Create an empty course directory with its nbgrader_config.py and SQLite gradebook location."
    root = Path(root).resolve()
    (root / 'source').mkdir(parents=True, exist_ok=True)
    (root / 'nbgrader_config.py').write_text(CONFIG.format(root=str(root), db=str(root / 'gradebook.db'),
                                                           timeout=timeout))
    return root


def nbgrader(root, *args, check=True) -> subprocess.CompletedProcess:
    "Run an nbgrader command in course directory `root` (with this interpreter's nbgrader)."
    bindir = Path(sys.executable).parent           # nbgrader runs alembic and the kernel from PATH
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    r = subprocess.run([str(bindir / 'nbgrader'), *args], cwd=root, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, env=env)
    if check and r.returncode != 0:
        raise RuntimeError(f"nbgrader {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def add_assignment(root, notebook, assignment=None) -> str:
    "Copy an instructor notebook into source/ and generate the student version into release/."
    notebook = Path(notebook)
    assignment = assignment or notebook.stem
    src = Path(root) / 'source' / assignment
    src.mkdir(parents=True, exist_ok=True)
    shutil.copy(notebook, src / notebook.name)
    nbgrader(root, 'generate_assignment', assignment, '--create', '--force')
    return assignment


def submit(root, assignment, student, notebook_path, name=None):
    "Place a student's notebook where nbgrader collects it: submitted/<student>/<assignment>/<name>."
    dest = Path(root) / 'submitted' / student / assignment
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(notebook_path, dest / (name or Path(notebook_path).name))


def autograde(root, assignment, student=None):
    args = ['autograde', assignment, '--create', '--force']
    if student:
        args += ['--student', student]
    return nbgrader(root, *args)


def cell_grades(root, assignment, notebook, student) -> dict:
    "{grade_id: (score, max_score)} for every graded cell of one autograded submission."
    from nbgrader.api import Gradebook
    with Gradebook(f"sqlite:///{Path(root) / 'gradebook.db'}", 'tinytorch') as gb:
        nb = gb.find_submission_notebook(notebook, assignment, student)
        return {g.name: (g.score, g.max_score) for g in nb.grades}
