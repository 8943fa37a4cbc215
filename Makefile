# tinytorch: `make course` builds everything, `make test` checks everything. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: course test setup export release docs bench notebook-times sync clean demo lm

course: export release docs  ## set up, export the package, build the student release and the docs

setup: $(STAMP)  ## create .venv and install the project with its dev dependencies

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

export: setup  ## nbs/ -> tinytorch/, and nbs/index.ipynb -> README.md
	$(BIN)/nbdev-export
	$(BIN)/python tools/readme.py

release: setup  ## the student kit -> _release/: notebooks, their tinytorch package (stubs), the `tinytorch` command
	$(BIN)/python -m coursetools release --out _release

# Instructors: a term in a course directory outside the repository (COURSE=...), see README "For instructors".
.PHONY: term collect grade formgrader grading-figures grading-dask-figures
need-course = $(if $(COURSE),,$(error set COURSE=<course directory>, e.g. make $@ COURSE=~/tinytorch-course))
need-assignment = $(if $(A),,$(error set A=<assignment>, e.g. make $@ COURSE=$(COURSE) A=00_tensor))
term: setup  ## a course directory at COURSE: nbgrader config, gradebook, every module as an assignment, student kit
	$(need-course)
	$(BIN)/python -m coursetools init $(COURSE)

collect: setup  ## submissions of assignment A (e.g. 00_tensor) from an LMS export FROM (a folder per student)
	$(need-course)
	$(need-assignment)
	$(BIN)/python -m coursetools collect $(COURSE) $(A) $(FROM) $(if $(ID_REGEX),--id-regex '$(ID_REGEX)')

# Every grading kernel runs in a bubblewrap sandbox (on every Dask worker): without bwrap, `grade` stops before
# grading (apt-get install bubblewrap). UNSAFE_NO_SANDBOX=1 grades anyway, flagging every submission "graded
# without a sandbox" (the opt-out is read where `grade` runs and sent with every task).
grade: setup  ## autograde assignment A on Dask (all cores, or SCHEDULER=tcp://host:8786; each kernel sandboxed), feedback HTML, COURSE/grades.csv
	$(need-course)
	$(need-assignment)
	$(BIN)/python -m coursetools autograde $(COURSE) $(A) $(if $(SCHEDULER),--scheduler $(SCHEDULER)) $(if $(JOBS),--jobs $(JOBS)) $(if $(REGRADE),--regrade)
	$(BIN)/python -m coursetools feedback $(COURSE) $(A)
	$(BIN)/python -m coursetools grades $(COURSE)

formgrader: setup  ## JupyterLab in COURSE, with nbgrader's formgrader (Nbgrader menu > Formgrader)
	$(need-course)
	cd $(COURSE) && $(abspath $(BIN))/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root)

grading-figures: setup  ## seconds per submission per module, the speed-up of 2 processes, the sandbox's cost (module 00)
	$(BIN)/python -m coursetools grading-bench --students 4 --jobs 1 2
	$(BIN)/python -m coursetools grading-bench --modules 00 --students 4 --jobs 1 --sandbox 5

grading-dask-figures: setup  ## module 00 on 1 and 2 local Dask workers against the former process pool (8, 24, 48 submissions)
	$(BIN)/python -m coursetools grading-bench --modules 00 --students 8 --jobs 1 2 --engines pool dask --repeat 3 --out bench/grading_dask.json
	$(BIN)/python -m coursetools grading-bench --modules 00 --students 24 --jobs 2 --engines pool dask --repeat 2 --out bench/grading_dask_24.json
	$(BIN)/python -m coursetools grading-bench --modules 00 --students 48 --jobs 2 --engines pool dask --repeat 2 --out bench/grading_dask_48.json

docs: setup  ## the student docs site -> _site/ (offline; executed notebooks cached in _docs_cache/; leak-checked)
	$(BIN)/python -m coursetools docs --out _site

sync: setup  ## fail when tinytorch/ is not what nbdev-export makes of nbs/, or nbdev-clean would change a notebook
	$(BIN)/python tools/sync_check.py

test: setup sync  ## every test: the sync gate, then pytest (notebooks, release, grading, library)
	$(BIN)/python -m pytest -n 2 --dist loadgroup

bench: setup  ## benchmarks against PyTorch (when installed), then the notebook times; printed and written to bench/results/
	$(BIN)/python -m bench
	$(BIN)/python -m bench.notebooks

notebook-times: setup  ## each module notebook top to bottom in a fresh kernel, one BLAS thread: time, slowest cell
	$(BIN)/python -m bench.notebooks

# One BLAS thread: the model's matrices are small, and threads only contend (2-4x slower on a busy 2-core machine).
demo: setup  ## train the guide's transformer to reverse sequences; held-out accuracy, examples, figures -> artifacts/demo/
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m tinytorch.training reversal

# Two BLAS threads: the 2 cores the run is budgeted for (<= 10 min). On a machine busy with other jobs the threads
# contend: run the same command with OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 instead.
lm: setup  ## train module 09's GPT on Python's standard library (resumes); bits per byte, samples, figures -> artifacts/lm/
	OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 MKL_NUM_THREADS=2 $(BIN)/python -m tinytorch.language_model --resume

clean:
	rm -rf _release _proc _docs _docs_build _site .pytest_cache
