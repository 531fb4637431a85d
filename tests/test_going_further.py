"""Section 9's pieces: augmentation, the one-cycle schedule, the stronger CNN, ensembles and error analysis."""

from __future__ import annotations

import dataclasses

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import mnist_helpers
from conftest import centre_of_mass, make_digits, notebook_namespace
from mnist_helpers import (
    KFoldModel,
    choose_runtime,
    ensemble_proba,
    make_loaders,
    one_cycle_lrs,
    per_class_accuracy,
    plot_confusion_matrix,
    plot_learning_curves,
    plot_worst_errors,
    random_affine,
    worst_errors,
)

matplotlib.use("Agg")  # before any figure: the plots below draw off screen (pyplot is imported only when they draw)


@pytest.fixture(scope="module")
def notebook():
    return notebook_namespace("imports", "model", "train-loop", "model-best")


def digits(n: int = 8) -> torch.Tensor:
    X, _ = make_digits(n)
    return torch.from_numpy(X).float().div(255).view(-1, 1, 28, 28)


def test_augmentation_keeps_shape_dtype_and_range():
    images = digits()
    out = random_affine(images, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.float32 and out.device == images.device
    assert out.min() >= 0 and out.max() <= 1 + 1e-6
    assert not torch.allclose(out, images)  # it did move the pixels


def test_augmentation_at_zero_strength_is_the_identity():
    images = digits()
    torch.testing.assert_close(random_affine(images, strength=0.0), images, atol=1e-5, rtol=0)


def test_augmentation_is_repeatable_with_a_seeded_generator():
    images = digits()
    first = random_affine(images, generator=torch.Generator().manual_seed(3))
    assert torch.equal(random_affine(images, generator=torch.Generator().manual_seed(3)), first)
    assert not torch.equal(random_affine(images, generator=torch.Generator().manual_seed(4)), first)


def test_augmentation_stays_within_its_ranges_and_never_flips():
    images = torch.zeros(400, 1, 28, 28)
    images[:, 0, 13:15, 13:15] = 1.0  # a dot in the middle: only the shift moves it
    moved = centre_of_mass(random_affine(images, generator=torch.Generator().manual_seed(0))) - 13.5
    assert moved.abs().max() <= 0.1 * 28 + 0.5  # shift of at most 10% (2.8 px), plus resampling
    assert moved.abs().max() > 1.5  # and it does shift

    bar = torch.zeros(400, 1, 28, 28)
    bar[:, 0, 4:24, 3:6] = 1.0  # a vertical bar near the left edge
    columns = centre_of_mass(random_affine(bar, generator=torch.Generator().manual_seed(1)))[:, 1]
    assert columns.max() < 9  # a mirror image would put it near column 23


def test_augmentation_sends_its_draws_to_a_gpu_from_page_locked_memory_without_waiting(monkeypatch):
    # No GPU here, and a fake CUDA tensor cannot even be indexed on a CPU-only build: so the device is faked at the
    # two calls that reach it, which are recorded and stay on the CPU. What is checked is what the helper asks for.
    asked, to = [], torch.Tensor.to

    def recorded_to(tensor, device, non_blocking=False):
        if torch.device(device).type != "cuda":
            return to(tensor, device, non_blocking=non_blocking)
        asked.append(("to cuda", "non_blocking" if non_blocking else "blocking"))
        return tensor

    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda tensor: asked.append("pin_memory") or tensor)
    monkeypatch.setattr(torch.Tensor, "to", recorded_to)
    draws = torch.rand(5, 4)
    assert mnist_helpers._to_device_async(draws, torch.device("cuda")) is draws
    assert asked == ["pin_memory", ("to cuda", "non_blocking")]  # page-locked first, so that the copy can overlap
    asked.clear()
    assert torch.equal(mnist_helpers._to_device_async(draws, torch.device("cpu")), draws) and asked == []
    monkeypatch.undo()

    sent = []
    monkeypatch.setattr(mnist_helpers, "_to_device_async", lambda values, device: sent.append(device) or values)
    random_affine(digits(3), generator=torch.Generator().manual_seed(0))
    assert sent == [torch.device("cpu")]  # random_affine's draws go through it, to the images' device


def fold_of_the_last(rows: int, held_out: int, seed: int) -> KFoldModel:
    """A K-fold model whose fold is the last `held_out` of `rows` rows, checkpointed to m.pt."""
    return KFoldModel(1, 1, seed, "fold 1", "m.pt", np.arange(rows) >= rows - held_out)


def test_the_schedule_plotted_is_the_one_a_k_fold_model_trains_with(tmp_path, monkeypatch):
    # OneCycleLR's own shape (30% warm-up, /25 start) is torch's; what the project must get right is the arguments:
    # train_member's max_lr, epochs and steps per epoch (its loader's batches), stepped every batch, and
    # one_cycle_lrs (the schedule cell's plot) built from the same ones.
    code = notebook_namespace("imports", "model", "train-loop", "model-best", "best-recipe", "best-kfold")
    expected = one_cycle_lrs(3e-3, epochs=3, steps_per_epoch=3)  # 50 rows in batches of 20: 3 a epoch
    stepped, step = [], torch.optim.Adam.step

    def recording_step(optimizer, *args, **kwargs):
        stepped.append(optimizer.param_groups[0]["lr"])  # the rate this step uses
        return step(optimizer, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    X, y = make_digits(70)
    recipe = code["Recipe"](epochs=3, lr=3e-3, batch_size=20, make_model=lambda: code["StrongerCNN"](width=4))
    code["train_member"](fold_of_the_last(70, 20, seed=0), recipe, X, y, choose_runtime("cpu", fast=False), tmp_path,
                         progress=False)
    np.testing.assert_allclose(stepped, expected, rtol=1e-12)  # every step's rate, the recipe's peak among them


class Constant(nn.Module):
    """A 'model' that ignores its input and returns fixed logits; counts its calls."""

    def __init__(self, logits):
        super().__init__()
        self.logits, self.calls = torch.tensor(logits, dtype=torch.float32), 0

    def forward(self, x):
        self.calls += 1
        return self.logits.expand(len(x), -1)


def test_ensemble_averages_softmax_probabilities_and_counts_tta_passes():
    a, b = Constant([2.0] + [0.0] * 9), Constant([0.0, 3.0] + [0.0] * 8)
    X, _ = make_digits(5)
    proba = ensemble_proba([a, b], X, "cpu")
    expected = (torch.softmax(a.logits, 0) + torch.softmax(b.logits, 0)).numpy() / 2
    np.testing.assert_allclose(proba, np.tile(expected, (5, 1)), rtol=1e-6)
    a.calls = b.calls = 0
    tta = ensemble_proba([a, b], X, "cpu", tta=2)
    assert a.calls == b.calls == 3 and tta.shape == (5, 10)
    np.testing.assert_allclose(tta.sum(axis=1), 1.0, rtol=1e-6)


def test_worst_errors_are_the_most_confident_mistakes():
    y = np.array([0, 1, 2, 3])
    proba = np.full((4, 10), 0.01)
    proba[0, 0] = 0.91                  # right
    proba[1, 7], proba[1, 1] = 0.6, 0.3  # wrong, margin 0.3
    proba[2, 5], proba[2, 2] = 0.9, 0.01  # wrong, margin 0.89
    proba[3, 3] = 0.91                  # right
    assert worst_errors(y, proba).tolist() == [2, 1]
    assert worst_errors(y, proba, k=1).tolist() == [2]


def test_per_class_accuracy_per_digit():
    accuracy = per_class_accuracy(np.array([0, 0, 1, 1, 1, 2]), np.array([0, 1, 1, 1, 0, 2]))
    assert accuracy[0] == 0.5 and accuracy[1] == pytest.approx(2 / 3) and accuracy[2] == 1.0
    assert np.isnan(accuracy[9]) and list(accuracy.index) == list(range(10))


def test_error_analysis_plots():
    rng = np.random.default_rng(0)
    y = np.arange(40) % 10
    proba = rng.dirichlet(np.ones(10), size=40).astype(np.float32)
    X = make_digits(40)[0]
    confusion = plot_confusion_matrix(y, proba.argmax(1), "title")
    assert confusion.axes[0].get_title() == "title" and len(confusion.axes[0].texts) == 100  # a count per cell
    worst = plot_worst_errors(X, y, proba, k=6)
    titles = [ax.get_title() for ax in worst.axes if ax.get_title()]
    assert len(titles) == 6 and all(t.startswith("true ") and "pred" in t and "p=" in t for t in titles)
    history = pd.DataFrame({"epoch": [1, 2], "valid_acc": [0.98, 0.99]})
    curves = plot_learning_curves({"reference": history, "best": history.assign(valid_acc=[0.99, 0.995])})
    assert [text.get_text() for text in curves.axes[0].get_legend().get_texts()] == ["reference", "best"]


def test_stronger_cnn_shapes_and_size(notebook):
    model = notebook["StrongerCNN"]()
    assert model(torch.zeros(5, 1, 28, 28)).shape == (5, 10)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 7
    assert sum(p.numel() for p in model.parameters()) < 340_138  # stronger, yet smaller than the reference
    runtime = choose_runtime("cpu", bf16=True)
    model = runtime.prepare_model(model).eval()
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.dim() == 4)
    with torch.no_grad(), runtime.autocast():
        logits = model(torch.rand(3, 1, 28, 28).to(memory_format=torch.channels_last))
    assert logits.shape == (3, 10) and logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


def test_training_loop_applies_augmentation_and_steps_the_schedule_every_batch(notebook):
    torch.manual_seed(0)
    X, y = make_digits(60)
    runtime = choose_runtime("cpu", fast=False)
    train_batches, valid = make_loaders(X, y, None, None, batch_size=20, seed=0, runtime=runtime)
    assert valid is None
    model = notebook["StrongerCNN"]()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=3)
    seen = []

    def augment(xb):
        seen.append(len(xb))
        return random_affine(xb, generator=torch.Generator().manual_seed(len(seen)))

    notebook["train_one_epoch"](model, train_batches, nn.CrossEntropyLoss(), optimizer, runtime.grad_scaler(),
                                runtime, log_every=0, augment=augment, scheduler=scheduler)
    assert seen == [20, 20, 20] and scheduler.last_epoch == 3


def test_train_member_takes_every_part_of_its_recipe_as_given(tmp_path):
    """Only the cells that define them: train_member runs on its arguments, and uses each field of the Recipe."""
    code = notebook_namespace("imports", "model", "train-loop", "model-best", "best-recipe", "best-kfold")
    X, y = make_digits(60)
    calls, augmented = [], []
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)

    def train_epoch(model, loader, given_loss_fn, *args, **kwargs):
        calls.append((type(model).__name__, [len(yb) for _, yb in loader], given_loss_fn is loss_fn,
                      kwargs["log_every"]))
        return code["train_one_epoch"](model, loader, given_loss_fn, *args, **kwargs)

    def augment(xb, generator=None):
        augmented.append((len(xb), isinstance(generator, torch.Generator)))
        return random_affine(xb, generator=generator)

    schedules = []

    def schedule(optimizer, max_lr, epochs, steps_per_epoch):
        schedules.append((max_lr, epochs, steps_per_epoch))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    recipe = code["Recipe"](epochs=2, lr=1e-3, batch_size=18, make_model=lambda: code["StrongerCNN"](width=4),
                            augment=augment, loss_fn=loss_fn, train_epoch=train_epoch, schedule=schedule)
    runtime = dataclasses.replace(choose_runtime("cpu", fast=False), fused=True)  # as a CUDA runtime asks
    row = code["train_member"](fold_of_the_last(60, 10, seed=7), recipe, X, y, runtime, tmp_path, progress=False)
    model, history = row["model"], row["history"]
    assert model.head.in_features == 16  # width 4: 4, 8, 16 channels
    assert calls == [("StrongerCNN", [18, 18, 14], True, 0)] * 2  # every one of the 50 rows it was given
    assert augmented == [(18, True), (18, True), (14, True)] * 2  # every batch, with the member's own generator
    assert schedules == [(1e-3, 2, 3)]  # the recipe's peak, epochs, and this loader's batches
    assert history["epoch"].tolist() == [1, 2]
    assert list(history.columns) == ["epoch", "train_loss", "train_acc", "valid_loss", "valid_acc", "seconds"]
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]
    saved = torch.load(tmp_path / "m.pt", weights_only=True)
    assert saved["config"]["EPOCHS"] == 2 and saved["optimizer"]["param_groups"][0]["fused"] is True  # the runtime's
    assert code["Recipe"](epochs=1, lr=1e-3, batch_size=10).train_epoch is code["train_one_epoch"]  # the default
