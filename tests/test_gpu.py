"""On a real CUDA GPU (`pytest -m gpu`; `make gpu-check` runs them): each test skips where there is none.

What the CPU tests can only fake: autocast training steps, data kept on the device, prediction that agrees with the
CPU, checkpoints of GPU tensors, and a real out-of-memory error halving the prediction batch.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import learnable_digits, make_digits, notebook_namespace
from torch import nn

from mnist_helpers import (DeviceBatches, FastPath, choose_fast_path, cuda_autocast_dtype, get_device,
                           load_checkpoint, make_loaders, predict, predict_proba, save_checkpoint, seed_everything)

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU machine)")]


@pytest.fixture(scope="module")
def notebook():
    """The notebook's model and loops."""
    return notebook_namespace("imports", "model", "train-loop")


def test_the_gpu_is_used_with_the_precision_its_capability_calls_for():
    assert get_device() == torch.device("cuda")
    fast = choose_fast_path("cuda")
    major, _ = torch.cuda.get_device_capability()
    assert fast.amp_dtype == (torch.bfloat16 if major >= 8 else torch.float16 if major == 7 else None)


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])
def test_an_autocast_training_epoch_learns_on_the_gpu(notebook, amp_dtype):
    if amp_dtype == torch.bfloat16 and cuda_autocast_dtype("cuda") != torch.bfloat16:
        pytest.skip("this GPU has no bf16 tensor cores")
    seed_everything(0)
    fast = FastPath(torch.device("cuda"), amp_dtype=amp_dtype, channels_last=True, data_on_device=True,
                    eval_batch_size=500)
    X, y = learnable_digits(2000)
    model = fast.prepare_model(notebook["TwoConvCNN"]())
    optimizer, loss_fn, scaler = torch.optim.Adam(model.parameters(), lr=1e-3), nn.CrossEntropyLoss(), fast.grad_scaler()
    assert scaler.is_enabled() == (amp_dtype == torch.float16)
    train, valid = make_loaders(X[:1500], y[:1500], X[1500:], y[1500:], 50, 0, fast)
    for _ in range(2):
        notebook["train_one_epoch"](model, train, loss_fn, optimizer, scaler, fast, log_every=0)
    loss, accuracy = notebook["evaluate"](model, valid, loss_fn, fast, verbose=False)
    assert accuracy > 0.95 and np.isfinite(loss)
    assert all(torch.isfinite(p).all() and p.is_cuda for p in model.parameters())
    if scaler.is_enabled():
        assert 0 < scaler.get_scale() < float("inf")


def test_device_batches_live_on_the_gpu_and_shuffle_as_on_the_cpu():
    X, _ = make_digits(250)
    y = np.arange(250)
    on_gpu = DeviceBatches(X, y, 100, "cuda", shuffle=True, generator=torch.Generator().manual_seed(3))
    on_cpu = DeviceBatches(X, y, 100, "cpu", shuffle=True, generator=torch.Generator().manual_seed(3))
    for _ in range(2):  # two epochs: a new order each, the same on both devices
        gpu_batches, cpu_batches = list(on_gpu), list(on_cpu)
        assert all(xb.is_cuda and yb.is_cuda for xb, yb in gpu_batches)
        assert [len(yb) for _, yb in gpu_batches] == [100, 100, 50]
        assert torch.equal(torch.cat([yb for _, yb in gpu_batches]).cpu(), torch.cat([yb for _, yb in cpu_batches]))
        for (xg, _), (xc, _) in zip(gpu_batches, cpu_batches):
            assert torch.equal(xg.cpu(), xc)


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
    fast = choose_fast_path("cuda")
    model = fast.prepare_model(notebook["TwoConvCNN"]())
    optimizer, loss_fn = torch.optim.Adam(model.parameters(), lr=1e-3), nn.CrossEntropyLoss()
    train, _ = make_loaders(X, y, None, None, 50, 1, fast)
    notebook["train_one_epoch"](model, train, loss_fn, optimizer, fast.grad_scaler(), fast, log_every=0)
    model = model.to(memory_format=torch.contiguous_format)
    on_gpu = predict_proba(model, X, "cuda", batch_size=1000)   # fp32 on the GPU
    on_cpu = predict_proba(model.cpu(), X, "cpu", batch_size=1000)  # the same weights on the CPU
    np.testing.assert_allclose(on_gpu, on_cpu, atol=1e-4)
    np.testing.assert_array_equal(on_gpu.argmax(1), on_cpu.argmax(1))
    fast_labels = predict(model.cuda().to(memory_format=fast.memory_format), X, fast)  # autocast, batch 4000
    assert (fast_labels == on_cpu.argmax(1)).mean() > 0.99


def test_a_gpu_checkpoint_resumes_to_the_same_state(notebook, tmp_path):
    seed_everything(2, deterministic=True)
    try:
        fast = choose_fast_path("cuda")
        X, y = learnable_digits(600, seed=2)

        def new():
            model = fast.prepare_model(notebook["TwoConvCNN"]())
            return model, torch.optim.Adam(model.parameters(), lr=1e-3), fast.grad_scaler()

        model, optimizer, scaler = new()
        train, _ = make_loaders(X, y, None, None, 50, 2, fast)
        epoch = lambda m, o, s, t: notebook["train_one_epoch"](m, t, nn.CrossEntropyLoss(), o, s, fast,  # noqa: E731
                                                                  log_every=0)
        epoch(model, optimizer, scaler, train)
        path = save_checkpoint(tmp_path / "checkpoint.pt", model, optimizer, 1, [{"epoch": 1}], train.generator,
                               scaler, config={"PRECISION": fast.precision})
        expected_loss = epoch(model, optimizer, scaler, train)  # epoch 2, uninterrupted

        resumed, resumed_optimizer, resumed_scaler = new()
        resumed_train, _ = make_loaders(X, y, None, None, 50, 99, fast)  # another seed: the checkpoint restores it
        done, history = load_checkpoint(path, resumed, resumed_optimizer, resumed_train.generator, resumed_scaler,
                                        config={"PRECISION": fast.precision})
        assert done == 1 and history == [{"epoch": 1}]
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
