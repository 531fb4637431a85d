#!/usr/bin/env python
"""Experiments behind README's table: the "best" recipe's models, alone, in ensembles, and with test-time augmentation.

It trains `--members` models exactly as the notebook's RECIPE="best" does (its own StrongerCNN, train_member and
train_one_epoch, read from digit_recognizer.ipynb), on the notebook's split (SEED, VALID_SIZE), member k with seed
SEED + k. Then it scores, on the same held-out validation images: each model, its mean ± sd, and the ensembles of the
first n models for each n in --ensembles and each TTA count in --tta. Tuning on validation only; no test labels.

    python benchmarks/experiments.py --members 5 --epochs 25     # about 25 min on a 2-core CPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_DIR))

from mnist_helpers import (choose_fast_path, csv_path, device_facts, ensemble_proba, find_data_dir,  # noqa: E402
                           get_device, load_train_csv, run_notebook_cells, split_train_valid)

NOTEBOOK = REPO_DIR / "digit_recognizer.ipynb"


def parse_args() -> argparse.Namespace:
    """Command-line options; every default is in the help."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="folder with train.csv (default: as the notebook searches, $DATA_DIR first)")
    parser.add_argument("--members", type=int, default=5, help="models to train (default: 5)")
    parser.add_argument("--epochs", type=int, default=25, help="epochs per model (default: 25, the notebook's BEST_EPOCHS)")
    parser.add_argument("--lr", type=float, default=3e-3, help="one-cycle peak learning rate (default: 3e-3)")
    parser.add_argument("--seed", type=int, default=42, help="the notebook's SEED: split and member seeds (default: 42)")
    parser.add_argument("--train-rows", type=int, help="use only the first N rows of train.csv (default: all)")
    parser.add_argument("--ensembles", type=int, nargs="+", default=[3, 4, 5], help="ensemble sizes (default: 3 4 5)")
    parser.add_argument("--tta", type=int, nargs="+", default=[0, 2, 4], help="TTA pass counts (default: 0 2 4)")
    parser.add_argument("--save-dir", type=Path, help="also save each model's weights and a JSON report here")
    return parser.parse_args()


def main() -> None:
    """Train the members, then print single-model and ensemble validation accuracies."""
    args = parse_args()
    device = get_device()
    fast = choose_fast_path(device)
    data_dir = find_data_dir(args.data_dir or os.environ.get("DATA_DIR") or REPO_DIR.parent / "shared" / "digit-recognizer")
    X_all, y_all = load_train_csv(csv_path(data_dir, "train.csv"), max_rows=args.train_rows)
    X_train, X_valid, y_train, y_valid = split_train_valid(X_all, y_all, 0.2, args.seed)
    code = run_notebook_cells(NOTEBOOK, "imports", "model", "train-loop", "model-best", "best-recipe")
    # What train_member reads from the notebook's earlier cells. Its checkpoints go to a scratch folder (or --save-dir).
    scratch = tempfile.TemporaryDirectory(prefix="experiments-")
    code.update(BATCH_SIZE=100, BEST_LR=args.lr, PROGRESS="lines", fast=fast, loss_fn=nn.CrossEntropyLoss(),
                SEED=args.seed, VALID_SIZE=0.2, TRAIN_ROWS=args.train_rows, FAST=True, RESUME=False,
                facts=device_facts(device), output_dir=args.save_dir or Path(scratch.name))
    print(f"{time.strftime('%Y-%m-%d %H:%M %Z')}: {args.members} models x {args.epochs} epochs on {device} "
          f"(torch {torch.__version__}), {len(X_train)} training / {len(X_valid)} validation rows from {data_dir}",
          flush=True)

    if args.save_dir:
        args.save_dir.mkdir(parents=True, exist_ok=True)
    models, report = [], {"args": {k: str(v) for k, v in vars(args).items()}, "members": [], "ensembles": []}
    for k in range(1, args.members + 1):
        start = time.perf_counter()
        model, history = code["train_member"](args.seed + k, X_train, y_train, args.epochs, X_valid, y_valid)
        seconds = time.perf_counter() - start
        models.append(model)
        accuracy = float(history["valid_acc"].iloc[-1])
        report["members"].append({"seed": args.seed + k, "valid_acc": accuracy, "seconds": seconds,
                                  "valid_acc_per_epoch": history["valid_acc"].tolist()})
        print(f"  model seed {args.seed + k}: {100 * accuracy:.2f}% in {seconds:.0f} s", flush=True)
        if args.save_dir:
            torch.save(model.state_dict(), args.save_dir / f"member-{args.seed + k}.pt")

    single = np.array([m["valid_acc"] for m in report["members"]])
    sd = single.std(ddof=1) if len(single) > 1 else float("nan")
    print(f"single models: {100 * single.mean():.3f}% ± {100 * sd:.3f} (mean ± sd over {len(single)} seeds)")
    for n in [n for n in args.ensembles if n <= len(models)]:
        for tta in args.tta:
            proba = ensemble_proba(models[:n], X_valid, fast, tta=tta, seed=args.seed)
            accuracy = float((proba.argmax(1) == y_valid).mean())
            report["ensembles"].append({"models": n, "tta": tta, "valid_acc": accuracy})
            print(f"ensemble of the first {n}, TTA {tta}: {100 * accuracy:.2f}% "
                  f"({int((proba.argmax(1) != y_valid).sum())} mistakes)", flush=True)
    if args.save_dir:
        (args.save_dir / "experiments.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
