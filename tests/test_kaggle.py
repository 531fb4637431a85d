"""One file on Kaggle: kaggle/digit_recognizer.ipynb carries the helper, stays in step, and runs with nothing attached;
kaggle/kernel-metadata.json sets every field that `kaggle kernels push` reads."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from test_where_it_runs import fake_kaggle_tree, run_on_fake_kaggle

import make_kaggle
from conftest import NOTEBOOK, REPO_DIR

KAGGLE_DIR = REPO_DIR / "kaggle"


def test_the_kaggle_notebook_is_in_step_with_the_notebook_and_the_helper(capsys):
    # Edit digit_recognizer.ipynb or mnist_helpers.py and this fails until `make kaggle` writes the file again.
    assert make_kaggle.main(["--check"]) == 0, capsys.readouterr().err
    assert (KAGGLE_DIR / "digit_recognizer.ipynb").read_text(encoding="utf-8") == make_kaggle.expected_text()


def test_the_check_fails_in_one_line_when_the_helper_changed(monkeypatch, tmp_path, capsys):
    helper = tmp_path / "mnist_helpers.py"
    helper.write_text((REPO_DIR / "mnist_helpers.py").read_text(encoding="utf-8") + "# an edit\n", encoding="utf-8")
    monkeypatch.setattr(make_kaggle, "HELPER", helper)
    assert make_kaggle.main(["--check"]) == 1
    assert capsys.readouterr().err.strip() == ("kaggle/digit_recognizer.ipynb is out of step with "
                                               "digit_recognizer.ipynb and mnist_helpers.py; run `make kaggle`.")


def test_its_first_cell_writes_the_helper_hidden_and_the_rest_is_the_notebook():
    kaggle = json.loads((KAGGLE_DIR / "digit_recognizer.ipynb").read_text(encoding="utf-8"))
    notebook = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    first = kaggle["cells"][0]
    assert first["cell_type"] == "code"
    assert first["source"] == "%%writefile mnist_helpers.py\n" + (REPO_DIR / "mnist_helpers.py").read_text()
    assert first["metadata"]["jupyter"] == {"source_hidden": True} and first["metadata"]["_kg_hide-input"] is True
    assert first["metadata"]["_kg_hide-output"] is True  # "Writing mnist_helpers.py" is no one's business
    assert kaggle["cells"][1:] == notebook["cells"] and kaggle["metadata"] == notebook["metadata"]


def test_the_kaggle_notebook_runs_in_a_fake_kaggle_tree_with_no_helper_attached(tmp_path, monkeypatch):
    # As after File > Import Notebook and Add Input > digit-recognizer: no utility script, no dataset with the helper,
    # no parameters; the notebook in src/, run from working/.
    root = tmp_path / "kaggle"
    fake_kaggle_tree(root)
    (root / "src").mkdir()
    notebook = Path(shutil.copy(KAGGLE_DIR / "digit_recognizer.ipynb", root / "src"))
    assert not list(root.rglob("mnist_helpers.py"))

    run_on_fake_kaggle(notebook, root, tmp_path / "executed.ipynb", monkeypatch)

    submission = pd.read_csv(root / "working" / "submission.csv")
    assert list(submission.columns) == ["ImageId", "Label"] and submission["ImageId"].tolist() == list(range(1, 31))
    assert submission["Label"].between(0, 9).all()
    written = root / "working" / "mnist_helpers.py"  # by the first cell: the only copy there is to import
    assert written.read_bytes() == (REPO_DIR / "mnist_helpers.py").read_bytes()


@pytest.mark.parametrize("helper", ["utility script", "written by the one-file notebook"])
def test_on_kaggle_the_workers_import_the_helper_from_where_the_notebook_found_it(tmp_path, monkeypatch, helper):
    # RECIPE="best" with two workers: fresh processes, which must find mnist_helpers.py where the notebook did.
    root = tmp_path / "kaggle"
    fake_kaggle_tree(root)
    (root / "src").mkdir()
    if helper == "utility script":
        (root / "usr" / "lib" / "mnist_helpers").mkdir(parents=True)
        shutil.copy(REPO_DIR / "mnist_helpers.py", root / "usr" / "lib" / "mnist_helpers")
        notebook = Path(shutil.copy(NOTEBOOK, root / "src"))
    else:
        notebook = Path(shutil.copy(KAGGLE_DIR / "digit_recognizer.ipynb", root / "src"))

    executed = run_on_fake_kaggle(notebook, root, tmp_path / "executed.ipynb", monkeypatch,
                                  {"EPOCHS": 1, "RECIPE": "best", "BEST_EPOCHS": 1, "FOLDS": 2, "WORKERS": 2})

    text = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert "2 workers at once (cpu, cpu)" in text
    for fold in (1, 2):  # printed by the workers, each of which imported the helper
        assert re.search(rf"^fold {fold} \(seed {42 + fold}\): \d+\.\d\d% of its \d+ held-out", text, re.MULTILINE)
    assert "the average of all 2 models" in text
    assert pd.read_csv(root / "working" / "submission.csv")["ImageId"].tolist() == list(range(1, 31))


def test_kernel_metadata_sets_every_field_for_a_push_to_a_t4_without_internet():
    metadata = json.loads((KAGGLE_DIR / "kernel-metadata.json").read_text(encoding="utf-8"))
    assert set(metadata) == {"id", "title", "code_file", "language", "kernel_type", "is_private", "enable_gpu",
                             "enable_tpu", "enable_internet", "machine_shape", "dataset_sources",
                             "competition_sources", "kernel_sources", "model_sources"}
    assert re.fullmatch(r"[^/\s]+/[a-z0-9-]+", metadata["id"]), metadata["id"]  # your-username/a-slug
    assert (KAGGLE_DIR / metadata["code_file"]).is_file()
    assert (metadata["language"], metadata["kernel_type"]) == ("python", "notebook")
    assert metadata["competition_sources"] == ["digit-recognizer"]
    # "NvidiaTeslaT4" is the kaggle client's name for GPU T4 x2: asked for by name, not left to the server's choice
    # (kaggle 2.2.5 lists the P100, which Kaggle's PyTorch cannot run, as retired). The client defaults
    # enable_internet to true although its docs say false.
    assert metadata["enable_gpu"] is True and metadata["machine_shape"] == "NvidiaTeslaT4"
    assert metadata["enable_internet"] is False and metadata["enable_tpu"] is False
    assert metadata["dataset_sources"] == metadata["kernel_sources"] == metadata["model_sources"] == []
