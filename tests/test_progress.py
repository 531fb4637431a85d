"""EpochProgress: bars in Jupyter, one printed line per epoch headless (make run), or nothing; and its time left."""

from __future__ import annotations

import pytest

from mnist_helpers import EpochProgress, format_duration, progress


def rows(*seconds: float, valid: bool = True):
    """History rows as the notebook's loops append them, one per epoch."""
    for epoch, took in enumerate(seconds, start=1):
        row = {"epoch": epoch, "train_loss": 1 / epoch, "seconds": took}
        yield {**row, "valid_acc": 0.9 + epoch / 100} if valid else row


def test_lines_mode_prints_one_line_per_epoch_with_loss_accuracy_seconds_and_time_left(capsys):
    shown = EpochProgress(1, 12, "reference model", "lines")
    assert list(shown) == list(range(1, 13))
    lines = [shown.report(row) for row in rows(10.0, 20.0, 30.0)]
    assert lines == ["reference model, epoch  1/12: train loss 1.0000, valid acc 91.00%, 10.0 s, about 1 min 50 s left",
                     "reference model, epoch  2/12: train loss 0.5000, valid acc 92.00%, 20.0 s, about 2 min 30 s left",
                     "reference model, epoch  3/12: train loss 0.3333, valid acc 93.00%, 30.0 s, about 3 min 00 s left"]
    assert capsys.readouterr().out.splitlines() == lines  # mean 10, 15, then 20 s, times 11, 10, then 9 epochs


def test_the_time_left_counts_the_epochs_after_this_loop_and_a_final_fit_line_has_no_accuracy(capsys):
    shown = EpochProgress(2, 3, "final fit seed 43", "lines", later=6)
    assert list(shown) == [2, 3]  # resumed after epoch 1
    line = shown.report({"epoch": 2, "train_loss": 0.25, "seconds": 600.0})
    assert line == "final fit seed 43, epoch 2/3: train loss 0.2500, 600.0 s, about 1 h 10 min left"  # 7 epochs to go


@pytest.mark.parametrize("mode", [True, False])
def test_bars_and_silence_print_no_lines(capsys, mode):
    shown = EpochProgress(1, 2, "reference model", mode)
    assert shown.bar.disable is (mode is not True)
    postfixes = []
    for epoch, row in zip(shown, rows(1.0, 1.0)):
        assert shown.report(row) == ""
        postfixes.append(getattr(shown.bar, "postfix", None))  # a disabled bar has none
    assert capsys.readouterr().out == ""
    assert postfixes == (["train_loss=1.0000, valid_acc=0.9100", "train_loss=0.5000, valid_acc=0.9200"] if mode
                         else [None, None])


@pytest.mark.parametrize("mode", ["bars", 1, None])
def test_an_unknown_progress_mode_is_refused_in_one_line(mode):
    with pytest.raises(ValueError) as error:
        EpochProgress(1, 2, "x", mode)
    assert str(error.value) == f"PROGRESS must be True, False or 'lines', got {mode!r}."


def test_only_progress_true_draws_bars():
    assert not progress(range(3), "x", True).disable
    assert progress(range(3), "x", "lines").disable and progress(range(3), "x", False).disable


@pytest.mark.parametrize("seconds, text", [(0, "0 s"), (59.4, "59 s"), (60, "1 min 00 s"), (185, "3 min 05 s"),
                                           (3599, "59 min 59 s"), (3600, "1 h 00 min"), (3725, "1 h 02 min"),
                                           (-3, "0 s")])
def test_durations_read_as_a_person_would_say_them(seconds, text):
    assert format_duration(seconds) == text
