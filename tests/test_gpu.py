"""On a real CUDA GPU (`pytest -m gpu`; `make gpu-check` runs them): each test skips where there is none.

What the CPU tests can only fake: autocast training steps, data kept on the device, prediction that agrees with the
CPU, checkpoints of GPU tensors, and a real out-of-memory error halving the prediction batch.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import gpu_tests_skip_reason, learnable_digits, make_digits, notebook_namespace
from mnist_helpers import (
    DeviceBatches,
    Runtime,
    TrainingCheckpoint,
    choose_runtime,
    cuda_autocast_dtype,
    get_device,
    make_loaders,
    predict,
    predict_proba,
    seed_everything,
    to_image_tensor,
)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(gpu_tests_skip_reason() is not None,
                                                  reason=gpu_tests_skip_reason() or "")]


@pytest.fixture(scope="module")
def notebook():
    """The notebook's model and loops."""
    return notebook_namespace("imports", "model", "train-loop")


def test_the_gpu_is_used_with_the_precision_its_capability_calls_for():
    assert get_device() == torch.device("cuda")
    runtime = choose_runtime("cuda")
    major, minor = torch.cuda.get_device_capability()
    assert runtime.amp_dtype == (torch.bfloat16 if major >= 8 else torch.float16 if major == 7 else None)
    assert runtime.grad_scaler().is_enabled() == (runtime.amp_dtype == torch.float16)
    assert runtime.data_on_device and runtime.channels_last == (runtime.amp_dtype is not None)
    assert runtime.describe().splitlines()[0].startswith(
        f"device: cuda ({torch.cuda.get_device_name()}, compute capability {major}.{minor}), torch ")


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])
def test_an_autocast_training_epoch_learns_on_the_gpu(notebook, amp_dtype):
    if amp_dtype == torch.bfloat16 and cuda_autocast_dtype("cuda") != torch.bfloat16:
        pytest.skip("this GPU has no bf16 tensor cores")
    seed_everything(0)
    runtime = Runtime(torch.device("cuda"), fast=True, amp_dtype=amp_dtype, channels_last=True, data_on_device=True,
                      eval_batch_size=500)
    X, y = learnable_digits(2000)
    model = runtime.prepare_model(notebook["TwoConvCNN"]())
    optimizer, loss_fn = torch.optim.Adam(model.parameters(), lr=1e-3), nn.CrossEntropyLoss()
    scaler = runtime.grad_scaler()
    assert scaler.is_enabled() == (amp_dtype == torch.float16)
    train, valid = make_loaders(X[:1500], y[:1500], X[1500:], y[1500:], 50, 0, runtime)
    assert isinstance(train, DeviceBatches) and (train.batch_size, valid.batch_size) == (50, 500)
    for _ in range(2):
        notebook["train_one_epoch"](model, train, loss_fn, optimizer, scaler, runtime, log_every=0)
    loss, accuracy = notebook["evaluate"](model, valid, loss_fn, runtime, verbose=False)
    assert accuracy > 0.95 and np.isfinite(loss)
    assert all(torch.isfinite(p).all() and p.is_cuda for p in model.parameters())
    if scaler.is_enabled():
        assert 0 < scaler.get_scale() < float("inf")


def test_device_batches_live_on_the_gpu_and_are_the_data_loaders_own():
    X, _ = make_digits(250)
    y = np.arange(250)  # each label is its row number: the order shows

    def loader(shuffle: bool = True) -> DataLoader:  # each its own generator, seeded alike
        return DataLoader(TensorDataset(to_image_tensor(X), torch.from_numpy(y)), 100, shuffle=shuffle,
                          generator=torch.Generator().manual_seed(3) if shuffle else None)

    on_gpu, on_cpu, plain = DeviceBatches(loader(), "cuda"), DeviceBatches(loader(), "cpu"), loader()
    for _ in range(2):  # two epochs: a new order each, the DataLoader's own, on both devices
        gpu_batches, cpu_batches, loader_batches = list(on_gpu), list(on_cpu), list(plain)
        assert all(xb.is_cuda and yb.is_cuda for xb, yb in gpu_batches)
        assert [len(yb) for _, yb in gpu_batches] == [100, 100, 50]
        for batches in (cpu_batches, loader_batches):
            assert len(batches) == len(gpu_batches)
            for (xg, yg), (xb, yb) in zip(gpu_batches, batches):
                assert torch.equal(yg.cpu(), yb) and torch.equal(xg.cpu(), xb)
    assert not torch.equal(torch.cat([yb for _, yb in gpu_batches]).cpu(), torch.from_numpy(y))  # it did shuffle
    evaluation = DeviceBatches(loader(shuffle=False), "cuda", batch_size=125)  # bigger batches, in order
    assert [yb.cpu().tolist() for _, yb in evaluation] == [list(range(125)), list(range(125, 250))]
    batches = choose_runtime("cuda").batches(loader(shuffle=False))  # the fast path's evaluation batches
    assert isinstance(batches, DeviceBatches) and batches.batch_size == choose_runtime("cuda").eval_batch_size


@pytest.fixture
def exact_fp32():
    """Plain fp32 convolutions and matmuls on the GPU (no TF32), so that they can match the CPU closely."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_prediction_on_the_gpu_equals_the_cpus(notebook, exact_fp32):
    seed_everything(1)
    X, y = learnable_digits(3000, seed=1)
    runtime = choose_runtime("cuda")
    model = runtime.prepare_model(notebook["TwoConvCNN"]())
    optimizer, loss_fn = torch.optim.Adam(model.parameters(), lr=1e-3), nn.CrossEntropyLoss()
    train, _ = make_loaders(X, y, None, None, 50, 1, runtime)
    notebook["train_one_epoch"](model, train, loss_fn, optimizer, runtime.grad_scaler(), runtime, log_every=0)
    model = model.to(memory_format=torch.contiguous_format)
    on_gpu = predict_proba(model, X, "cuda", batch_size=1000)   # fp32 on the GPU
    on_cpu = predict_proba(model.cpu(), X, "cpu", batch_size=1000)  # the same weights on the CPU
    np.testing.assert_allclose(on_gpu, on_cpu, atol=1e-4)
    np.testing.assert_array_equal(on_gpu.argmax(1), on_cpu.argmax(1))
    fast_labels = predict(model.cuda().to(memory_format=runtime.memory_format), X, runtime)  # autocast, batch 4000
    assert (fast_labels == on_cpu.argmax(1)).mean() > 0.99


def test_a_gpu_checkpoint_resumes_to_the_same_state(notebook, tmp_path):
    seed_everything(2, deterministic=True)
    try:
        runtime = choose_runtime("cuda")
        X, y = learnable_digits(600, seed=2)

        def new():
            model = runtime.prepare_model(notebook["TwoConvCNN"]())
            return model, torch.optim.Adam(model.parameters(), lr=1e-3), runtime.grad_scaler()

        def epoch(model, optimizer, scaler, train):
            return notebook["train_one_epoch"](model, train, nn.CrossEntropyLoss(), optimizer, scaler, runtime,
                                               log_every=0)

        model, optimizer, scaler = new()
        train, _ = make_loaders(X, y, None, None, 50, 2, runtime)
        epoch(model, optimizer, scaler, train)
        path = TrainingCheckpoint(tmp_path / "checkpoint.pt", model, optimizer, scaler, generators=train.generator,
                                  config={"EPOCHS": 2}, runtime=runtime, rows=(X, y)).save(1, [{"epoch": 1}])
        expected_loss = epoch(model, optimizer, scaler, train)  # epoch 2, uninterrupted
        major, minor = torch.cuda.get_device_capability()
        recorded = torch.load(path, weights_only=True)["config"]
        assert (recorded["PRECISION"], recorded["DEVICE_NAME"], recorded["CAPABILITY"]) == (
            runtime.precision, torch.cuda.get_device_name(), f"{major}.{minor}")

        resumed, resumed_optimizer, resumed_scaler = new()
        resumed_train, _ = make_loaders(X, y, None, None, 50, 99, runtime)  # another seed: the checkpoint restores it
        history = TrainingCheckpoint(path, resumed, resumed_optimizer, resumed_scaler,
                                     generators=resumed_train.generator, config={"EPOCHS": 2}, runtime=runtime,
                                     rows=(X, y)).load()
        assert history == [{"epoch": 1}]
        assert all(p.is_cuda for p in resumed.parameters())
        assert all(v.is_cuda for state in resumed_optimizer.state.values() for v in state.values() if v.dim())
        assert resumed_scaler.state_dict() == torch.load(path, weights_only=True)["scaler"]
        loss = epoch(resumed, resumed_optimizer, resumed_scaler, resumed_train)  # epoch 2, after resuming
        assert loss == pytest.approx(expected_loss, rel=1e-4)
        for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False


def test_prediction_halves_its_batch_after_a_real_out_of_memory_error(notebook, exact_fp32):
    model = notebook["TwoConvCNN"]().cuda().eval()
    X, _ = make_digits(28_000)
    expected = predict(model, X, "cuda", batch_size=500)
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    # Cap this process at about 1.5 GB: one batch of 28,000 images needs about 4 GB for conv1's output alone.
    torch.cuda.set_per_process_memory_fraction(1.5 * 2**30 / total)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            labels = predict(model, X, "cuda", batch_size=28_000)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    messages = [str(w.message) for w in caught if "out of memory" in str(w.message)]
    assert messages[0] == "out of memory at a batch of 28000 images; retrying with 14000."
    assert labels.shape == (28_000,) and (labels == expected).mean() > 0.999  # other batch sizes, other kernels
