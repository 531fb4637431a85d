"""The plot helpers draw what they say (the notebook's, and tools/make_figures.py's accuracy-vs-minutes figure), and
per_class_accuracy counts what a hand count does."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from conftest import make_digits
from make_figures import measured_points, plot_accuracy_vs_minutes
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
    """A few rows as benchmarks/experiments.py records them: earlier runs on one split (no kind), then K-fold ones."""
    columns = ["device", "idea", "kind", "weights", "tta", "models", "valid_acc", "train_minutes"]
    return pd.DataFrame([
        ("cpu", "base", None, "raw", "none", 1, 0.990, 4.0), ("cpu", "base", None, "raw", "none", 1, 0.970, 5.0),
        ("cpu", "base", None, "raw", "none", 2, 0.991, 9.0), ("cpu", "base", None, "raw", "none", 3, 0.992, 13.0),
        ("cpu", "base", None, "swa", "shifts", 1, 0.960, 4.0), ("cuda", "base", None, "raw", "none", 1, 0.999, 1.0),
        ("cpu", "alone", None, "raw", "none", 1, 0.950, 2.0),
        ("cpu", "kfold", "fold", "raw", "none", 1, 0.995, 5.0), ("cpu", "kfold", "fold", "raw", "none", 1, 0.997, 5.0),
        ("cpu", "kfold", "oof", "raw", "none", 1, 0.996, 10.0)], columns=columns)


def test_measured_points_are_each_variants_out_of_fold_figure_or_mean_model_then_largest_ensemble_on_one_device():
    points = measured_points(measured_rows(), "cpu")
    assert points["variant"].tolist() == ["base", "base", "base, swa weights, shift TTA", "alone",
                                          "kfold, out of fold"]
    assert points["kind"].tolist() == ["validation"] * 4 + ["oof"]
    assert points["models"].tolist() == [1, 3, 1, 1, 1]
    np.testing.assert_allclose(points["valid_acc"], [0.980, 0.992, 0.960, 0.950, 0.996])  # not the GPU's 0.999
    np.testing.assert_allclose(points["minutes"], [4.5, 13.0, 4.0, 2.0, 10.0])  # K-fold: all its models' minutes


def test_accuracy_plot_puts_every_model_and_the_out_of_fold_figure_at_its_minutes():
    experiments = pd.DataFrame({"recipe": ["reference", "best, fold 1", "best, fold 2", "best, out of fold"],
                                "models": [1, 1, 1, 1], "valid_acc": [0.9889, 0.9956, 0.9960, 0.9958],
                                "train_seconds": [150.0, 240.0, 300.0, 540.0]})
    fig = plot_accuracy_vs_minutes(experiments, measured_points(measured_rows(), "cpu"))
    whole, top = fig.axes
    for ax in (whole, top):
        singles, pooled, *measured = ax.get_lines()
        np.testing.assert_allclose(singles.get_xdata(), [2.5, 4.0, 5.0])
        np.testing.assert_allclose(singles.get_ydata(), [98.89, 99.56, 99.60])
        np.testing.assert_allclose(pooled.get_xdata(), [9.0])
        np.testing.assert_allclose(pooled.get_ydata(), [99.58])
        assert len(measured) == 4  # one line per measured variant: its mean model, then its ensemble; or its OOF
        np.testing.assert_allclose(measured[0].get_xdata(), [4.5, 13.0])
        np.testing.assert_allclose(measured[0].get_ydata(), [98.0, 99.2])
        np.testing.assert_allclose(measured[3].get_xdata(), [10.0])
        np.testing.assert_allclose(measured[3].get_ydata(), [99.6])
    assert whole.get_ylim()[0] == pytest.approx(95.0 - 0.2)  # everything: down to the lowest point, 95.0%
    assert top.get_ylim()[0] == pytest.approx(99.60 - 0.3)  # only the top 0.3 points
    legend = [t.get_text() for t in top.get_legend().get_texts()]
    assert "base (one validation split: mean of 3 models, then together)" in legend
    assert "kfold, out of fold (all rows, minutes: all its models)" in legend
    plt.close(fig)
    alone = plot_accuracy_vs_minutes(experiments)  # on Kaggle: this run only
    assert len(alone.axes[0].get_lines()) == 2
    plt.close(alone)


def test_per_class_accuracy_counts_a_prediction_outside_0_to_9_as_wrong_and_takes_no_images():
    accuracy = per_class_accuracy(np.array([0, 0, 1]), np.array([0, 10, 1]))  # 10: not a digit, so wrong
    assert accuracy[0] == 0.5 and accuracy[1] == 1.0
    assert per_class_accuracy(np.array([], dtype=np.int64), np.array([], dtype=np.int64)).isna().all()
