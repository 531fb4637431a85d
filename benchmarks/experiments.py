#!/usr/bin/env python
"""Experiments behind README's "Experiments" table: the "best" recipe's models, and ideas measured against them.

It trains models exactly as the notebook's RECIPE="best" does (its own StrongerCNN, train_member and train_one_epoch,
read from digit_recognizer.ipynb), on the notebook's split (SEED, VALID_SIZE), one per --seeds value. An idea changes
one piece of that recipe from outside (the augmentation, the loss, weight averaging) so that the notebook is changed
only for the ideas that pay. Every model is scored on the same held-out validation images, alone and together,
with its raw weights and (with --swa-from) its averaged ones, with and without a deterministic test-time pass over
one-pixel shifts. No test labels are read. Each result is appended to --results, with the date, the machine and the
command, so that the README's table and plot come from measured rows only.

    python benchmarks/experiments.py --idea baseline --seeds 43 44 45                     # about 13 min here
    python benchmarks/experiments.py --idea elastic --elastic 34 4 --swa-from 20 --seeds 43 44 45
    python benchmarks/experiments.py --report                                                # the table, from the TSV
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn

REPO_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_DIR))

from mnist_helpers import (choose_fast_path, csv_path, device_facts, elastic_distort, find_data_dir,  # noqa: E402
                           get_device, load_train_csv, predict_proba, random_affine, run_notebook_cells,
                           split_train_valid)

NOTEBOOK = REPO_DIR / "digit_recognizer.ipynb"
RESULTS = REPO_DIR / "benchmarks" / "experiments.tsv"  # tab-separated: results, not data
SHIFTS = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]  # (dx, dy) in pixels: the image itself and four 1-pixel shifts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; every default is in the help."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idea", default="baseline", help="the name this run's rows get (default: baseline)")
    parser.add_argument("--data-dir", help="folder with train.csv (default: as the notebook searches, $DATA_DIR first)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[43, 44, 45],
                        help="one model per seed (default: 43 44 45, the notebook's SEED + 1, 2, 3)")
    parser.add_argument("--epochs", type=int, default=25, help="epochs per model (default: 25, the notebook's BEST_EPOCHS)")
    parser.add_argument("--lr", type=float, default=3e-3, help="one-cycle peak learning rate (default: 3e-3)")
    parser.add_argument("--split-seed", type=int, default=42, help="the notebook's SEED, for the split (default: 42)")
    parser.add_argument("--train-rows", type=int, help="use only the first N rows of train.csv (default: all)")
    parser.add_argument("--elastic", type=float, nargs=2, metavar=("ALPHA", "SIGMA"),
                        help="add an elastic distortion after the affine one (default: none; Simard's is 34 4)")
    parser.add_argument("--label-smoothing", type=float, default=0.0, help="for the training loss (default: 0)")
    parser.add_argument("--swa-from", type=int, help="also average the weights of this epoch and every later one "
                                                     "(SWA), BatchNorm statistics recomputed after (default: off)")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"append results here (default: {RESULTS.name})")
    parser.add_argument("--report", action="store_true", help="print the summary of --results and stop")
    return parser.parse_args(argv)


def shifted(images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """(B, 1, H, W) images moved dx pixels right and dy down, zeros shifted in."""
    padded = F.pad(images, (1, 1, 1, 1))  # one pixel of zeros on every side: (B, 1, H + 2, W + 2)
    height, width = images.shape[-2:]
    return padded[..., 1 - dy:1 - dy + height, 1 - dx:1 - dx + width]


def shift_tta_proba(model: nn.Module, X: np.ndarray, fast) -> np.ndarray:
    """Mean softmax (N, 10) over the image and its four one-pixel shifts: a deterministic test-time pass."""
    return np.mean([predict_proba(model, X, fast, transform=lambda xb, dx=dx, dy=dy: shifted(xb, dx, dy))
                    for dx, dy in SHIFTS], axis=0)


class WeightAverager:
    """Wraps the notebook's train_one_epoch: after each epoch from `start` on, adds the model's weights to its SWA."""

    def __init__(self, train_one_epoch, start: int | None):
        """start=None averages nothing."""
        self.train_one_epoch, self.start = train_one_epoch, start
        self.epoch, self.averaged, self.loader = 0, None, None

    def new_model(self) -> None:
        """Forget the previous model's average."""
        self.epoch, self.averaged, self.loader = 0, None, None

    def __call__(self, model, loader, *args, **kwargs):
        """One epoch, as the notebook's; then the average is updated."""
        result = self.train_one_epoch(model, loader, *args, **kwargs)
        self.epoch += 1
        if self.start is not None and self.epoch >= self.start:
            if self.averaged is None:
                self.averaged = AveragedModel(model)  # a copy; equal weights per epoch (SWA)
            self.averaged.update_parameters(model)
            self.loader = loader
        return result

    def finished(self) -> nn.Module | None:
        """The averaged model, with BatchNorm statistics recomputed on the training images (no augmentation)."""
        if self.averaged is None:
            return None
        update_bn(self.loader, self.averaged)
        return self.averaged.module


def machine() -> str:
    """The CPU's model name and core count, or the GPU's name."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpuinfo = Path("/proc/cpuinfo")  # Linux; elsewhere platform.processor() says what it can
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor())
    return f"{name}, {torch.get_num_threads()} threads"


def record(rows: list[dict], path: Path) -> None:
    """Append rows to the tab-separated results file (created with its header the first time)."""
    frame = pd.DataFrame(rows)
    frame.to_csv(path, mode="a", header=not path.exists(), index=False, sep="\t")


def report(path: Path) -> pd.DataFrame:
    """Per idea: mean ± sd of the single models, and the ensemble, raw and averaged, with and without TTA."""
    frame = pd.read_csv(path, sep="\t")
    single = frame[frame["models"] == 1].groupby(["idea", "weights", "tta"])
    table = single["valid_acc"].agg(["mean", "std", "count"])
    table[["mean", "std"]] = (100 * table[["mean", "std"]]).round(3)  # percent
    table["minutes_per_model"] = single["train_minutes"].mean().round(1)
    ensembles = frame[frame["models"] > 1].set_index(["idea", "weights", "tta"])
    table["ensemble"] = (100 * ensembles["valid_acc"]).round(2).reindex(table.index)
    table["ensemble_mistakes"] = ensembles["mistakes"].reindex(table.index)
    return table.reset_index()


def main(argv: list[str] | None = None) -> None:
    """Train the models, score them every way, print and record the results."""
    args = parse_args(argv)
    if args.report:
        print(report(args.results).to_string(index=False))
        return
    command = "python benchmarks/experiments.py " + " ".join(sys.argv[1:] if argv is None else argv)
    device = get_device()
    fast = choose_fast_path(device)
    data_dir = find_data_dir(args.data_dir)
    X_all, y_all = load_train_csv(csv_path(data_dir, "train.csv"), max_rows=args.train_rows)
    X_train, X_valid, y_train, y_valid = split_train_valid(X_all, y_all, 0.2, args.split_seed)

    code = run_notebook_cells(NOTEBOOK, "imports", "model", "train-loop", "model-best", "best-recipe")
    scratch = tempfile.TemporaryDirectory(prefix="experiments-")  # train_member's checkpoints
    averager = WeightAverager(code["train_one_epoch"], args.swa_from)
    code.update(BATCH_SIZE=100, BEST_LR=args.lr, PROGRESS="lines", fast=fast, SEED=args.split_seed, VALID_SIZE=0.2,
                TRAIN_ROWS=args.train_rows, FAST=True, RESUME=False, facts=device_facts(device),
                output_dir=Path(scratch.name), train_one_epoch=averager,
                loss_fn=nn.CrossEntropyLoss(label_smoothing=args.label_smoothing))
    if args.elastic:  # the notebook's augmentation, then an elastic distortion drawn from the same generator
        alpha, sigma = args.elastic
        code["random_affine"] = lambda xb, generator=None: elastic_distort(
            random_affine(xb, generator=generator), alpha, sigma, generator=generator)
    when, where = time.strftime("%Y-%m-%d"), machine()
    print(f"{when}: {args.idea}: {len(args.seeds)} models x {args.epochs} epochs on {device} ({where}, torch "
          f"{torch.__version__}), {len(X_train)} training / {len(X_valid)} validation rows from {data_dir}", flush=True)

    probas: dict[tuple[str, str], list[np.ndarray]] = {}
    rows, minutes = [], []
    for seed in args.seeds:
        averager.new_model()
        model, history = code["train_member"](seed, X_train, y_train, args.epochs, X_valid, y_valid)
        minutes.append(history["seconds"].sum() / 60)
        for weights, scored in (("raw", model), ("swa", averager.finished())):
            if scored is None:
                continue
            for tta, proba in (("none", predict_proba(scored, X_valid, fast)),
                               ("shifts", shift_tta_proba(scored, X_valid, fast))):
                probas.setdefault((weights, tta), []).append(proba)
                wrong = int((proba.argmax(1) != y_valid).sum())
                rows.append({"date": when, "machine": where, "idea": args.idea, "seed": seed, "models": 1,
                             "epochs": args.epochs, "weights": weights, "tta": tta, "valid_acc": 1 - wrong / len(y_valid),
                             "mistakes": wrong, "train_minutes": round(minutes[-1], 2), "command": command})
                print(f"  seed {seed}, {weights} weights, TTA {tta}: {100 * rows[-1]['valid_acc']:.2f}% "
                      f"({wrong} mistakes), {minutes[-1]:.1f} min", flush=True)
    if len(args.seeds) > 1:
        for (weights, tta), runs in probas.items():
            wrong = int((np.mean(runs, axis=0).argmax(1) != y_valid).sum())
            rows.append({"date": when, "machine": where, "idea": args.idea, "seed": "+".join(map(str, args.seeds)),
                         "models": len(args.seeds), "epochs": args.epochs, "weights": weights, "tta": tta,
                         "valid_acc": 1 - wrong / len(y_valid), "mistakes": wrong,
                         "train_minutes": round(sum(minutes), 2), "command": command})
            print(f"  ensemble of {len(args.seeds)}, {weights} weights, TTA {tta}: {100 * rows[-1]['valid_acc']:.2f}% "
                  f"({wrong} mistakes)", flush=True)
    record(rows, args.results)
    print(f"appended {len(rows)} rows to {args.results}")


if __name__ == "__main__":
    main()
