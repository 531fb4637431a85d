"""benchmarks/experiments.py: the pieces it adds to the notebook's recipe, and one tiny run end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
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


def test_a_tiny_run_records_every_model_and_ensemble_and_reports_them(tmp_path, capsys):
    X, y = learnable_digits(400)
    write_train_csv(tmp_path / "train.csv", X, y)
    write_test_csv(tmp_path / "test.csv", learnable_digits(10, seed=1)[0])
    results = tmp_path / "experiments.tsv"
    experiments.main(["--idea", "tiny", "--data-dir", str(tmp_path), "--seeds", "1", "2", "--epochs", "2",
                      "--swa-from", "2", "--elastic", "34", "4", "--label-smoothing", "0.1",
                      "--results", str(results)])
    rows = pd.read_csv(results, sep="\t")
    assert len(rows) == 2 * 4 + 4  # per model: raw and averaged weights, each without and with TTA; then ensembles
    assert set(rows["weights"]) == {"raw", "swa"} and set(rows["tta"]) == {"none", "shifts"}
    assert rows["models"].tolist().count(2) == 4
    assert np.allclose(rows["mistakes"], (1 - rows["valid_acc"]) * 80)  # 80 validation images: 20% of 400
    assert rows["command"].iloc[0].startswith("python benchmarks/experiments.py --idea tiny")
    capsys.readouterr()
    experiments.main(["--report", "--results", str(results)])
    printed = capsys.readouterr().out
    assert "tiny" in printed and "minutes_per_model" in printed
    summary = experiments.report(results)
    raw = summary[(summary["weights"] == "raw") & (summary["tta"] == "none")].iloc[0]
    singles = rows[(rows["models"] == 1) & (rows["weights"] == "raw") & (rows["tta"] == "none")]["valid_acc"]
    assert np.isclose(raw["mean"], round(100 * singles.mean(), 3)) and raw["count"] == 2


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


def test_pseudo_labels_and_train_fraction_end_to_end(tmp_path, capsys, monkeypatch):
    X, y = learnable_digits(400)
    write_train_csv(tmp_path / "train.csv", X, y)
    X_test = learnable_digits(10, seed=1)[0]
    write_test_csv(tmp_path / "test.csv", X_test)
    results = tmp_path / "experiments.tsv"
    stages = []  # what each call of train_and_score was given, and what it returned before main changed it

    def spy(code, recipe, averager, seeds, X_pool, y_pool, X_valid, y_valid, fast, output_dir, base):
        rows, models, minutes = real(code, recipe, averager, seeds, X_pool, y_pool, X_valid, y_valid, fast,
                                     output_dir, base)
        if not stages:  # tiny models train in a fraction of a second: say the first stage's took a minute longer
            minutes = [m + 1.0 for m in minutes]  # each, so that its cost shows in the 2-decimal minutes
        stages.append(dict(X_pool=X_pool, X_valid=X_valid, minutes=list(minutes), models=models,
                           row_minutes=[row["train_minutes"] for row in rows]))
        return rows, models, minutes

    real = experiments.train_and_score
    monkeypatch.setattr(experiments, "train_and_score", spy)
    experiments.main(["--idea", "tiny", "--data-dir", str(tmp_path), "--seeds", "1", "2", "3", "--epochs", "2",
                      "--train-fraction", "0.5", "--pseudo-label", "0.1", "--width", "8",
                      "--results", str(results)])
    printed = capsys.readouterr().out

    # --train-fraction: half of the training split, on the full run's validation images
    X_train, X_valid, _, _ = experiments.split_train_valid(X, y, 0.2, 42)
    assert (len(X_train), len(X_valid)) == (320, 80)
    assert "160 training / 80 validation rows" in printed
    assert len(stages) == 2 and len(stages[0]["X_pool"]) == 160
    assert np.array_equal(stages[0]["X_valid"], X_valid) and np.array_equal(stages[1]["X_valid"], X_valid)
    training = {row.tobytes() for row in X_train}
    assert all(row.tobytes() in training for row in stages[0]["X_pool"])
    assert all(model.head.in_features == 32 for model in stages[0]["models"])  # --width 8: 8, 16, 32 channels

    # --pseudo-label 0.1: every test image is at least that sure (ten classes), so all ten join the second stage
    assert "pseudo-labels: 10 of 10 test images" in printed
    assert len(stages[1]["X_pool"]) == 160 + 10
    assert np.array_equal(stages[1]["X_pool"][160:], X_test)
    rows = pd.read_csv(results, sep="\t")
    first, second = rows[rows["idea"] == "tiny"], rows[rows["idea"] == "tiny + pseudo-labels 0.1"]
    assert len(first) == len(second) == 3 * 2 + 2 * 2 and len(rows) == 20  # 3 models, 2 ensembles; 2 TTAs
    first_total = sum(stages[0]["minutes"])  # what main was told the first stage cost: over 3 minutes
    assert (second["train_minutes"] >= round(first_total, 2)).all()
    assert np.allclose(second["train_minutes"], [round(own + first_total, 2) for own in stages[1]["row_minutes"]],
                       rtol=0, atol=1e-9)  # each row's own minutes plus the whole first stage's
    for stage in (first, second):
        for weights, tta in (("raw", "none"), ("raw", "shifts")):
            runs = stage[(stage["weights"] == weights) & (stage["tta"] == tta)]
            assert sorted(runs["models"]) == [1, 1, 1, 2, 3]
            assert set(runs[runs["models"] > 1]["seed"]) == {"1+2", "1+2+3"}
    assert np.allclose(first["train_minutes"], stages[0]["row_minutes"], rtol=0, atol=1e-9)  # the first: as they were


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
    experiments.main(["--idea", "tiny", "--data-dir", str(tmp_path), "--seeds", "1", "--epochs", "2", "--width", "8",
                      "--label-smoothing", "0.1", "--elastic", "34", "4", "--swa-from", "2", "--ema", "0.9",
                      "--snapshots", "1", "--pseudo-label", "0.1", "--results", str(tmp_path / "results.tsv")])

    [(code, before)] = namespaces
    after = notebook_state(code)
    changes = {"added": sorted(map(str, after.keys() - before.keys())),
               "removed": sorted(map(str, before.keys() - after.keys())),
               "replaced": sorted(str(key) for key in before.keys() & after.keys() if after[key] is not before[key])}
    assert changes == {"added": [], "removed": [], "replaced": []}
    assert len(given) == 2 and all(stage_code is code for stage_code, _ in given)
    recipe = given[0][1]
    assert given[1][1] is recipe and isinstance(recipe, code["Recipe"])
    assert (recipe.epochs, recipe.lr, recipe.batch_size) == (2, 3e-3, 100)
    assert recipe.make_model().head.in_features == 32 and recipe.loss_fn.label_smoothing == 0.1
    assert isinstance(recipe.train_epoch, experiments.WeightAverager)
    assert recipe.train_epoch.train_one_epoch is code["train_one_epoch"]  # it wraps the notebook's own loop
    assert recipe.augment is not code["mh"].random_affine  # the elastic distortion after the notebook's one
    default = code["Recipe"](epochs=1, lr=1e-3, batch_size=10)  # the notebook's Recipe, still as the notebook has it
    assert default.train_epoch is code["train_one_epoch"] and default.augment is code["mh"].random_affine
    assert default.make_model is code["StrongerCNN"] and default.loss_fn.label_smoothing == 0.0
