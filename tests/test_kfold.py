"""RECIPE="best" is K-fold: the folds, what each model trains on, and the out-of-fold figure and analysis."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import mnist_helpers as mh
from conftest import learnable_digits, notebook_namespace, run_notebook_in_process, write_test_csv, write_train_csv
from mnist_helpers import accuracy_with_error, choose_runtime, plot_folds, stratified_folds

matplotlib.use("Agg")


def labels(n: int, seed: int = 0) -> np.ndarray:
    """Unbalanced digits, as a real train.csv has: some digits about twice as common as others."""
    rng = np.random.default_rng(seed)
    return rng.choice(10, size=n, p=np.linspace(1, 2, 10) / np.linspace(1, 2, 10).sum())


@pytest.mark.parametrize("n, folds", [(1000, 5), (997, 3), (420, 7)])
def test_the_folds_are_disjoint_stratified_cover_every_row_and_are_seeded(n, folds):
    # Guards stratified_folds' own work: the fold number it writes for every row, from StratifiedKFold's held-out
    # indices, and the arguments it passes (n_splits=folds, shuffle=True, random_state=seed).
    y = labels(n)
    fold = stratified_folds(y, folds, seed=42)
    assert fold.shape == (n,) and fold.dtype == np.int64
    assert set(fold.tolist()) == set(range(folds))  # every row in exactly one fold, each fold used
    sizes = np.bincount(fold)
    assert sizes.max() - sizes.min() <= 1  # about n / K rows each
    for digit in range(10):  # the same mix of digits in every fold: each digit split as evenly as it can be
        per_fold = np.bincount(fold[y == digit], minlength=folds)
        assert per_fold.max() - per_fold.min() <= 1, (digit, per_fold)
    assert np.array_equal(stratified_folds(y, folds, seed=42), fold)  # seeded: the same folds again
    assert not np.array_equal(stratified_folds(y, folds, seed=43), fold)  # another round: other folds


@pytest.mark.parametrize("folds, message", [
    (1, "FOLDS=1: K-fold needs at least 2 folds and at least FOLDS images of each digit (digit 3 has 3); set FOLDS "
        "between 2 and 3, or raise TRAIN_ROWS."),
    (4, "FOLDS=4: K-fold needs at least 2 folds and at least FOLDS images of each digit (digit 3 has 3); set FOLDS "
        "between 2 and 3, or raise TRAIN_ROWS."),
])
def test_too_many_or_too_few_folds_are_refused_in_one_line(folds, message):
    y = np.array([d for d in range(10) for _ in range(3 if d == 3 else 8)])  # digit 3: only 3 images
    with pytest.raises(ValueError) as error:
        stratified_folds(y, folds, seed=0)
    assert str(error.value) == message
    assert len(stratified_folds(y, 3, seed=0)) == len(y)  # 3 folds: one image of digit 3 in each


def test_accuracy_with_error_counts_mistakes_and_gives_the_binomial_standard_error():
    y_true = np.arange(1000) % 10
    y_pred = y_true.copy()
    y_pred[:40] = (y_pred[:40] + 1) % 10  # 40 mistakes
    accuracy, wrong, error = accuracy_with_error(y_true, y_pred)
    assert (accuracy, wrong) == (0.96, 40)
    assert error == pytest.approx(np.sqrt(0.96 * 0.04 / 1000))  # 0.0062: 0.62 points
    assert accuracy_with_error(y_true, y_true) == (1.0, 0, 0.0)


def test_the_folds_picture_marks_one_scored_fold_per_model():
    fig = plot_folds(4)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts.count("scored") == 4 and texts.count("train") == 12
    scored = [(round(t.get_position()[1]), round(t.get_position()[0])) for t in fig.axes[0].texts
              if t.get_text() == "scored"]
    assert scored == [(k, k) for k in range(4)]  # model k is scored on fold k, and trains on the rest


class Memoriser(nn.Module):
    """A stand-in model that says which model it is for images it never saw, and the true label for the others."""

    def __init__(self, X_seen: np.ndarray, y_seen: np.ndarray, number: int):
        super().__init__()
        self.seen = {row.tobytes(): int(label) for row, label in zip(X_seen, y_seen)}
        self.number, self.weight = number, nn.Parameter(torch.zeros(1))

    def forward(self, x):  # (B, 1, 28, 28) in [0, 1] -> (B, 10) logits
        pixels = (x.flatten(1) * 255).round().to(torch.uint8).numpy()
        answers = [self.seen.get(row.tobytes(), self.number) for row in pixels]
        return 20 * nn.functional.one_hot(torch.tensor(answers), 10).float()


def kfold_with_spies(monkeypatch, folds=3, rounds=2, n=120):
    """train_kfold, with train_member replaced by one that records its rows and returns a Memoriser's row."""
    code = notebook_namespace("imports", "model", "train-loop", "model-best", "best-recipe", "best-kfold")
    X, y = learnable_digits(n)
    X[:, 0] = np.arange(n)  # every image distinct, so a memoriser knows exactly which rows it saw
    trained = []

    def train_member(plan, recipe, X, y, runtime, output_dir, resume, progress, models_after):
        trained.append(dict(seed=plan.seed, train=X[~plan.held_out, 0].copy(), valid=X[plan.held_out, 0].copy(),
                            name=plan.name, path=plan.checkpoint, models_after=models_after))
        model = Memoriser(X[~plan.held_out], y[~plan.held_out], number=plan.fold - 1)  # model k of a round says k
        return dict(round=plan.round, fold=plan.fold, model=model, seconds=0.0,
                    proba=mh.predict_proba(model, X[plan.held_out], runtime))

    monkeypatch.setitem(code, "train_member", train_member)
    recipe = code["Recipe"](epochs=4, lr=1e-3, batch_size=10)
    runtime = choose_runtime("cpu", fast=False)
    plan = mh.kfold_plan(y, folds, rounds, 42)
    kfold = code["train_kfold"](recipe, X, y, plan, runtime, Path("/nonexistent"), mh.Workers(("cpu",), 1),
                                progress=False)
    return X, y, trained, plan, kfold


def test_every_model_trains_on_all_rows_outside_its_fold_and_is_scored_on_its_fold(monkeypatch):
    X, y, trained, plan, kfold = kfold_with_spies(monkeypatch)
    fold_of = np.stack([sum(model.fold * model.held_out for model in plan if model.round == r) - 1 for r in (1, 2)])
    for r in range(2):  # each round's folds as mh.stratified_folds cuts them with that round's seed
        assert np.array_equal(fold_of[r], stratified_folds(y, 3, 42 + r))
    assert not np.array_equal(fold_of[0], fold_of[1])
    assert [t["seed"] for t in trained] == [43, 44, 45, 46, 47, 48]  # a new seed for every model
    assert [t["name"] for t in trained] == [f"round {r}, fold {f}" for r in (1, 2) for f in (1, 2, 3)]
    assert [t["path"] for t in trained] == [f"best-round{r}-fold{f}.pt" for r in (1, 2) for f in (1, 2, 3)]
    assert [t["models_after"] for t in trained] == [5, 4, 3, 2, 1, 0]  # in one process: the models still to come
    assert kfold[["round", "fold"]].values.tolist() == [[r, f] for r in (1, 2) for f in (1, 2, 3)]  # a row each
    for k, t in enumerate(trained):
        r, f = divmod(k, 3)
        assert np.array_equal(t["train"], X[fold_of[r] != f, 0])  # all of the other folds' rows, in order
        assert np.array_equal(t["valid"], X[fold_of[r] == f, 0])  # its own fold, which it never trains on
        assert len(t["train"]) + len(t["valid"]) == 120


def test_each_out_of_fold_prediction_comes_from_the_model_that_never_saw_the_row(monkeypatch):
    _, _, _, plan, kfold = kfold_with_spies(monkeypatch)
    oof_proba = mh.out_of_fold(plan, kfold["proba"])
    assert oof_proba.shape == (2, 120, 10)
    np.testing.assert_allclose(oof_proba.sum(axis=2), 1, atol=1e-5)  # every row of every round predicted
    # A memoriser answers the true label for rows it trained on and its own number for the others: every row's
    # prediction is the number of the model whose fold holds it, so no model that saw a row predicted it.
    for model in plan:
        assert (oof_proba[model.round - 1, model.held_out].argmax(axis=1) == model.fold - 1).all()


def test_the_notebook_prints_the_out_of_fold_figure_and_analyses_the_out_of_fold_predictions(tmp_path, monkeypatch,
                                                                                              capsys):
    X, y = learnable_digits(150)
    write_train_csv(tmp_path / "train.csv", X, y)
    write_test_csv(tmp_path / "test.csv", learnable_digits(20, seed=1)[0])
    analysed = []
    for name in ("plot_confusion_matrix", "plot_worst_errors", "per_class_accuracy"):
        real = getattr(mh, name)
        monkeypatch.setattr(mh, name, lambda *args, real=real, name=name, **kwargs:
                            analysed.append((name, args)) or real(*args, **kwargs))
    ns = run_notebook_in_process({"DATA_DIR": str(tmp_path), "EPOCHS": 1, "BATCH_SIZE": 25, "PROGRESS": False,
                                  "LOSS_LINES": False, "RECIPE": "best", "BEST_EPOCHS": 1, "FOLDS": 3,
                                  "WORKERS": 1, "OUTPUT_DIR": str(tmp_path / "out")}, until_tag="best-errors")
    printed = capsys.readouterr().out
    oof_pred = ns["oof_proba"][0].argmax(axis=1)
    accuracy, wrong, error = accuracy_with_error(y, oof_pred)
    assert (f"out-of-fold: {100 * accuracy:.2f}% ± {100 * error:.2f} ({wrong} mistakes in 150 images), one model "
            "of the recipe") in printed
    assert np.array_equal(ns["oof_pred"], oof_pred)
    best = [(name, args) for name, args in analysed if len(args[0]) == 150]  # the K-fold's analysis: all 150 rows
    assert [name for name, _ in best] == ["plot_confusion_matrix", "plot_worst_errors", "per_class_accuracy"]
    for name, args in best:
        assert np.array_equal(args[0], X) if name == "plot_worst_errors" else np.array_equal(args[0], y)
    assert np.array_equal(best[0][1][1], oof_pred) and np.array_equal(best[2][1][1], oof_pred)
    np.testing.assert_array_equal(best[1][1][2], ns["oof_proba"].mean(axis=0))
    row = pd.DataFrame(ns["experiments"]).set_index("recipe").loc["best, out of fold"]
    assert (row["images"], row["mistakes"]) == (150, wrong) and row["valid_acc"] == pytest.approx(accuracy)


@pytest.mark.parametrize("rounds", [0, 1.5, "2"])
def test_a_bad_number_of_rounds_is_refused_in_one_line_before_anything_loads(tmp_path, rounds):
    with pytest.raises(ValueError) as error:
        run_notebook_in_process({"DATA_DIR": str(tmp_path), "RECIPE": "best", "ROUNDS": rounds}, until_tag="setup")
    assert str(error.value) == f"ROUNDS must be a whole number, 1 or more, got {rounds!r}."
