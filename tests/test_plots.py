"""The plot helpers draw what they say."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from conftest import make_digits

from mnist_helpers import plot_digits, plot_history, plot_label_counts


def test_digit_grid_shows_each_image_with_its_label():
    X, y = make_digits(13)
    fig = plot_digits(X, y, ncols=5)
    axes = fig.axes
    assert len(axes) == 15  # 3 rows of 5, the last two left blank
    assert [ax.get_title() for ax in axes[:13]] == [str(label) for label in y]
    np.testing.assert_array_equal(axes[4].images[0].get_array(), X[4].reshape(28, 28))
    assert not axes[14].images
    plt.close(fig)


def test_label_counts_has_one_bar_per_digit():
    fig = plot_label_counts(np.array([0, 1, 1, 9, 9, 9]))
    assert [bar.get_height() for bar in fig.axes[0].patches] == [1, 2, 0, 0, 0, 0, 0, 0, 0, 3]
    plt.close(fig)


def test_history_plot_has_loss_and_accuracy_curves():
    history = [{"epoch": e, "train_loss": 1 / e, "valid_loss": 1.1 / e, "train_acc": 0.9, "valid_acc": 0.95}
               for e in (1, 2, 3)]
    fig = plot_history(history)
    loss_ax, acc_ax = fig.axes
    assert len(loss_ax.lines) == 2 and len(acc_ax.lines) == 2
    np.testing.assert_allclose(acc_ax.lines[1].get_ydata(), [95, 95, 95])
    plt.close(fig)
