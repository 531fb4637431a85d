# digit-recognizer: `make run` executes the notebook headless, `make test` runs the tests.
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
NOTEBOOK := digit_recognizer.ipynb
OUTPUT_DIR ?= output
# Notebook parameters that `make run` (and `make figures`) hand to papermill when they are set; run: OUTPUT_DIR always.
PARAMETERS := DATA_DIR EPOCHS BATCH_SIZE LR VALID_SIZE SEED TRAIN_ROWS TEST_ROWS FAST PROGRESS LOSS_LINES RESUME \
              DETERMINISTIC RECIPE BEST_EPOCHS BEST_LR ENSEMBLE TTA FINAL_FIT
NOTEBOOK_PARAMETERS = $(strip $(foreach p,$(PARAMETERS),$(if $($(p)),-p $(p) '$($(p))')))
PAPERMILL_PARAMETERS = -p OUTPUT_DIR '$(OUTPUT_DIR)' $(NOTEBOOK_PARAMETERS)

.PHONY: help venv data run figures kernel lab test test-min bench gpu-check clean

help:  ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

# A virtual environment with a requirements file installed: $(call install,VENV,REQUIREMENTS)
define install
	@test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --disable-pip-version-check -q -r $(2)
	@touch $(1)/.requirements-installed
endef

$(STAMP): requirements.txt
	$(call install,$(VENV),requirements.txt)

$(STAMP_MIN): requirements-min.txt
	$(call install,$(VENV_MIN),requirements-min.txt)

venv: $(STAMP)  ## Create .venv and install the pinned requirements.

data: $(STAMP)  ## Put train.csv and test.csv in data/: from Kaggle with credentials, else built from MNIST.
	$(BIN)/python mnist_helpers.py download --data-dir data $(if $(MNIST),--mnist)

run: $(STAMP)  ## Run the notebook headless, fetching the data first if there is none: output/submission.csv.
	@$(BIN)/python scripts/run_notebook.py $(PAPERMILL_PARAMETERS)

figures: $(STAMP)  ## A full RECIPE=best run (about 40 min on 2 CPU cores) into docs/: the executed notebook, README's figures.
	@$(BIN)/python scripts/make_figures.py $(if $(FROM),--from '$(FROM)') $(NOTEBOOK_PARAMETERS)

kernel: $(STAMP)  ## Register .venv as the Jupyter kernel "digit-recognizer (.venv)", for JupyterLab and VS Code.
	$(BIN)/python -m ipykernel install --user --name digit-recognizer --display-name "digit-recognizer (.venv)"

lab: kernel  ## Open the notebook in JupyterLab (from .venv, with its kernel registered).
	$(BIN)/jupyter lab $(NOTEBOOK)

test: $(STAMP)  ## Run the test suite (about 3 minutes on 2 CPU cores).
	$(BIN)/python -m pytest

test-min: $(STAMP_MIN)  ## The same suite under the oldest supported libraries (requirements-min.txt, in .venv-min).
	$(VENV_MIN)/bin/python -m pytest

bench: $(STAMP)  ## Benchmark plain vs fast training (--quick, about 40 s); BENCH_ARGS=--full for 15 epochs each.
	$(BIN)/python benchmarks/bench_training.py $(or $(BENCH_ARGS),--quick)

gpu-check: $(STAMP)  ## On a CUDA machine: GPU tests, benchmark and timed runs (under 8 min); JSON + table in output/gpu-check/.
	$(BIN)/python benchmarks/gpu_check.py --out "$(OUTPUT_DIR)/gpu-check" $(if $(DATA_DIR),--data-dir '$(DATA_DIR)')

clean:  ## Remove outputs and caches (keeps .venv and data/).
	rm -rf $(OUTPUT_DIR) .pytest_cache __pycache__ tests/__pycache__
