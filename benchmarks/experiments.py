#!/usr/bin/env python
"""Experiments behind docs/experiments.md: the "best" recipe's models, and ideas measured against them.

It trains models exactly as the notebook's RECIPE="best" does (its own Recipe, StrongerCNN, train_member and
train_one_epoch, read from digit_recognizer.ipynb), on the notebook's split (SEED, VALID_SIZE), one per --seeds value.
An idea changes one field of that Recipe (the network, the augmentation, the loss, the epoch function that averages
the weights), passed to train_member as an argument, so that the notebook is changed only for the ideas that pay.
Every model is scored on the same held-out validation images, alone and together, with its raw weights and (with
--swa-from, --ema, --snapshots) its averaged or kept ones, with and without a deterministic test-time pass over
one-pixel shifts. No test labels are read. Each result is appended to --results, with the date, the machine and the
command, so that docs/experiments.md's table and plot come from measured rows only.

    python benchmarks/experiments.py --idea baseline --seeds 43 44 45                     # about 13 min here
    python benchmarks/experiments.py --idea elastic --elastic 34 4 --swa-from 20 --seeds 43 44 45
    python benchmarks/experiments.py --report                                                # the table, from the TSV
"""

from __future__ import annotations

import argparse
import copy
import functools
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

REPO_DIR = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_DIR), str(REPO_DIR / "tools")]

from mnist_helpers import (
    choose_runtime,
    find_data_dir,
    get_device,
    load_test_csv,
    load_train_csv,
    predict_proba,
    random_affine,
    split_train_valid,
)
from notebook_cells import run_notebook_cells

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
    parser.add_argument("--epochs", type=int, default=25,
                        help="epochs per model (default: 25, the notebook's BEST_EPOCHS)")
    parser.add_argument("--lr", type=float, default=3e-3, help="one-cycle peak learning rate (default: 3e-3)")
    parser.add_argument("--split-seed", type=int, default=42, help="the notebook's SEED, for the split (default: 42)")
    parser.add_argument("--train-rows", type=int, help="use only the first N rows of train.csv (default: all)")
    parser.add_argument("--elastic", type=float, nargs=2, metavar=("ALPHA", "SIGMA"),
                        help="add an elastic distortion after the affine one (default: none; Simard's is 34 4)")
    parser.add_argument("--label-smoothing", type=float, default=0.0, help="for the training loss (default: 0)")
    parser.add_argument("--swa-from", type=int, help="also average the weights of this epoch and every later one "
                                                     "(SWA), BatchNorm statistics recomputed after (default: off)")
    parser.add_argument("--ema", type=float, metavar="DECAY",
                        help="also keep an exponential moving average of the weights, updated after every step, "
                             "BatchNorm statistics recomputed after (default: off; e.g. 0.999)")
    parser.add_argument("--snapshots", type=int, nargs="+", default=[], metavar="EPOCH",
                        help="also score each model's copies after these epochs, averaged with the last one "
                             "(a snapshot ensemble from one run; default: none)")
    parser.add_argument("--width", type=int, default=32, help="StrongerCNN's first block's channels; the second "
                                                             "and third get 2x and 4x (default: 32, Deotte's)")
    parser.add_argument("--train-fraction", type=float, default=1.0,
                        help="train on a random share of the training split, on the same validation images: "
                             "0.8 against 1.0 measures what 25%% more rows (the final fit's) are worth (default: 1)")
    parser.add_argument("--pseudo-label", type=float, metavar="CONFIDENCE",
                        help="then train the same seeds again with the test images that the first ensemble gives "
                             "at least this probability, under its labels (default: off; e.g. 0.999)")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"append results here (default: {RESULTS.name})")
    parser.add_argument("--report", action="store_true", help="print the summary of --results and stop")
    return parser.parse_args(argv)


def elastic_distort(images: torch.Tensor, alpha: float = 34.0, sigma: float = 4.0,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Simard et al.'s (2003) elastic distortion of (B, 1, H, W) images: a random field, Gaussian-smoothed, applied."""
    batch, _, height, width = images.shape
    # One uniform draw in [-1, 1) per pixel and axis, on the CPU so that a CPU generator can seed it: (B, 2, H, W).
    field = (torch.rand(batch, 2, height, width, generator=generator) * 2 - 1).to(images.device, images.dtype)
    radius = max(1, int(3 * sigma))
    taps = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-taps**2 / (2 * sigma**2))
    kernel = kernel / kernel.sum()  # (2r+1,): a Gaussian that keeps the field's mean
    # Smooth along rows, then columns (separable), each axis of the field on its own (groups=2): neighbours move
    # together, so strokes bend instead of breaking up.
    field = F.conv2d(field, kernel.view(1, 1, 1, -1).expand(2, 1, 1, -1), padding=(0, radius), groups=2)
    field = F.conv2d(field, kernel.view(1, 1, -1, 1).expand(2, 1, -1, 1), padding=(radius, 0), groups=2)
    # alpha scales the field to pixels; grid_sample's grid spans [-1, 1] across the image, so a pixel is 2 / size.
    to_grid = torch.tensor([2 / width, 2 / height], device=images.device, dtype=images.dtype).view(1, 2, 1, 1)
    identity = torch.eye(2, 3, device=images.device, dtype=images.dtype).expand(batch, 2, 3)
    grid = F.affine_grid(identity, list(images.shape), align_corners=False)  # (B, H, W, 2): each pixel's own place
    grid = grid + (alpha * field * to_grid).permute(0, 2, 3, 1)               # moved by the smoothed field
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


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
    """Wraps the notebook's train_one_epoch: keeps an SWA of the weights from epoch `start` on, an EMA updated after
    every optimizer step, and copies of the model after the chosen epochs."""

    def __init__(self, train_one_epoch, start: int | None, ema_decay: float | None = None,
                 snapshot_epochs: list[int] | tuple[int, ...] = ()):
        """start=None, ema_decay=None and no snapshot epochs keep nothing."""
        self.train_one_epoch, self.start, self.ema_decay = train_one_epoch, start, ema_decay
        self.snapshot_epochs = set(snapshot_epochs)
        self.new_model()

    def new_model(self) -> None:
        """Forget the previous model's averages and copies."""
        self.epoch, self.averaged, self.ema, self.snapshots, self.loader = 0, None, None, [], None

    def __call__(self, model, loader, loss_fn=None, optimizer=None, *args, **kwargs):
        """One epoch, as the notebook's; the EMA follows every step, then the SWA and the copies are updated."""
        if self.ema_decay is not None and self.ema is None:  # the model's first epoch: follow its optimizer's steps
            ema = self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(self.ema_decay))
            optimizer.register_step_post_hook(lambda *_: ema.update_parameters(model))
        result = self.train_one_epoch(model, loader, *(() if loss_fn is None else (loss_fn, optimizer)),
                                      *args, **kwargs)
        self.epoch += 1
        self.loader = loader
        if self.start is not None and self.epoch >= self.start:
            if self.averaged is None:
                self.averaged = AveragedModel(model)  # a copy; equal weights per epoch (SWA)
            self.averaged.update_parameters(model)
        if self.epoch in self.snapshot_epochs:
            self.snapshots.append(copy.deepcopy(model))
        return result

    def finished(self) -> nn.Module | None:
        """The averaged model, with BatchNorm statistics recomputed on the training images (no augmentation)."""
        if self.averaged is None:
            return None
        update_bn(self.loader, self.averaged)
        return self.averaged.module

    def weights(self, model: nn.Module) -> dict[str, list[nn.Module]]:
        """Every version of the model to score: its raw weights, the SWA, the EMA, and the snapshots with the last."""
        versions = {"raw": [model]}
        if self.averaged is not None:
            versions["swa"] = [self.finished()]
        if self.ema is not None:
            update_bn(self.loader, self.ema)  # its BatchNorm statistics, measured with its own weights
            versions["ema"] = [self.ema.module]
        if self.snapshots:
            versions["snapshots"] = [*self.snapshots, model]
        return versions


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
    """Per machine and idea: mean ± sd of the single models and the largest ensemble, each version, with(out) TTA."""
    frame = pd.read_csv(path, sep="\t")
    keys = ["machine", "idea", "weights", "tta"]
    single = frame[frame["models"] == 1].groupby(keys)
    table = single["valid_acc"].agg(["mean", "std", "count"])
    table[["mean", "std"]] = (100 * table[["mean", "std"]]).round(3)  # percent
    table["minutes_per_model"] = single["train_minutes"].mean().round(1)
    ensembles = frame[frame["models"] > 1].sort_values("models").groupby(keys).last()  # all of a run's models
    table["ensemble_of"] = ensembles["models"].reindex(table.index)
    table["ensemble"] = (100 * ensembles["valid_acc"]).round(2).reindex(table.index)
    table["ensemble_mistakes"] = ensembles["mistakes"].reindex(table.index)
    table["ensemble_minutes"] = ensembles["train_minutes"].reindex(table.index)
    return table.reset_index()


def result(base: dict, seed: str, models: int, weights: str, tta: str, proba: np.ndarray, y_valid: np.ndarray,
           minutes: float) -> dict:
    """One row of the results file: how many of the validation images these probabilities get wrong."""
    wrong = int((proba.argmax(1) != y_valid).sum())
    return {**base, "seed": seed, "models": models, "weights": weights, "tta": tta,
            "valid_acc": 1 - wrong / len(y_valid), "mistakes": wrong, "train_minutes": round(minutes, 2)}


def train_and_score(code: dict, recipe, averager: WeightAverager, seeds: list[int], X_pool: np.ndarray,
                    y_pool: np.ndarray, X_valid: np.ndarray, y_valid: np.ndarray, fast, output_dir: Path, base: dict
                    ) -> tuple[list[dict], list[nn.Module], list[float]]:
    """One model per seed, as the notebook trains them; each version scored alone, and the first k models together."""
    probas: dict[tuple[str, str], list[np.ndarray]] = {}
    rows, models, minutes = [], [], []
    for seed in seeds:
        averager.new_model()
        model, history = code["train_member"](seed, recipe, X_pool, y_pool, X_valid, y_valid, fast, output_dir,
                                              resume=False, progress="lines")
        models.append(model)
        minutes.append(history["seconds"].sum() / 60)
        for weights, versions in averager.weights(model).items():
            for tta, predict in (("none", lambda m: predict_proba(m, X_valid, fast)),
                                 ("shifts", lambda m: shift_tta_proba(m, X_valid, fast))):
                proba = np.mean([predict(version) for version in versions], axis=0)  # (N_valid, 10)
                probas.setdefault((weights, tta), []).append(proba)
                rows.append(result(base, str(seed), 1, weights, tta, proba, y_valid, minutes[-1]))
                print(f"  seed {seed}, {weights} weights, TTA {tta}: {100 * rows[-1]['valid_acc']:.2f}% "
                      f"({rows[-1]['mistakes']} mistakes), {minutes[-1]:.1f} min", flush=True)
    for k in range(2, len(seeds) + 1):  # ensembles of the first 2, 3, ... models: accuracy against minutes
        for (weights, tta), runs in probas.items():
            rows.append(result(base, "+".join(map(str, seeds[:k])), k, weights, tta, np.mean(runs[:k], axis=0),
                               y_valid, sum(minutes[:k])))
            if k == len(seeds):
                print(f"  ensemble of {k}, {weights} weights, TTA {tta}: {100 * rows[-1]['valid_acc']:.2f}% "
                      f"({rows[-1]['mistakes']} mistakes)", flush=True)
    return rows, models, minutes


def main(argv: list[str] | None = None) -> None:
    """Train the models, score them every way, print and record the results."""
    args = parse_args(argv)
    if args.report:
        print(report(args.results).to_string(index=False))
        return
    command = shlex.join(["python", "benchmarks/experiments.py", *(sys.argv[1:] if argv is None else argv)])
    device = get_device()
    fast = choose_runtime(device)
    data_dir = find_data_dir(args.data_dir)
    X_all, y_all = load_train_csv(data_dir / "train.csv", max_rows=args.train_rows)
    X_train, X_valid, y_train, y_valid = split_train_valid(X_all, y_all, 0.2, args.split_seed)
    if args.train_fraction < 1:  # fewer training rows, the same validation images
        order = np.random.default_rng(args.split_seed).permutation(len(X_train))
        keep = order[:int(args.train_fraction * len(X_train))]
        X_train, y_train = X_train[keep], y_train[keep]

    code = run_notebook_cells(NOTEBOOK, "imports", "model", "train-loop", "model-best", "best-recipe")
    scratch = tempfile.TemporaryDirectory(prefix="experiments-")  # train_member's checkpoints
    averager = WeightAverager(code["train_one_epoch"], args.swa_from, args.ema, args.snapshots)
    augment = random_affine
    if args.elastic:  # the notebook's augmentation, then an elastic distortion drawn from the same generator
        alpha, sigma = args.elastic

        def augment(xb: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
            return elastic_distort(random_affine(xb, generator=generator), alpha, sigma, generator=generator)

    # The notebook's Recipe with this run's changes, each passed as an argument: nothing of the notebook is replaced.
    recipe = code["Recipe"](epochs=args.epochs, lr=args.lr, batch_size=100,
                            make_model=functools.partial(code["StrongerCNN"], width=args.width), augment=augment,
                            loss_fn=nn.CrossEntropyLoss(label_smoothing=args.label_smoothing), train_epoch=averager)
    when, where = time.strftime("%Y-%m-%d"), machine()
    print(f"{when}: {args.idea}: {len(args.seeds)} models x {args.epochs} epochs on {device} ({where}, torch "
          f"{torch.__version__}), {len(X_train)} training / {len(X_valid)} validation rows from {data_dir}", flush=True)
    base = {"date": when, "machine": where, "device": device.type, "idea": args.idea, "epochs": args.epochs,
            "command": command}
    rows, models, minutes = train_and_score(code, recipe, averager, args.seeds, X_train, y_train, X_valid, y_valid,
                                            fast, Path(scratch.name), base)

    if args.pseudo_label is not None:  # stage 2: the test images the first ensemble is surest of, under its labels
        X_test = load_test_csv(data_dir / "test.csv")
        test_proba = np.mean([predict_proba(model, X_test, fast) for model in models], axis=0)  # (M, 10)
        sure = test_proba.max(axis=1) >= args.pseudo_label
        print(f"pseudo-labels: {sure.sum()} of {len(X_test)} test images at probability >= {args.pseudo_label:g}",
              flush=True)
        X_more, y_more = np.concatenate([X_train, X_test[sure]]), np.concatenate([y_train, test_proba[sure].argmax(1)])
        more, _, _ = train_and_score(code, recipe, averager, args.seeds, X_more, y_more.astype(y_train.dtype),
                                     X_valid, y_valid, fast, Path(scratch.name),
                                     {**base, "idea": f"{args.idea} + pseudo-labels {args.pseudo_label:g}"})
        for row in more:
            row["train_minutes"] = round(row["train_minutes"] + sum(minutes), 2)  # the first stage's cost too
        rows += more
    columns = ["date", "machine", "device", "idea", "seed", "models", "epochs", "weights", "tta", "valid_acc",
               "mistakes", "train_minutes", "command"]
    record([{column: row[column] for column in columns} for row in rows], args.results)
    print(f"appended {len(rows)} rows to {args.results}")


if __name__ == "__main__":
    main()
