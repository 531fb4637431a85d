"""Where users run the notebook: Kaggle's file tree and utility scripts, and devices torchinfo would not pick itself.

The Kaggle root is a temp dir here ($KAGGLE_ROOT, or mnist_helpers.KAGGLE_ROOT in this process).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import papermill
import torch
from conftest import NOTEBOOK, REPO_DIR, make_digits, notebook_namespace, write_test_csv, write_train_csv

import mnist_helpers
from mnist_helpers import FastPath, notebook_code_cells, output_dir_for


def test_the_summary_cells_leave_the_model_on_its_own_device():
    # torchinfo without device= moves the model to CUDA if there is one, else to the CPU: on Apple's MPS the model
    # would land on the CPU and the optimizer then gets CPU weights. "meta" stands in for MPS here: a device the
    # model is on and torchinfo would not pick by itself.
    namespace = notebook_namespace("imports", "model", "model-best")
    namespace.update(device=torch.device("meta"), fast=FastPath(torch.device("meta")))
    for tags, source in notebook_code_cells(NOTEBOOK):
        if {"summary", "mult-adds", "summary-best"} & set(tags):
            exec(compile(source, f"{NOTEBOOK.name}[{tags[0]}]", "exec"), namespace)
    assert {parameter.device.type for parameter in namespace["model"].parameters()} == {"meta"}


def test_output_dir_is_kaggles_working_folder_on_kaggle_and_output_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist_helpers, "KAGGLE_ROOT", tmp_path / "kaggle")
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    assert output_dir_for(None) == Path("output")
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    assert output_dir_for(None) == tmp_path / "kaggle" / "working"
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE")
    (tmp_path / "kaggle" / "working").mkdir(parents=True)  # the folder alone tells, too
    assert output_dir_for(None) == tmp_path / "kaggle" / "working"
    assert output_dir_for("elsewhere") == Path("elsewhere")


def test_the_utility_script_run_with_no_arguments_prints_its_usage_and_succeeds():
    done = subprocess.run([sys.executable, "mnist_helpers.py"], cwd=REPO_DIR, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr  # Kaggle runs a utility script like this when it saves a version
    assert done.stdout.startswith("usage: python mnist_helpers.py") and "download" in done.stdout


def run_import_cell(cwd, kaggle_root, extra=""):
    """Run the notebook's import cell in a fresh Python whose only way to mnist_helpers is what the cell finds."""
    source = next(source for tags, source in notebook_code_cells(NOTEBOOK) if "imports" in tags)
    env = {**os.environ, "KAGGLE_ROOT": str(kaggle_root)}
    env.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, "-c", source + extra], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_the_import_cell_finds_a_utility_script_wherever_kaggle_mounted_it(tmp_path):
    mounted = tmp_path / "kaggle" / "usr" / "lib" / "notebooks" / "someone" / "mnist-helpers"
    mounted.mkdir(parents=True)
    shutil.copy(REPO_DIR / "mnist_helpers.py", mounted)
    (tmp_path / "working").mkdir()
    done = run_import_cell(tmp_path / "working", tmp_path / "kaggle", "\nprint(sys.modules['mnist_helpers'].__file__)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(mounted / "mnist_helpers.py")


def test_the_import_cell_says_how_to_attach_the_helper_when_it_is_nowhere(tmp_path):
    done = run_import_cell(tmp_path, tmp_path / "kaggle")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        "ModuleNotFoundError: mnist_helpers.py not found: on Kaggle attach it with File > Add utility script; "
        "locally start Jupyter in the repository root.")


def test_the_import_cell_keeps_the_error_of_another_missing_package(tmp_path):
    (tmp_path / "mnist_helpers.py").write_text("import a_package_that_is_not_installed\n")
    done = run_import_cell(tmp_path, tmp_path / "kaggle")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        "ModuleNotFoundError: No module named 'a_package_that_is_not_installed'")


def test_a_simulated_kaggle_run_writes_the_submission_where_submit_finds_it(tmp_path, monkeypatch):
    # Kaggle's tree in a temp dir: the competition's data under input/competitions/, the helper only as a utility
    # script under usr/lib/, the notebook run from working/ with KAGGLE_KERNEL_RUN_TYPE set, and no parameters.
    root = tmp_path / "kaggle"
    data = root / "input" / "competitions" / "digit-recognizer"
    data.mkdir(parents=True)
    X, y = make_digits(120)
    write_train_csv(data / "train.csv", X, y)
    write_test_csv(data / "test.csv", make_digits(30, seed=1)[0])
    (root / "usr" / "lib" / "mnist_helpers").mkdir(parents=True)
    shutil.copy(REPO_DIR / "mnist_helpers.py", root / "usr" / "lib" / "mnist_helpers")
    (root / "working").mkdir()
    (root / "src").mkdir()
    notebook = shutil.copy(NOTEBOOK, root / "src")
    monkeypatch.setenv("KAGGLE_ROOT", str(root))
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    monkeypatch.delenv("DATA_DIR", raising=False)
    monkeypatch.delenv("PYTHONPATH", raising=False)

    executed = papermill.execute_notebook(str(notebook), str(tmp_path / "executed.ipynb"), cwd=str(root / "working"),
                                          kernel_name="python3", progress_bar=False)

    submission = pd.read_csv(root / "working" / "submission.csv")
    assert list(submission.columns) == ["ImageId", "Label"] and submission["ImageId"].tolist() == list(range(1, 31))
    assert sorted(p.name for p in (root / "working").iterdir()) == ["checkpoint.pt", "experiments.csv",
                                                                    "history.csv", "submission.csv"]
    text = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert f"data from {data}" in text and f"outputs go to {root / 'working'}" in text
    assert f"wrote {root / 'working' / 'submission.csv'} (30 rows)" in text
