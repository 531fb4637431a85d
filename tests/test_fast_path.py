"""The fast path: what choose_fast_path picks per device (CUDA and MPS included, decided on CPU),
autocast, channels_last, DeviceBatches and fast prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_digits
from torch import nn
from torch.utils.data import DataLoader

from mnist_helpers import (DeviceBatches, FastPath, choose_fast_path, cpu_supports_bf16, make_loaders, predict,
                           predict_proba, to_image_tensor)


@pytest.mark.parametrize("capability", [(7, 5), (7, 0)])
def test_volta_and_turing_gpus_get_fp16_with_a_grad_scaler(fake_gpu, capability):
    fake_gpu(capability, "Tesla T4")
    assert torch.cuda.is_bf16_supported()  # PyTorch's own answer on a T4: yes, because bf16 can be emulated
    fast = choose_fast_path("cuda")
    assert fast.amp_dtype == torch.float16 and fast.uses_grad_scaler and fast.precision == "float16"
    assert fast.channels_last and fast.data_on_device and fast.cudnn_benchmark
    assert fast.predict_batch_size > 1000 and fast.eval_batch_size > 100


@pytest.mark.parametrize("capability", [(8, 0), (8, 9), (9, 0), (12, 0)])
def test_ampere_and_newer_gpus_get_bf16_without_a_scaler(fake_gpu, capability):
    fake_gpu(capability, "NVIDIA L4")
    fast = choose_fast_path("cuda")
    assert fast.amp_dtype == torch.bfloat16 and not fast.uses_grad_scaler and fast.precision == "bfloat16"
    assert fast.channels_last and fast.data_on_device and fast.cudnn_benchmark


@pytest.mark.parametrize("capability", [(6, 0), (6, 1), (5, 2)])
def test_older_gpus_never_get_bf16_and_train_in_fp32(fake_gpu, capability):
    fake_gpu(capability, "Tesla P100-PCIE-16GB")
    assert torch.cuda.is_bf16_supported()  # emulation again: the trap this choice avoids
    fast = choose_fast_path("cuda")
    assert fast.amp_dtype is None and fast.precision == "float32" and not fast.uses_grad_scaler
    assert not fast.channels_last and fast.data_on_device  # no tensor cores, so NHWC buys nothing


@pytest.mark.parametrize("bf16, amp_dtype", [(True, torch.bfloat16), (False, None)])
def test_cpu_uses_bf16_only_where_the_hardware_has_it(bf16, amp_dtype):
    fast = choose_fast_path("cpu", bf16=bf16)
    assert fast.amp_dtype == amp_dtype and fast.channels_last and fast.data_on_device
    assert not fast.uses_grad_scaler and not fast.cudnn_benchmark
    assert fast.predict_batch_size > 1000


def test_cpu_bf16_probe_follows_torch_cpu(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert not cpu_supports_bf16() and choose_fast_path("cpu").amp_dtype is None
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert cpu_supports_bf16() and choose_fast_path("cpu").amp_dtype == torch.bfloat16


@pytest.mark.parametrize("device", ["cpu", "cuda", "mps"])
def test_disabled_or_mps_is_the_plain_fp32_pipeline(device):
    for plain in (choose_fast_path(device, enabled=False), choose_fast_path("mps")):
        assert plain.amp_dtype is None and plain.precision == "float32" and not plain.uses_grad_scaler
        assert not plain.channels_last and not plain.data_on_device and not plain.cudnn_benchmark
        assert plain.eval_batch_size is None and plain.predict_batch_size == 1000
    assert choose_fast_path(device, enabled=False).device == torch.device(device)


def test_autocast_runs_convolutions_in_bf16_and_is_a_no_op_when_plain():
    conv, xb = nn.Conv2d(1, 4, 3), torch.rand(2, 1, 8, 8)
    with choose_fast_path("cpu", bf16=True).autocast():
        assert conv(xb).dtype == torch.bfloat16
    with choose_fast_path("cpu", enabled=False).autocast():
        assert conv(xb).dtype == torch.float32
    assert conv(xb).dtype == torch.float32


@pytest.mark.parametrize("device", ["mps", "cuda", "cpu"])
def test_fp32_autocast_is_a_plain_null_context_that_never_builds_torch_autocast(monkeypatch, device):
    def refuse(*args, **kwargs):  # older PyTorch refuses torch.autocast("mps", enabled=False) like this
        raise RuntimeError(f"User specified an unsupported autocast device_type '{args[0] if args else device}'")

    monkeypatch.setattr(torch, "autocast", refuse)
    with FastPath(torch.device(device)).autocast() as context:
        assert context is None


def test_plain_grad_scaler_passes_the_loss_through():
    scaler = choose_fast_path("cpu", enabled=False).grad_scaler()
    loss = torch.tensor(2.5)
    assert not scaler.is_enabled() and scaler.scale(loss) is loss


def test_prepare_model_sets_channels_last_and_cudnn_benchmark(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    model = FastPath(torch.device("cpu"), channels_last=True, cudnn_benchmark=True).prepare_model(nn.Conv2d(3, 8, 3))
    assert model.weight.is_contiguous(memory_format=torch.channels_last) and not model.weight.is_contiguous()
    assert torch.backends.cudnn.benchmark
    plain = choose_fast_path("cpu", enabled=False).prepare_model(nn.Conv2d(3, 8, 3))
    assert plain.weight.is_contiguous()


def test_to_device_keeps_values_and_gives_the_memory_format():
    fast = FastPath(torch.device("cpu"), channels_last=True)
    xb, yb = torch.rand(4, 3, 5, 5), torch.arange(4)
    moved_x, moved_y = fast.to_device(xb, yb)
    assert moved_x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(moved_x, xb)
    assert moved_y is yb  # already there: no copy


def test_to_image_tensor_builds_on_the_requested_device():
    X, _ = make_digits(3)
    images = to_image_tensor(X, torch.device("cpu"))
    assert images.shape == (3, 1, 28, 28) and images.dtype == torch.float32
    torch.testing.assert_close(images.flatten(1), torch.from_numpy(X).float() / 255)


def test_device_batches_cover_every_image_once_in_a_new_seeded_order_each_epoch():
    X, y = make_digits(250)
    y = np.arange(250)  # unique labels, so each batch tells which rows it holds
    batches = DeviceBatches(X, y, batch_size=100, device="cpu", shuffle=True, generator=torch.Generator().manual_seed(3))
    assert len(batches) == 3 and len(batches.dataset) == 250
    epochs = []
    for _ in range(2):
        sizes, seen = [], []
        for xb, yb in batches:
            assert xb.shape[1:] == (1, 28, 28) and xb.dtype == torch.float32 and yb.dtype == torch.int64
            torch.testing.assert_close(xb.flatten(1), torch.from_numpy(X[yb.numpy()]).float() / 255)  # rows match
            sizes.append(len(yb))
            seen.append(yb)
        order = torch.cat(seen)
        assert sizes == [100, 100, 50] and sorted(order.tolist()) == list(range(250))
        epochs.append(order)
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[0], torch.arange(250))
    again = DeviceBatches(X, y, batch_size=100, device="cpu", shuffle=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.cat([yb for _, yb in again]), epochs[0])  # the same seed, the same order


def test_device_batches_keep_the_order_without_shuffle():
    X, _ = make_digits(25)
    batches = DeviceBatches(X, np.arange(25), batch_size=10, device="cpu")
    assert torch.cat([yb for _, yb in batches]).tolist() == list(range(25))


def test_make_loaders_follows_the_fast_path():
    X, y = make_digits(120)
    plain = make_loaders(X[:100], y[:100], X[100:], y[100:], batch_size=10, seed=0)
    assert all(isinstance(loader, DataLoader) for loader in plain)
    fast = FastPath(torch.device("cpu"), data_on_device=True, eval_batch_size=15)
    train, valid = make_loaders(X[:100], y[:100], X[100:], y[100:], batch_size=10, seed=0, fast=fast)
    assert isinstance(train, DeviceBatches) and train.shuffle and train.batch_size == 10
    assert isinstance(valid, DeviceBatches) and not valid.shuffle and valid.batch_size == 15
    assert [len(yb) for _, yb in valid] == [15, 5]


class Recorder(nn.Module):
    """A small conv classifier that records each batch's size, dtype and memory format."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 5, stride=4)
        self.linear = nn.Linear(4 * 6 * 6, 10)
        self.seen: list[tuple] = []

    def forward(self, x):  # (B, 1, 28, 28)
        h = self.conv(x)
        self.seen.append((len(x), h.dtype, h.is_contiguous(memory_format=torch.channels_last)))
        return self.linear(h.flatten(1))


def test_fast_prediction_uses_its_batch_and_agrees_with_fp32():
    torch.manual_seed(0)
    X, _ = make_digits(5000)
    fast = choose_fast_path("cpu", bf16=True)
    model = fast.prepare_model(Recorder())
    probabilities = predict_proba(model, X, fast)
    assert probabilities.dtype == np.float32 and probabilities.shape == (5000, 10)
    assert [size for size, _, _ in model.seen] == [2000, 2000, 1000]
    assert all(dtype == torch.bfloat16 and channels_last for _, dtype, channels_last in model.seen)
    exact = predict_proba(model.to(memory_format=torch.contiguous_format), X, "cpu")
    np.testing.assert_allclose(probabilities, exact, atol=0.03)  # bf16 keeps about 3 significant digits
    assert (predict(model, X, fast) == exact.argmax(1)).mean() > 0.95
