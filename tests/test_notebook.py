"""The notebook as a whole: its committed form, a headless smoke run, and a short run on real digits."""

from __future__ import annotations

import ast
import base64
import re
import shutil
import subprocess

import nbformat
import numpy as np
import pandas as pd
import papermill
import pytest
import torch

import make_figures
import mnist_helpers
from conftest import (
    NOTEBOOK,
    REPO_DIR,
    SHARED_DATA_DIR,
    learnable_digits,
    make_digits,
    needs_shared_data,
    notebook_namespace,
    run_notebook_in_process,
    write_test_csv,
    write_train_csv,
)
from mnist_helpers import choose_runtime, load_test_csv, load_train_csv, predict
from notebook_cells import notebook_code_cells

PARAMETERS = {"DATA_DIR": None, "EPOCHS": 15, "BATCH_SIZE": 100, "LR": 1e-3, "VALID_SIZE": 0.2, "SEED": 42,
              "TRAIN_ROWS": None, "TEST_ROWS": None, "OUTPUT_DIR": None, "FAST": True,
              "PROGRESS": True, "LOSS_LINES": True, "RESUME": False, "DETERMINISTIC": False, "RECIPE": "reference",
              "BEST_EPOCHS": 30, "BEST_LR": 3e-3, "FOLDS": 5, "ROUNDS": 1, "WORKERS": "auto", "TTA": 0}


def run_notebook(tmp_path, **parameters):
    """Execute the notebook headless with papermill; return the output folder and the executed notebook."""
    output_dir = tmp_path / "output"
    executed = papermill.execute_notebook(str(NOTEBOOK), str(tmp_path / "executed.ipynb"), cwd=str(REPO_DIR),
                                          kernel_name="python3", progress_bar=False,
                                          parameters={"OUTPUT_DIR": str(output_dir), **parameters})
    return output_dir, executed


def check_submission_file(path, rows):
    submission = pd.read_csv(path)
    assert list(submission.columns) == ["ImageId", "Label"] and len(submission) == rows
    assert submission["ImageId"].tolist() == list(range(1, rows + 1))
    assert submission["Label"].between(0, 9).all()


def test_committed_notebook_has_no_outputs_and_the_parameters_cell_first():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code_cells = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code_cells)
    first = code_cells[0]
    assert first.metadata.get("tags") == ["parameters"]
    namespace: dict = {}
    exec(first.source, namespace)
    assert {k: v for k, v in namespace.items() if k.isupper()} == PARAMETERS


def test_make_run_passes_the_parameters_that_are_set():
    dry_run = subprocess.run(["make", "-n", "run", "DATA_DIR=/some/where", "EPOCHS=2", "TRAIN_ROWS=500", "FAST=False"],
                             cwd=REPO_DIR, capture_output=True, text=True, check=True).stdout
    assert "tools/run_notebook.py -p OUTPUT_DIR 'output' -p DATA_DIR '/some/where' -p EPOCHS '2' -p TRAIN_ROWS '500' " \
           "-p FAST 'False'" in dry_run
    assert "-p SEED" not in dry_run


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """run(fast): the reference recipe's smoke run, headless, once per FAST for the whole module: the data folder,
    the output folder and the executed notebook."""
    runs: dict = {}

    def run(fast: bool):
        if fast not in runs:
            tmp_path = tmp_path_factory.mktemp(f"smoke-fast-{fast}")
            X, y = learnable_digits(500)
            X_test, y_test = learnable_digits(200, seed=1)
            write_train_csv(tmp_path / "train.csv", X, y)
            write_test_csv(tmp_path / "test.csv", X_test)
            pd.DataFrame({"ImageId": range(1, 201), "Label": y_test}).to_csv(tmp_path / "test_labels.csv", index=False)
            runs[fast] = tmp_path, *run_notebook(tmp_path, DATA_DIR=str(tmp_path), EPOCHS=3, BATCH_SIZE=20, FAST=fast)
        return runs[fast]

    return run


@pytest.mark.parametrize("fast", [True, False])
def test_smoke_run_learns_generated_digits_and_submits_the_final_models_answers_in_order(smoke_run, fast):
    _, output_dir, executed = smoke_run(fast)
    X_test, y_test = learnable_digits(200, seed=1)  # the run's test.csv and test_labels.csv

    check_submission_file(output_dir / "submission.csv", rows=200)
    history = pd.read_csv(output_dir / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3] and history["valid_acc"].iloc[-1] >= 0.9, history
    text = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert "train.csv shape: (500, 785)" in text and "loss: " in text and "acc: " in text
    assert f"fast path: {fast} (" in text
    assert any("image/png" in o.get("data", {}) for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    # The scoring cell ran against test_labels.csv, and the model had learned:
    scored = re.search(r"submission\.csv: accuracy (\d\.\d+) \((\d+) of 200 correct\) against .*test_labels\.csv", text)
    assert scored and float(scored.group(1)) >= 0.9, text[-2000:]
    # The submission holds the final model's own answers, row by row: rebuild it from the last checkpoint.
    code = notebook_namespace("imports", "model")
    path = choose_runtime("cpu", fast=fast)
    model = path.prepare_model(code["TwoConvCNN"]())
    model.load_state_dict(torch.load(output_dir / "checkpoint.pt", weights_only=True)["model"])
    submitted = pd.read_csv(output_dir / "submission.csv")["Label"].to_numpy()
    np.testing.assert_array_equal(submitted, predict(model, X_test, path))
    assert (submitted == y_test).mean() == float(scored.group(1))


def test_missing_data_stops_the_notebook_with_one_clear_line(tmp_path):
    # In this process: a kernel adds nothing to an error raised in the loading cell (test_run.py checks how `make
    # run` reports a notebook's error).
    with pytest.raises(FileNotFoundError) as error:
        run_notebook_in_process({"DATA_DIR": str(tmp_path / "nowhere"), "OUTPUT_DIR": str(tmp_path / "output")},
                                until_tag="load")
    assert "nowhere" in str(error.value) and "kaggle competitions download" in str(error.value)
    assert "\n" not in str(error.value)


@needs_shared_data
def test_real_csvs_pass_validation_with_the_competition_shapes():
    X, y = load_train_csv(SHARED_DATA_DIR / "train.csv")
    assert X.shape == (42000, 784) and y.shape == (42000,) and set(np.unique(y)) == set(range(10))
    assert load_test_csv(SHARED_DATA_DIR / "test.csv").shape == (28000, 784)


@needs_shared_data
def test_two_epochs_on_3000_real_digits_reach_90_percent(tmp_path):
    # Smaller batches and a larger LR than the full run's defaults, because 2 epochs of 2400 images are only
    # 192 steps; seeds 1, 7 and 42 gave 93.3-93.8% here, so 90% leaves room for other CPUs' arithmetic.
    output_dir = tmp_path / "output"  # in this process: the smoke runs above go through papermill
    run_notebook_in_process({"DATA_DIR": str(SHARED_DATA_DIR), "EPOCHS": 2, "TRAIN_ROWS": 3000, "TEST_ROWS": 1000,
                             "BATCH_SIZE": 25, "LR": 3e-3, "PROGRESS": False, "LOSS_LINES": False,
                             "OUTPUT_DIR": str(output_dir)}, until_tag="submission")
    history = pd.read_csv(output_dir / "history.csv")
    assert len(history) == 2
    assert history["valid_acc"].iloc[-1] >= 0.90, history
    check_submission_file(output_dir / "submission.csv", rows=1000)


@pytest.fixture
def previous_submission(tmp_path):
    """An OUTPUT_DIR that already holds a good submission.csv from an earlier run."""
    output_dir = tmp_path / "output"
    output_dir.mkdir()
    path = output_dir / "submission.csv"
    path.write_text("ImageId,Label\n" + "".join(f"{i},{i % 10}\n" for i in range(1, 201)))
    return path


def test_a_run_that_fails_before_writing_leaves_the_old_submission_byte_identical(tmp_path, previous_submission):
    X, y = make_digits(100)
    write_train_csv(tmp_path / "train.csv", X, y)
    (tmp_path / "test.csv").write_text(",".join(f"pixel{i}" for i in range(784)) + "\n" + "1," * 783 + "oops\n")
    before = previous_submission.read_bytes()
    with pytest.raises(ValueError, match="column 'pixel783': 'oops' is not a number"):
        run_notebook_in_process({"DATA_DIR": str(tmp_path), "EPOCHS": 1, "OUTPUT_DIR": str(previous_submission.parent)},
                                until_tag="submission")
    assert previous_submission.read_bytes() == before


def test_a_run_that_fails_while_writing_leaves_the_old_submission_byte_identical(tmp_path, previous_submission,
                                                                                  monkeypatch):
    X, y = make_digits(100)
    write_train_csv(tmp_path / "train.csv", X, y)
    write_test_csv(tmp_path / "test.csv", make_digits(200, seed=1)[0])
    before = previous_submission.read_bytes()

    to_csv = pd.DataFrame.to_csv

    def disk_full(self, file, *args, **kwargs):
        if not hasattr(file, "write"):  # history.csv is written by path; the submission through a temp file
            return to_csv(self, file, *args, **kwargs)
        file.write("ImageId,Label\n1,")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", disk_full)
    with pytest.raises(OSError, match="No space left"):
        run_notebook_in_process({"DATA_DIR": str(tmp_path), "EPOCHS": 1, "OUTPUT_DIR": str(previous_submission.parent),
                                 "PROGRESS": False}, until_tag="submission")
    assert previous_submission.read_bytes() == before
    left = sorted(p.name for p in previous_submission.parent.iterdir())
    assert left == ["checkpoint.pt", "history.csv", "submission.csv"]


def test_smoke_run_of_the_best_recipe_writes_its_submission_and_shows_the_analysis(tmp_path):
    X, y = make_digits(400)
    write_train_csv(tmp_path / "train.csv", X, y)
    write_test_csv(tmp_path / "test.csv", make_digits(100, seed=1)[0])
    output_dir, executed = run_notebook(tmp_path, DATA_DIR=str(tmp_path), EPOCHS=1, RECIPE="best", BEST_EPOCHS=2,
                                        FOLDS=2, ROUNDS=2, TTA=1, PROGRESS="lines", WORKERS=2)
    check_submission_file(output_dir / "submission.csv", rows=100)
    check_submission_file(output_dir / "submission_reference.csv", rows=100)
    experiments = pd.read_csv(output_dir / "experiments.csv")
    assert experiments["recipe"].tolist() == [
        "reference", "best, round 1, fold 1", "best, round 1, fold 2", "best, round 2, fold 1",
        "best, round 2, fold 2", "best, out of fold, round 1", "best, out of fold, round 2",
        "best, out of fold, 2 models a row"]
    assert experiments["epochs"].tolist() == [1, 2, 2, 2, 2, 2, 2, 2] and experiments["valid_acc"].between(0, 1).all()
    assert experiments["models"].tolist() == [1, 1, 1, 1, 1, 1, 1, 2]
    assert experiments["images"].tolist() == [80, 200, 200, 200, 200, 400, 400, 400]  # out of fold: all 400 rows
    right = experiments["valid_acc"] * experiments["images"]
    assert np.allclose(right, right.round()) and np.allclose(experiments["mistakes"], experiments["images"] - right)
    assert np.allclose(experiments["std_error"], np.sqrt(experiments["valid_acc"] * (1 - experiments["valid_acc"])
                                                         / experiments["images"]))
    assert np.isclose(experiments["train_seconds"].iloc[5], experiments["train_seconds"].iloc[1:3].sum())
    assert np.isclose(experiments["train_seconds"].iloc[7], experiments["train_seconds"].iloc[1:5].sum())
    # The out-of-fold rows also keep the run's wall time (every model, both workers at once), its workers and TTA,
    # which benchmarks/experiments.py --from-run records:
    assert experiments["wall_seconds"].iloc[:5].isna().all()
    assert (experiments["wall_seconds"].iloc[5:] >= experiments["train_seconds"].iloc[1:5].max()).all()
    assert experiments["workers"].iloc[5:].tolist() == [2] * 3 and experiments["tta"].iloc[5:].tolist() == [1] * 3
    oof = pd.read_csv(output_dir / "oof.csv")
    assert list(oof.columns) == ["row", "label", "oof_pred"] and len(oof) == 400 and (oof["label"] == y).all()
    text = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert re.search(r"^round 1, fold 1 \(seed 43\): \d+\.\d\d% of its 200 held-out images, trained on 200 "
                     r"for 2 epochs", text, re.MULTILINE)
    for line in ("out-of-fold, round 1: ", "out-of-fold, round 2: ", "out-of-fold, 2 models a row: "):
        assert re.search(re.escape(line) + r"\d+\.\d\d% ± \d+\.\d\d \(\d+ mistakes", text), line
    assert "the average of all 4 models" in text
    # PROGRESS="lines": a line per epoch of every model, each with the time left of its worker's models (here 0 s:
    # these epochs are quick), and no progress widgets; the two workers' lines come as they happen, in the notebook.
    assert "2 workers at once (cpu, cpu), 1 CPU thread each" in text
    epoch_lines = re.findall(r"^(reference model|round \d, fold \d), epoch (\d)/(\d): train loss "
                             r"\d\.\d{4}, valid acc \d+\.\d\d%, \d+\.\d s, \d\d:\d\d left$", text, re.MULTILINE)
    assert sorted((name, epoch) for name, epoch, _ in epoch_lines) == [("reference model", "1")] + [
        (f"round {r}, fold {f}", str(e)) for r in (1, 2) for f in (1, 2) for e in (1, 2)]
    for r, f in ((1, 1), (2, 2)):  # each model's own epochs, in order
        assert [e for name, e, _ in epoch_lines if name == f"round {r}, fold {f}"] == ["1", "2"]
    assert not [o for c in executed.cells if c.cell_type == "code" for o in c.outputs
                if make_figures.WIDGET_VIEW in o.get("data", {})]
    tagged = {tag: c for c in executed.cells for tag in c.metadata.get("tags", [])}
    for tag in ("errors-reference", "augmentation"):
        assert any("image/png" in o.get("data", {}) for o in tagged[tag].outputs), tag
    best_plots = [o for tag in ("best-errors", "best-curves") for o in tagged[tag].outputs
                  if "image/png" in o.get("data", {})]
    assert len(best_plots) == 3  # the ensemble's confusion matrix, worst errors and every learning curve
    # `make figures` cuts the figures of docs/ from such a notebook (kept beside its experiments.csv, as `make run`
    # keeps it), draws the accuracy-per-minute plot, and cleans the notebook for docs/:
    kept = shutil.copy(tmp_path / "executed.ipynb", output_dir / "digit_recognizer.ipynb")
    assert make_figures.main(["--from", str(kept), "--docs-dir", str(tmp_path / "docs")]) == 0
    written = sorted(path.name for path in (tmp_path / "docs").iterdir())
    assert written == sorted([make_figures.EXECUTED_NAME, make_figures.ACCURACY_PLOT,
                              *(name for _, _, name in make_figures.FIGURES)])
    assert (tmp_path / "docs" / "ensemble-learning-curves.png").read_bytes() == base64.b64decode(
        best_plots[2]["data"]["image/png"])


def test_an_unknown_recipe_stops_with_one_line(tmp_path):
    with pytest.raises(ValueError) as error:
        run_notebook_in_process({"RECIPE": "fastest"}, until_tag="setup")
    assert str(error.value) == "RECIPE must be 'reference' or 'best', got 'fastest'."


def code_cell(tag: str) -> str:
    """The source of the notebook's code cell with this tag."""
    return next(source for tags, source in notebook_code_cells(NOTEBOOK) if tag in tags)


def test_the_parameters_cell_shows_first_the_few_a_reader_changes():
    first = [line.split(" =")[0] for line in code_cell("parameters").splitlines()[1:7]]
    assert first == ["DATA_DIR", "EPOCHS", "BATCH_SIZE", "LR", "SEED", "RECIPE"]


def test_the_set_up_cell_is_collapsed_in_jupyter_and_its_input_hidden_on_kaggle():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    setup = [cell for cell in notebook.cells if "setup" in cell.metadata.get("tags", [])]
    assert len(setup) == 1 and setup[0].metadata["jupyter"] == {"source_hidden": True}
    assert setup[0].metadata["_kg_hide-input"] is True
    assert "find_spec(\"mnist_helpers\")" in setup[0].source and "switch_backend" in setup[0].source


def test_the_training_loop_reads_like_the_references_and_stays_short():
    tree = ast.parse(code_cell("train-loop"))
    loop = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "train_one_epoch")
    assert loop.end_lineno - loop.lineno + 1 <= 25
    source = ast.get_source_segment(code_cell("train-loop"), loop)
    steps = ["logits = model(xb)", "loss = loss_fn(", "optimizer.zero_grad()", ".backward()", "scaler.step(optimizer)"]
    assert all(step in source for step in steps)
    assert [source.index(step) for step in steps] == sorted(source.index(step) for step in steps)  # in that order


def test_every_helper_call_shows_its_origin_and_the_helper_exports_exactly_what_the_notebook_calls():
    code = "\n".join(source for _, source in notebook_code_cells(NOTEBOOK))
    assert "from mnist_helpers import" not in code and "import mnist_helpers as mh" in code
    called = set(re.findall(r"\bmh\.([A-Za-z_]\w*)", code))
    assert called == set(mnist_helpers.__all__), (called ^ set(mnist_helpers.__all__))


def test_every_public_helper_names_the_notebook_section_that_calls_it():
    public = [name for name, value in vars(mnist_helpers).items() if not name.startswith("_")
              and getattr(value, "__module__", None) == "mnist_helpers" and callable(value)]
    assert set(mnist_helpers.__all__) <= set(public) and len(public) > len(mnist_helpers.__all__)
    for name in public:
        doc = getattr(mnist_helpers, name).__doc__ or ""
        assert len(doc.splitlines()) == 1, f"{name}: a one-line docstring"
        assert re.match(r"Sections? \d", doc), f"{name}'s docstring names no section: {doc!r}"


def test_with_the_reference_recipe_section_9_shows_no_empty_cells(smoke_run):
    _, _, executed = smoke_run(True)  # RECIPE = "reference", the default
    cells = executed.cells[next(i for i, c in enumerate(executed.cells) if c.source.startswith("## 9.")):]
    for cell in cells:
        if cell.cell_type == "code" and not re.match(r"(class|def|from|import|@)", cell.source.lstrip()):
            assert cell.outputs, f"an empty cell in section 9: {cell.source[:60]!r}"
    printed = [o["text"] for c in cells if "best-train" in c.metadata.get("tags", []) for o in c.outputs]
    assert len(printed) == 1 and printed[0].count("\n") == 1  # one line says what RECIPE = "best" adds
    assert printed[0].startswith('RECIPE = "reference", so no K-fold here: RECIPE = "best" trains 5 StrongerCNNs')
