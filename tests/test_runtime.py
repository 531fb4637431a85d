"""get_device, device_facts, seed_everything (deterministic training with a Runtime) and batched prediction."""

from __future__ import annotations

import random
import warnings
import weakref

import numpy as np
import pytest
import torch
from torch import nn

from conftest import KAGGLE_CU128_ARCHS, gpu_tests_skip_reason, make_digits, notebook_namespace
from mnist_helpers import (
    Runtime,
    choose_runtime,
    device_facts,
    get_device,
    make_loaders,
    predict,
    predict_proba,
    seed_everything,
)


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_device_prefers_cuda_then_mps_then_cpu(fake_gpu, monkeypatch, cuda, mps, expected):
    fake_gpu((7, 5), "Tesla T4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert get_device() == torch.device(expected)


def test_a_gpu_this_build_has_no_kernels_for_falls_back_to_the_cpu_with_one_line(fake_gpu, recwarn):
    fake_gpu((6, 0), "Tesla P100-PCIE-16GB", arch_list=KAGGLE_CU128_ARCHS)  # Kaggle's P100 under its cu128 PyTorch
    assert get_device() == torch.device("cpu")
    assert [str(w.message) for w in recwarn] == [
        "Tesla P100-PCIE-16GB (sm_60) is not supported by this PyTorch build (sm_70 ... sm_120); "
        "on Kaggle choose GPU T4 x2; running on the CPU"]


@pytest.mark.parametrize("capability, arch_list", [
    ((7, 5), KAGGLE_CU128_ARCHS),            # Kaggle's T4: sm_75 is in the list
    ((8, 9), ["sm_80", "sm_86", "sm_90"]),   # an L4 runs sm_86 machine code (same major, later minor)
    ((9, 0), ["sm_75", "compute_80"]),       # an H100 runs compute_80 PTX, compiled by the driver
    ((12, 0), ["sm_90", "compute_90"]),      # a Blackwell card, through PTX again
    ((9, 0), ["sm_90a"]),                    # arch-specific code for exactly this GPU
    ((6, 0), []),                            # a build that lists nothing: trusted
])
def test_gpus_the_build_covers_are_used(fake_gpu, recwarn, capability, arch_list):
    fake_gpu(capability, arch_list=arch_list)
    assert get_device() == torch.device("cuda") and not recwarn.list


@pytest.mark.parametrize("capability, arch_list", [
    ((6, 0), ["sm_70", "sm_75", "compute_75"]),  # too old for every entry, PTX included
    ((8, 0), ["sm_86", "sm_90"]),                # sm_86 needs 8.6 or later; 8.0 is earlier
    ((12, 0), ["sm_80", "sm_90"]),               # newer major and no PTX: no kernel would load
    ((10, 0), ["sm_90a"]),                       # sm_90a runs on 9.0 only
])
def test_gpus_the_build_does_not_cover_fall_back_to_the_cpu(fake_gpu, recwarn, capability, arch_list):
    fake_gpu(capability, "Some GPU", arch_list=arch_list)
    assert get_device() == torch.device("cpu")
    assert len(recwarn) == 1 and "\n" not in str(recwarn[0].message)
    assert str(recwarn[0].message).startswith(f"Some GPU (sm_{capability[0]}{capability[1]}) is not supported")


def test_the_gpu_tests_skip_with_the_reason_where_no_gpu_they_can_use_is(fake_gpu, monkeypatch):
    # tests/test_gpu.py's skip: on a P100 under Kaggle's cu128 PyTorch they would fail on the first kernel instead.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_tests_skip_reason() == "needs a CUDA GPU (run on a GPU machine)"
    fake_gpu((6, 0), "Tesla P100-PCIE-16GB", arch_list=KAGGLE_CU128_ARCHS)
    assert gpu_tests_skip_reason() == ("needs a GPU this PyTorch has kernels for: Tesla P100-PCIE-16GB (sm_60) is not "
                                       "supported by this PyTorch build (sm_70 ... sm_120)")
    fake_gpu((7, 5), "Tesla T4", arch_list=KAGGLE_CU128_ARCHS)
    assert gpu_tests_skip_reason() is None


def test_device_facts_name_the_gpu_and_its_capability(fake_gpu):
    fake_gpu((7, 5), "Tesla T4")
    assert device_facts("cuda") == {"DEVICE_NAME": "Tesla T4", "CAPABILITY": "7.5"}
    assert device_facts("cpu") == {"DEVICE_NAME": "cpu", "CAPABILITY": None}


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


class RunsOutOfMemory(BatchRecorder):
    """Raises CUDA's out-of-memory error for any batch larger than `limit`, as a small GPU would."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def forward(self, x):
        if len(x) > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate for {len(x)} images")
        return super().forward(x)


def test_prediction_halves_the_batch_after_out_of_memory_and_keeps_every_row():
    torch.manual_seed(0)
    model, (X, _) = RunsOutOfMemory(limit=300), make_digits(2500)
    with pytest.warns(UserWarning) as caught:
        labels = predict(model, X, "cpu", batch_size=1000)
    assert [str(w.message) for w in caught] == ["out of memory at a batch of 1000 images; retrying with 500.",
                                                "out of memory at a batch of 500 images; retrying with 250."]
    assert set(model.batch_sizes) == {250} and sum(model.batch_sizes) == 2500
    with torch.no_grad():
        expected = model.linear(torch.from_numpy(X).float().div(255)).argmax(1).numpy()
    np.testing.assert_array_equal(labels, expected)


def test_the_failed_batch_is_let_go_before_the_cache_is_emptied(fake_gpu, monkeypatch):
    # With a GPU, empty_cache hands the allocator's free blocks back; blocks still held by the failed batch (kept
    # alive by the error's traceback, or a variable) would stay taken, and the retry could run out of memory again.
    fake_gpu((7, 5), "Tesla T4")  # so that predict empties CUDA's cache; the tensors themselves stay on the CPU
    model, batches = RunsOutOfMemory(limit=4), []
    forward = model.forward

    def remembered(x):  # every batch the model is given, weakly, so as not to keep it alive here
        batches.append(weakref.ref(x))
        return forward(x)

    alive_at_empty_cache = []
    model.forward = remembered
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: alive_at_empty_cache.append(
        sum(batch() is not None for batch in batches)))
    with pytest.warns(UserWarning, match="out of memory"):
        predict(model, make_digits(8)[0], "cpu", batch_size=8)
    assert alive_at_empty_cache == [0]  # the 8 images that failed were freed first


@pytest.mark.parametrize("message", [
    "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
    "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
    "MPS backend out of memory (MPS allocated: 17.50 GB, other allocations: 1.20 GB, max allowed: 18.13 GB)",
])
def test_a_librarys_allocation_failure_halves_the_batch_too(message):
    class LibraryRunsOutOfMemory(RunsOutOfMemory):
        def forward(self, x):
            if len(x) > self.limit:
                raise RuntimeError(message)  # not torch.OutOfMemoryError: cuDNN, cuBLAS and MPS raise these
            return BatchRecorder.forward(self, x)

    model = LibraryRunsOutOfMemory(limit=5)
    with pytest.warns(UserWarning, match="out of memory at a batch of 10 images; retrying with 5"):
        assert predict(model, make_digits(20)[0], "cpu", batch_size=10).shape == (20,)
    assert set(model.batch_sizes) == {5}


def test_any_other_error_in_prediction_is_raised_as_it_is():
    class Broken(BatchRecorder):
        def forward(self, x):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (8x784 and 100x10)")

    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"), warnings.catch_warnings():
        warnings.simplefilter("error")  # and no retry was attempted
        predict(Broken(), make_digits(8)[0], "cpu", batch_size=8)


def test_prediction_gives_up_below_a_batch_of_one_with_a_clear_message():
    with pytest.warns(UserWarning), pytest.raises(RuntimeError) as error:
        predict(RunsOutOfMemory(limit=0), make_digits(10)[0], "cpu", batch_size=4)
    assert str(error.value) == ("prediction ran out of GPU memory even with a batch of 1 image; free GPU memory "
                                "(restart the kernel, close other notebooks) or predict on the CPU.")


@pytest.fixture
def restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = False


def test_deterministic_seeding_gives_identical_losses_on_cpu(restore_determinism):
    notebook = notebook_namespace("imports", "model", "train-loop")
    X, y = make_digits(200)

    def losses():
        seed_everything(7, deterministic=True)
        runtime = choose_runtime("cpu")
        model = runtime.prepare_model(notebook["TwoConvCNN"]())
        optimizer, loss_fn = torch.optim.Adam(model.parameters(), lr=1e-3), nn.CrossEntropyLoss()
        train_loader, valid_loader = make_loaders(X[:160], y[:160], X[160:], y[160:], batch_size=20, seed=7,
                                                  runtime=runtime)
        history = []
        for _ in range(2):
            history.append(notebook["train_one_epoch"](model, train_loader, loss_fn, optimizer,
                                                       runtime.grad_scaler(), runtime, log_every=0))
            history.append(notebook["evaluate"](model, valid_loader, loss_fn, runtime, verbose=False))
        return history

    first = losses()
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert losses() == first  # bit for bit, not approximately


def test_deterministic_mode_keeps_cudnn_autotuning_off(restore_determinism, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    seed_everything(0, deterministic=True)
    Runtime(torch.device("cpu"), cudnn_benchmark=True).prepare_model(nn.Linear(2, 2))
    assert not torch.backends.cudnn.benchmark  # autotuning picks kernels by timing, so runs could differ
