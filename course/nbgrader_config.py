# nbgrader configuration of a tinytorch course directory.
#
# `python -m coursetools init DIR` copies this file into DIR (the course directory). Paths are relative to the
# file, so the directory can be moved; run the commands (and `jupyter lab`, for the formgrader) with the
# tinytorch repository's .venv, which has nbgrader and the reference tinytorch package.
import os

from coursetools import autograding

c = get_config()  # noqa: F821
here = os.path.dirname(os.path.abspath(__file__))

c.CourseDirectory.root = here
c.CourseDirectory.course_id = 'tinytorch'
# The SQLite gradebook; `timeout`: how long a connection waits for another one's write (seconds).
c.CourseDirectory.db_url = 'sqlite:///' + os.path.join(here, 'gradebook.db') + '?timeout=60'

# Student versions: given code cells locked, one stub per exercise that names it (the same as the student kit).
c.GenerateAssignment.preprocessors = autograding.GENERATE
# Autograding: the submission is put back into the course's order with every locked cell restored (changes are
# flagged), then run in a kernel that sees the reference tinytorch only, with guards around the test helpers.
c.Autograde.sanitize_preprocessors = autograding.SANITIZE
c.Autograde.autograde_preprocessors = autograding.AUTOGRADE
c.Restructure.course_root = here
# Feedback HTML: results and messages, not the hidden tests' code; no output may show a hidden-test line or a
# line of the course's solutions (source/*/*.ipynb): they are scrubbed when grading, and again in the feedback.
c.GenerateFeedback.preprocessors = autograding.FEEDBACK
c.ScrubHiddenTests.course_root = here
c.HideHiddenTests.course_root = here

c.Execute.timeout = 120               # seconds per cell: an endless loop is interrupted after this, the cell fails
c.GradingExecute.notebook_timeout = 900   # seconds per notebook: then the rest is not run (its tests score 0)
c.GradingExecute.threads = 1          # BLAS threads per grading kernel (grading runs one kernel per core)
# Each grading kernel runs in a bubblewrap sandbox (coursetools/sandbox.py; UNSAFE_NO_SANDBOX=1 turns it off and
# flags every submission): its address space (GB: a larger allocation fails) and its processes and threads.
c.GradingExecute.memory_gb = 4
c.GradingExecute.max_processes = 64
c.LimitOutput.max_lines = 1000        # lines of output kept per cell
c.LimitOutputSize.max_chars = 100000  # characters kept per output
