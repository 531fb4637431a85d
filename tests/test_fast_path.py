"""The fast path: what choose_runtime picks per device (CUDA and MPS included, decided on CPU) without touching any
global state, autocast, channels_last, DeviceBatches (exactly the DataLoader's batches) and fast prediction."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import make_digits, notebook_namespace
from mnist_helpers import (
    DeviceBatches,
    Runtime,
    choose_runtime,
    cpu_supports_bf16,
    make_loaders,
    predict,
    predict_proba,
    to_image_tensor,
)


@pytest.mark.parametrize("capability", [(7, 5), (7, 0)])
def test_volta_and_turing_gpus_get_fp16_with_a_grad_scaler(fake_gpu, capability):
    fake_gpu(capability, "Tesla T4")
    assert torch.cuda.is_bf16_supported()  # PyTorch's own answer on a T4: yes, because bf16 can be emulated
    fast = choose_runtime("cuda")
    assert fast.fast and fast.amp_dtype == torch.float16 and fast.precision == "float16"
    assert fast.grad_scaler().is_enabled()  # fp16 gradients would flush to zero unscaled
    assert fast.channels_last and fast.data_on_device and fast.cudnn_benchmark
    assert fast.fused  # fused Adam: the scaler's inf check stays on the GPU (test_fused_adam_... below)
    assert fast.predict_batch_size > 1000 and fast.eval_batch_size > 100


@pytest.mark.parametrize("capability", [(8, 0), (8, 9), (9, 0), (12, 0)])
def test_ampere_and_newer_gpus_get_bf16_without_a_scaler(fake_gpu, capability):
    fake_gpu(capability, "NVIDIA L4")
    fast = choose_runtime("cuda")
    assert fast.amp_dtype == torch.bfloat16 and not fast.grad_scaler().is_enabled() and fast.precision == "bfloat16"
    assert fast.channels_last and fast.data_on_device and fast.cudnn_benchmark and fast.fused


@pytest.mark.parametrize("capability", [(6, 0), (6, 1), (5, 2)])
def test_older_gpus_never_get_bf16_and_train_in_fp32(fake_gpu, capability):
    fake_gpu(capability, "Tesla P100-PCIE-16GB")
    assert torch.cuda.is_bf16_supported()  # emulation again: the trap this choice avoids
    fast = choose_runtime("cuda")
    assert fast.amp_dtype is None and fast.precision == "float32" and not fast.grad_scaler().is_enabled()
    assert not fast.channels_last and fast.data_on_device and fast.fused  # no tensor cores, so NHWC buys nothing


@pytest.mark.parametrize("bf16, amp_dtype", [(True, torch.bfloat16), (False, None)])
def test_cpu_uses_bf16_only_where_the_hardware_has_it(bf16, amp_dtype):
    fast = choose_runtime("cpu", bf16=bf16)
    assert fast.fast and fast.amp_dtype == amp_dtype and fast.channels_last and fast.data_on_device
    assert not fast.grad_scaler().is_enabled() and not fast.cudnn_benchmark
    assert fast.fused is None  # torch's own Adam on the CPU: the CPU path stays as measured
    assert fast.predict_batch_size > 1000


def test_cpu_bf16_probe_follows_torch_cpu(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert not cpu_supports_bf16() and choose_runtime("cpu").amp_dtype is None
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert cpu_supports_bf16() and choose_runtime("cpu").amp_dtype == torch.bfloat16


@pytest.mark.parametrize("device", ["cpu", "cuda", "mps"])
def test_disabled_or_mps_is_the_plain_fp32_pipeline(device):
    for plain in (choose_runtime(device, fast=False), choose_runtime("mps")):
        assert plain.amp_dtype is None and plain.precision == "float32" and not plain.grad_scaler().is_enabled()
        assert not plain.channels_last and not plain.data_on_device and not plain.cudnn_benchmark
        assert plain.fused is None
        assert plain.eval_batch_size is None and plain.predict_batch_size == 1000
    assert choose_runtime(device, fast=False).device == torch.device(device)
    assert not choose_runtime(device, fast=False).fast and choose_runtime("mps").fast  # MPS: fast, and plain fp32


def host_syncs_in_one_epoch(runtime: Runtime, batches: int, monkeypatch) -> int:
    """How often the notebook's train_one_epoch asks a tensor for a Python value (.item(), bool(), ...: on a GPU, each
    is a wait)."""
    notebook = notebook_namespace("imports", "train-loop")
    X, y = make_digits(2 * batches)
    train, _ = make_loaders(X, y, None, None, batch_size=2, seed=0, runtime=runtime)
    model = runtime.prepare_model(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)))  # small: fp16 is slow on a CPU
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=runtime.fused)  # as the notebook makes it
    calls = []

    def counted(name):
        method = getattr(torch.Tensor, name)

        def asked(tensor, *args):
            calls.append(name)
            return method(tensor, *args)
        return asked

    with monkeypatch.context() as patched:
        for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
            patched.setattr(torch.Tensor, name, counted(name))
        notebook["train_one_epoch"](model, train, nn.CrossEntropyLoss(), optimizer, runtime.grad_scaler(), runtime,
                                    log_every=0)
    return len(calls)


def test_fused_adam_takes_fp16s_inf_check_without_a_host_sync_per_batch(fake_gpu, monkeypatch):
    # Kaggle's T4 path (fp16, GradScaler, fused Adam), as choose_runtime picks it there, run on the CPU.
    fake_gpu((7, 5), "Tesla T4")
    t4 = dataclasses.replace(choose_runtime("cuda"), device=torch.device("cpu"))
    monkeypatch.undo()  # the CPU again for the run itself
    assert t4.amp_dtype == torch.float16 and t4.fused
    assert host_syncs_in_one_epoch(t4, 4, monkeypatch) == host_syncs_in_one_epoch(t4, 8, monkeypatch)  # per epoch only
    unfused = dataclasses.replace(t4, fused=None)  # the scaler then reads the inf check on the CPU before each step
    assert host_syncs_in_one_epoch(unfused, 8, monkeypatch) >= host_syncs_in_one_epoch(unfused, 4, monkeypatch) + 4


def test_autocast_runs_convolutions_in_bf16_and_is_a_no_op_when_plain():
    conv, xb = nn.Conv2d(1, 4, 3), torch.rand(2, 1, 8, 8)
    with choose_runtime("cpu", bf16=True).autocast():
        assert conv(xb).dtype == torch.bfloat16
    with choose_runtime("cpu", fast=False).autocast():
        assert conv(xb).dtype == torch.float32
    assert conv(xb).dtype == torch.float32


@pytest.mark.parametrize("device", ["mps", "cuda", "cpu"])
def test_fp32_autocast_is_a_plain_null_context_that_never_builds_torch_autocast(monkeypatch, device):
    def refuse(*args, **kwargs):  # older PyTorch refuses torch.autocast("mps", enabled=False) like this
        raise RuntimeError(f"User specified an unsupported autocast device_type '{args[0] if args else device}'")

    monkeypatch.setattr(torch, "autocast", refuse)
    with Runtime(torch.device(device)).autocast() as context:
        assert context is None


def test_plain_grad_scaler_passes_the_loss_through():
    scaler = choose_runtime("cpu", fast=False).grad_scaler()
    loss = torch.tensor(2.5)
    assert not scaler.is_enabled() and scaler.scale(loss) is loss


def test_prepare_model_sets_channels_last_and_cudnn_benchmark(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    model = Runtime(torch.device("cpu"), channels_last=True, cudnn_benchmark=True).prepare_model(nn.Conv2d(3, 8, 3))
    assert model.weight.is_contiguous(memory_format=torch.channels_last) and not model.weight.is_contiguous()
    assert torch.backends.cudnn.benchmark
    plain = choose_runtime("cpu", fast=False).prepare_model(nn.Conv2d(3, 8, 3))
    assert plain.weight.is_contiguous()


def test_to_device_keeps_values_and_gives_the_memory_format():
    fast = Runtime(torch.device("cpu"), channels_last=True)
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


def loader_over(n: int, batch_size: int, shuffle: bool = True, drop_last: bool = False, seed: int = 3) -> DataLoader:
    """A DataLoader over n random digits (labels 0-9 in turn), as make_loaders builds it, seeded when it shuffles."""
    X, y = make_digits(n)
    dataset = TensorDataset(to_image_tensor(X), torch.from_numpy(y))
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last)


def assert_same_batches(got: list, expected: list) -> None:
    assert [len(yb) for _, yb in got] == [len(yb) for _, yb in expected]
    for (x_got, y_got), (x_expected, y_expected) in zip(got, expected):
        assert torch.equal(x_got, x_expected) and torch.equal(y_got, y_expected)


@pytest.mark.parametrize("drop_last", [False, True], ids=["all rows", "drop_last"])
@pytest.mark.parametrize("peek", [False, True], ids=["whole epochs", "after next(iter(loader))"])
def test_device_batches_yield_exactly_the_data_loaders_batches_epoch_after_epoch(peek, drop_last):
    # Twin loaders with equally seeded generators: one is iterated as it is, the other through DeviceBatches.
    reference = loader_over(250, 64, drop_last=drop_last)
    batches = DeviceBatches(loader_over(250, 64, drop_last=drop_last), "cpu")
    assert len(batches) == len(reference) == (3 if drop_last else 4) and len(batches.dataset) == 250
    if peek:  # a look at one batch (as a notebook cell might take) before training: the rest of that pass is dropped
        assert_same_batches([next(iter(batches))], [next(iter(reference))])
    epochs = []
    for _ in range(3):
        expected, got = list(reference), list(batches)
        assert_same_batches(got, expected)
        assert all(xb.device.type == "cpu" and xb.shape[1:] == (1, 28, 28) for xb, _ in got)
        epochs.append(torch.cat([yb for _, yb in got]))
    assert len(epochs[0]) == (192 if drop_last else 250)
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])  # a new order each epoch


def test_device_batches_of_a_loader_that_keeps_its_order_give_its_rows_in_order_in_bigger_batches():
    loader = loader_over(95, 10, shuffle=False)
    batches = DeviceBatches(loader, "cpu", batch_size=40)
    assert len(batches) == 3 and [len(yb) for _, yb in batches] == [40, 40, 15]
    for at in (0, 1):  # the images, then the labels: the same rows, in the same order
        assert torch.equal(torch.cat([batch[at] for batch in batches]), torch.cat([batch[at] for batch in loader]))
    assert torch.equal(torch.cat([yb for _, yb in batches]), torch.arange(95) % 10)


def test_runtime_batches_keep_the_loader_off_the_fast_path_and_slice_on_the_device_on_it():
    train, valid = loader_over(100, 10), loader_over(20, 10, shuffle=False)
    plain = choose_runtime("cpu", fast=False)
    assert plain.batches(train) is train and plain.batches(valid) is valid
    fast = Runtime(torch.device("cpu"), data_on_device=True, eval_batch_size=15)
    fast_train, fast_valid = fast.batches(train), fast.batches(valid)
    assert isinstance(fast_train, DeviceBatches) and fast_train.shuffle and fast_train.batch_size == 10  # its own
    assert isinstance(fast_valid, DeviceBatches) and not fast_valid.shuffle and fast_valid.batch_size == 15
    assert [len(yb) for _, yb in fast_valid] == [15, 5]


def test_make_loaders_follows_the_runtime():
    X, y = make_digits(120)
    plain = make_loaders(X[:100], y[:100], X[100:], y[100:], batch_size=10, seed=0,
                         runtime=Runtime(torch.device("cpu")))
    assert all(isinstance(loader, DataLoader) for loader in plain)
    fast = Runtime(torch.device("cpu"), data_on_device=True, eval_batch_size=15)
    train, valid = make_loaders(X[:100], y[:100], X[100:], y[100:], batch_size=10, seed=0, runtime=fast)
    assert isinstance(train, DeviceBatches) and train.shuffle and train.batch_size == 10
    assert isinstance(valid, DeviceBatches) and not valid.shuffle and valid.batch_size == 15
    assert [len(yb) for _, yb in valid] == [15, 5]
    assert make_loaders(X, y, None, None, batch_size=10, seed=0, runtime=fast)[1] is None
    # The same seed, the same training batches on either path.
    assert_same_batches(list(train), list(plain[0]))


@pytest.fixture
def global_flags(monkeypatch):
    """Set cudnn's two flags and torch's deterministic mode to one value; put all three back afterwards."""
    deterministic = torch.are_deterministic_algorithms_enabled()

    def set_to(value: bool) -> tuple:
        monkeypatch.setattr(torch.backends.cudnn, "benchmark", value)
        monkeypatch.setattr(torch.backends.cudnn, "deterministic", value)
        torch.use_deterministic_algorithms(value)
        return flags()

    yield set_to
    torch.use_deterministic_algorithms(deterministic)


def flags() -> tuple[bool, bool, bool]:
    return (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
            torch.are_deterministic_algorithms_enabled())


@pytest.mark.parametrize("gpu", [None, (6, 0), (7, 5), (8, 0), (9, 0)], ids=["cpu", "P100", "T4", "A100", "H100"])
@pytest.mark.parametrize("start", [False, True], ids=["flags off", "flags on"])
def test_choosing_a_runtime_touches_no_global_state_and_prepare_model_turns_cudnn_benchmark_on(
        fake_gpu, global_flags, tmp_path, monkeypatch, gpu, start):
    if gpu is not None:
        fake_gpu(gpu, "Fake GPU")
    device = "cpu" if gpu is None else "cuda"
    monkeypatch.chdir(tmp_path)
    before, environment = global_flags(start), dict(os.environ)
    runtimes = [choose_runtime(device, fast, bf16) for fast in (True, False) for bf16 in (None, True, False)]
    for runtime in runtimes:
        runtime.describe()  # the notebook prints it next: that changes nothing either
    assert flags() == before and dict(os.environ) == environment and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(os, "environ", {})  # empty: a setdefault of what an earlier test already set shows as well
    choose_runtime(device).describe()
    assert os.environ == {}
    runtime = runtimes[0]
    assert runtime.cudnn_benchmark is (device == "cuda")
    global_flags(False)
    # prepare_model is where the switch is thrown: on this CPU-only torch, a copy of the runtime on the CPU.
    dataclasses.replace(runtime, device=torch.device("cpu")).prepare_model(nn.Conv2d(1, 2, 3))
    assert torch.backends.cudnn.benchmark is runtime.cudnn_benchmark  # the fixture sets it back afterwards


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
    fast = choose_runtime("cpu", bf16=True)
    model = fast.prepare_model(Recorder())
    probabilities = predict_proba(model, X, fast)
    assert probabilities.dtype == np.float32 and probabilities.shape == (5000, 10)
    assert [size for size, _, _ in model.seen] == [2000, 2000, 1000]
    assert all(dtype == torch.bfloat16 and channels_last for _, dtype, channels_last in model.seen)
    exact = predict_proba(model.to(memory_format=torch.contiguous_format), X, "cpu")
    np.testing.assert_allclose(probabilities, exact, atol=0.03)  # bf16 keeps about 3 significant digits
    assert (predict(model, X, fast) == exact.argmax(1)).mean() > 0.95


def test_a_loader_with_a_sampler_of_its_own_is_served_as_the_data_loader_serves_it():
    dataset = TensorDataset(torch.zeros(10, 1, 28, 28), torch.arange(10))
    runtime = choose_runtime("cpu", bf16=False)
    weighted = DataLoader(dataset, 4, sampler=torch.utils.data.WeightedRandomSampler(torch.ones(10), 10))
    with_replacement = DataLoader(dataset, 4, sampler=torch.utils.data.RandomSampler(dataset, replacement=True))
    assert runtime.batches(weighted) is weighted and runtime.batches(with_replacement) is with_replacement
    assert isinstance(runtime.batches(DataLoader(dataset, 4, shuffle=True)), DeviceBatches)


def test_a_loader_the_device_batches_cannot_copy_faithfully_is_left_as_it_is():
    class Digits(torch.utils.data.Dataset):  # a dataset of its own, not a TensorDataset
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return torch.zeros(1, 28, 28), i

    dataset = TensorDataset(torch.zeros(10, 1, 28, 28), torch.arange(10))
    runtime = choose_runtime("cpu", bf16=False)
    own_dataset = DataLoader(Digits(), 4, shuffle=True)
    own_collate = DataLoader(dataset, 4, shuffle=True, collate_fn=lambda rows: rows)
    own_batches = DataLoader(dataset, batch_sampler=[[0, 1], [2, 3, 4]])
    for loader in (own_dataset, own_collate, own_batches):
        assert runtime.batches(loader) is loader
