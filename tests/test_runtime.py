"""get_device, seed_everything and batched prediction."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from conftest import make_digits
from torch import nn

from mnist_helpers import get_device, predict, predict_proba, seed_everything


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_device_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert get_device() == torch.device(expected)


def test_seed_everything_repeats_python_numpy_and_torch():
    def draws():
        return random.random(), np.random.rand(), torch.rand(3).tolist(), nn.Linear(4, 2).weight.tolist()

    seed_everything(123)
    first = draws()
    seed_everything(123)
    assert draws() == first
    seed_everything(124)
    assert draws() != first


class BatchRecorder(nn.Module):
    """A linear classifier that records the size and device of every batch it sees."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(784, 10)
        self.batch_sizes: list[int] = []

    def forward(self, x):  # (B, 1, 28, 28)
        self.batch_sizes.append(len(x))
        return self.linear(x.flatten(1))


def test_predict_runs_in_batches_and_matches_one_big_batch():
    torch.manual_seed(0)
    model, (X, _) = BatchRecorder(), make_digits(2500)
    labels = predict(model, X, "cpu", batch_size=1000)
    assert model.batch_sizes == [1000, 1000, 500] and not model.training
    assert labels.shape == (2500,) and labels.dtype == np.int64 and labels.min() >= 0 and labels.max() <= 9
    with torch.no_grad():
        expected = model.linear(torch.from_numpy(X).float().div(255)).argmax(1).numpy()
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_array_equal(predict(model, X, "cpu", batch_size=7), expected)


def test_predict_proba_rows_are_probabilities():
    probabilities = predict_proba(BatchRecorder(), make_digits(30)[0], torch.device("cpu"), batch_size=8)
    assert probabilities.shape == (30, 10) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert (probabilities >= 0).all()


def test_predict_handles_no_rows_and_rejects_a_zero_batch():
    assert predict(BatchRecorder(), make_digits(0)[0], "cpu").shape == (0,)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        predict(BatchRecorder(), make_digits(3)[0], "cpu", batch_size=0)
