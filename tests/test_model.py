"""The notebook's own model and training loop, executed from its tagged cells."""

from __future__ import annotations

import ast
import re

import numpy as np
import pytest
import torch
from conftest import NOTEBOOK, make_digits, notebook_namespace
from torch import nn

from mnist_helpers import FastPath, choose_fast_path, make_loaders, notebook_code_cells


@pytest.fixture(scope="module")
def notebook():
    return notebook_namespace("imports", "model", "train-loop")


def test_model_has_340138_parameters_and_ten_logits(notebook):
    model = notebook["TwoConvCNN"]()
    assert sum(p.numel() for p in model.parameters()) == 340_138
    assert model(torch.zeros(5, 1, 28, 28)).shape == (5, 10)
    assert model(torch.zeros(1, 28, 28)).shape == (1, 10)  # an unbatched image, as torchinfo's reference call


def run_cell(tag: str, namespace: dict):
    """Execute the notebook cell tagged `tag` in namespace and return the value of its last line, as Jupyter shows it."""
    source = next(source for tags, source in notebook_code_cells(NOTEBOOK) if tag in tags)
    body = ast.parse(source)
    last = body.body.pop()
    exec(compile(body, f"[{tag}]", "exec"), namespace)
    return eval(compile(ast.Expression(last.value), f"[{tag}]", "eval"), namespace)


def test_the_summary_cells_print_the_reference_figures_and_the_hand_count_agrees(notebook, capsys):
    namespace = {**notebook, "device": torch.device("cpu"), "fast": choose_fast_path("cpu", enabled=False)}
    unbatched = run_cell("summary", namespace)  # the reference's call, with one unbatched (1, 28, 28) image
    assert unbatched.total_params == 340_138 and round(unbatched.total_mult_adds / 1e6, 2) == 212.54
    table = str(unbatched)
    assert "Total params: 340,138" in table and re.search(r"Total mult-adds \(.*\): 212\.54", table)
    capsys.readouterr()
    batched = run_cell("mult-adds", namespace)  # a real batch of one, and both figures worked out by hand
    assert round(batched.total_mult_adds / 1e6, 2) == 14.21
    assert capsys.readouterr().out.splitlines()[:2] == [
        f"torchinfo, unbatched: {unbatched.total_mult_adds:,} mult-adds",  # 212,535,722
        f"real, per image:      {batched.total_mult_adds:,} mult-adds"]    # 14,207,402


def test_loss_falls_on_a_fixed_batch(notebook):
    torch.manual_seed(0)
    model = notebook["TwoConvCNN"]()
    X, y = make_digits(32)
    xb, yb = torch.from_numpy(X).float().div(255).view(-1, 1, 28, 28), torch.from_numpy(y)
    optimizer, loss_fn = torch.optim.Adam(model.parameters(), lr=1e-3), nn.CrossEntropyLoss()
    model.eval()  # dropout off, so the loss is a deterministic function of the weights
    before = loss_fn(model(xb), yb).item()
    for _ in range(60):
        loss = loss_fn(model(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss_fn(model(xb), yb).item() < 0.25 * before


@pytest.mark.parametrize("fast", [choose_fast_path("cpu", enabled=False), choose_fast_path("cpu", bf16=True),
                                  FastPath(torch.device("cpu"), amp_dtype=torch.float16, channels_last=True,
                                           data_on_device=True)],
                         ids=["plain", "cpu-bf16", "fp16-with-grad-scaler"])
def test_loops_print_the_reference_lines_and_set_the_mode(notebook, capsys, fast):
    torch.manual_seed(0)
    X, y = make_digits(250)
    train_loader, valid_loader = make_loaders(X[:200], y[:200], X[200:], y[200:], batch_size=10, seed=0, fast=fast)
    model, loss_fn = fast.prepare_model(notebook["TwoConvCNN"]()), nn.CrossEntropyLoss()
    optimizer, scaler = torch.optim.Adam(model.parameters(), lr=1e-3), fast.grad_scaler()
    assert scaler.is_enabled() == (fast.amp_dtype == torch.float16)

    train_loss, train_acc = notebook["train_one_epoch"](model, train_loader, loss_fn, optimizer, scaler, fast,
                                                        log_every=5)
    assert model.training and train_loss > 0 and 0 <= train_acc <= 1
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())  # fp32 master weights
    valid_loss, valid_acc = notebook["evaluate"](model, valid_loader, loss_fn, fast)
    assert not model.training and valid_loss > 0 and valid_acc in {k / 50 for k in range(51)}

    lines = capsys.readouterr().out.splitlines()
    assert [line[-13:] for line in lines[:4]] == ["[   10/  200]", "[   60/  200]", "[  110/  200]", "[  160/  200]"]
    assert all(re.fullmatch(r"loss: \d\.\d{6} \[ *\d+/ *\d+\]", line) for line in lines[:4]), lines
    assert re.fullmatch(r"acc: \d+\.\d{2}%, average_loss: \d\.\d{6}", lines[4]), lines
    assert lines[4] == f"acc: {100 * valid_acc:.2f}%, average_loss: {valid_loss:.6f}"


def test_model_accepts_channels_last_and_gives_the_same_logits(notebook):
    torch.manual_seed(0)
    model = notebook["TwoConvCNN"]().eval()
    xb = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        expected = model(xb)
        model = model.to(memory_format=torch.channels_last)
        got = model(xb.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_bf16_training_learns_like_fp32(notebook, capsys):
    """A few epochs on a learnable toy task: the bf16 fast path reaches the accuracy of the plain path."""
    rng = np.random.default_rng(0)
    y = np.arange(400) % 10
    X = np.zeros((400, 784), dtype=np.uint8)
    for i, label in enumerate(y):  # digit k lights up a bar in row band k, plus noise
        image = rng.integers(0, 60, (28, 28))
        image[2 + 2 * label: 4 + 2 * label, 4:24] = 255
        X[i] = image.ravel()
    runs = {}
    for name, fast in {"plain": choose_fast_path("cpu", enabled=False), "bf16": choose_fast_path("cpu", bf16=True)}.items():
        torch.manual_seed(0)  # the same initial weights and shuffling for both
        train_loader, valid_loader = make_loaders(X[:300], y[:300], X[300:], y[300:], batch_size=20, seed=0, fast=fast)
        model, loss_fn = fast.prepare_model(notebook["TwoConvCNN"]()), nn.CrossEntropyLoss()
        optimizer, scaler = torch.optim.Adam(model.parameters(), lr=2e-3), fast.grad_scaler()
        train_losses = [notebook["train_one_epoch"](model, train_loader, loss_fn, optimizer, scaler, fast)[0]
                        for _ in range(4)]
        runs[name] = (train_losses, *notebook["evaluate"](model, valid_loader, loss_fn, fast))
    (plain_losses, plain_valid_loss, plain_acc), (bf16_losses, bf16_valid_loss, bf16_acc) = runs["plain"], runs["bf16"]
    assert plain_acc >= 0.9, runs  # the task is learnt at all, so that the comparison means something
    assert abs(bf16_acc - plain_acc) <= 0.03, runs  # at most 3 of the 100 validation images apart
    np.testing.assert_allclose(bf16_losses, plain_losses, rtol=0.5, atol=0.05)  # epoch by epoch, the same curve
    assert abs(bf16_valid_loss - plain_valid_loss) <= 0.05 + 0.25 * plain_valid_loss, runs
