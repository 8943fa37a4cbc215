"""Small helpers over a course directory for tests and scripts (the commands are in coursetools/course.py):
make one, add an assignment, place a submission, autograde, read the grades back per graded cell."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from . import course


def make_course(root, timeout: int = 120) -> Path:
    "An empty course directory: nbgrader_config.py from the course/ template, with `timeout` seconds per cell."
    root = Path(root).resolve()
    (root / 'source').mkdir(parents=True, exist_ok=True)
    course.write_config(root, timeout)
    return root


def nbgrader(root, *args, check=True) -> subprocess.CompletedProcess:
    "Run the `nbgrader` command itself in course directory `root` (with this interpreter's nbgrader)."
    bindir = Path(sys.executable).parent           # nbgrader runs alembic and the kernel from PATH
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    r = subprocess.run([str(bindir / 'nbgrader'), *args], cwd=root, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, env=env)
    if check and r.returncode != 0:
        raise RuntimeError(f"nbgrader {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def add_assignment(root, notebook) -> str:
    "Copy an instructor notebook into source/ and generate the student version into release/."
    return course.add_assignment(root, notebook)


def submit(root, assignment, student, notebook_path, name=None):
    "Place a student's notebook where nbgrader collects it: submitted/<student>/<assignment>/<name>."
    dest = Path(root) / 'submitted' / student / assignment
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(notebook_path, dest / (name or Path(notebook_path).name))


def autograde(root, assignment, student=None, jobs=None) -> dict:
    "Autograde (coursetools.course.autograde) quietly; returns the report."
    return course.autograde(root, assignment, students=[student] if student else None, jobs=jobs,
                            log=lambda *_: None)


def cell_grades(root, assignment, notebook, student) -> dict:
    "{grade_id: (score, max_score)} for every graded cell of one autograded submission."
    with course.gradebook(root) as gb:
        nb = gb.find_submission_notebook(notebook, assignment, student)
        return {g.name: (g.score, g.max_score) for g in nb.grades}
