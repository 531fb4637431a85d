"""WORKERS: K-fold models trained at once by joblib's workers, one device each: how many, in what order, the same
models as one after another, on a Dask cluster too, and Ctrl-C, a failing worker and RESUME with two workers."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import torch

import mnist_helpers as mh
from conftest import learnable_digits, notebook_namespace, run_notebook_in_process
from mnist_helpers import Runtime, Workers, choose_runtime, choose_workers, kfold_plan

CELLS = ("imports", "model", "train-loop", "model-best", "best-recipe", "best-kfold")


@pytest.fixture
def threads():
    """Set torch's thread count for the test, and put it back after."""
    found = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(found)


def fake_gpus(monkeypatch, supported: list[bool]) -> None:
    """This CPU-only PyTorch reports one CUDA GPU per entry; the False ones are too old for this build."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(supported))
    monkeypatch.setattr(mh, "unsupported_gpu_message", lambda i: None if supported[i] else f"GPU {i}: too old")


def test_auto_is_one_worker_per_gpu_that_this_pytorch_can_run(monkeypatch, threads):
    threads(8)
    fake_gpus(monkeypatch, [True, False, True])  # GPU 1 has no kernels in this build: left out
    cuda = Runtime(torch.device("cuda"))
    assert choose_workers("auto", cuda, models=5, make_model=None, batch_size=100) == \
        Workers(("cuda:0", "cuda:2"), threads=4)
    assert choose_workers("auto", cuda, models=1, make_model=None, batch_size=100).devices == ("cuda:0",)
    assert choose_workers(3, cuda, models=5, make_model=None, batch_size=100).devices == ("cuda:0", "cuda:2", "cuda:0")
    fake_gpus(monkeypatch, [True])  # one GPU: the models in turn, in this process
    assert choose_workers("auto", cuda, models=5, make_model=None, batch_size=100).devices == ("cuda:0",)


def test_auto_on_the_cpu_takes_the_count_of_workers_that_measures_fastest(threads):
    threads(4)
    tried = []

    def measure(workers, each, make_model, runtime, batch_size):  # images/s in total, as if measured
        tried.append((workers, each, batch_size))
        return {1: 1800.0, 2: 2500.0, 4: 2400.0}[workers]

    cpu = choose_runtime("cpu", fast=False)
    chosen = choose_workers("auto", cpu, models=5, make_model=None, batch_size=64, measure=measure)
    assert tried == [(1, 4, 64), (2, 2, 64), (4, 1, 64)]  # every count up to the cores, each with its share of them
    assert chosen == Workers(("cpu", "cpu"), 2, ((1, 1800.0), (2, 2500.0), (4, 2400.0)))
    assert chosen.describe() == ("2 workers at once (cpu, cpu), 2 CPU threads each (measured: 1 x 4 CPU threads 1,800 "
                                 "img/s, 2 x 2 CPU threads 2,500 img/s, 4 x 1 CPU thread 2,400 img/s)")
    tried.clear()
    assert choose_workers("auto", cpu, models=2, make_model=None, batch_size=64, measure=measure).devices == \
        ("cpu", "cpu")
    assert [workers for workers, _, _ in tried] == [1, 2]  # never more workers than models
    assert choose_workers(2, cpu, models=5, make_model=None, batch_size=64) == Workers(("cpu", "cpu"), 2)
    threads(1)  # one core: nothing to measure
    assert choose_workers("auto", cpu, models=5, make_model=None, batch_size=64, measure=None) == \
        Workers(("cpu",), 1)


@pytest.mark.parametrize("workers", [0, -1, 1.5, "2", True, None])
def test_a_bad_number_of_workers_is_refused_in_one_line_before_anything_loads(tmp_path, workers):
    message = f"WORKERS must be 'auto' or a whole number, 1 or more, got {workers!r}."
    with pytest.raises(ValueError) as error:
        run_notebook_in_process({"DATA_DIR": str(tmp_path), "RECIPE": "best", "WORKERS": workers}, until_tag="setup")
    assert str(error.value) == message
    with pytest.raises(ValueError) as error:
        choose_workers(workers, choose_runtime("cpu"), models=5, make_model=None, batch_size=100)
    assert str(error.value) == message


@pytest.mark.parametrize("jobs, workers, waves", [
    # 5 models, 2 one-thread workers: two whole waves, then the last model alone with both cores
    (5, Workers(("cpu", "cpu"), 1), [[([0, 2], "cpu", 1), ([1, 3], "cpu", 1)], [([4], "cpu", 2)]]),
    (4, Workers(("cpu", "cpu"), 1), [[([0, 2], "cpu", 1), ([1, 3], "cpu", 1)]]),
    (7, Workers(("cpu",) * 4, 2), [[([0], "cpu", 2), ([1], "cpu", 2), ([2], "cpu", 2), ([3], "cpu", 2)],
                                   [([4], "cpu", 2), ([5], "cpu", 2), ([6], "cpu", 2)]]),  # 8 cores // 3 models
    (1, Workers(("cpu", "cpu"), 1), [[([0], "cpu", 2)]]),  # one model: all the cores
    (5, Workers(("cuda:0", "cuda:1"), 8), [[([0, 2, 4], "cuda:0", 8), ([1, 3], "cuda:1", 8)]]),  # a GPU each
])
def test_the_models_are_shared_by_cores_on_the_cpu_and_by_device_on_gpus(jobs, workers, waves):
    assert mh._waves(jobs, workers) == waves


def small_recipe(code: dict, epochs: int = 2):
    """The notebook's Recipe with a narrow StrongerCNN: quick, and still the notebook's own training."""
    return code["Recipe"](epochs=epochs, lr=3e-3, batch_size=20, make_model=NarrowCNN(code["StrongerCNN"]))


class NarrowCNN:
    """make_model for a StrongerCNN of width 4 (a class, so that workers get it by reference, with its argument)."""

    def __init__(self, model_class: type):
        self.model_class = model_class

    def __call__(self):
        return self.model_class(width=4)


def train(code: dict, workers: Workers, output_dir: Path, rows: int = 120, folds: int = 2, epochs: int = 2,
          resume: bool = False, recipe=None) -> pd.DataFrame:
    """train_kfold as the notebook calls it, on learnable digits, with these workers."""
    X, y = learnable_digits(rows)
    plan = kfold_plan(y, folds, 1, 42)
    return code["train_kfold"](recipe or small_recipe(code, epochs), X, y, plan, choose_runtime("cpu", fast=False),
                               output_dir, workers, resume, progress="lines")


def assert_same_models(kfold: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Bit for bit: every weight, and every out-of-fold probability."""
    assert len(kfold) == len(expected)
    for mine, theirs in zip(kfold["model"], expected["model"]):
        for name, weight in theirs.state_dict().items():
            assert torch.equal(mine.state_dict()[name], weight), name
    for mine, theirs in zip(kfold["proba"], expected["proba"]):
        np.testing.assert_array_equal(mine, theirs)


@pytest.fixture(scope="module")
def one_after_another(tmp_path_factory) -> tuple[dict, pd.DataFrame]:
    """The notebook's cells, and 2 folds trained in this process, one after the other, with 1 thread."""
    code = notebook_namespace(*CELLS)
    found = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return code, train(code, Workers(("cpu",), 1), tmp_path_factory.mktemp("sequential"))
    finally:
        torch.set_num_threads(found)


def worker_processes() -> list[psutil.Process]:
    """This process's loky workers that are still alive."""
    alive = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "LokyProcess" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
        except psutil.NoSuchProcess:
            pass
    return alive


def test_two_one_thread_workers_train_the_models_that_one_process_trains_in_turn(tmp_path, capsys, one_after_another):
    code, expected = one_after_another
    kfold = train(code, Workers(("cpu", "cpu"), 1), tmp_path)
    assert_same_models(kfold, expected)
    assert kfold["threads"].tolist() == [1, 1] and kfold["device"].tolist() == ["cpu", "cpu"]
    assert all(next(model.parameters()).device.type == "cpu" for model in kfold["model"])  # back, on this device
    printed = capsys.readouterr().out.splitlines()  # the workers' lines, printed here as they came
    for fold in (1, 2):
        assert [line.split(":")[0] for line in printed if line.startswith(f"fold {fold}, epoch")] == \
            [f"fold {fold}, epoch 1/2", f"fold {fold}, epoch 2/2"]
        assert any(line.startswith(f"fold {fold} (seed {42 + fold}): ") for line in printed)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best-round1-fold1.pt", "best-round1-fold2.pt"]


def test_the_last_model_alone_trains_here_with_every_core_and_shows_its_lines_in_order(tmp_path, capsys, threads):
    # 3 models on 2 one-thread workers: models 1 and 2 at once, then model 3 alone, in this process, with both cores.
    threads(2)
    code = notebook_namespace(*CELLS)
    disposition = signal.getsignal(signal.SIGINT)
    kfold = train(code, Workers(("cpu", "cpu"), 1), tmp_path, rows=150, folds=3)
    assert kfold["threads"].tolist() == [1, 1, 2]
    assert signal.getsignal(signal.SIGINT) is disposition and torch.get_num_threads() == 2  # as they were here
    printed = capsys.readouterr().out.splitlines()
    third = [line.split(":")[0] for line in printed if line.startswith("fold 3")]
    assert third == ["fold 3, epoch 1/2", "fold 3, epoch 2/2", "fold 3 (seed 45)"]  # each line once, in order


def test_a_dask_cluster_trains_the_same_models_and_sends_them_back(tmp_path, one_after_another):
    distributed = pytest.importorskip("distributed")
    from joblib import parallel_config

    code, expected = one_after_another
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster, distributed.Client(cluster), parallel_config(backend="dask"):
        kfold = train(code, Workers(("cpu", "cpu"), 1), tmp_path)
    assert_same_models(kfold, expected)  # the weights came back with the results; the checkpoints went to tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best-round1-fold1.pt", "best-round1-fold2.pt"]
    run = mh.kfold_plan(learnable_digits(120)[1], 2, 1, 42)
    oof = mh.out_of_fold(run, kfold["proba"])
    np.testing.assert_array_equal(oof, mh.out_of_fold(run, expected["proba"]))


class FailsOnFold:
    """make_model that raises for the model with a given seed, as a worker's bug or a full disk would."""

    def __init__(self, model_class: type, seed: int):
        self.model_class, self.seed = model_class, seed

    def __call__(self):
        if torch.initial_seed() == self.seed:  # seed_everything(plan.seed) ran just before
            raise ValueError("no space left on device")
        return self.model_class(width=4)


def test_a_failing_worker_ends_the_run_in_one_line_naming_the_fold_and_keeps_the_finished_checkpoints(tmp_path):
    code = notebook_namespace(*CELLS)
    recipe = dataclasses.replace(small_recipe(code), make_model=FailsOnFold(code["StrongerCNN"], seed=45))
    with pytest.raises(RuntimeError) as error:  # folds 1 and 2 train at once, then fold 3 (seed 45) fails
        train(code, Workers(("cpu", "cpu"), 1), tmp_path, rows=150, folds=3, recipe=recipe)
    assert str(error.value) == "fold 3 failed on cpu: ValueError: no space left on device"
    for fold in (1, 2):  # the finished folds' checkpoints, whole
        assert torch.load(tmp_path / f"best-round1-fold{fold}.pt", weights_only=True)["epoch"] == 2
    time.sleep(1)
    assert worker_processes() == []


@pytest.mark.sigint
def test_ctrl_c_stops_every_worker_in_one_line_and_resume_finishes_the_same_models(tmp_path, capsys,
                                                                                   one_after_another):
    code, expected = one_after_another
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal or a notebook: Ctrl-C interrupts
    slow = small_recipe(code, epochs=3)

    def interrupt_once_a_model_has_an_epoch():
        while not list(tmp_path.glob("best-round1-fold*.pt")):
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_once_a_model_has_an_epoch, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        train(code, Workers(("cpu", "cpu"), 1), tmp_path, rows=600, recipe=slow)
    printed = capsys.readouterr().out
    assert printed.splitlines()[-1] == ("interrupted: every worker stopped; each model's checkpoint keeps its last "
                                        "finished epoch, and RESUME=True carries on from them.")
    time.sleep(1)
    assert worker_processes() == []
    done = [torch.load(path, weights_only=True)["epoch"] for path in sorted(tmp_path.glob("best-round1-fold*.pt"))]
    assert 1 <= sum(done) < 6  # stopped part way: some epochs saved, not all

    resumed = train(code, Workers(("cpu", "cpu"), 1), tmp_path, rows=600, recipe=slow, resume=True)
    uninterrupted = train(code, Workers(("cpu", "cpu"), 1), tmp_path / "whole", rows=600, recipe=slow)
    assert_same_models(resumed, uninterrupted)
    assert "resumed from" in capsys.readouterr().out


class RecordingGenerator:
    """Stands in for one GPU's random generator: records its seeds."""

    def __init__(self, index: int, seeded: list):
        self.index, self.seeded = index, seeded

    def manual_seed(self, seed: int) -> None:
        self.seeded.append((f"cuda:{self.index}", seed))


def test_a_worker_seeds_its_own_gpu_and_leaves_the_others_alone(monkeypatch):
    seeded: list = []
    monkeypatch.setattr(torch.cuda, "init", lambda: None)
    monkeypatch.setattr(torch.cuda, "default_generators", tuple(RecordingGenerator(i, seeded) for i in range(2)),
                        raising=False)
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: seeded.append(("every GPU", seed)))
    mh.seed_everything(7, device="cuda:1")
    assert seeded == [("cuda:1", 7)] and torch.initial_seed() == 7  # and this process's CPU generator
    seeded.clear()
    mh.seed_everything(8)  # one process for every device: all of them, as before
    assert seeded == [("every GPU", 8)] and torch.initial_seed() == 8


def test_a_checkpoint_keeps_its_own_gpus_random_state_and_resumes_on_another_gpu(monkeypatch, tmp_path, fake_gpu):
    fake_gpu((7, 5), name="Tesla T4")
    states = {0: torch.tensor([10], dtype=torch.uint8), 1: torch.tensor([11], dtype=torch.uint8)}
    restored = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": states[torch.device(device).index])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append((state.tolist(),
                                                                                                    str(device))))
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters())
    second_gpu = Runtime(torch.device("cuda:1"))  # worker 2 of Kaggle's T4 x2
    path = mh.TrainingCheckpoint(tmp_path / "best-round1-fold2.pt", model, optimizer, runtime=second_gpu).save(1, [])
    saved = torch.load(path, weights_only=True)
    assert [state.tolist() for state in saved["rng"]["cuda"]] == [[11]]  # its own GPU's state only
    one_gpu = Runtime(torch.device("cuda:0"))  # resumed where there is one GPU
    assert mh.TrainingCheckpoint(path, model, optimizer, runtime=one_gpu).load() == []
    assert restored == [([11], "cuda:0")]
