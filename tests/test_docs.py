"""README.md and docs/: a one-page README with the results first, one page per topic, the executed copy of the
notebook kept in step with the source, and every figure cut from it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import make_figures
from conftest import NOTEBOOK, REPO_DIR

DOCS = REPO_DIR / "docs"
EXECUTED = DOCS / make_figures.EXECUTED_NAME
README = (REPO_DIR / "README.md").read_text(encoding="utf-8")
PAGES = sorted(DOCS.glob("*.md"))


def code_cells(notebook: dict) -> list[tuple[str, list[str]]]:
    """(source, tags) of each code cell, less the parameters cell that papermill injects."""
    return [("".join(cell["source"]), cell["metadata"].get("tags", [])) for cell in notebook["cells"]
            if cell["cell_type"] == "code" and "injected-parameters" not in cell["metadata"].get("tags", [])]


def executed() -> dict:
    return json.loads(EXECUTED.read_text(encoding="utf-8"))


def test_the_readme_is_one_page_with_the_results_first():
    assert len(README.splitlines()) <= 200
    headings = re.findall(r"^## (.+)$", README, re.MULTILINE)
    assert headings[0] == "Results", headings
    assert re.search(r"^\| .*reference.*\|", README, re.MULTILINE) and 'RECIPE="best"' in README


def test_every_docs_page_is_linked_from_the_readme_and_links_back():
    expected = {"kaggle.md", "where-it-runs.md", "speed.md", "experiments.md", "tests.md", "reproducibility.md",
                "data.md"}
    assert expected <= {page.name for page in PAGES}
    for page in PAGES:
        assert f"(docs/{page.name})" in README, f"README.md does not link docs/{page.name}"
        assert "(../README.md)" in page.read_text(encoding="utf-8"), f"docs/{page.name} does not link back"


def test_every_relative_link_in_the_readme_and_the_docs_points_at_a_file():
    for path in [REPO_DIR / "README.md", *PAGES]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8")):
            if not re.match(r"[a-z]+:", target):
                assert (path.parent / target).exists(), f"{path.name} links {target}, which is not there"


def test_the_executed_copy_runs_the_notebooks_own_code():
    # Change a code cell of digit_recognizer.ipynb and this fails until `make figures` runs it again.
    assert code_cells(executed()) == code_cells(json.loads(NOTEBOOK.read_text(encoding="utf-8")))


def test_the_executed_copy_is_a_complete_full_run_of_the_best_recipe():
    notebook = executed()
    record = notebook["metadata"]["papermill"]
    assert record["exception"] is False or record["exception"] is None
    assert record["parameters"]["RECIPE"] == "best"
    smoke = {"EPOCHS", "TRAIN_ROWS", "TEST_ROWS", "BEST_EPOCHS", "FOLDS", "ROUNDS"} & set(record["parameters"])
    assert not smoke, f"a full run takes the notebook's defaults, not {smoke}"
    cells = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert all(cell["execution_count"] is not None for cell in cells)
    assert not [out for cell in cells for out in cell["outputs"] if out["output_type"] == "error"]
    printed = "".join("".join(out.get("text", "")) for cell in cells for out in cell["outputs"])
    assert "train.csv shape: (42000, 785)" in printed and "test.csv shape:  (28000, 784)" in printed
    # The default recipe: 5 folds, every model scored on its own fold, the out-of-fold figure over all 42,000 images
    # with its standard error, and the average of the 5 models submitted.
    assert len(re.findall(r"^fold \d \(seed \d+\): \d+\.\d\d% of its 8400 held-out images, trained on 33600 ",
                          printed, re.MULTILINE)) == 5
    assert re.search(r"out-of-fold: \d+\.\d\d% ± 0\.0\d \(\d+ mistakes in 42000 images\)", printed)
    assert re.search(r"wrote \S*submission\.csv: the average of all 5 models", printed)


def test_the_executed_copy_is_small_and_reads_well_on_github():
    notebook = executed()
    assert EXECUTED.stat().st_size < 1_500_000
    assert "widgets" not in notebook["metadata"]
    outputs = [out for cell in notebook["cells"] if cell["cell_type"] == "code" for out in cell["outputs"]]
    assert not [out for out in outputs if make_figures.WIDGET_VIEW in out.get("data", {})]
    printed = "".join("".join(out.get("text", "")) for out in outputs)
    assert "0%|" not in printed and "it/s]" not in printed  # no frozen progress bars
    text = EXECUTED.read_text(encoding="utf-8")
    assert str(REPO_DIR) not in text  # no path of the machine that ran it, wherever this clone is:
    machine_path = re.search(r"(?<![\w.])/(home|work|Users|tmp|root)/\S*", text)
    assert machine_path is None, machine_path


def test_every_figure_is_the_executed_notebooks_own_image_and_is_shown():
    notebook = executed()
    shown = README + "".join(page.read_text(encoding="utf-8") for page in PAGES)
    for tag, index, name in make_figures.FIGURES:
        assert (DOCS / name).read_bytes() == make_figures.cell_images(notebook, tag)[index], name
        assert f"(docs/{name})" in shown or f"({name})" in shown, f"neither README.md nor docs/ shows {name}"
        assert (DOCS / name).stat().st_size < 150_000, name
    plot = DOCS / make_figures.ACCURACY_PLOT
    assert plot.stat().st_size < 150_000 and f"({plot.name})" in (DOCS / "experiments.md").read_text()


def test_the_readme_and_the_notebook_link_the_executed_copy():
    assert "(docs/digit_recognizer.executed.ipynb)" in README
    intro = "".join(json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"][0]["source"])
    assert "(docs/digit_recognizer.executed.ipynb)" in intro


def test_cleaning_drops_widgets_timings_and_paths_and_keeps_the_rest():
    widget = {"output_type": "display_data", "metadata": {},
              "data": {"text/plain": "epochs:   0%|          | 0/15 [00:00<?, ?it/s]", make_figures.WIDGET_VIEW: {}}}
    printed = {"output_type": "stream", "name": "stdout",
               "text": ["data from /home/me/data\n", "outputs go to /home/me\n"]}
    notebook = {"metadata": {"widgets": {"state": {}}, "papermill": {
                    "input_path": "/home/me/digit_recognizer.ipynb", "output_path": "/home/me/output/x.ipynb",
                    "environment_variables": {"HOME": "/home/me"}, "parameters": {"RECIPE": "best"}}},
                "cells": [{"cell_type": "code", "metadata": {"tags": ["train"], "papermill": {"duration": 1.0},
                                                             "execution": {"iopub.status.busy": "x"}},
                           "outputs": [widget, printed], "source": "", "execution_count": 1},
                          {"cell_type": "markdown", "metadata": {}, "source": "# Title"}]}
    cleaned = make_figures.clean_executed(notebook, root=Path("/home/me"))
    assert cleaned["metadata"] == {"papermill": {"input_path": "digit_recognizer.ipynb", "output_path": "x.ipynb",
                                                 "parameters": {"RECIPE": "best"}}}
    assert cleaned["cells"][0]["metadata"] == {"tags": ["train"]}
    assert cleaned["cells"][0]["outputs"] == [{**printed, "text": "data from data\noutputs go to .\n"}]
    assert cleaned["cells"][1] == {"cell_type": "markdown", "metadata": {}, "source": "# Title"}
