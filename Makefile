# digit-recognizer: `make run` executes the notebook headless, `make test` runs the lint and the tests.
# Both create .venv with the pinned requirements first. Notebook parameters pass through:
#   DATA_DIR=../shared/digit-recognizer make run
#   make run EPOCHS=1 TRAIN_ROWS=2000
.DEFAULT_GOAL := help
SHELL := bash

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.requirements-installed
VENV_MIN ?= .venv-min
STAMP_MIN := $(VENV_MIN)/.requirements-installed
VENV_KAGGLE ?= .venv-kaggle
STAMP_KAGGLE := $(VENV_KAGGLE)/.requirements-installed
# Python 3.12, as in Kaggle's image: python3.12 on the PATH if it runs, else pyenv's newest 3.12.
PYTHON_KAGGLE ?= $(shell for p in "$$(command -v python3.12)" $$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.12.*/bin/python3.12 \
                   2>/dev/null | sort -rV); do [ -n "$$p" ] && "$$p" -c 'import sys; assert sys.version_info[:2] == (3, 12)' \
                   2>/dev/null && echo "$$p" && break; done)
NOTEBOOK := digit_recognizer.ipynb
# The test targets spread the tests over TEST_PROCESSES pytest-xdist workers, each test file in one of them (its
# module's shared runs made once); auto: one per core. TEST_PROCESSES=0 runs them all in one process.
TEST_PROCESSES ?= auto
PYTEST_XDIST = -n $(TEST_PROCESSES) --dist loadfile
OUTPUT_DIR ?= output
# Notebook parameters that `make run` (and `make figures`) hand to papermill when they are set; run: OUTPUT_DIR always.
PARAMETERS := DATA_DIR EPOCHS BATCH_SIZE LR VALID_SIZE SEED TRAIN_ROWS TEST_ROWS FAST PROGRESS LOSS_LINES RESUME \
              DETERMINISTIC RECIPE BEST_EPOCHS BEST_LR FOLDS ROUNDS WORKERS TTA
NOTEBOOK_PARAMETERS = $(strip $(foreach p,$(PARAMETERS),$(if $($(p)),-p $(p) '$($(p))')))
PAPERMILL_PARAMETERS = -p OUTPUT_DIR '$(OUTPUT_DIR)' $(NOTEBOOK_PARAMETERS)

.PHONY: help venv data run figures kaggle kernel lab lint test test-min test-kaggle bench gpu-check gpu-data clean

help:  ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

# A virtual environment with a requirements file installed: $(call install,PYTHON,VENV,REQUIREMENTS)
define install
	@test -x $(2)/bin/python || $(1) -m venv $(2)
	$(2)/bin/python -m pip install --disable-pip-version-check -q -r $(3)
	@touch $(2)/.requirements-installed
endef

$(STAMP): requirements.txt
	$(call install,$(PYTHON),$(VENV),requirements.txt)

$(STAMP_MIN): requirements-min.txt
	$(call install,$(PYTHON),$(VENV_MIN),requirements-min.txt)

$(STAMP_KAGGLE): requirements-kaggle.txt
	@test -n "$(PYTHON_KAGGLE)" || { echo "error: make test-kaggle needs Python 3.12 (python3.12 on the PATH, or pyenv's 3.12); set PYTHON_KAGGLE=/path/to/python3.12." >&2; exit 1; }
	$(call install,$(PYTHON_KAGGLE),$(VENV_KAGGLE),requirements-kaggle.txt)

venv: $(STAMP)  ## Create .venv and install the pinned requirements.

data: $(STAMP)  ## Put train.csv and test.csv in data/: from Kaggle with credentials, else built from MNIST.
	$(BIN)/python tools/get_data.py --data-dir data $(if $(MNIST),--mnist)

run: $(STAMP)  ## Run the notebook headless, fetching the data first if there is none: output/submission.csv.
	@$(BIN)/python tools/run_notebook.py $(PAPERMILL_PARAMETERS)

figures: $(STAMP)  ## A full RECIPE=best run (30 to 45 min on 2 CPU cores) into docs/: the executed notebook, its figures.
	@$(BIN)/python tools/make_figures.py $(if $(FROM),--from '$(FROM)') $(NOTEBOOK_PARAMETERS)

kaggle: $(STAMP)  ## Write kaggle/digit_recognizer.ipynb: the notebook with the helper inside, to import on Kaggle.
	$(BIN)/python tools/make_kaggle.py

kernel: $(STAMP)  ## Register .venv as the Jupyter kernel "digit-recognizer (.venv)", for JupyterLab and VS Code.
	$(BIN)/python -m ipykernel install --user --name digit-recognizer --display-name "digit-recognizer (.venv)"

lab: kernel  ## Open the notebook in JupyterLab (from .venv, with its kernel registered).
	$(BIN)/jupyter lab $(NOTEBOOK)

lint: $(STAMP)  ## ruff check: the helper, the notebook's code cells, tools, benchmarks and tests.
	$(BIN)/ruff check

test: lint  ## Lint, then the whole test suite on every core; pytest's last line gives the count and the time.
	$(BIN)/python -m pytest $(PYTEST_XDIST)

test-min: $(STAMP_MIN)  ## The suite less whole_pipeline, with the oldest NumPy, matplotlib, scikit-learn: requirements-min.txt.
	$(VENV_MIN)/bin/python -m pytest $(PYTEST_XDIST) -m "not whole_pipeline"

test-kaggle: $(STAMP_KAGGLE)  ## The suite less whole_pipeline, under Kaggle's image (Python 3.12, torch 2.10): requirements-kaggle.txt.
	$(VENV_KAGGLE)/bin/python -m pytest $(PYTEST_XDIST) -m "not whole_pipeline"

bench: $(STAMP)  ## Benchmark plain vs fast training (--quick); BENCH_ARGS=--full for 15 epochs each.
	$(BIN)/python benchmarks/bench_training.py $(or $(BENCH_ARGS),--quick)

gpu-check: $(STAMP)  ## On a CUDA machine: GPU tests, benchmark and timed runs (under 8 min); JSON + table in output/gpu-check/.
	$(BIN)/python benchmarks/gpu_check.py --out "$(OUTPUT_DIR)/gpu-check" $(if $(DATA_DIR),--data-dir '$(DATA_DIR)')

gpu-data:  ## Gzip DATA_DIR's (or data/'s) CSVs into .gpu/data/ (git-ignored), to carry to a GPU machine for gpu-check.
	@mkdir -p .gpu/data
	for name in train test; do gzip -c "$(or $(DATA_DIR),data)/$$name.csv" > .gpu/data/$$name.csv.gz.tmp && \
	  mv .gpu/data/$$name.csv.gz.tmp .gpu/data/$$name.csv.gz || exit 1; done

clean:  ## Remove outputs and caches (keeps the virtual environments and data/).
	rm -rf $(OUTPUT_DIR) .pytest_cache .ruff_cache __pycache__ tests/__pycache__ tools/__pycache__ benchmarks/__pycache__
