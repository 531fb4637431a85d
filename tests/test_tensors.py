"""to_image_tensor, split_train_valid, make_loaders: shapes, dtypes, a disjoint repeatable split, shuffling."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from conftest import make_digits
from mnist_helpers import choose_runtime, make_loaders, split_train_valid, to_image_tensor

PLAIN = choose_runtime("cpu", fast=False)  # the reference's DataLoaders (test_fast_path.py: the fast path's batches)


def test_image_tensor_is_float32_in_unit_range_with_a_channel():
    X = np.array([[0] * 783 + [255], [255] * 784], dtype=np.uint8)
    images = to_image_tensor(X)
    assert images.shape == (2, 1, 28, 28) and images.dtype == torch.float32
    assert images[0, 0, 27, 27] == 1.0 and images[0, 0, 0, 0] == 0.0 and images[1].min() == 1.0
    assert to_image_tensor(X[:0]).shape == (0, 1, 28, 28)


def test_every_pixel_value_becomes_its_correctly_rounded_float32():
    # The values come from a table divided on the CPU, the same on every device: CUDA's own x / 255 multiplies
    # by 1/255, which misses the correctly rounded value for some pixels (the last line shows that it would).
    pixels = np.resize(np.arange(256, dtype=np.uint8), (1, 784))  # every value 0..255, three times and a bit
    exact = (pixels.astype(np.float64) / 255).astype(np.float32)  # rounded once
    assert np.array_equal(to_image_tensor(pixels).numpy().reshape(1, 784), exact)
    assert not np.array_equal(exact, pixels.astype(np.float32) * np.float32(1 / 255))  # the shortcut differs


def test_column_major_pixels_give_the_same_images():
    # pandas can hand back a Fortran-ordered (column-major) array; on a GPU that once failed in .view().
    X = np.random.default_rng(0).integers(0, 256, (5, 784), dtype=np.uint8)
    assert torch.equal(to_image_tensor(np.asfortranarray(X)), to_image_tensor(X))
    assert torch.equal(to_image_tensor(np.asfortranarray(X)[1:4]), to_image_tensor(X)[1:4])


def _with_row_ids(n):
    """Digits whose first two pixels spell the row number, so rows can be traced through the split."""
    X, y = make_digits(n)
    X[:, 0], X[:, 1] = np.arange(n) // 256, np.arange(n) % 256
    return X, y


def _ids(X):
    return set((X[:, 0].astype(int) * 256 + X[:, 1]).tolist())


def test_split_is_disjoint_complete_and_stratified():
    # Guards what split_train_valid passes and returns, not scikit-learn: test_size=valid_size (200 of 1000),
    # stratify=y (each digit keeps its share) and the order X_train, X_valid, y_train, y_valid (labels stay with
    # their images).
    X, y = _with_row_ids(1000)
    X_train, X_valid, y_train, y_valid = split_train_valid(X, y, valid_size=0.2, seed=42)
    assert len(X_valid) == 200 and len(X_train) == 800
    assert _ids(X_train).isdisjoint(_ids(X_valid)) and _ids(X_train) | _ids(X_valid) == set(range(1000))
    assert np.bincount(y_valid, minlength=10).tolist() == [20] * 10  # each digit keeps its 10% share
    rows = X_valid[:, 0].astype(int) * 256 + X_valid[:, 1]
    np.testing.assert_array_equal(y_valid, y[rows])  # labels travel with their images


def test_split_repeats_with_the_seed_and_changes_without_it():
    # Guards random_state=seed, which split_train_valid passes: the seed, and only the seed, picks the rows.
    X, y = _with_row_ids(500)
    first = split_train_valid(X, y, 0.2, seed=7)[1]
    again = split_train_valid(X, y, 0.2, seed=7)[1]
    other = split_train_valid(X, y, 0.2, seed=8)[1]
    np.testing.assert_array_equal(first, again)
    assert _ids(first) != _ids(other)


def test_loaders_give_batches_of_images_and_labels():
    X, y = make_digits(250)
    train_loader, valid_loader = make_loaders(X[:200], y[:200], X[200:], y[200:], batch_size=64, seed=0,
                                             runtime=PLAIN)
    xb, yb = next(iter(train_loader))
    assert xb.shape == (64, 1, 28, 28) and xb.dtype == torch.float32 and yb.shape == (64,) and yb.dtype == torch.int64
    assert [len(b[1]) for b in train_loader] == [64, 64, 64, 8]
    assert len(valid_loader.dataset) == 50


def test_only_the_training_loader_shuffles_and_it_is_seeded():
    X, y = make_digits(300)
    labels = lambda loader: torch.cat([yb for _, yb in loader]).tolist()  # noqa: E731
    train_a, valid_a = make_loaders(X, y, X, y, batch_size=50, seed=3, runtime=PLAIN)
    train_b, _ = make_loaders(X, y, X, y, batch_size=50, seed=3, runtime=PLAIN)
    assert labels(valid_a) == y.tolist() == labels(valid_a)  # validation keeps file order
    first_epoch, second_epoch = labels(train_a), labels(train_a)
    assert first_epoch != y.tolist() and first_epoch != second_epoch  # a new order every epoch
    assert sorted(first_epoch) == sorted(y.tolist())
    assert labels(train_b) == first_epoch  # ...and the same orders again with the same seed


def test_image_tensor_copies_read_only_arrays_without_a_warning():
    X = make_digits(3)[0]
    X.setflags(write=False)  # as pandas hands out under copy-on-write
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images = to_image_tensor(X)
    before = X.copy()
    images.add_(1)  # the tensor is our own copy...
    assert np.array_equal(X, before) and images.min() >= 1  # ...so the array is untouched
