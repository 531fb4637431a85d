"""Checkpoints: what they hold, one-line refusals, atomic writes, and an interrupted run resumed to the same weights."""

from __future__ import annotations

import os
import pickle
import random
import re
import signal

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import mnist_helpers as mh
from conftest import learnable_digits, make_digits, run_notebook_in_process, write_test_csv, write_train_csv


def small_training_objects(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)
    return model, optimizer, scheduler


def step(model, optimizer, scheduler):
    loss = model(torch.randn(5, 4)).square().mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()


def refusal(path, name: str, written: str, has: str, on: str = "") -> str:
    """The one line TrainingCheckpoint.load raises for a config entry that differs."""
    return (f"{path}: was written with {name}={written}{on} but this run has {name}={has}; resume with the same "
            "parameters and the same kind of device, or RESUME=False to start over.")


def test_checkpoint_round_trip_restores_weights_optimizer_scheduler_history_and_rng(tmp_path, capsys):
    model, optimizer, scheduler = small_training_objects()
    generator = torch.Generator().manual_seed(5)
    step(model, optimizer, scheduler)
    history = [{"epoch": 1, "valid_acc": 0.5}]
    path = mh.TrainingCheckpoint(tmp_path / "checkpoint.pt", model, optimizer, scheduler=scheduler,
                                 generators=generator, config={"SEED": 1, "EPOCHS": 4}).save(1, history)
    assert path == tmp_path / "checkpoint.pt"
    expected = (random.random(), np.random.rand(), torch.rand(2).tolist(), torch.rand(2, generator=generator).tolist())

    fresh, fresh_optimizer, fresh_scheduler = small_training_objects(seed=99)
    fresh_generator = torch.Generator().manual_seed(0)
    capsys.readouterr()
    restored = mh.TrainingCheckpoint(path, fresh, fresh_optimizer, scheduler=fresh_scheduler,
                                     generators=fresh_generator, config={"SEED": 1, "EPOCHS": 4}).load()
    assert restored == history
    assert capsys.readouterr().out == f"resumed from {path}: 1 of 4 epochs already done\n"
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    assert fresh_optimizer.state_dict()["state"][0]["step"] == 1
    assert fresh_scheduler.last_epoch == 1 and fresh_optimizer.param_groups[0]["lr"] == pytest.approx(9e-3)
    got = (random.random(), np.random.rand(), torch.rand(2).tolist(), torch.rand(2, generator=fresh_generator).tolist())
    assert got == expected  # python, numpy, torch and the loader's generator all continue where they were


def test_resuming_with_other_parameters_is_refused_in_one_line(tmp_path):
    model, optimizer, _ = small_training_objects()
    path = mh.TrainingCheckpoint(tmp_path / "checkpoint.pt", model, optimizer,
                                 config={"EPOCHS": 15, "LR": 0.001}).save(2, [])
    with pytest.raises(ValueError) as error:
        mh.TrainingCheckpoint(path, model, optimizer, config={"EPOCHS": 15, "LR": 0.01}).load()
    assert str(error.value) == refusal(path, "LR", "0.001", "0.01")


def test_a_checkpoint_from_another_precision_is_refused_in_one_line_naming_its_device(tmp_path, monkeypatch):
    # Written on a T4 (fp16, with an active GradScaler), resumed where bf16 needs no scaler, and the reverse.
    # The runtimes are the CPU's, with the GPUs' precisions; device_facts says which GPU wrote the file.
    model, optimizer, _ = small_training_objects()
    fp16_scaler, no_scaler = torch.amp.GradScaler("cpu", init_scale=1024.0), torch.amp.GradScaler("cpu", enabled=False)
    fp16 = mh.Runtime(torch.device("cpu"), fast=True, amp_dtype=torch.float16)
    bf16 = mh.Runtime(torch.device("cpu"), fast=True, amp_dtype=torch.bfloat16)
    monkeypatch.setattr(mh, "device_facts", lambda device: {"DEVICE_NAME": "Tesla T4", "CAPABILITY": "7.5"})
    path = mh.TrainingCheckpoint(tmp_path / "t4.pt", model, optimizer, scaler=fp16_scaler, config={"SEED": 1},
                                 runtime=fp16).save(1, [])
    assert torch.load(path, weights_only=True)["config"] == {"SEED": 1, "FAST": True, "PRECISION": "float16",
                                                             "DEVICE_NAME": "Tesla T4", "CAPABILITY": "7.5"}
    with pytest.raises(ValueError) as error:
        mh.TrainingCheckpoint(path, model, optimizer, scaler=no_scaler, config={"SEED": 1}, runtime=bf16).load()
    assert str(error.value) == refusal(path, "PRECISION", "'float16'", "'bfloat16'", on=" on Tesla T4")
    monkeypatch.setattr(mh, "device_facts", lambda device: {"DEVICE_NAME": "NVIDIA L4", "CAPABILITY": "8.9"})
    path = mh.TrainingCheckpoint(tmp_path / "l4.pt", model, optimizer, scaler=no_scaler, runtime=bf16).save(1, [])
    with pytest.raises(ValueError, match=r"PRECISION='bfloat16' on NVIDIA L4 but this run has PRECISION='float16'"):
        mh.TrainingCheckpoint(path, model, optimizer, scaler=fp16_scaler, runtime=fp16).load()
    # Unchecked, that second resume dies inside the scaler instead, with no word of the cause:
    with pytest.raises(RuntimeError, match="saved from a disabled instance of GradScaler"):
        mh.TrainingCheckpoint(path, model, optimizer, scaler=fp16_scaler).load()


def test_a_grad_scaler_with_a_non_default_state_round_trips(tmp_path):
    model, optimizer, _ = small_training_objects()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=7)
    scaler.scale(torch.tensor(1.0))
    scaler.update(new_scale=123.0)  # as after steps whose gradients overflowed
    path = mh.TrainingCheckpoint(tmp_path / "checkpoint.pt", model, optimizer, scaler=scaler).save(1, [])
    fresh = torch.amp.GradScaler("cpu")
    mh.TrainingCheckpoint(path, model, optimizer, scaler=fresh).load()
    assert fresh.get_scale() == 123.0 and fresh.get_growth_interval() == 7


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04truncated zip"])
def test_a_damaged_checkpoint_gets_one_line(tmp_path, content):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content)
    model, optimizer, _ = small_training_objects()
    with pytest.raises(ValueError, match=r"is not a readable checkpoint \(\w+\); delete it, or run with RESUME=False"):
        mh.TrainingCheckpoint(path, model, optimizer).load()


class Payload:
    """An object that would run code when unpickled without weights_only."""

    def __reduce__(self):
        return (print, ("this must not run",))


def test_checkpoints_load_with_weights_only(tmp_path, capsys):
    model, optimizer, _ = small_training_objects()
    path = mh.TrainingCheckpoint(tmp_path / "checkpoint.pt", model, optimizer).save(1, [])
    state = torch.load(path, weights_only=True)
    torch.save({**state, "payload": Payload()}, path)  # a real checkpoint, plus an object that runs code
    with pytest.raises(ValueError, match="is not a readable checkpoint"):
        mh.TrainingCheckpoint(path, model, optimizer).load()
    assert "this must not run" not in capsys.readouterr().out


def test_a_missing_checkpoint_says_so_and_leaves_the_model_as_it_was(tmp_path, capsys):
    model, optimizer, _ = small_training_objects()
    before = [p.clone() for p in model.parameters()]
    assert mh.TrainingCheckpoint(tmp_path / "nothing.pt", model, optimizer).load() == []
    assert capsys.readouterr().out == (f"RESUME: no checkpoint at {tmp_path / 'nothing.pt'} yet, so training starts "
                                       "at epoch 1\n")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not (tmp_path / "nothing.pt").exists()


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, optimizer, _ = small_training_objects()
    checkpoint = mh.TrainingCheckpoint(tmp_path / "checkpoint.pt", model, optimizer)
    path = checkpoint.save(1, [])
    before = path.read_bytes()

    def broken_save(obj, file, *args, **kwargs):
        file.write(b"half a checkpoint")
        raise pickle.PicklingError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(pickle.PicklingError):
        checkpoint.save(2, [])
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_several_generators_round_trip_in_order(tmp_path):
    model, optimizer, _ = small_training_objects()
    shuffling, augmentation = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    torch.rand(3, generator=augmentation)  # the two are in different places
    path = mh.TrainingCheckpoint(tmp_path / "checkpoint.pt", model, optimizer,
                                 generators=[shuffling, augmentation]).save(1, [])
    expected = [torch.rand(2, generator=g).tolist() for g in (shuffling, augmentation)]
    fresh = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)]
    mh.TrainingCheckpoint(path, model, optimizer, generators=fresh).load()
    assert [torch.rand(2, generator=g).tolist() for g in fresh] == expected


def test_training_checkpoint_without_a_file_starts_at_epoch_one_and_says_so(tmp_path, capsys):
    model, optimizer, _ = small_training_objects()
    runtime = mh.Runtime(torch.device("cpu"))  # the plain fp32 path: FAST and PRECISION join the config
    checkpoint = mh.TrainingCheckpoint(tmp_path / "run.pt", model, optimizer, config={"EPOCHS": 3}, runtime=runtime)
    assert checkpoint.load() == []
    assert capsys.readouterr().out == (f"RESUME: no checkpoint at {tmp_path / 'run.pt'} yet, so training starts at "
                                       "epoch 1\n")
    checkpoint.save(2, [{"epoch": 1}, {"epoch": 2}])
    assert torch.load(tmp_path / "run.pt", weights_only=True)["config"] == {
        "EPOCHS": 3, "FAST": False, "PRECISION": "float32", "DEVICE_NAME": "cpu", "CAPABILITY": None}
    again = mh.TrainingCheckpoint(tmp_path / "run.pt", model, optimizer, config={"EPOCHS": 3}, runtime=runtime)
    assert again.load() == [{"epoch": 1}, {"epoch": 2}]
    assert capsys.readouterr().out == f"resumed from {tmp_path / 'run.pt'}: 2 of 3 epochs already done\n"
    fast = mh.TrainingCheckpoint(tmp_path / "run.pt", model, optimizer, config={"EPOCHS": 3},
                                 runtime=mh.Runtime(torch.device("cpu"), fast=True))
    with pytest.raises(ValueError) as error:  # the same precision, but the other pipeline: its batches differ
        fast.load()
    assert str(error.value) == refusal(tmp_path / "run.pt", "FAST", "False", "True", on=" on cpu")


def rows_refusal(path, written: str, rows: int, on: str = "") -> re.Pattern:
    """The one line load raises for other training rows: what the file records, then this run's rows and CRC."""
    return re.compile(re.escape(refusal(path, "ROWS", repr(written), "@", on)).replace(
        "@", f"'{rows} rows, crc32 \\d+'"))


def test_a_checkpoint_resumes_exactly_the_same_training_rows_and_refuses_any_other_in_one_line(tmp_path, capsys):
    # The oracle is NumPy's own comparison, not the fingerprint: a checkpoint resumes when the rows it is given are
    # the same values, shape and dtype, in the same order, as those it was saved with, and is refused otherwise.
    X_all, y_all = make_digits(100)
    X, _, y, _ = mh.split_train_valid(X_all, y_all, 0.2, seed=0)  # (80, 784) uint8, (80,) int64
    model, optimizer = small_training_objects()[:2]
    path = mh.TrainingCheckpoint(tmp_path / "checkpoint.pt", model, optimizer, config={"EPOCHS": 2},
                                 rows=(X, y)).save(1, [{"epoch": 1}])
    written = torch.load(path, weights_only=True)["config"]["ROWS"]
    assert re.fullmatch(r"80 rows, crc32 \d+", written) and torch.load(path, weights_only=True)["config"]["EPOCHS"] == 2
    one_pixel, one_label, swapped = X.copy(), y.copy(), X.copy()
    one_pixel[7, 300] ^= 1
    one_label[0] = (one_label[0] + 1) % 10
    swapped[[3, 4]] = swapped[[4, 3]]
    candidates = {
        "the same split again, new arrays": mh.split_train_valid(X_all, y_all, 0.2, seed=0)[::2],
        "copies": (X.copy(), y.copy()),
        "another seed's split": mh.split_train_valid(X_all, y_all, 0.2, seed=1)[::2],
        "another split size": mh.split_train_valid(X_all, y_all, 0.3, seed=0)[::2],
        "fewer rows": (X[:40], y[:40]), "the rows reversed": (X[::-1], y[::-1]), "two rows swapped": (swapped, y),
        "one pixel": (one_pixel, y), "one label": (X, one_label), "the labels as int32": (X, y.astype(np.int32))}
    accepted = []
    for name, (X_other, y_other) in candidates.items():
        same = all(a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)
                   for a, b in ((X_other, X), (y_other, y)))
        checkpoint = mh.TrainingCheckpoint(path, model, optimizer, config={"EPOCHS": 2}, rows=(X_other, y_other))
        if same:
            assert checkpoint.load() == [{"epoch": 1}], name
            assert capsys.readouterr().out == f"resumed from {path}: 1 of 2 epochs already done\n", name
            accepted.append(name)
            continue
        with pytest.raises(ValueError) as error:
            checkpoint.load()
        assert rows_refusal(path, written, len(X_other)).fullmatch(str(error.value)), (name, str(error.value))
    assert accepted == ["the same split again, new arrays", "copies"]  # NumPy's verdict: the rest differ


@pytest.mark.parametrize("other", [{"SEED": 7}, {"TRAIN_ROWS": 80}], ids=["another-seed", "other-train-rows"])
def test_the_notebook_refuses_to_resume_a_checkpoint_of_other_training_rows(tmp_path, other):
    # Another SEED splits train.csv into other rows (SEED itself is not in the config); TRAIN_ROWS takes fewer.
    X, y = make_digits(100)
    write_train_csv(tmp_path / "train.csv", X, y)
    write_test_csv(tmp_path / "test.csv", make_digits(20, seed=1)[0])
    parameters = {"DATA_DIR": str(tmp_path), "EPOCHS": 1, "BATCH_SIZE": 20, "PROGRESS": False, "LOSS_LINES": False,
                  "OUTPUT_DIR": str(tmp_path / "output")}
    first = run_notebook_in_process(parameters, until_tag="train")
    path = tmp_path / "output" / "checkpoint.pt"
    written = torch.load(path, weights_only=True)["config"]["ROWS"]
    assert written.startswith(f"{len(first['X_train'])} rows, crc32 ")
    split = run_notebook_in_process({**parameters, **other}, until_tag="split")  # the rows the resumed run trains on
    assert not (split["X_train"].shape == first["X_train"].shape and np.array_equal(split["X_train"], first["X_train"]))
    with pytest.raises(ValueError) as error:
        run_notebook_in_process({**parameters, **other, "RESUME": True}, until_tag="train")
    assert rows_refusal(path, written, len(split["X_train"]), on=" on cpu").fullmatch(str(error.value)), error.value
    # ...while the same parameters resume (nothing is left to train):
    again = run_notebook_in_process({**parameters, "RESUME": True}, until_tag="train")
    assert again["history"]["epoch"].tolist() == [1]


class Interrupted(Exception):
    """Stands in for a run cut off after its first epoch."""


def count_and_interrupt(calls: list, interrupt_at: int | None):
    """An `after` hook for the train-loop cell: count train_one_epoch calls, and raise at call number interrupt_at.

    It replaces the notebook's train_one_epoch right after its cell, before the best-recipe cell defines Recipe,
    whose train_epoch defaults to it: so both the reference model's loop and the Recipe that the notebook's own
    best-train cell builds call the counted function, and no cell of the notebook is changed.
    """
    def install(namespace):
        train_one_epoch = namespace["train_one_epoch"]

        def wrapped(*args, **kwargs):
            calls.append(1)
            if len(calls) == interrupt_at:
                raise Interrupted
            return train_one_epoch(*args, **kwargs)

        namespace["train_one_epoch"] = wrapped
    return install


def test_an_interrupted_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path):
    X, y = make_digits(300)
    write_train_csv(tmp_path / "train.csv", X, y)
    write_test_csv(tmp_path / "test.csv", make_digits(40, seed=1)[0])
    common = {"DATA_DIR": str(tmp_path), "EPOCHS": 3, "BATCH_SIZE": 20, "PROGRESS": False, "LOSS_LINES": False}

    whole = run_notebook_in_process({**common, "OUTPUT_DIR": str(tmp_path / "whole")}, until_tag="train")

    cut = {**common, "OUTPUT_DIR": str(tmp_path / "cut")}
    with pytest.raises(Interrupted):
        run_notebook_in_process(cut, until_tag="train", after={"train-loop": count_and_interrupt([], 2)})
    saved = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 1

    resumed_epochs: list = []
    resumed = run_notebook_in_process({**cut, "RESUME": True}, until_tag="train",
                                      after={"train-loop": count_and_interrupt(resumed_epochs, None)})

    assert len(resumed_epochs) == 2  # epochs 2 and 3 only: epoch 1 came from the checkpoint, not retrained
    history = pd.read_csv(tmp_path / "cut" / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3]
    assert resumed["history"]["seconds"].iloc[0] == saved["history"][0]["seconds"]  # epoch 1's row: the first run's
    expected = pd.read_csv(tmp_path / "whole" / "history.csv")
    pd.testing.assert_frame_equal(history.drop(columns="seconds"), expected.drop(columns="seconds"))
    for name, weight in whole["model"].state_dict().items():
        assert torch.equal(resumed["model"].state_dict()[name], weight), name


def test_the_notebook_refuses_to_resume_a_checkpoint_of_another_precision(tmp_path, monkeypatch):
    X, y = make_digits(100)
    write_train_csv(tmp_path / "train.csv", X, y)
    write_test_csv(tmp_path / "test.csv", make_digits(20, seed=1)[0])
    parameters = {"DATA_DIR": str(tmp_path), "EPOCHS": 1, "BATCH_SIZE": 20, "PROGRESS": False, "LOSS_LINES": False,
                  "OUTPUT_DIR": str(tmp_path / "output")}
    monkeypatch.setattr(mh, "cpu_supports_bf16", lambda: True)  # a CPU with AMX: bf16 autocast
    run_notebook_in_process(parameters, until_tag="train")
    saved = torch.load(tmp_path / "output" / "checkpoint.pt", weights_only=True)["config"]
    assert saved["PRECISION"] == "bfloat16" and saved["DEVICE_NAME"] == "cpu" and saved["CAPABILITY"] is None
    monkeypatch.setattr(mh, "cpu_supports_bf16", lambda: False)  # the same run on a CPU without it: fp32
    with pytest.raises(ValueError, match=r"was written with PRECISION='bfloat16' on cpu but this run has "
                                         r"PRECISION='float32'; resume with the same parameters"):
        run_notebook_in_process({**parameters, "RESUME": True}, until_tag="train")


@pytest.fixture(scope="module")
def whole_best_run(tmp_path_factory) -> tuple[dict, dict]:
    """RECIPE="best" (2 folds, 2 rounds, models of 3 epochs) run once, uninterrupted, for every interruption below:
    its parameters (less OUTPUT_DIR) and its namespace."""
    folder = tmp_path_factory.mktemp("whole-best-run")
    X, y = learnable_digits(250)
    write_train_csv(folder / "train.csv", X, y)
    write_test_csv(folder / "test.csv", learnable_digits(40, seed=1)[0])
    common = {"DATA_DIR": str(folder), "EPOCHS": 1, "BATCH_SIZE": 25, "PROGRESS": False, "LOSS_LINES": False,
              "RECIPE": "best", "BEST_EPOCHS": 3, "FOLDS": 2, "ROUNDS": 2, "WORKERS": 1}
    return common, run_notebook_in_process({**common, "OUTPUT_DIR": str(folder / "whole")}, until_tag="best-train")


# Calls of train_one_epoch in this run: 1 the reference model; then the K-fold's models, 3 epochs each: 2-4 round 1's
# fold 1, 5-7 its fold 2, 8-10 and 11-13 round 2's folds 1 and 2. `done`: the epochs each checkpoint holds when the
# run resumes.
@pytest.mark.parametrize("interrupt_at, retrained, done", [
    (6, 2 + 6, {"checkpoint.pt": 1, "best-round1-fold1.pt": 3, "best-round1-fold2.pt": 1}),
    (12, 2, {"checkpoint.pt": 1, "best-round1-fold1.pt": 3, "best-round1-fold2.pt": 3, "best-round2-fold1.pt": 3,
             "best-round2-fold2.pt": 1}),
], ids=["in-round-1", "in-round-2"])
def test_an_interrupted_best_recipe_resumes_fold_by_fold_to_the_weights_of_an_uninterrupted_one(
        tmp_path, capsys, whole_best_run, interrupt_at, retrained, done):
    common, whole = whole_best_run
    cut = {**common, "OUTPUT_DIR": str(tmp_path / "cut")}
    with pytest.raises(Interrupted):
        run_notebook_in_process(cut, until_tag="best-train",
                                after={"train-loop": count_and_interrupt([], interrupt_at)})
    capsys.readouterr()
    calls: list = []
    resumed = run_notebook_in_process({**cut, "RESUME": True}, until_tag="best-train",
                                      after={"train-loop": count_and_interrupt(calls, None)})
    printed = capsys.readouterr().out

    assert len(calls) == retrained  # finished models were loaded; the cut one carried on from its last epoch
    names = ["checkpoint.pt", *(f"best-round{r}-fold{f}.pt" for r in (1, 2) for f in (1, 2))]
    for name in names:  # each model's checkpoint says what it restored, in the order the models train
        path = tmp_path / "cut" / name
        total = 1 if name == "checkpoint.pt" else 3
        line = (f"resumed from {path}: {done[name]} of {total} epochs already done" if name in done
                else f"RESUME: no checkpoint at {path} yet, so training starts at epoch 1")
        assert line in printed.splitlines(), (line, printed)
    assert len(calls) == sum((1 if name == "checkpoint.pt" else 3) - done.get(name, 0) for name in names)
    assert resumed["recipe"].train_epoch is resumed["train_one_epoch"]  # the counted function, from Recipe's default
    for mine, expected in zip(resumed["kfold"]["model"], whole["kfold"]["model"], strict=True):  # every fold's model
        for name, weight in expected.state_dict().items():
            assert torch.equal(mine.state_dict()[name], weight), name
    for mine, expected in zip(resumed["kfold"]["history"], whole["kfold"]["history"]):  # each model's curve, epoch
        pd.testing.assert_frame_equal(mine.drop(columns="seconds"), expected.drop(columns="seconds"))  # by epoch
    submitted = (tmp_path / "cut" / "submission.csv").read_bytes()
    assert submitted == (whole["output_dir"] / "submission.csv").read_bytes()
    for mine, expected in zip(resumed["plan"], whole["plan"], strict=True):  # the same folds
        np.testing.assert_array_equal(mine.held_out, expected.held_out)
    np.testing.assert_array_equal(resumed["oof_proba"], whole["oof_proba"])  # every row's out-of-fold prediction


def test_restoring_another_number_of_generators_is_refused_in_one_line(tmp_path):
    model, optimizer, _ = small_training_objects()
    path = mh.TrainingCheckpoint(tmp_path / "checkpoint.pt", model, optimizer,
                                 generators=torch.Generator()).save(1, [])
    other = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    before = [p.clone() for p in other.parameters()]
    with pytest.raises(ValueError) as error:
        mh.TrainingCheckpoint(path, other, optimizer, generators=[torch.Generator(), torch.Generator()]).load()
    assert str(error.value) == (f"{path}: holds 1 random generator state(s) but this run restores 2; it was written "
                                "by another version of the training code, so run with RESUME=False to start over.")
    assert all(torch.equal(a, b) for a, b in zip(before, other.parameters()))  # refused before any weight was loaded


def test_refusals_name_the_first_entry_that_differs_and_nothing_is_restored(tmp_path):
    model, optimizer, _ = small_training_objects()
    path = mh.TrainingCheckpoint(tmp_path / "checkpoint.pt", model, optimizer,
                                 config={"EPOCHS": 15, "LR": 0.001, "BATCH_SIZE": 100}).save(3, [])
    fresh, fresh_optimizer, _ = small_training_objects(seed=1)
    before = [p.clone() for p in fresh.parameters()]
    with pytest.raises(ValueError) as error:
        mh.TrainingCheckpoint(path, fresh, fresh_optimizer, config={"EPOCHS": 15, "LR": 0.01, "BATCH_SIZE": 50}).load()
    assert str(error.value) == refusal(path, "LR", "0.001", "0.01")
    assert re.fullmatch(r"[^\n]+", str(error.value))
    assert all(torch.equal(a, b) for a, b in zip(before, fresh.parameters()))
    with pytest.raises(ValueError, match=re.escape(refusal(path, "SEED", "None", "1"))):  # an entry it never had
        mh.TrainingCheckpoint(path, fresh, fresh_optimizer, config={"SEED": 1}).load()


def test_a_file_torch_can_read_that_is_not_a_training_checkpoint_gets_one_line(tmp_path):
    model, optimizer, _ = small_training_objects()
    path = tmp_path / "checkpoint.pt"
    torch.save(model.state_dict(), path)  # the weights alone, saved under the checkpoint's name
    with pytest.raises(ValueError) as error:
        mh.TrainingCheckpoint(path, model, optimizer).load()
    assert str(error.value) == (f"{path}: is not a checkpoint of this notebook's training (it lacks 'config'); "
                                "delete it, or run with RESUME=False to start over.")


def save_interrupted_by_ctrl_c(path, monkeypatch) -> list:
    """Save a checkpoint while Ctrl-C (or the runner's kernel interrupt) arrives in the middle of the write.

    Returns the SIGINT disposition seen inside the write, and the checkpoint's epochs loaded just after."""
    model, optimizer, _ = small_training_objects()
    seen, save = [], torch.save

    def interrupted_save(state, file):
        os.kill(os.getpid(), signal.SIGINT)  # delivered at once: Python runs handlers between bytecodes
        seen.append(signal.getsignal(signal.SIGINT))
        save(state, file)

    monkeypatch.setattr(torch, "save", interrupted_save)
    try:
        mh.TrainingCheckpoint(path, model, optimizer).save(1, [{"epoch": 1}])
    finally:
        monkeypatch.setattr(torch, "save", save)
        seen.append(mh.TrainingCheckpoint(path, model, optimizer).load())
    return seen


@pytest.mark.sigint
def test_ctrl_c_during_a_save_waits_for_the_file_to_be_whole_then_interrupts(tmp_path, monkeypatch, capsys):
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own Ctrl-C, as in a terminal or a kernel
    with pytest.raises(KeyboardInterrupt):
        save_interrupted_by_ctrl_c(tmp_path / "checkpoint.pt", monkeypatch)
    assert mh.TrainingCheckpoint(tmp_path / "checkpoint.pt", *small_training_objects()[:2]).load() == [{"epoch": 1}]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler found is back


@pytest.mark.sigint
def test_a_save_leaves_an_ignored_ctrl_c_ignored(tmp_path, monkeypatch, capsys):
    # `nohup make run &` starts the run with SIGINT ignored: a save neither holds back nor revives Ctrl-C.
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # as conftest starts every sigint test
    inside, loaded = save_interrupted_by_ctrl_c(tmp_path / "checkpoint.pt", monkeypatch)
    assert inside is signal.SIG_IGN and loaded == [{"epoch": 1}]
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


@pytest.mark.sigint
def test_a_save_hands_a_held_ctrl_c_to_the_handler_it_found_once_the_file_is_whole(tmp_path, monkeypatch, capsys):
    calls = []

    def handler(number, frame):  # e.g. ipykernel's, or a runner's own
        calls.append((number, (tmp_path / "checkpoint.pt").is_file()))

    signal.signal(signal.SIGINT, handler)
    inside, loaded = save_interrupted_by_ctrl_c(tmp_path / "checkpoint.pt", monkeypatch)
    assert inside is not handler and loaded == [{"epoch": 1}]  # held back during the write
    assert calls == [(signal.SIGINT, True)]  # then handed on once, after the file was in place
    assert signal.getsignal(signal.SIGINT) is handler
