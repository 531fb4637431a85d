"""Where users run the notebook: Kaggle's file tree and its mounts, and devices torchinfo would not pick itself.

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
import pytest
import torch

import mnist_helpers
from conftest import (
    NOTEBOOK,
    REPO_DIR,
    make_digits,
    notebook_namespace,
    run_as_a_script,
    write_test_csv,
    write_train_csv,
)
from mnist_helpers import Runtime, output_dir_for
from notebook_cells import notebook_code_cells


def test_the_summary_cells_leave_the_model_on_its_own_device():
    # torchinfo without device= moves the model to CUDA if there is one, else to the CPU: on Apple's MPS the model
    # would land on the CPU and the optimizer then gets CPU weights. "meta" stands in for MPS here: a device the
    # model is on and torchinfo would not pick by itself.
    namespace = notebook_namespace("imports", "model", "model-best")
    namespace.update(device=torch.device("meta"), runtime=Runtime(torch.device("meta")))
    for tags, source in notebook_code_cells(NOTEBOOK):
        if {"summary", "mult-adds", "summary-best"} & set(tags):
            exec(compile(source, f"{NOTEBOOK.name}[{tags[0]}]", "exec"), namespace)
    assert {parameter.device.type for parameter in namespace["model"].parameters()} == {"meta"}


def test_output_dir_is_kaggles_working_folder_on_kaggle_and_output_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist_helpers, "KAGGLE_ROOT", tmp_path / "kaggle")
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    assert output_dir_for(None, create=False) == Path("output")
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    assert output_dir_for(None) == tmp_path / "kaggle" / "working"
    assert (tmp_path / "kaggle" / "working").is_dir()  # created, as the notebook needs it
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE")
    assert output_dir_for(None) == tmp_path / "kaggle" / "working"  # the folder alone tells, too
    assert output_dir_for(tmp_path / "elsewhere") == tmp_path / "elsewhere" and (tmp_path / "elsewhere").is_dir()
    assert output_dir_for(tmp_path / "not-made", create=False) == tmp_path / "not-made"
    assert not (tmp_path / "not-made").exists()


def test_the_utility_script_run_with_no_arguments_says_what_it_is_and_succeeds(capsys):
    assert run_as_a_script(REPO_DIR / "mnist_helpers.py") == 0  # Kaggle runs a utility script so when it saves it
    printed = capsys.readouterr().out
    assert printed.startswith("mnist_helpers.py: the utilities that digit_recognizer.ipynb imports")
    assert "tools/get_data.py" in printed and "tools/score.py" in printed
    assert run_as_a_script(REPO_DIR / "mnist_helpers.py", "download") == 2
    assert "tools/get_data.py" in capsys.readouterr().out  # where the command line went


def stand_in_helper(folder: Path) -> Path:
    """A mnist_helpers.py that imports nothing: the set-up cell only has to find it (a fresh Python would otherwise
    spend seconds importing torch for each of these tests)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mnist_helpers.py"
    path.write_text('"""A stand-in for the helper, for the set-up cell to find."""\n')
    return path


def run_setup_cell(cwd: Path, kaggle_root: Path, extra: str = "") -> subprocess.CompletedProcess:
    """Run the notebook's set-up cell, then its import of the helper, in a fresh Python that has only what the cell
    finds: no PYTHONPATH, and a working folder that is not the repository."""
    setup = next(source for tags, source in notebook_code_cells(NOTEBOOK) if "setup" in tags)
    env = {**os.environ, "KAGGLE_ROOT": str(kaggle_root), "MPLBACKEND": "Agg"}
    env.pop("PYTHONPATH", None)
    source = f"RECIPE = 'reference'\n{setup}\nimport mnist_helpers as mh\n{extra}"
    return subprocess.run([sys.executable, "-c", source], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("mount", [
    "usr/lib/mnist_helpers",                       # a utility script titled mnist_helpers
    "usr/lib/notebooks/someone/mnist-helpers",     # the newer utility-script mount: notebooks/<owner>/<slug>/
    "input/datasets/someone/mnist-helpers",        # the helper attached as a dataset: datasets/<owner>/<slug>/
    "input/mnist-helpers",                         # a dataset in the older layout
])
def test_the_set_up_cell_finds_the_helper_wherever_kaggle_mounted_it(tmp_path, mount):
    mounted = tmp_path / "kaggle" / mount
    stand_in_helper(mounted)
    (tmp_path / "working").mkdir()
    done = run_setup_cell(tmp_path / "working", tmp_path / "kaggle", "print(mh.__file__)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(mounted / "mnist_helpers.py")


def test_the_set_up_cell_prefers_the_helper_beside_the_notebook(tmp_path):
    # kaggle/digit_recognizer.ipynb writes the helper into the working folder: that copy wins over a mounted one.
    stand_in_helper(tmp_path / "kaggle" / "usr" / "lib" / "mnist_helpers")
    stand_in_helper(tmp_path / "working")
    done = run_setup_cell(tmp_path / "working", tmp_path / "kaggle", "print(mh.__file__)")
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip().splitlines()[-1]).resolve() == (tmp_path / "working" / "mnist_helpers.py")


def test_the_set_up_cell_says_how_to_get_the_helper_when_it_is_nowhere(tmp_path):
    done = run_setup_cell(tmp_path, tmp_path / "kaggle")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        "ModuleNotFoundError: mnist_helpers.py not found: on Kaggle, import kaggle/digit_recognizer.ipynb, which "
        "carries it, or attach it as a utility script; locally, start Jupyter in the repository root.")


def test_the_import_keeps_the_error_of_another_missing_package(tmp_path):
    (tmp_path / "mnist_helpers.py").write_text("import a_package_that_is_not_installed\n")
    done = run_setup_cell(tmp_path, tmp_path / "kaggle")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        "ModuleNotFoundError: No module named 'a_package_that_is_not_installed'")


def fake_kaggle_tree(root: Path, train_rows: int = 120, test_rows: int = 30) -> Path:
    """Kaggle's tree under root: the competition's data in input/competitions/, and an empty working/."""
    data = root / "input" / "competitions" / "digit-recognizer"
    data.mkdir(parents=True)
    X, y = make_digits(train_rows)
    write_train_csv(data / "train.csv", X, y)
    write_test_csv(data / "test.csv", make_digits(test_rows, seed=1)[0])
    (root / "working").mkdir()
    return data


def run_on_fake_kaggle(notebook: Path, root: Path, executed: Path, monkeypatch,
                       parameters: dict | None = None) -> papermill.nbformat.NotebookNode:
    """Run a notebook as Kaggle does: from working/, KAGGLE_KERNEL_RUN_TYPE set, no PYTHONPATH, and no parameters
    unless given (a user's own edit of the parameters cell)."""
    monkeypatch.setenv("KAGGLE_ROOT", str(root))
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    for name in ("DATA_DIR", "PYTHONPATH"):
        monkeypatch.delenv(name, raising=False)
    return papermill.execute_notebook(str(notebook), str(executed), cwd=str(root / "working"), kernel_name="python3",
                                      progress_bar=False, parameters=parameters or {})


def test_a_simulated_kaggle_run_with_the_utility_script_writes_the_submission_where_submit_finds_it(tmp_path,
                                                                                                    monkeypatch):
    # The helper only as a utility script under usr/lib/, the notebook in src/, and no parameters.
    root = tmp_path / "kaggle"
    data = fake_kaggle_tree(root)
    (root / "usr" / "lib" / "mnist_helpers").mkdir(parents=True)
    shutil.copy(REPO_DIR / "mnist_helpers.py", root / "usr" / "lib" / "mnist_helpers")
    (root / "src").mkdir()
    notebook = Path(shutil.copy(NOTEBOOK, root / "src"))

    executed = run_on_fake_kaggle(notebook, root, tmp_path / "executed.ipynb", monkeypatch)

    submission = pd.read_csv(root / "working" / "submission.csv")
    assert list(submission.columns) == ["ImageId", "Label"] and submission["ImageId"].tolist() == list(range(1, 31))
    assert sorted(p.name for p in (root / "working").iterdir()) == ["checkpoint.pt", "experiments.csv",
                                                                    "history.csv", "submission.csv"]
    text = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert f"data from {data}" in text and f"outputs go to {root / 'working'}" in text
    assert f"wrote {root / 'working' / 'submission.csv'} (30 rows)" in text
