#!/usr/bin/env python
"""Experiments behind docs/experiments.md: the "best" recipe, and ideas measured against it by out-of-fold accuracy.

It trains models exactly as the notebook's RECIPE="best" does: its own Recipe, StrongerCNN, train_member,
train_kfold and train_one_epoch, read from digit_recognizer.ipynb, K-fold over every row of train.csv (--folds,
--rounds, --seed as the notebook's FOLDS, ROUNDS, SEED). An idea changes one field of that Recipe (the network, the
augmentation, the loss, the schedule, the epoch function that averages the weights), passed as an argument, so that
the notebook is changed only for the ideas that pay. Each version of the models (raw weights; with --swa-from,
--ema, --snapshots the averaged or kept ones; with --shift-tta also a deterministic pass over one-pixel shifts) is
scored out of fold: every row by the model that never saw it, over all 42,000 rows, with its standard error.

Ideas are compared in pairs: with the same --folds, --rounds and --seed, two runs use the same folds and the same
seeds, so each row's right-or-wrong can be compared, and --against NAME prints and records the difference in
out-of-fold accuracy from that run's raw weights, with the difference's own (paired) standard error. Each run keeps
its rows' predictions in --oof-dir (ignored by git: derived from the data), and appends its results to --results
with the date, the machine and the command. No test labels are read.

    python benchmarks/experiments.py --idea recipe                                   # about 30 min here
    python benchmarks/experiments.py --idea "no dropout" --dropout 0 --against recipe
    python benchmarks/experiments.py --idea "recorded run" --from-run output/figures --against recipe
    python benchmarks/experiments.py --report                                        # the tables, from the TSV
"""

from __future__ import annotations

import argparse
import copy
import functools
import platform
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

REPO_DIR = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_DIR), str(REPO_DIR / "tools")]

from mnist_helpers import (
    accuracy_with_error,
    choose_runtime,
    choose_workers,
    find_data_dir,
    get_device,
    kfold_plan,
    load_train_csv,
    predict_proba,
    random_affine,
)
from notebook_cells import run_notebook_cells

NOTEBOOK = REPO_DIR / "digit_recognizer.ipynb"
RESULTS = REPO_DIR / "benchmarks" / "experiments.tsv"  # tab-separated: results, not data
OOF_DIR = REPO_DIR / "benchmarks" / "oof"  # per run, each row's right-or-wrong: derived from the data, never committed
COLUMNS = ["date", "machine", "device", "idea", "kind", "seed", "models", "folds", "epochs", "weights", "tta",
           "images", "valid_acc", "std_error", "mistakes", "vs", "diff", "diff_std_error", "train_minutes", "workers",
           "wall_minutes", "command"]
SHIFTS = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]  # (dx, dy) in pixels: the image itself and four 1-pixel shifts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; every default is in the help."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idea", default="baseline", help="the name this run's rows get (default: baseline)")
    parser.add_argument("--against", metavar="IDEA",
                        help="compare with that recorded run's raw weights, row by row (default: none)")
    parser.add_argument("--data-dir", help="folder with train.csv (default: as the notebook searches, $DATA_DIR first)")
    parser.add_argument("--folds", type=int, default=5, help="K, the notebook's FOLDS (default: 5)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of K models, the notebook's ROUNDS (default: 1)")
    parser.add_argument("--seed", type=int, default=42,
                        help="the notebook's SEED: round r's folds use seed + r, model k seed + k (default: 42)")
    parser.add_argument("--epochs", type=int, default=30,
                        help="epochs per model (default: 30, the notebook's BEST_EPOCHS; 25 before 2026-12-06)")
    parser.add_argument("--lr", type=float, default=3e-3,
                        help="the schedule's peak (one-cycle) or starting (decay) learning rate (default: 3e-3)")
    parser.add_argument("--batch-size", type=int, default=100, help="images per step (default: 100)")
    parser.add_argument("--workers", type=workers_count, default="auto",
                        help="models trained at once, the notebook's WORKERS: 'auto' or a count; averaged weights "
                             "(--swa-from, --ema, --snapshots) need 1 (default: auto)")
    parser.add_argument("--decay", type=float, metavar="FACTOR",
                        help="instead of one-cycle, multiply the learning rate by FACTOR after every epoch, as "
                             "Deotte's kernel does with 0.95 (default: one-cycle)")
    parser.add_argument("--train-rows", type=int, help="use only the first N rows of train.csv (default: all)")
    parser.add_argument("--width", type=int, default=32, help="StrongerCNN's first block's channels; the second "
                                                             "and third get 2x and 4x (default: 32, Deotte's)")
    parser.add_argument("--dropout", type=float, default=0.4, help="StrongerCNN's dropout (default: 0.4)")
    parser.add_argument("--elastic", type=float, nargs=2, metavar=("ALPHA", "SIGMA"),
                        help="add an elastic distortion after the affine one (default: none; Simard's is 34 4)")
    parser.add_argument("--label-smoothing", type=float, default=0.1,
                        help="for the training loss, as the notebook's Recipe (default: 0.1; 0 before 2026-12-06)")
    parser.add_argument("--swa-from", type=int, help="also average the weights of this epoch and every later one "
                                                     "(SWA), BatchNorm statistics recomputed after (default: off)")
    parser.add_argument("--ema", type=float, metavar="DECAY",
                        help="also keep an exponential moving average of the weights, updated after every step, "
                             "BatchNorm statistics recomputed after (default: off; e.g. 0.999)")
    parser.add_argument("--snapshots", type=int, nargs="+", default=[], metavar="EPOCH",
                        help="also score each model's copies after these epochs, averaged with the last one "
                             "(a snapshot ensemble from one run; default: none)")
    parser.add_argument("--shift-tta", action="store_true",
                        help="also score every version with a pass over one-pixel shifts (default: off)")
    parser.add_argument("--oof-dir", type=Path, default=OOF_DIR,
                        help=f"each run's out-of-fold right-or-wrong, for --against (default: {OOF_DIR.name}/)")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"append results here (default: {RESULTS.name})")
    parser.add_argument("--from-run", type=Path, metavar="DIR",
                        help="train nothing: record a RECIPE=\"best\" notebook run (ROUNDS=1) from the oof.csv and "
                             "experiments.csv it wrote in DIR, e.g. output/figures, with --folds and --seed as its "
                             "FOLDS and SEED (default: train)")
    parser.add_argument("--report", action="store_true", help="print the summary of --results and stop")
    return parser.parse_args(argv)


def workers_count(text: str) -> int | str:
    """--workers: 'auto', or a whole number of 1 or more."""
    if text == "auto" or (text.isdigit() and int(text) >= 1):
        return text if text == "auto" else int(text)
    raise argparse.ArgumentTypeError(f"'auto' or a whole number of 1 or more, not {text!r}")


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
        """Forget every model's averages and copies."""
        self.kept: dict[int, SimpleNamespace] = {}  # per model (by id): its epochs, SWA, EMA, copies, loader

    def _of(self, model: nn.Module) -> SimpleNamespace:
        """What is kept for this model: each model of a K-fold run has its own, from its first epoch."""
        return self.kept.setdefault(id(model), SimpleNamespace(model=model, epoch=0, averaged=None, ema=None,
                                                               snapshots=[], loader=None))

    def __call__(self, model, loader, loss_fn=None, optimizer=None, *args, **kwargs):
        """One epoch, as the notebook's; the EMA follows every step, then the SWA and the copies are updated."""
        kept = self._of(model)
        if self.ema_decay is not None and kept.ema is None:  # the model's first epoch: follow its optimizer's steps
            ema = kept.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(self.ema_decay))
            optimizer.register_step_post_hook(lambda *_: ema.update_parameters(model))
        result = self.train_one_epoch(model, loader, *(() if loss_fn is None else (loss_fn, optimizer)),
                                      *args, **kwargs)
        kept.epoch += 1
        kept.loader = loader
        if self.start is not None and kept.epoch >= self.start:
            if kept.averaged is None:
                kept.averaged = AveragedModel(model)  # a copy; equal weights per epoch (SWA)
            kept.averaged.update_parameters(model)
        if kept.epoch in self.snapshot_epochs:
            kept.snapshots.append(copy.deepcopy(model))
        return result

    def finished(self, model: nn.Module | None = None) -> nn.Module | None:
        """The (last, or this) model's SWA, with BatchNorm statistics recomputed on its training images."""
        kept = self._of(model) if model is not None else (list(self.kept.values()) or [None])[-1]
        if kept is None or kept.averaged is None:
            return None
        update_bn(kept.loader, kept.averaged)
        return kept.averaged.module

    def weights(self, model: nn.Module) -> dict[str, list[nn.Module]]:
        """Every version of the model to score: its raw weights, the SWA, the EMA, and the snapshots with the last."""
        kept = self.kept.get(id(model))
        versions = {"raw": [model]}
        if kept is None:
            return versions
        if kept.averaged is not None:
            versions["swa"] = [self.finished(model)]
        if kept.ema is not None:
            update_bn(kept.loader, kept.ema)  # its BatchNorm statistics, measured with its own weights
            versions["ema"] = [kept.ema.module]
        if kept.snapshots:
            versions["snapshots"] = [*kept.snapshots, model]
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


def exponential_decay(factor: float):
    """A Recipe schedule: the learning rate times factor ** epoch, stepped every batch as the notebook steps it."""
    def schedule(optimizer, max_lr: float, epochs: int, steps_per_epoch: int):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: factor ** (step // steps_per_epoch))
    return schedule


def record(rows: list[dict], path: Path) -> None:
    """Append rows to the tab-separated results file, its columns widened to COLUMNS if it is older."""
    frame = pd.DataFrame(rows).reindex(columns=COLUMNS)
    if path.exists():
        frame = pd.concat([pd.read_csv(path, sep="\t").reindex(columns=COLUMNS), frame], ignore_index=True)
    frame.to_csv(path, index=False, sep="\t")


def report(path: Path) -> pd.DataFrame:
    """Per machine and idea, the K-fold runs' out-of-fold accuracy, then the earlier runs' validation figures."""
    frame = pd.read_csv(path, sep="\t")
    kfold = frame[frame.get("kind", pd.Series(index=frame.index, dtype=object)).isin(["oof", "oof-avg"])]
    columns = ["machine", "idea", "weights", "tta", "kind", "folds", "models", "images", "valid_acc", "std_error",
               "mistakes", "vs", "diff", "diff_std_error", "train_minutes", "workers", "wall_minutes"]
    table = kfold.reindex(columns=columns).copy()
    for column in ("valid_acc", "std_error", "diff", "diff_std_error"):
        table[column] = (100 * table[column]).round(3)  # percent, percentage points
    return table.reset_index(drop=True)


def validation_report(path: Path) -> pd.DataFrame:
    """The earlier runs (one validation split): mean ± sd of the single models, and the largest ensemble."""
    frame = pd.read_csv(path, sep="\t")
    if "kind" in frame:
        frame = frame[frame["kind"].isna()]
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


def scored(base: dict, kind: str, seed: str, models: int, weights: str, tta: str, right: np.ndarray,
           minutes: float) -> dict:
    """One row of the results file, from which of its images were predicted right (a bool array)."""
    accuracy, wrong, error = accuracy_with_error(np.ones_like(right), right)  # right answers against all-right
    return {**base, "kind": kind, "seed": seed, "models": models, "weights": weights, "tta": tta,
            "images": len(right), "valid_acc": accuracy, "mistakes": wrong, "std_error": error,
            "train_minutes": round(minutes, 2)}


def paired_difference(right: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the per-row difference in right answers (N,), each averaged over its rounds."""
    difference = right.astype(float) - other.astype(float)  # (N,), each in [-1, 1]
    return float(difference.mean()), float(difference.std(ddof=1) / np.sqrt(len(difference)))


def oof_file(oof_dir: Path, idea: str) -> Path:
    """Where a run's out-of-fold right-or-wrong is kept, by its idea's name."""
    return oof_dir / (re.sub(r"[^A-Za-z0-9.=-]+", "_", idea).strip("_") + ".npz")


def load_against(oof_dir: Path, idea: str, y: np.ndarray, fold_of: np.ndarray) -> dict[str, np.ndarray]:
    """The recorded run's right-or-wrong per row (R, N) for each version, if it used these rows and folds."""
    path = oof_file(oof_dir, idea)
    if not path.is_file():
        raise SystemExit(f"--against {idea!r}: no {path}; run that idea first, with the same --folds, --rounds "
                         "and --seed.")
    kept = {key: value for key, value in np.load(path).items() if not key.startswith(("proba-", "avg-"))}
    if not (np.array_equal(kept.pop("labels"), y) and np.array_equal(kept.pop("fold_of"), fold_of)):
        raise SystemExit(f"--against {idea!r}: {path} was made on other rows or folds; run both with the same "
                         "--folds, --rounds, --seed and --train-rows.")
    return kept


def train_and_score(code: dict, recipe, averager: WeightAverager, args: argparse.Namespace, X: np.ndarray,
                    y: np.ndarray, runtime, output_dir: Path, base: dict
                    ) -> tuple[list[dict], dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]:
    """K-fold as the notebook trains it; each version scored on every model's own fold, then out of fold. Returns the
    rows, each version's right-or-wrong (R, N), the folds (R, N), and more to keep: each version's probabilities
    (R, N, 10) and, with R > 1, its right-or-wrong by the average of the R models (N,)."""
    averager.new_model()
    plan = kfold_plan(y, args.folds, args.rounds, args.seed)
    started = time.perf_counter()
    # As the notebook's WORKERS; with 1, in this process, one model after another, where the averager keeps each
    # model's averaged weights.
    workers = choose_workers(args.workers, runtime, len(plan), recipe.make_model, recipe.batch_size)
    print(workers.describe(), flush=True)
    kfold = code["train_kfold"](recipe, X, y, plan, runtime, output_dir, workers, progress="lines")
    wall = (time.perf_counter() - started) / 60  # what the user waits: choosing the workers, then every model
    base = {**base, "workers": len(workers.devices)}
    models = list(kfold["model"])
    minutes = list(kfold["seconds"] / 60)
    fold_of = np.stack([sum((m.fold - 1) * m.held_out for m in plan if m.round == r + 1) for r in range(args.rounds)])
    passes = [("none", lambda m, X_: predict_proba(m, X_, runtime))]
    if args.shift_tta:
        passes.append(("shifts", lambda m, X_: shift_tta_proba(m, X_, runtime)))
    rows, right = [], {}  # right[(weights, tta)]: (R, N) bool, each row by the round's model that never saw it
    probas = {}  # the same keys: (R, N, 10), each row's probabilities from the round's model that never saw it
    for k, (model, member) in enumerate(zip(models, plan)):
        r, held_out, name = member.round - 1, member.held_out, member.name
        for weights, versions in averager.weights(model).items():
            for tta, predict in passes:
                proba = np.mean([predict(version, X[held_out]) for version in versions], axis=0)  # (n, 10)
                hits = right.setdefault(f"{weights}-{tta}", np.zeros(fold_of.shape, dtype=bool))
                hits[r, held_out] = proba.argmax(1) == y[held_out]
                probas.setdefault(f"{weights}-{tta}", np.zeros((*fold_of.shape, 10)))[r, held_out] = proba
                rows.append(scored(base, "fold", f"{args.seed + k + 1} ({name})", 1, weights, tta,
                                   hits[r, held_out], minutes[k]))
    kept = {f"proba-{key}": proba for key, proba in probas.items()}  # to keep beside the right-or-wrong
    for key, hits in right.items():
        weights, tta = key.split("-")
        for r in range(args.rounds):
            rows.append(scored({**base, "wall_minutes": round(wall, 2)}, "oof", f"round {r + 1}", 1, weights, tta,
                               hits[r], sum(minutes[r * args.folds:(r + 1) * args.folds])))
            print(f"  {weights} weights, TTA {tta}, out of fold{f' (round {r + 1})' if args.rounds > 1 else ''}: "
                  f"{100 * rows[-1]['valid_acc']:.2f}% ± {100 * rows[-1]['std_error']:.2f} "
                  f"({rows[-1]['mistakes']} mistakes of {len(y)})", flush=True)
        if args.rounds > 1:  # each row by the average of the R models that never saw it: what averaging gives
            averaged = kept[f"avg-{key}"] = probas[key].mean(axis=0).argmax(axis=1) == y  # (N,)
            rows.append(scored({**base, "wall_minutes": round(wall, 2)}, "oof-avg", f"{args.rounds} models a row",
                               args.rounds, weights, tta, averaged, sum(minutes)))
            print(f"  {weights} weights, TTA {tta}, out of fold, {args.rounds} models a row: "
                  f"{100 * rows[-1]['valid_acc']:.2f}% ± {100 * rows[-1]['std_error']:.2f} "
                  f"({rows[-1]['mistakes']} mistakes of {len(y)})", flush=True)
    return rows, right, fold_of, kept


def recorded_run(run_dir: Path, args: argparse.Namespace, y: np.ndarray, base: dict
                 ) -> tuple[list[dict], dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]:
    """A notebook run's rows, as train_and_score gives them: from its oof.csv (each row's out-of-fold prediction) and
    experiments.csv (each model's seconds, the run's wall seconds and workers)."""
    try:
        oof, table = pd.read_csv(run_dir / "oof.csv"), pd.read_csv(run_dir / "experiments.csv")
    except (OSError, pd.errors.ParserError) as error:
        raise SystemExit(f"--from-run {run_dir}: {error}; give the OUTPUT_DIR of a RECIPE=\"best\" run.") from None
    plan = kfold_plan(y, args.folds, args.rounds, args.seed)
    models = table[table["recipe"].isin([f"best, {member.name}" for member in plan])]
    pooled = table[table["recipe"] == "best, out of fold"]
    if args.rounds != 1 or len(models) != len(plan) or len(pooled) != 1 or not np.array_equal(oof["label"], y):
        raise SystemExit(f"--from-run {run_dir}: not a run of {args.folds} folds, 1 round, on these rows; give "
                         "--folds and --seed as its FOLDS and SEED, and no --rounds or --train-rows.")
    right = oof["oof_pred"].to_numpy() == y  # (N,) bool: each row by the model that never saw it
    seconds, pooled = models["train_seconds"].to_numpy(), pooled.iloc[0]
    rows = []
    for member, (_, model), model_seconds in zip(plan, models.iterrows(), seconds):
        if (~right[member.held_out]).sum() != model["mistakes"]:  # its own fold, as the notebook scored it
            raise SystemExit(f"--from-run {run_dir}: {member.name}'s mistakes differ from oof.csv's: that run used "
                             "other folds; give --folds and --seed as its FOLDS and SEED.")
        rows.append(scored({**base, "epochs": model["epochs"], "workers": pooled.get("workers")}, "fold",
                           f"{member.seed} ({member.name})", 1, "raw", "none", right[member.held_out],
                           model_seconds / 60))
    tta = "none" if not pooled.get("tta", 0) else f"{int(pooled['tta'])} augmented passes"
    wall = pooled.get("wall_seconds", np.nan) / 60  # runs before 2026-12-06 did not write it
    rows.append(scored({**base, "epochs": pooled["epochs"], "workers": pooled.get("workers"),
                        "wall_minutes": round(wall, 2)}, "oof", "round 1", 1, "raw", tta, right, seconds.sum() / 60))
    fold_of = sum((member.fold - 1) * member.held_out for member in plan)[None]  # (1, N)
    return rows, {"raw-none": right[None]}, fold_of, {}


def compare(rows: list[dict], right: dict[str, np.ndarray], idea: str, against: dict[str, np.ndarray] | None,
            against_name: str | None) -> None:
    """Add to every out-of-fold row its paired difference: averaged or kept weights from this run's raw ones, raw
    weights from the --against run's raw ones (with the same TTA)."""
    for row in rows:
        if row["kind"] != "oof" or (row["weights"] == "raw" and against is None):
            continue
        r = int(row["seed"].split()[-1]) - 1
        name, other = (idea, right) if row["weights"] != "raw" else (against_name, against)
        if f"raw-{row['tta']}" not in other:  # that run was scored without this TTA
            continue
        diff, error = paired_difference(right[f"{row['weights']}-{row['tta']}"][r], other[f"raw-{row['tta']}"][r])
        row.update(vs=f"{name}, raw weights", diff=diff, diff_std_error=error)
        print(f"  {row['weights']} weights, TTA {row['tta']}, round {r + 1}: {100 * diff:+.3f} ± {100 * error:.3f} "
              f"points against {name}'s raw weights", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Train the models, score them every way, print and record the results."""
    args = parse_args(argv)
    averaging = args.swa_from is not None or args.ema is not None or bool(args.snapshots)
    if averaging and args.workers != 1:
        raise SystemExit("--swa-from, --ema and --snapshots keep each model's averaged weights in this process: "
                         "add --workers 1.")
    if args.report:
        with pd.option_context("display.width", 200, "display.max_columns", None):
            print(report(args.results).to_string(index=False))
            print("\nearlier runs, on one validation split:")
            print(validation_report(args.results).to_string(index=False))
        return
    command = shlex.join(["python", "benchmarks/experiments.py", *(sys.argv[1:] if argv is None else argv)])
    device = get_device()
    runtime = choose_runtime(device)
    data_dir = find_data_dir(args.data_dir)
    X, y = load_train_csv(data_dir / "train.csv", max_rows=args.train_rows)

    code = run_notebook_cells(NOTEBOOK, "imports", "model", "train-loop", "model-best", "best-recipe", "best-kfold")
    scratch = tempfile.TemporaryDirectory(prefix="experiments-")  # train_member's checkpoints
    averager = WeightAverager(code["train_one_epoch"], args.swa_from, args.ema, args.snapshots)
    augment = random_affine
    if args.elastic:  # the notebook's augmentation, then an elastic distortion drawn from the same generator
        alpha, sigma = args.elastic

        def augment(xb: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
            return elastic_distort(random_affine(xb, generator=generator), alpha, sigma, generator=generator)

    # The notebook's Recipe with this run's changes, each passed as an argument: nothing of the notebook is replaced.
    recipe = code["Recipe"](epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                            make_model=functools.partial(code["StrongerCNN"], dropout=args.dropout, width=args.width),
                            augment=augment, loss_fn=nn.CrossEntropyLoss(label_smoothing=args.label_smoothing),
                            train_epoch=averager if averaging else code["train_one_epoch"],
                            **({"schedule": exponential_decay(args.decay)} if args.decay else {}))
    when, where = time.strftime("%Y-%m-%d"), machine()
    print(f"{when}: {args.idea}: " + (f"the run in {args.from_run}" if args.from_run else
                                      f"{args.folds}-fold x {args.rounds} round(s), {args.epochs} epochs a model") +
          f", on {device} ({where}, torch {torch.__version__}), {len(X)} rows from {data_dir}", flush=True)
    base = {"date": when, "machine": where, "device": device.type, "idea": args.idea, "folds": args.folds,
            "epochs": args.epochs, "command": command}
    against = None
    if args.against:  # refused before training, not after half an hour
        expected = np.stack([code["mh"].stratified_folds(y, args.folds, args.seed + r) for r in range(args.rounds)])
        against = load_against(args.oof_dir, args.against, y, expected)
    if args.from_run:
        rows, right, fold_of, kept = recorded_run(args.from_run, args, y, base)
    else:
        rows, right, fold_of, kept = train_and_score(code, recipe, averager, args, X, y, runtime,
                                                     Path(scratch.name), base)
    args.oof_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(oof_file(args.oof_dir, args.idea), labels=y, fold_of=fold_of, **right, **kept)
    compare(rows, right, args.idea, against, args.against)
    record(rows, args.results)
    print(f"appended {len(rows)} rows to {args.results}")


if __name__ == "__main__":
    main()
