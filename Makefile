# tinytorch: `make course` builds everything, `make test` checks everything. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: course test setup export release docs bench sync clean

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

release: setup  ## student notebooks (solutions and hidden tests removed) -> _release/
	$(BIN)/python -m coursetools release --out _release

docs: setup  ## the student docs site -> _site/ (offline; executed notebooks cached in _docs_cache/; leak-checked)
	$(BIN)/python -m coursetools docs --out _site

sync: setup  ## fail when tinytorch/ is not what nbdev-export makes of nbs/, or nbdev-clean would change a notebook
	$(BIN)/python tools/sync_check.py

test: setup sync  ## every test: the sync gate, then pytest (notebooks, release, grading, library)
	$(BIN)/python -m pytest -n 2 --dist loadgroup

bench: setup  ## benchmarks against PyTorch (when installed), printed and written to bench/results/
	$(BIN)/python -m bench

clean:
	rm -rf _release _proc _docs _site .pytest_cache
