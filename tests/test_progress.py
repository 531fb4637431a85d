"""EpochProgress: bars in Jupyter, one printed line per epoch headless (make run), or nothing; the rows it returns and
its time left. Tally: a loop's loss and right answers, summed on the device and averaged as a hand count would."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mnist_helpers
from mnist_helpers import EpochProgress, Tally


class Clock:
    """A stand-in for time.perf_counter that moves only when told to."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    """Time as EpochProgress sees it: each epoch lasts what the test adds to clock.now."""
    fake = Clock()
    monkeypatch.setattr(mnist_helpers, "time", types.SimpleNamespace(perf_counter=fake))
    return fake


def run_epochs(shown: EpochProgress, clock: Clock, seconds: list[float], valid: bool = True) -> list[dict]:
    """Go through the epochs as the notebook's loops do, each taking the given seconds; the rows report returned."""
    rows = []
    for epoch, took in zip(shown, seconds):
        clock.now += took
        figures = {"train_loss": 1 / epoch, **({"valid_acc": 0.9 + epoch / 100} if valid else {})}
        rows.append(shown.report(**figures))
    return rows


def test_iterating_yields_the_epoch_numbers_from_first_to_last():
    assert list(EpochProgress(1, 12, "reference model", False)) == list(range(1, 13))
    assert list(EpochProgress(4, 6, "reference model", False)) == [4, 5, 6]  # resumed after epoch 3


def test_lines_mode_prints_one_line_per_epoch_with_loss_accuracy_seconds_and_time_left(clock, capsys):
    shown = EpochProgress(1, 12, "reference model", "lines")
    rows = run_epochs(shown, clock, [10.0, 20.0, 30.0])
    assert rows == [{"epoch": 1, "train_loss": 1.0, "valid_acc": 0.91, "seconds": 10.0},
                    {"epoch": 2, "train_loss": 0.5, "valid_acc": 0.92, "seconds": 20.0},
                    {"epoch": 3, "train_loss": 1 / 3, "valid_acc": 0.93, "seconds": 30.0}]
    assert [list(row) for row in rows] == [["epoch", "train_loss", "valid_acc", "seconds"]] * 3  # the history's columns
    assert capsys.readouterr().out.splitlines() == [  # mean 10, 15, then 20 s, times 11, 10, then 9 epochs
        "reference model, epoch  1/12: train loss 1.0000, valid acc 91.00%, 10.0 s, 01:50 left",
        "reference model, epoch  2/12: train loss 0.5000, valid acc 92.00%, 20.0 s, 02:30 left",
        "reference model, epoch  3/12: train loss 0.3333, valid acc 93.00%, 30.0 s, 03:00 left"]


def test_the_time_left_counts_the_epochs_after_this_loop_and_a_line_without_validation_has_no_accuracy(clock, capsys):
    shown = EpochProgress(2, 3, "fold 2", "lines", epochs_after=6)  # resumed after epoch 1
    assert run_epochs(shown, clock, [600.0], valid=False) == [{"epoch": 2, "train_loss": 0.5, "seconds": 600.0}]
    # 7 epochs to go: this loop's last one and the 6 after it, at 600 s each.
    assert capsys.readouterr().out == "fold 2, epoch 2/3: train loss 0.5000, 600.0 s, 1:10:00 left\n"


@pytest.mark.parametrize("seconds, left", [(0.0, "00:00"), (5.0, "00:05"), (59.9, "00:59"), (139.0, "02:19"),
                                           (3599.0, "59:59"), (3723.0, "1:02:03"), (100_000.0, "27:46:40")])
def test_the_time_left_reads_as_tqdm_writes_it(clock, capsys, seconds, left):
    run_epochs(EpochProgress(1, 2, "model seed 43", "lines"), clock, [seconds])  # one epoch done, one to go
    assert capsys.readouterr().out == (f"model seed 43, epoch 1/2: train loss 1.0000, valid acc 91.00%, "
                                       f"{seconds:.1f} s, {left} left\n")


@pytest.mark.parametrize("mode", [True, False])
def test_bars_and_silence_print_no_lines_and_return_the_same_rows(clock, capsys, mode):
    shown = EpochProgress(1, 2, "reference model", mode)
    assert shown.bar.disable is (mode is not True)
    postfixes = []
    for epoch in shown:
        clock.now += 1.0
        row = shown.report(train_loss=1 / epoch, valid_acc=0.9 + epoch / 100)
        assert row == {"epoch": epoch, "train_loss": 1 / epoch, "valid_acc": 0.9 + epoch / 100, "seconds": 1.0}
        postfixes.append(getattr(shown.bar, "postfix", None))  # a disabled bar has none
    assert capsys.readouterr().out == ""
    assert postfixes == (["train_loss=1.0000, valid_acc=0.9100", "train_loss=0.5000, valid_acc=0.9200"] if mode
                         else [None, None])


@pytest.mark.parametrize("mode", ["bars", 1, None])
def test_an_unknown_progress_mode_is_refused_in_one_line(mode):
    with pytest.raises(ValueError) as error:
        EpochProgress(1, 2, "x", mode)
    assert str(error.value) == f"PROGRESS must be True, False or 'lines', got {mode!r}."


@pytest.mark.parametrize("mode", [True, "lines", False])
def test_only_progress_true_draws_bars(mode):
    assert EpochProgress(1, 2, "x", mode).bar.disable is (mode is not True)


# --- Tally -------------------------------------------------------------------------------


def test_tally_sums_on_the_device_and_averages_as_a_hand_count_does(monkeypatch):
    # Three batches of different sizes: (their mean loss, the predicted digits, the true digits).
    batches = [(0.5, [1, 2, 3], [1, 2, 0]),           # 2 of 3 right
               (1.25, [0, 0, 0, 0, 0], [0, 1, 0, 1, 0]),  # 3 of 5
               (2.0, [7], [7])]                       # 1 of 1
    reads = []
    real_item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: reads.append(self) or real_item(self))
    tally = Tally(torch.device("cpu"))
    for loss, predicted, labels in batches:
        logits = 5 * F.one_hot(torch.tensor(predicted), 10).float()  # (B, 10): argmax is the predicted digit
        tally.add(torch.tensor(loss, requires_grad=True) * 1, logits, torch.tensor(labels))
    assert reads == []  # no value came back from the device while the loop ran
    assert tally.loss.device == tally.correct.device == torch.device("cpu") and tally.correct.dtype == torch.int64
    assert not tally.loss.requires_grad  # detached: no batch's graph is kept alive
    mean_loss, accuracy = tally.averages()
    assert len(reads) == 2  # the one wait: the summed loss and the count of right answers
    # Each batch's loss weighs as many images as it has: (0.5 * 3 + 1.25 * 5 + 2.0 * 1) / 9, not the mean of 0.5,
    # 1.25 and 2.0; 6 of the 9 images are right.
    assert mean_loss == pytest.approx(9.75 / 9) and accuracy == pytest.approx(6 / 9)
    assert isinstance(mean_loss, float) and isinstance(accuracy, float) and tally.seen == 9


def test_a_tally_of_no_batches_averages_to_nan_not_a_division_by_zero():
    loss, accuracy = mnist_helpers.Tally("cpu").averages()
    assert np.isnan(loss) and np.isnan(accuracy)
