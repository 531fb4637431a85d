"""Checkpoints: what they hold, one-line refusals, atomic writes, and an interrupted run resumed to the same weights."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import learnable_digits, make_digits, run_notebook_in_process, write_test_csv, write_train_csv
from torch import nn

import mnist_helpers
from mnist_helpers import load_checkpoint, save_checkpoint


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


def test_checkpoint_round_trip_restores_weights_optimizer_scheduler_history_and_rng(tmp_path):
    model, optimizer, scheduler = small_training_objects()
    generator = torch.Generator().manual_seed(5)
    step(model, optimizer, scheduler)
    history = [{"epoch": 1, "valid_acc": 0.5}]
    path = save_checkpoint(tmp_path / "checkpoint.pt", model, optimizer, 1, history, generator,
                           scheduler=scheduler, config={"SEED": 1})
    expected = (random.random(), np.random.rand(), torch.rand(2).tolist(), torch.rand(2, generator=generator).tolist())

    fresh, fresh_optimizer, fresh_scheduler = small_training_objects(seed=99)
    fresh_generator = torch.Generator().manual_seed(0)
    epoch, restored = load_checkpoint(path, fresh, fresh_optimizer, fresh_generator, scheduler=fresh_scheduler,
                                      config={"SEED": 1})
    assert epoch == 1 and restored == history
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    assert fresh_optimizer.state_dict()["state"][0]["step"] == 1
    assert fresh_scheduler.last_epoch == 1 and fresh_optimizer.param_groups[0]["lr"] == pytest.approx(9e-3)
    got = (random.random(), np.random.rand(), torch.rand(2).tolist(), torch.rand(2, generator=fresh_generator).tolist())
    assert got == expected  # python, numpy, torch and the loader's generator all continue where they were


def test_resuming_with_other_parameters_is_refused_in_one_line(tmp_path):
    model, optimizer, _ = small_training_objects()
    path = save_checkpoint(tmp_path / "checkpoint.pt", model, optimizer, 2, [], config={"EPOCHS": 15, "LR": 0.001})
    with pytest.raises(ValueError) as error:
        load_checkpoint(path, model, optimizer, config={"EPOCHS": 15, "LR": 0.01})
    message = str(error.value)
    assert message == (f"{path}: was written with LR=0.001 but this run has LR=0.01; resume with the same "
                       "parameters and the same kind of device, or RESUME=False to start over.")


def test_a_checkpoint_from_another_precision_is_refused_in_one_line_naming_its_device(tmp_path):
    # Written on a T4 (fp16, with an active GradScaler), resumed where bf16 needs no scaler, and the reverse.
    model, optimizer, _ = small_training_objects()
    fp16_scaler, no_scaler = torch.amp.GradScaler("cpu", init_scale=1024.0), torch.amp.GradScaler("cpu", enabled=False)
    t4 = {"PRECISION": "float16", "DEVICE_NAME": "Tesla T4", "CAPABILITY": "7.5"}
    path = save_checkpoint(tmp_path / "t4.pt", model, optimizer, 1, [], scaler=fp16_scaler, config={"SEED": 1, **t4})
    with pytest.raises(ValueError) as error:
        load_checkpoint(path, model, optimizer, scaler=no_scaler, config={"SEED": 1, "PRECISION": "bfloat16"})
    assert str(error.value) == (f"{path}: was written with PRECISION='float16' on Tesla T4 but this run has "
                                "PRECISION='bfloat16'; resume with the same parameters and the same kind of device, "
                                "or RESUME=False to start over.")
    l4 = {"PRECISION": "bfloat16", "DEVICE_NAME": "NVIDIA L4", "CAPABILITY": "8.9"}
    path = save_checkpoint(tmp_path / "l4.pt", model, optimizer, 1, [], scaler=no_scaler, config=l4)
    with pytest.raises(ValueError, match=r"PRECISION='bfloat16' on NVIDIA L4 but this run has PRECISION='float16'"):
        load_checkpoint(path, model, optimizer, scaler=fp16_scaler, config={"PRECISION": "float16"})
    # Unchecked, that second resume dies inside the scaler instead, with no word of the cause:
    with pytest.raises(RuntimeError, match="saved from a disabled instance of GradScaler"):
        load_checkpoint(path, model, optimizer, scaler=fp16_scaler)


def test_a_grad_scaler_with_a_non_default_state_round_trips(tmp_path):
    model, optimizer, _ = small_training_objects()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=7)
    scaler.scale(torch.tensor(1.0))
    scaler.update(new_scale=123.0)  # as after steps whose gradients overflowed
    path = save_checkpoint(tmp_path / "checkpoint.pt", model, optimizer, 1, [], scaler=scaler)
    fresh = torch.amp.GradScaler("cpu")
    load_checkpoint(path, model, optimizer, scaler=fresh)
    assert fresh.get_scale() == 123.0 and fresh.get_growth_interval() == 7


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04truncated zip"])
def test_a_damaged_checkpoint_gets_one_line(tmp_path, content):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content)
    model, optimizer, _ = small_training_objects()
    with pytest.raises(ValueError, match=r"is not a readable checkpoint \(\w+\); delete it, or run with RESUME=False"):
        load_checkpoint(path, model, optimizer)


class Payload:
    """An object that would run code when unpickled without weights_only."""

    def __reduce__(self):
        return (print, ("this must not run",))


def test_checkpoints_load_with_weights_only(tmp_path, capsys):
    model, optimizer, _ = small_training_objects()
    path = save_checkpoint(tmp_path / "checkpoint.pt", model, optimizer, 1, [])
    state = torch.load(path, weights_only=True)
    torch.save({**state, "payload": Payload()}, path)  # a real checkpoint, plus an object that runs code
    with pytest.raises(ValueError, match="is not a readable checkpoint"):
        load_checkpoint(path, model, optimizer)
    assert "this must not run" not in capsys.readouterr().out


def test_a_missing_checkpoint_says_so(tmp_path):
    model, optimizer, _ = small_training_objects()
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from; run with RESUME=False"):
        load_checkpoint(tmp_path / "nothing.pt", model, optimizer)


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, optimizer, _ = small_training_objects()
    path = save_checkpoint(tmp_path / "checkpoint.pt", model, optimizer, 1, [])
    before = path.read_bytes()

    def broken_save(obj, file, *args, **kwargs):
        file.write(b"half a checkpoint")
        raise pickle.PicklingError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(pickle.PicklingError):
        save_checkpoint(path, model, optimizer, 2, [])
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


class Interrupted(Exception):
    """Stands in for a run cut off after its first epoch."""


def test_an_interrupted_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path):
    X, y = make_digits(300)
    write_train_csv(tmp_path / "train.csv", X, y)
    write_test_csv(tmp_path / "test.csv", make_digits(40, seed=1)[0])
    common = {"DATA_DIR": str(tmp_path), "EPOCHS": 3, "BATCH_SIZE": 20, "PROGRESS": False, "LOSS_LINES": False}

    whole = run_notebook_in_process({**common, "OUTPUT_DIR": str(tmp_path / "whole")}, until_tag="train")

    def interrupt_after_one_epoch(namespace):
        train_one_epoch, calls = namespace["train_one_epoch"], []

        def wrapped(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise Interrupted
            return train_one_epoch(*args, **kwargs)

        namespace["train_one_epoch"] = wrapped

    cut = {**common, "OUTPUT_DIR": str(tmp_path / "cut")}
    with pytest.raises(Interrupted):
        run_notebook_in_process(cut, until_tag="train", after={"train-loop": interrupt_after_one_epoch})
    saved = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 1

    resumed_epochs = []

    def count_epochs(namespace):
        train_one_epoch = namespace["train_one_epoch"]

        def counted(*args, **kwargs):
            resumed_epochs.append(1)
            return train_one_epoch(*args, **kwargs)

        namespace["train_one_epoch"] = counted

    resumed = run_notebook_in_process({**cut, "RESUME": True}, until_tag="train", after={"train-loop": count_epochs})

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
    monkeypatch.setattr(mnist_helpers, "cpu_supports_bf16", lambda: True)  # a CPU with AMX: bf16 autocast
    run_notebook_in_process(parameters, until_tag="train")
    saved = torch.load(tmp_path / "output" / "checkpoint.pt", weights_only=True)["config"]
    assert saved["PRECISION"] == "bfloat16" and saved["DEVICE_NAME"] == "cpu" and saved["CAPABILITY"] is None
    monkeypatch.setattr(mnist_helpers, "cpu_supports_bf16", lambda: False)  # the same run on a CPU without it: fp32
    with pytest.raises(ValueError, match=r"was written with PRECISION='bfloat16' on cpu but this run has "
                                         r"PRECISION='float32'; resume with the same parameters"):
        run_notebook_in_process({**parameters, "RESUME": True}, until_tag="train")


def test_several_generators_round_trip_in_order(tmp_path):
    model, optimizer, _ = small_training_objects()
    shuffling, augmentation = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    torch.rand(3, generator=augmentation)  # the two are in different places
    path = save_checkpoint(tmp_path / "checkpoint.pt", model, optimizer, 1, [], [shuffling, augmentation])
    expected = [torch.rand(2, generator=g).tolist() for g in (shuffling, augmentation)]
    fresh = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)]
    load_checkpoint(path, model, optimizer, fresh)
    assert [torch.rand(2, generator=g).tolist() for g in fresh] == expected


def test_training_checkpoint_without_a_file_starts_at_epoch_one_and_says_so(tmp_path, capsys):
    model, optimizer, _ = small_training_objects()
    checkpoint = mnist_helpers.TrainingCheckpoint(tmp_path / "run.pt", model, optimizer, config={"EPOCHS": 3})
    assert checkpoint.resume() == ([], 0)
    assert capsys.readouterr().out == f"RESUME: no checkpoint at {tmp_path / 'run.pt'} yet, so training starts at epoch 1\n"
    checkpoint.facts = {"DEVICE_NAME": "cpu"}
    checkpoint.save(2, [{"epoch": 1}, {"epoch": 2}])
    assert torch.load(tmp_path / "run.pt", weights_only=True)["config"] == {"EPOCHS": 3, "DEVICE_NAME": "cpu"}
    again = mnist_helpers.TrainingCheckpoint(tmp_path / "run.pt", model, optimizer, config={"EPOCHS": 3})
    assert again.resume() == ([{"epoch": 1}, {"epoch": 2}], 2)
    assert capsys.readouterr().out == f"resumed from {tmp_path / 'run.pt'}: 2 of 3 epochs already done\n"


def count_and_interrupt(calls: list, interrupt_at: int | None):
    """An `after` hook for the train-loop cell: count train_one_epoch calls, and raise at call number interrupt_at."""
    def install(namespace):
        train_one_epoch = namespace["train_one_epoch"]

        def wrapped(*args, **kwargs):
            calls.append(1)
            if len(calls) == interrupt_at:
                raise Interrupted
            return train_one_epoch(*args, **kwargs)

        namespace["train_one_epoch"] = wrapped
    return install


# Calls of train_one_epoch in this run: 1 the reference model; 2-4 and 5-7 the validated models (seeds 43, 44);
# 8-10 and 11-13 the final fit of the same seeds.
@pytest.mark.parametrize("interrupt_at, retrained", [(6, 2 + 6), (12, 2)])
def test_an_interrupted_best_recipe_resumes_model_by_model_to_the_weights_of_an_uninterrupted_one(
        tmp_path, interrupt_at, retrained):
    X, y = learnable_digits(250)
    write_train_csv(tmp_path / "train.csv", X, y)
    write_test_csv(tmp_path / "test.csv", learnable_digits(40, seed=1)[0])
    common = {"DATA_DIR": str(tmp_path), "EPOCHS": 1, "BATCH_SIZE": 25, "PROGRESS": False, "LOSS_LINES": False,
              "RECIPE": "best", "BEST_EPOCHS": 3, "ENSEMBLE": 2, "FINAL_FIT": True}

    whole = run_notebook_in_process({**common, "OUTPUT_DIR": str(tmp_path / "whole")}, until_tag="best-submission")
    cut = {**common, "OUTPUT_DIR": str(tmp_path / "cut")}
    with pytest.raises(Interrupted):
        run_notebook_in_process(cut, until_tag="best-submission",
                                after={"train-loop": count_and_interrupt([], interrupt_at)})
    calls: list = []
    resumed = run_notebook_in_process({**cut, "RESUME": True}, until_tag="best-submission",
                                      after={"train-loop": count_and_interrupt(calls, None)})

    assert len(calls) == retrained  # finished models were loaded; the cut one carried on from its last epoch
    for final, expected in zip(resumed["members"], whole["members"], strict=True):  # the final fit's models
        for name, weight in expected.state_dict().items():
            assert torch.equal(final.state_dict()[name], weight), name
    for name, history in whole["histories"].items():  # the validated models' curves, epoch by epoch
        pd.testing.assert_frame_equal(resumed["histories"][name].drop(columns="seconds"),
                                      history.drop(columns="seconds"))
    assert (tmp_path / "cut" / "submission.csv").read_bytes() == (tmp_path / "whole" / "submission.csv").read_bytes()
    np.testing.assert_array_equal(resumed["best_proba"], whole["best_proba"])


def test_a_checkpoint_from_before_several_generators_still_resumes(tmp_path):
    model, optimizer, _ = small_training_objects()
    generator = torch.Generator().manual_seed(3)
    path = save_checkpoint(tmp_path / "checkpoint.pt", model, optimizer, 1, [], generator)
    expected = torch.rand(2, generator=generator).tolist()
    state = torch.load(path, weights_only=True)
    state["rng"]["loader"] = state["rng"].pop("generators")[0]  # the layout of this project's earlier checkpoints
    torch.save(state, path)
    fresh = torch.Generator().manual_seed(0)
    assert load_checkpoint(path, model, optimizer, fresh) == (1, [])
    assert torch.rand(2, generator=fresh).tolist() == expected


def test_restoring_another_number_of_generators_is_refused_in_one_line(tmp_path):
    model, optimizer, _ = small_training_objects()
    path = save_checkpoint(tmp_path / "checkpoint.pt", model, optimizer, 1, [], torch.Generator())
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError) as error:
        load_checkpoint(path, nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3)), optimizer,
                        [torch.Generator(), torch.Generator()])
    assert str(error.value) == (f"{path}: holds 1 random generator state(s) but this run restores 2; it was written "
                                "by another version of the training code, so run with RESUME=False to start over.")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
