"""benchmarks/experiments.py: the pieces it adds to the notebook's recipe, and one tiny run end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import experiments
from conftest import learnable_digits, write_test_csv, write_train_csv


def test_shifts_move_the_image_by_one_pixel_and_bring_in_zeros():
    images = torch.zeros(1, 1, 28, 28)
    images[0, 0, 10, 20] = 1.0
    right, down = experiments.shifted(images, 1, 0), experiments.shifted(images, 0, 1)
    assert right[0, 0, 10, 21] == 1 and right.sum() == 1
    assert down[0, 0, 11, 20] == 1 and down.sum() == 1
    edge = torch.ones(1, 1, 28, 28)
    assert experiments.shifted(edge, -1, 0)[0, 0, :, -1].sum() == 0  # the column shifted in is empty
    assert torch.equal(experiments.shifted(images, 0, 0), images)


def test_weight_averaging_averages_the_chosen_epochs_and_recomputes_batchnorm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    snapshots = []

    def one_epoch(model, loader):  # a stand-in for the notebook's train_one_epoch: moves every weight
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter))
        snapshots.append([p.detach().clone() for p in model.parameters()])

    batches = [(torch.randn(16, 3) + 5, torch.zeros(16)) for _ in range(4)]  # inputs far from the start's statistics
    averager = experiments.WeightAverager(one_epoch, start=2)
    for _ in range(3):
        averager(model, batches)
    averaged = averager.finished()
    for mine, second, third, raw in zip(averaged.parameters(), snapshots[1], snapshots[2], model.parameters()):
        assert torch.allclose(mine, (second + third) / 2)  # epochs 2 and 3, equally weighted
        assert not torch.equal(mine, raw)
    # BatchNorm's statistics were measured again with the averaged weights, over all of the training batches:
    # (update_bn averages the batches' means and variances; each batch's variance is the unbiased one.)
    inputs = torch.cat([x for x, _ in batches])
    with torch.no_grad():
        per_batch = [averaged[0](x) for x, _ in batches]
        mean = torch.stack([f.mean(0) for f in per_batch]).mean(0)
        var = torch.stack([f.var(0) for f in per_batch]).mean(0)
        assert torch.allclose(averaged[1].running_mean, mean, atol=1e-5)
        assert torch.allclose(averaged[1].running_var, var, atol=1e-4)
        averaged.eval()
        normalised = (averaged[0](inputs) - mean) / torch.sqrt(var + averaged[1].eps)
        expected = averaged[2](normalised * averaged[1].weight + averaged[1].bias)
        assert torch.allclose(averaged(inputs), expected, atol=1e-4)  # it evaluates as the averaged network
    nothing = experiments.WeightAverager(one_epoch, start=None)
    nothing(model, batches)
    assert nothing.finished() is None


def tiny_data(tmp_path, n=400):
    X, y = learnable_digits(n)
    write_train_csv(tmp_path / "train.csv", X, y)
    write_test_csv(tmp_path / "test.csv", learnable_digits(10, seed=1)[0])
    return X, y


def test_a_tiny_run_scores_every_version_on_each_fold_and_out_of_fold_and_reports_them(tmp_path, capsys):
    _, y = tiny_data(tmp_path)
    results, oof_dir = tmp_path / "experiments.tsv", tmp_path / "oof"
    experiments.main(["--idea", "tiny", "--data-dir", str(tmp_path), "--folds", "2", "--epochs", "2", "--width", "4",
                      "--swa-from", "2", "--ema", "0.9", "--elastic", "34", "4", "--label-smoothing", "0.1",
                      "--shift-tta", "--workers", "1", "--results", str(results), "--oof-dir", str(oof_dir)])
    rows = pd.read_csv(results, sep="\t")
    assert list(rows.columns) == experiments.COLUMNS
    folds, oof = rows[rows["kind"] == "fold"], rows[rows["kind"] == "oof"]
    assert len(folds) == 2 * 3 * 2 and len(oof) == 3 * 2 and len(rows) == 18  # 2 models x 3 versions x 2 TTAs
    assert set(rows["weights"]) == {"raw", "swa", "ema"} and set(rows["tta"]) == {"none", "shifts"}
    assert (folds["images"] == 200).all() and (oof["images"] == 400).all()  # out of fold: every row
    assert np.allclose(rows["mistakes"], (1 - rows["valid_acc"]) * rows["images"])
    assert np.allclose(rows["std_error"], np.sqrt(rows["valid_acc"] * (1 - rows["valid_acc"]) / rows["images"]))
    assert rows["command"].iloc[0].startswith("python benchmarks/experiments.py --idea tiny")
    kept = np.load(experiments.oof_file(oof_dir, "tiny"))
    assert np.array_equal(kept["labels"], y) and kept["fold_of"].shape == (1, 400)
    for _, row in oof.iterrows():  # each OOF figure is its kept right-or-wrong over all 400 rows
        assert kept[f"{row['weights']}-{row['tta']}"][0].sum() == 400 - row["mistakes"]
    # The averaged weights are compared with the same run's raw weights, row by row (the same TTA):
    averaged = oof[oof["weights"] != "raw"]
    assert (averaged["vs"] == "tiny, raw weights").all() and oof[oof["weights"] == "raw"]["vs"].isna().all()
    for _, row in averaged.iterrows():
        raw = oof[(oof["weights"] == "raw") & (oof["tta"] == row["tta"])].iloc[0]
        assert row["diff"] == pytest.approx(row["valid_acc"] - raw["valid_acc"])  # paired: the same rows
        difference = (kept[f"{row['weights']}-{row['tta']}"][0].astype(float)
                      - kept[f"raw-{row['tta']}"][0].astype(float))
        assert row["diff_std_error"] == pytest.approx(difference.std(ddof=1) / np.sqrt(400))
    capsys.readouterr()
    experiments.main(["--report", "--results", str(results)])
    printed = capsys.readouterr().out
    assert "tiny" in printed and "diff_std_error" in printed
    summary = experiments.report(results)
    assert len(summary) == 6 and summary["valid_acc"].tolist() == (100 * oof["valid_acc"]).round(3).tolist()


def test_the_paired_difference_and_its_standard_error_by_hand():
    right = np.array([1, 1, 1, 0, 1, 0, 1, 1], dtype=bool)
    other = np.array([1, 0, 1, 1, 1, 0, 0, 1], dtype=bool)  # differences: 0 1 0 -1 0 0 1 0
    diff, error = experiments.paired_difference(right, other)
    assert diff == pytest.approx(1 / 8)
    d = np.array([0, 1, 0, -1, 0, 0, 1, 0])
    assert error == pytest.approx(np.sqrt(((d - d.mean()) ** 2).sum() / 7 / 8))
    # Pairing is what makes it sharp: the same right answers on most rows cancel, and only the rows where the two
    # disagree count. Unpaired, the standard error would be sqrt(p1 q1 / n + p2 q2 / n), larger here.
    p1, p2 = right.mean(), other.mean()
    assert error < np.sqrt(p1 * (1 - p1) / 8 + p2 * (1 - p2) / 8)


def test_an_idea_is_compared_with_another_run_on_the_same_folds_or_refused_before_training(tmp_path, monkeypatch,
                                                                                          capsys):
    tiny_data(tmp_path, 300)
    common = ["--data-dir", str(tmp_path), "--folds", "3", "--epochs", "2", "--width", "4", "--workers", "1",
              "--results", str(tmp_path / "r.tsv"), "--oof-dir", str(tmp_path / "oof")]
    experiments.main(["--idea", "base", *common])
    experiments.main(["--idea", "no dropout", "--dropout", "0", "--decay", "0.95", "--batch-size", "64",
                      "--against", "base", *common])
    rows = pd.read_csv(tmp_path / "r.tsv", sep="\t")
    base, other = (rows[(rows["idea"] == idea) & (rows["kind"] == "oof")].iloc[0] for idea in ("base", "no dropout"))
    assert other["vs"] == "base, raw weights" and pd.isna(base["vs"])
    assert other["diff"] == pytest.approx(other["valid_acc"] - base["valid_acc"])
    mine, theirs = (np.load(experiments.oof_file(tmp_path / "oof", idea)) for idea in ("no dropout", "base"))
    assert np.array_equal(mine["fold_of"], theirs["fold_of"])  # the same folds, so the rows pair up
    difference = mine["raw-none"][0].astype(float) - theirs["raw-none"][0].astype(float)
    assert other["diff_std_error"] == pytest.approx(difference.std(ddof=1) / np.sqrt(300))

    monkeypatch.setattr(experiments, "train_and_score", lambda *args: pytest.fail("trained before refusing"))
    for argv, message in (
            (["--against", "nothing yet"], "--against 'nothing yet': no "),
            (["--against", "base", "--seed", "7"], "--against 'base': "),  # other folds: other seeds
    ):
        with pytest.raises(SystemExit) as error:
            experiments.main(["--idea", "refused", *common, *argv])
        assert str(error.value).startswith(message), error.value
    assert "other rows or folds" in str(error.value)


def test_two_rounds_on_two_workers_score_each_row_by_each_round_and_by_the_average_of_both(tmp_path):
    _, y = tiny_data(tmp_path, 300)
    results, oof_dir = tmp_path / "r.tsv", tmp_path / "oof"
    experiments.main(["--idea", "two", "--data-dir", str(tmp_path), "--folds", "3", "--rounds", "2", "--epochs", "1",
                      "--width", "4", "--workers", "2", "--results", str(results), "--oof-dir", str(oof_dir)])
    rows = pd.read_csv(results, sep="\t")
    oof, average = rows[rows["kind"] == "oof"], rows[rows["kind"] == "oof-avg"]
    assert oof["seed"].tolist() == ["round 1", "round 2"] and len(rows) == 6 + 2 + 1
    assert (rows["workers"] == 2).all()  # as the notebook's WORKERS=2: two processes at once
    # The wall minutes are the run's, from choosing the workers to the last model: on the out-of-fold rows only.
    assert rows.loc[rows["kind"] == "fold", "wall_minutes"].isna().all()
    assert (rows.loc[rows["kind"] != "fold", "wall_minutes"] > 0).all()
    kept = np.load(experiments.oof_file(oof_dir, "two"))
    proba = kept["proba-raw-none"]  # (2, 300, 10): each round's model that never saw the row
    assert proba.shape == (2, 300, 10) and np.allclose(proba.sum(axis=2), 1, atol=1e-3)
    for r in range(2):
        assert np.array_equal(kept["raw-none"][r], proba[r].argmax(axis=1) == y)
        assert oof.iloc[r]["mistakes"] == (proba[r].argmax(axis=1) != y).sum()
    (_, row), = average.iterrows()
    assert row["seed"] == "2 models a row" and row["models"] == 2 and row["images"] == 300
    averaged = proba.mean(axis=0).argmax(axis=1) == y  # (300,): the average of both rounds, not either one
    assert np.array_equal(kept["avg-raw-none"], averaged) and row["mistakes"] == (~averaged).sum()
    assert row["train_minutes"] == pytest.approx(oof["train_minutes"].sum(), abs=0.02)
    assert "oof-avg" in experiments.report(results)["kind"].tolist()


def test_averaged_weights_need_one_worker_and_are_refused_before_the_data_is_read(tmp_path):
    for option in (["--ema", "0.999"], ["--swa-from", "20"], ["--snapshots", "10"]):
        with pytest.raises(SystemExit) as error:
            experiments.main(["--data-dir", str(tmp_path / "nothing here"), *option])
        assert str(error.value).endswith("add --workers 1."), option
    with pytest.raises(SystemExit):  # argparse: not a count
        experiments.parse_args(["--workers", "0"])


def notebook_run(tmp_path, y: np.ndarray, seed: int = 42) -> tuple[Path, np.ndarray]:
    """An OUTPUT_DIR as a RECIPE="best" run with FOLDS=3 leaves it: oof.csv and experiments.csv; and its right rows."""
    run = tmp_path / "run"
    run.mkdir()
    predicted = y.copy()
    predicted[::7] = (y[::7] + 1) % 10  # every 7th row wrong
    plan = experiments.kfold_plan(y, 3, 1, seed)
    pd.DataFrame({"row": np.arange(len(y)), "label": y, "oof_pred": predicted}).to_csv(run / "oof.csv", index=False)
    table = [dict(recipe="reference", epochs=15, mistakes=3, train_seconds=100.0)]
    table += [dict(recipe=f"best, {m.name}", epochs=25, mistakes=(predicted != y)[m.held_out].sum(),
                   train_seconds=60.0 * m.fold) for m in plan]
    table += [dict(recipe="best, out of fold", epochs=25, mistakes=(predicted != y).sum(), train_seconds=360.0,
                   wall_seconds=240.0, workers=2, tta=0)]
    pd.DataFrame(table).to_csv(run / "experiments.csv", index=False)
    return run, predicted == y


def test_a_notebook_run_is_recorded_from_its_files_and_paired_like_a_trained_one(tmp_path, monkeypatch):
    _, y = tiny_data(tmp_path, 300)
    run, right = notebook_run(tmp_path, y)
    oof_dir, results = tmp_path / "oof", tmp_path / "r.tsv"
    plan = experiments.kfold_plan(y, 3, 1, 42)
    fold_of = sum((m.fold - 1) * m.held_out for m in plan)[None]
    base_right = np.ones((1, 300), dtype=bool)  # the run to compare with got every row right
    oof_dir.mkdir()
    np.savez_compressed(experiments.oof_file(oof_dir, "base"), labels=y, fold_of=fold_of, **{"raw-none": base_right})
    monkeypatch.setattr(experiments, "train_and_score", lambda *args: pytest.fail("trained a recorded run"))
    common = ["--data-dir", str(tmp_path), "--folds", "3", "--results", str(results), "--oof-dir", str(oof_dir)]
    experiments.main(["--idea", "recorded", "--from-run", str(run), "--against", "base", *common])
    rows = pd.read_csv(results, sep="\t")
    folds, (_, oof) = rows[rows["kind"] == "fold"], *rows[rows["kind"] == "oof"].iterrows()
    assert folds["seed"].tolist() == ["43 (fold 1)", "44 (fold 2)", "45 (fold 3)"]
    assert folds["train_minutes"].tolist() == [1.0, 2.0, 3.0] and (folds["epochs"] == 25).all()
    assert oof["mistakes"] == (~right).sum() and oof["images"] == 300
    assert (oof["train_minutes"], oof["wall_minutes"], oof["workers"]) == (6.0, 4.0, 2)
    assert oof["diff"] == pytest.approx(right.mean() - 1) and oof["vs"] == "base, raw weights"
    assert np.array_equal(np.load(experiments.oof_file(oof_dir, "recorded"))["raw-none"][0], right)
    for argv in (["--seed", "7"], ["--folds", "4"]):  # other folds than the run's: refused, nothing recorded
        with pytest.raises(SystemExit) as error:
            experiments.main(["--idea", "wrong", "--from-run", str(run), *common, *argv])
        assert "give --folds and --seed as its FOLDS and SEED" in str(error.value)
    with pytest.raises(SystemExit, match="give the OUTPUT_DIR of a RECIPE"):
        experiments.main(["--idea", "wrong", "--from-run", str(tmp_path / "no run"), *common])
    assert len(pd.read_csv(results, sep="\t")) == len(rows)


def test_deottes_decay_multiplies_the_learning_rate_once_per_epoch():
    optimizer = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = experiments.exponential_decay(0.95)(optimizer, max_lr=1e-3, epochs=3, steps_per_epoch=4)
    lrs = []
    for _ in range(12):  # stepped after every batch, as the notebook steps its schedule
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    np.testing.assert_allclose(lrs, [1e-3] * 4 + [0.95e-3] * 4 + [0.95**2 * 1e-3] * 4)


def small_bn_net() -> nn.Module:
    """Linear -> BatchNorm -> Linear: small enough to check every weight by hand."""
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def hand_bn_statistics(first_layer: nn.Module, batches) -> tuple[torch.Tensor, torch.Tensor]:
    """What update_bn should measure: the mean over the batches of each batch's mean and (unbiased) variance."""
    with torch.no_grad():
        features = [first_layer(x) for x, _ in batches]
        return (torch.stack([f.mean(0) for f in features]).mean(0),
                torch.stack([f.var(0) for f in features]).mean(0))


def test_ema_follows_every_optimizer_step_recomputes_batchnorm_and_starts_again_per_model():
    torch.manual_seed(0)
    decay = 0.6
    batches = [(torch.randn(16, 3) + 5, torch.randint(0, 2, (16,))) for _ in range(3)]  # far from the start's stats
    after_steps = []  # every parameter after every optimizer step

    def one_epoch(model, loader, loss_fn, optimizer):  # a stand-in for the notebook's train_one_epoch: real steps
        model.train()
        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
            after_steps.append([p.detach().clone() for p in model.parameters()])

    def hand_ema(steps):  # AveragedModel: the first update copies, then W_ema = decay W_ema + (1 - decay) W
        ema = [p.clone() for p in steps[0]]
        for step in steps[1:]:
            ema = [decay * e + (1 - decay) * p for e, p in zip(ema, step)]
        return ema

    model = small_bn_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    averager = experiments.WeightAverager(one_epoch, start=None, ema_decay=decay)
    for _ in range(2):
        averager(model, batches, nn.CrossEntropyLoss(), optimizer)
    assert len(after_steps) == 6
    versions = averager.weights(model)
    assert set(versions) == {"raw", "ema"} and versions["raw"] == [model]
    ema = versions["ema"][0]
    for mine, hand in zip(ema.parameters(), hand_ema(after_steps)):
        assert torch.allclose(mine, hand, atol=1e-6)  # one update per step, in both epochs
    for mine, raw in ((ema[0].weight, model[0].weight), (ema[1].weight, model[1].weight),
                      (ema[2].weight, model[2].weight)):  # (the first bias gets no gradient: BatchNorm cancels it)
        assert not torch.allclose(mine, raw, atol=1e-3)
    mean, var = hand_bn_statistics(ema[0], batches)  # measured again, with the EMA's own weights
    assert torch.allclose(ema[1].running_mean, mean, atol=1e-5)
    assert torch.allclose(ema[1].running_var, var, atol=1e-4)
    assert not torch.allclose(model[1].running_mean, mean, atol=1e-2)  # not the raw model's running statistics
    inputs = torch.cat([x for x, _ in batches])
    with torch.no_grad():
        ema.eval()
        normalised = (ema[0](inputs) - mean) / torch.sqrt(var + ema[1].eps)
        assert torch.allclose(ema(inputs), ema[2](normalised * ema[1].weight + ema[1].bias), atol=1e-4)
    first_ema = [p.detach().clone() for p in ema.parameters()]

    averager.new_model()  # the next seed: its own EMA, of its own steps only
    second = small_bn_net()
    assert "ema" not in averager.weights(second)
    after_steps.clear()
    averager(second, batches, nn.CrossEntropyLoss(), torch.optim.SGD(second.parameters(), lr=0.5))
    assert len(after_steps) == 3
    second_ema = averager.weights(second)["ema"][0]
    assert second_ema is not ema
    for mine, hand in zip(second_ema.parameters(), hand_ema(after_steps)):
        assert torch.allclose(mine, hand, atol=1e-6)
    for mine, before in zip(ema.parameters(), first_ema):
        assert torch.equal(mine, before)  # the first model's EMA is left as it was


def test_snapshots_are_independent_copies_after_the_chosen_epochs_then_the_live_model():
    torch.manual_seed(0)
    model = small_bn_net()
    after_epochs = []

    def one_epoch(model, loader):  # a stand-in for the notebook's train_one_epoch: moves every weight in place
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter))
        after_epochs.append([p.detach().clone() for p in model.parameters()])

    batches = [(torch.randn(8, 3), torch.zeros(8)) for _ in range(2)]
    averager = experiments.WeightAverager(one_epoch, start=None, snapshot_epochs=[1, 3])
    for _ in range(4):
        averager(model, batches)
    versions = averager.weights(model)
    assert set(versions) == {"raw", "snapshots"}
    first, third, live = versions["snapshots"]
    assert live is model and first is not model and third is not model
    for copy, epoch in ((first, 1), (third, 3)):  # still the weights of that epoch, after the later epochs
        for mine, recorded, now in zip(copy.parameters(), after_epochs[epoch - 1], model.parameters()):
            assert torch.equal(mine, recorded)
            assert not torch.equal(mine, now)
    averager.new_model()
    assert "snapshots" not in averager.weights(model)


def notebook_state(code: dict) -> dict:
    """What the notebook's code reads when it runs, each value as an object to compare by identity.

    The namespace's names; the helper module's functions; the notebook's classes' attributes (a dataclass's
    field defaults among them) and its functions' defaults and code. experiments.py may build from all of it,
    but replacing any of it would change what the notebook's own functions do.
    """
    state = {("namespace", name): value for name, value in code.items()}
    helper = code["mh"]
    state.update({("mh", name): value for name, value in vars(helper).items() if not name.startswith("__")})
    for name, value in code.items():
        if isinstance(value, type) and not name.startswith("__"):
            state.update({(name, attribute): item for attribute, item in vars(value).items()})
            init = vars(value).get("__init__")
            state[(name, "__init__.__defaults__")] = getattr(init, "__defaults__", None)
        if callable(value) and getattr(value, "__globals__", None) is code:  # a function the notebook defines
            state.update({(name, "__defaults__"): value.__defaults__, (name, "__kwdefaults__"): value.__kwdefaults__,
                          (name, "__code__"): value.__code__})
    return state


def test_a_run_replaces_nothing_in_the_notebooks_namespace_and_passes_its_changes_in_a_recipe(tmp_path, monkeypatch):
    X, y = learnable_digits(200)
    write_train_csv(tmp_path / "train.csv", X, y)
    write_test_csv(tmp_path / "test.csv", learnable_digits(10, seed=1)[0])
    namespaces, given = [], []
    real_cells, real_train = experiments.run_notebook_cells, experiments.train_and_score

    def cells(*args):
        code = real_cells(*args)
        namespaces.append((code, notebook_state(code)))
        return code

    def train_and_score(code, recipe, *args):
        given.append((code, recipe))
        return real_train(code, recipe, *args)

    monkeypatch.setattr(experiments, "run_notebook_cells", cells)
    monkeypatch.setattr(experiments, "train_and_score", train_and_score)
    # Every option that once overwrote a notebook global: the epochs, the model's width, the loss, the augmentation
    # and the epoch function (SWA, EMA, snapshots); and the pseudo-labels' second stage, which trains again.
    experiments.main(["--idea", "tiny", "--data-dir", str(tmp_path), "--folds", "2", "--epochs", "2", "--width", "8",
                      "--dropout", "0.1", "--label-smoothing", "0.2", "--elastic", "34", "4", "--swa-from", "2",
                      "--ema", "0.9", "--snapshots", "1", "--decay", "0.9", "--batch-size", "50", "--workers", "1",
                      "--results", str(tmp_path / "results.tsv"), "--oof-dir", str(tmp_path / "oof")])

    [(code, before)] = namespaces
    after = notebook_state(code)
    changes = {"added": sorted(map(str, after.keys() - before.keys())),
               "removed": sorted(map(str, before.keys() - after.keys())),
               "replaced": sorted(str(key) for key in before.keys() & after.keys() if after[key] is not before[key])}
    assert changes == {"added": [], "removed": [], "replaced": []}
    assert len(given) == 1 and given[0][0] is code
    recipe = given[0][1]
    assert isinstance(recipe, code["Recipe"])
    assert (recipe.epochs, recipe.lr, recipe.batch_size) == (2, 3e-3, 50)
    assert recipe.make_model().features[3].p == 0.1 and recipe.schedule is not code["Recipe"].schedule
    assert recipe.make_model().head.in_features == 32 and recipe.loss_fn.label_smoothing == 0.2
    assert isinstance(recipe.train_epoch, experiments.WeightAverager)
    assert recipe.train_epoch.train_one_epoch is code["train_one_epoch"]  # it wraps the notebook's own loop
    assert recipe.augment is not code["mh"].random_affine  # the elastic distortion after the notebook's one
    default = code["Recipe"](epochs=1, lr=1e-3, batch_size=10)  # the notebook's Recipe, still as the notebook has it
    assert default.train_epoch is code["train_one_epoch"] and default.augment is code["mh"].random_affine
    assert default.make_model is code["StrongerCNN"] and default.loss_fn.label_smoothing == 0.1
