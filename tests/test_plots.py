"""The plot helpers draw what they say (the notebook's, and tools/make_figures.py's accuracy-vs-minutes frontier), and
per_class_accuracy counts what a hand count does."""

from __future__ import annotations

import base64
import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import make_figures
from conftest import make_digits
from make_figures import frontier_points, plot_accuracy_vs_minutes
from mnist_helpers import per_class_accuracy, plot_digits, plot_history


def test_digit_grid_shows_each_image_with_its_label():
    X, y = make_digits(13)
    fig = plot_digits(X, y, ncols=5)
    axes = fig.axes
    assert len(axes) == 15  # 3 rows of 5, the last two left blank
    assert [ax.get_title() for ax in axes[:13]] == [str(label) for label in y]
    np.testing.assert_array_equal(axes[4].images[0].get_array(), X[4].reshape(28, 28))
    assert not axes[14].images
    plt.close(fig)


def test_history_plot_has_loss_and_accuracy_curves():
    history = [{"epoch": e, "train_loss": 1 / e, "valid_loss": 1.1 / e, "train_acc": 0.9, "valid_acc": 0.95}
               for e in (1, 2, 3)]
    fig = plot_history(history)
    loss_ax, acc_ax = fig.axes
    assert len(loss_ax.lines) == 2 and len(acc_ax.lines) == 2
    np.testing.assert_allclose(acc_ax.lines[1].get_ydata(), [95, 95, 95])
    plt.close(fig)


def per_digit(values: list[float]) -> pd.Series:
    return pd.Series(values, index=pd.RangeIndex(10, name="digit"), name="accuracy", dtype=np.float64)


def test_per_class_accuracy_is_each_digits_share_of_right_answers_and_nan_for_a_digit_with_no_images():
    y_true = np.array([0, 0, 1, 1, 1, 2, 3, 3, 3, 3, 4, 5, 6, 7, 8])  # no 9 among the true digits
    y_pred = np.array([0, 9, 1, 1, 0, 2, 3, 3, 9, 9, 4, 5, 6, 7, 8])  # but 9 predicted three times
    pd.testing.assert_series_equal(per_class_accuracy(y_true, y_pred),
                                   per_digit([1 / 2, 2 / 3, 1, 2 / 4, 1, 1, 1, 1, 1, np.nan]))


def test_per_class_accuracy_matches_a_hand_count_on_random_predictions():
    rng = np.random.default_rng(0)
    y_true = rng.choice([0, 1, 2, 3, 5, 6, 7, 8, 9], size=300)  # no 4
    y_pred = np.where(rng.random(300) < 0.7, y_true, rng.integers(0, 10, 300))  # about 70% right, 4 predicted too
    by_hand = [float(np.mean(y_pred[y_true == k] == k)) if (y_true == k).any() else np.nan for k in range(10)]
    accuracy = per_class_accuracy(y_true, y_pred)
    pd.testing.assert_series_equal(accuracy, per_digit(by_hand))
    assert np.isnan(accuracy[4]) and accuracy.drop(4).between(0.5, 1).all()


def measured_rows() -> pd.DataFrame:
    """Rows as benchmarks/experiments.py records them: an earlier split run (no kind), K-fold runs on two machines."""
    columns = ["machine", "idea", "kind", "seed", "weights", "tta", "models", "valid_acc", "std_error",
               "wall_minutes"]
    return pd.DataFrame([
        ("A", "split", None, "42", "raw", "none", 1, 0.999, 0.001, None),           # one split: no out-of-fold figure
        ("A", "base", "fold", "43 (fold 1)", "raw", "none", 1, 0.998, 0.001, None),  # one model's own fold
        ("A", "base", "oof", "round 1", "raw", "none", 1, 0.9957, 0.0003, 20.0),
        ("A", "base", "oof", "round 1", "ema", "none", 1, 0.9990, 0.0003, 20.0),     # averaged weights: not a recipe
        ("A", "slow", "oof", "round 1", "raw", "none", 1, 0.9955, 0.0003, 30.0),     # slower and worse: not on it
        ("A", "long", "oof", "round 1", "raw", "none", 1, 0.9963, 0.0003, 35.0),
        ("A", "fast", "oof", "round 1", "raw", "none", 1, 0.9950, 0.0003, 12.0),
        ("A", "old", "oof", "round 1", "raw", "none", 1, 0.9900, 0.0003, None),      # before wall minutes
        ("A", "two", "oof", "round 2", "raw", "none", 1, 0.9961, 0.0003, 50.0),      # the second round: not again
        ("A", "two", "oof-avg", "2 models a row", "raw", "none", 2, 0.9968, 0.0003, 50.0),
        ("B", "base", "oof", "round 1", "raw", "none", 1, 0.9999, 0.0003, 5.0),      # another machine
        ("A", "base", "oof", "round 1", "raw", "none", 1, 0.9959, 0.0003, 21.0),     # base again, later: this one
    ], columns=columns)


def test_frontier_points_are_each_recipes_latest_out_of_fold_figure_on_one_machine_and_the_frontier_is_unbeaten():
    points = frontier_points(measured_rows(), "A")
    assert points["idea"].tolist() == ["fast", "base", "slow", "long", "two"]  # by minutes
    np.testing.assert_allclose(points["acc"], [99.50, 99.59, 99.55, 99.63, 99.68])
    np.testing.assert_allclose(points["error"], [0.03] * 5)
    np.testing.assert_allclose(points["minutes"], [12.0, 21.0, 30.0, 35.0, 50.0])
    assert points["models"].tolist() == [1, 1, 1, 1, 2]
    assert points["frontier"].tolist() == [True, True, False, True, False]  # "two" averages 2 models a row
    # By default the machine with the most recipes, not the one measured last; of two with as many, the later one.
    later = measured_rows()
    later.loc[len(later)] = ("B", "base", "oof", "round 1", "raw", "none", 1, 0.9958, 0.0003, 6.0)
    assert frontier_points(later)["machine"].unique().tolist() == ["A"]
    for k, idea in enumerate(["slow", "long", "fast", "two"]):
        later.loc[len(later)] = ("B", idea, "oof", "round 1", "raw", "none", 1, 0.9958, 0.0003, 7.0 + k)
    assert frontier_points(later)["idea"].tolist() == ["base", "slow", "long", "fast", "two"]  # B's: 5 against 5
    assert frontier_points(measured_rows(), "B")["idea"].tolist() == ["base"]


def test_accuracy_plot_draws_each_point_with_its_error_bar_the_frontier_and_the_recorded_run():
    recorded = pd.DataFrame({"recipe": ["reference", "best, fold 1", "best, out of fold"], "valid_acc":
                             [0.9889, 0.9956, 0.9961], "wall_seconds": [None, None, 1500.0]})
    fig = plot_accuracy_vs_minutes(frontier_points(measured_rows(), "A"), recorded)
    (ax,) = fig.axes
    frontier, star = [line for line in ax.get_lines() if line.get_linestyle() == "-" or line.get_marker() == "*"]
    np.testing.assert_allclose(frontier.get_xdata(), [12.0, 21.0, 35.0])
    np.testing.assert_allclose(frontier.get_ydata(), [99.50, 99.59, 99.63])
    np.testing.assert_allclose(star.get_xdata(), [25.0])
    np.testing.assert_allclose(star.get_ydata(), [99.61])
    single, averaged = ax.containers  # the error bars: one model a row, then 2 models a row
    bars = single.lines[2][0].get_segments()  # one vertical segment per point: its ± 1 standard error
    np.testing.assert_allclose([segment[:, 1] for segment in bars],
                               [[99.47, 99.53], [99.56, 99.62], [99.52, 99.58], [99.60, 99.66]])
    np.testing.assert_allclose(np.asarray(averaged.lines[0].get_xdata(), dtype=float), [50.0])
    assert [text.get_text() for text in ax.texts] == ["fast", "base", "slow", "long", "two"]
    assert ax.get_title().endswith(", on A")
    plt.close(fig)
    alone = plot_accuracy_vs_minutes(frontier_points(measured_rows().iloc[:0]), recorded)  # no measured recipes
    assert [line.get_marker() for line in alone.axes[0].get_lines() if line.get_marker() == "*"] == ["*"]
    plt.close(alone)


@pytest.fixture
def drawn(tmp_path, monkeypatch) -> list[tuple[pd.DataFrame, pd.DataFrame | None]]:
    """What make_figures draws the accuracy plot from, call by call, with experiments.tsv as measured_rows()."""
    measured_rows().to_csv(tmp_path / "experiments.tsv", sep="\t", index=False)
    monkeypatch.setattr(make_figures, "MEASURED", tmp_path / "experiments.tsv")
    calls, draw = [], make_figures.plot_accuracy_vs_minutes
    monkeypatch.setattr(make_figures, "plot_accuracy_vs_minutes",
                        lambda points, recorded: calls.append((points, recorded)) or draw(points, recorded))
    return calls


def test_make_figures_plot_only_draws_the_machine_with_the_most_recipes_and_no_star(tmp_path, drawn, capsys):
    assert make_figures.main(["--plot-only", "--docs-dir", str(tmp_path / "docs")]) == 0
    assert [path.name for path in (tmp_path / "docs").iterdir()] == [make_figures.ACCURACY_PLOT]
    assert (tmp_path / "docs" / make_figures.ACCURACY_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (points, recorded), = drawn
    assert points["machine"].unique().tolist() == ["A"] and recorded is None
    with pytest.raises(SystemExit) as stopped:  # --plot-only runs nothing, so a notebook to take is a mistake
        make_figures.main(["--plot-only", "--from", str(tmp_path / "x.ipynb")])
    assert stopped.value.code == 2
    assert "--plot-only draws from benchmarks/experiments.tsv alone" in capsys.readouterr().err


def test_make_figures_draws_the_recorded_run_with_the_recipes_of_the_machine_it_ran_on(tmp_path, drawn, monkeypatch,
                                                                                      capsys):
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()
    cells = [{"cell_type": "code", "metadata": {"tags": [tag]}, "source": "", "execution_count": 1,
              "outputs": [{"output_type": "display_data", "metadata": {}, "data": {"image/png": png}}]}
             for tag, _, _ in make_figures.FIGURES]
    executed = tmp_path / "run" / "digit_recognizer.ipynb"
    executed.parent.mkdir()
    executed.write_text(json.dumps({"metadata": {}, "cells": cells, "nbformat": 4, "nbformat_minor": 5}))
    pd.DataFrame({"recipe": ["best, out of fold"], "valid_acc": [0.996], "wall_seconds": [600.0]}).to_csv(
        executed.parent / "experiments.csv", index=False)
    # Made on this machine, B: B's recipes, with the run's star, though A has more.
    monkeypatch.setattr(make_figures, "this_machine", lambda: "B")
    make_figures.write_docs(executed, tmp_path / "docs")
    # Taken with --machine A: A's.
    assert make_figures.main(["--from", str(executed), "--machine", "A", "--docs-dir", str(tmp_path / "docs")]) == 0
    machines = [(points["machine"].unique().tolist(), recorded["valid_acc"].tolist()) for points, recorded in drawn]
    assert machines == [(["B"], [0.996]), (["A"], [0.996])]
    # Made on C, where nothing was measured: A's recipes, and the run left out, with a note that says so.
    monkeypatch.setattr(make_figures, "this_machine", lambda: "C")
    make_figures.write_docs(executed, tmp_path / "docs")
    points, recorded = drawn[-1]
    assert points["machine"].unique().tolist() == ["A"] and recorded is None
    assert "no recipe measured on C, the machine of the run, so the plot shows A's" in capsys.readouterr().out
    # An experiments.tsv with no out-of-fold recipe on any machine: the run's star alone, and no note.
    measured_rows().iloc[:2].to_csv(make_figures.MEASURED, sep="\t", index=False)
    make_figures.write_docs(executed, tmp_path / "docs")
    points, recorded = drawn[-1]
    assert points.empty and recorded["valid_acc"].tolist() == [0.996]
    assert "note:" not in capsys.readouterr().out


def test_per_class_accuracy_counts_a_prediction_outside_0_to_9_as_wrong_and_takes_no_images():
    accuracy = per_class_accuracy(np.array([0, 0, 1]), np.array([0, 10, 1]))  # 10: not a digit, so wrong
    assert accuracy[0] == 0.5 and accuracy[1] == 1.0
    assert per_class_accuracy(np.array([], dtype=np.int64), np.array([], dtype=np.int64)).isna().all()
