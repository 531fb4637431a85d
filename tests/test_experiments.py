"""benchmarks/experiments.py: the pieces it adds to the notebook's recipe, and one tiny run end to end."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import torch
from conftest import REPO_DIR, learnable_digits, write_test_csv, write_train_csv
from torch import nn

sys.path.insert(0, str(REPO_DIR / "benchmarks"))
import experiments  # noqa: E402


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
