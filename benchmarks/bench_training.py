#!/usr/bin/env python
"""Benchmark the plain reference pipeline (a) against the project's default fast pipeline (b).

(a) TensorDataset + DataLoader at batch 100, fp32, contiguous, each batch copied to the device.
(b) choose_runtime(device): autocast (bf16 / fp16), channels_last, batches kept on the device.

Both train the notebook's own TwoConvCNN with the notebook's own train_one_epoch and evaluate
(read from digit_recognizer.ipynb), from the same initial weights, on the same data and split.
All figures come from this one run; the ratios compare measurements taken side by side.

    python benchmarks/bench_training.py --quick   # short timed rounds; ends with `speedup: X.XX`
    python benchmarks/bench_training.py --full    # also trains each pipeline for 15 epochs: accuracy, wall time
    python benchmarks/bench_training.py --members # K-fold models at once: 1 worker x every thread against more
                                                  # workers of fewer threads each; ends with `workers speedup: X.XX`

Data: --data-dir, else $DATA_DIR, else ../shared/digit-recognizer, else the notebook's search
path; if none holds the CSVs, generated random digits (timings only: their accuracy means nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

REPO_DIR = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_DIR), str(REPO_DIR / "tools")]

from mnist_helpers import (
    PIXEL_COLUMNS,
    TRAIN_COLUMNS,
    Runtime,
    choose_runtime,
    choose_workers,
    csv_path,
    data_dir_candidates,
    get_device,
    load_test_csv,
    load_train_csv,
    make_loaders,
    predict,
    seed_everything,
    split_train_valid,
)
from notebook_cells import run_notebook_cells

NOTEBOOK = REPO_DIR / "digit_recognizer.ipynb"
BATCH_SIZE, LR, VALID_SIZE, SEED = 100, 1e-3, 0.2, 42  # the reference recipe, as in the notebook

# Runs in a fresh interpreter, so that its peak RSS is that of loading alone (after the same imports).
RSS_PROBE = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
import pandas as pd
import mnist_helpers  # the same imports (torch included) for both readers, so the baselines match
scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
peak_mb = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
before = peak_mb()
start = time.perf_counter()
if sys.argv[2] == "plain":
    pd.read_csv(sys.argv[3]), pd.read_csv(sys.argv[4])
else:
    mnist_helpers.load_train_csv(sys.argv[3]), mnist_helpers.load_test_csv(sys.argv[4])
print(json.dumps({"seconds": time.perf_counter() - start, "before_mb": before, "peak_mb": peak_mb()}))
"""


def parse_args() -> argparse.Namespace:
    """Command-line options; every default is in the help."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="short timed rounds only, no full training (default)")
    mode.add_argument("--full", action="store_true", help="also train each pipeline for --epochs full epochs")
    mode.add_argument("--members", action="store_true", help="only the K-fold models' training on parallel workers, "
                      "as WORKERS='auto' measures it: StrongerCNN, batch 100, the fast path")
    parser.add_argument("--data-dir", help="folder with train.csv and test.csv (default: see the module docstring)")
    parser.add_argument("--device", help="cuda, mps or cpu (default: the best available, as in the notebook)")
    parser.add_argument("--epochs", type=int, default=15, help="epochs per pipeline with --full (default: 15)")
    parser.add_argument("--images", type=int, default=6000,
                        help="training images per timed round with --quick (default: 6000)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating timed rounds per pipeline (default: 2)")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    return parser.parse_args()


def find_csvs(data_dir: str | None) -> tuple[Path, Path, str]:
    """train.csv, test.csv and a description of where they came from; generated ones as a last resort."""
    candidates = [Path(data_dir)] if data_dir else [
        *([Path(os.environ["DATA_DIR"])] if os.environ.get("DATA_DIR") else []),
        REPO_DIR.parent / "shared" / "digit-recognizer", *data_dir_candidates()]
    for folder in candidates:
        train, test = csv_path(folder / "train.csv"), csv_path(folder / "test.csv")
        if train.is_file() and test.is_file():
            return train, test, f"real digits from {folder}"
    if data_dir:
        sys.exit(f"bench_training.py: no train.csv and test.csv in {data_dir}; pass the folder that holds them.")
    folder = Path(tempfile.mkdtemp(prefix="bench-digits-"))
    rng = np.random.default_rng(0)  # the competition's shapes: 42000 labelled and 28000 test rows
    train = np.column_stack([rng.integers(0, 10, 42_000), rng.integers(0, 256, (42_000, 784))])
    pd.DataFrame(train, columns=TRAIN_COLUMNS).to_csv(folder / "train.csv", index=False)
    pd.DataFrame(rng.integers(0, 256, (28_000, 784)), columns=PIXEL_COLUMNS).to_csv(folder / "test.csv", index=False)
    return folder / "train.csv", folder / "test.csv", f"GENERATED random digits in {folder} (no real data found)"


def probe_loading(reader: str, train: Path, test: Path) -> dict:
    """Seconds and peak RSS (MB) of one reader ("plain" or "project") loading both CSVs, in a fresh process."""
    done = subprocess.run([sys.executable, "-c", RSS_PROBE, str(REPO_DIR), reader, str(train), str(test)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def time_loading(train: Path, test: Path, rounds: int) -> tuple[dict, tuple]:
    """Best-of-rounds seconds for plain pd.read_csv and for the project's load-and-validate, alternated."""
    seconds: dict[str, list[float]] = {"plain": [], "project": []}
    for _ in range(rounds):
        start = time.perf_counter()
        pd.read_csv(train), pd.read_csv(test)
        seconds["plain"].append(time.perf_counter() - start)
        start = time.perf_counter()
        data = load_train_csv(train), load_test_csv(test)
        seconds["project"].append(time.perf_counter() - start)
    return {name: min(values) for name, values in seconds.items()}, data


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timer sees it finish."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def new_model(code: dict, runtime: Runtime) -> tuple[nn.Module, torch.optim.Optimizer, torch.amp.GradScaler]:
    """The notebook's model with the seed's initial weights, its Adam (fused where the runtime says) and scaler."""
    seed_everything(SEED)
    model = runtime.prepare_model(code["TwoConvCNN"]())
    return model, torch.optim.Adam(model.parameters(), lr=LR, fused=runtime.fused), runtime.grad_scaler()


def train_images_per_second(code: dict, runtime: Runtime, X: np.ndarray, y: np.ndarray, images: int) -> float:
    """Training throughput of one pipeline: a short warm-up epoch, then one timed epoch of `images` images."""
    model, optimizer, scaler = new_model(code, runtime)
    loss_fn = nn.CrossEntropyLoss()
    warmup, _ = make_loaders(X[:1000], y[:1000], X[:100], y[:100], BATCH_SIZE, SEED, runtime)
    timed, _ = make_loaders(X[:images], y[:images], X[:100], y[:100], BATCH_SIZE, SEED, runtime)
    with contextlib.redirect_stdout(io.StringIO()):  # the loop's own loss lines
        code["train_one_epoch"](model, warmup, loss_fn, optimizer, scaler, runtime)
        sync(runtime.device)
        start = time.perf_counter()
        code["train_one_epoch"](model, timed, loss_fn, optimizer, scaler, runtime)
        sync(runtime.device)
    return images / (time.perf_counter() - start)


def predict_seconds(model: nn.Module, X_test: np.ndarray, runtime: Runtime) -> float:
    """Seconds to predict every test image with the runtime's batch size (after a one-batch warm-up)."""
    predict(model, X_test[:runtime.predict_batch_size], runtime)
    sync(runtime.device)
    start = time.perf_counter()
    predict(model, X_test, runtime)
    sync(runtime.device)
    return time.perf_counter() - start


def train_full(code: dict, runtime: Runtime, split: tuple, epochs: int) -> dict:
    """Train one pipeline for `epochs` epochs as the notebook does; accuracy per epoch and wall time."""
    X_train, X_valid, y_train, y_valid = split
    model, optimizer, scaler = new_model(code, runtime)
    loss_fn = nn.CrossEntropyLoss()
    train_loader, valid_loader = make_loaders(X_train, y_train, X_valid, y_valid, BATCH_SIZE, SEED, runtime)
    accuracies, start = [], time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        for _ in range(epochs):
            code["train_one_epoch"](model, train_loader, loss_fn, optimizer, scaler, runtime)
            accuracies.append(code["evaluate"](model, valid_loader, loss_fn, runtime)[1])
    sync(runtime.device)
    wall = time.perf_counter() - start
    return {"model": model, "valid_acc": accuracies, "final": accuracies[-1], "best": max(accuracies),
            "best_epoch": int(np.argmax(accuracies)) + 1, "seconds": wall, "images_per_s": epochs * len(X_train) / wall}


def describe(device: torch.device, fast: Runtime) -> str:
    """The device's name, the torch version and what the fast path does there."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        with contextlib.suppress(OSError):
            models = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
            name = f"{models[0]}, {os.cpu_count()} logical cores" if models else name
    return (f"device: {device} ({name}); torch {torch.__version__}, {torch.get_num_threads()} threads\n"
            f"pipeline (b): autocast {fast.precision}, channels_last {fast.channels_last}, "
            f"data on device {fast.data_on_device}, predict batch {fast.predict_batch_size}")


def bench_members(runtime: Runtime, rounds: int) -> float:
    """Images/s in total of the K-fold model for each count of workers, in rounds; the best count's rate over one
    worker's, as measured in the same round (the notebook's WORKERS="auto" takes the best count)."""
    if runtime.device.type != "cpu":
        raise SystemExit(f"bench_training.py --members: measures CPU workers; on {runtime.device.type}, WORKERS='auto' "
                         "is one worker per GPU")
    code = run_notebook_cells(NOTEBOOK, "imports", "model-best")
    cores = torch.get_num_threads()
    print(f"K-fold models at once: StrongerCNN, batch {BATCH_SIZE}, {runtime.precision}, {cores} cores; each count of "
          "workers trains for the same 3 s, its cores shared out between them (images/s in total)")
    ratios = []
    for r in range(rounds):
        measured = dict(choose_workers("auto", runtime, models=cores, make_model=code["StrongerCNN"],
                                       batch_size=BATCH_SIZE).measured)
        if not measured:
            raise SystemExit("bench_training.py --members: one core, so one worker: nothing to compare")
        if not measured[1]:  # not one whole step in the window: the cores were busy with something else
            raise SystemExit("bench_training.py --members: 1 worker finished no step in its 3 s; the cores are busy "
                             "with another job: run it alone")
        best = max(measured, key=measured.get)
        ratios.append(measured[best] / measured[1])
        print(f"  round {r + 1}: " + ", ".join(f"{n} x {cores // n} thread(s) {rate:,.0f}" for n, rate in
                                               measured.items()) + f"; {best} workers / 1: {ratios[-1]:.2f}x")
    return float(np.mean(ratios))


def main() -> None:
    """Run the benchmark and print a report whose last line is `speedup: X.XX`."""
    args = parse_args()
    device = torch.device(args.device) if args.device else get_device()
    plain, fast = choose_runtime(device, fast=False), choose_runtime(device)
    if args.members:
        print(f"bench_training.py --members, {time.strftime('%Y-%m-%d %H:%M %Z')}\n{describe(device, fast)}")
        print(f"\nworkers speedup: {bench_members(fast, args.rounds):.2f}")
        return
    train, test, source = find_csvs(args.data_dir)
    print(f"bench_training.py {'--full' if args.full else '--quick'}, {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(describe(device, fast))
    print(f"data: {source}\n", flush=True)
    report: dict = {"device": str(device), "torch": torch.__version__, "data": source}

    probes = {reader: probe_loading(reader, train, test) for reader in ("plain", "project")}
    seconds, ((X_all, y_all), X_test) = time_loading(train, test, rounds=args.rounds)
    report["loading"] = {"peak_rss_mb": {k: v["peak_mb"] for k, v in probes.items()}, "seconds": seconds}
    print("Loading both CSVs (peak RSS in a fresh process that first imports torch and the helpers)")
    for reader, label in (("plain", "plain pd.read_csv"), ("project", "load_*_csv, validated")):
        print(f"  {label:<24} {seconds[reader]:6.2f} s   peak RSS {probes[reader]['peak_mb']:5.0f} MB "
              f"(imports alone {probes[reader]['before_mb']:.0f} MB)")
    print(f"  load+validate / plain read: {seconds['project'] / seconds['plain']:.2f}x\n", flush=True)

    code = run_notebook_cells(NOTEBOOK, "imports", "model", "train-loop")
    split = split_train_valid(X_all, y_all, VALID_SIZE, SEED)
    X_train, y_train = split[0], split[2]
    throughput: dict[str, list[float]] = {"a": [], "b": []}
    for _ in range(args.rounds):  # alternate a and b, so that drift in the machine hits both alike
        throughput["a"].append(train_images_per_second(code, plain, X_train, y_train, args.images))
        throughput["b"].append(train_images_per_second(code, fast, X_train, y_train, args.images))
    rates = {name: max(values) for name, values in throughput.items()}
    report["train_images_per_s"] = throughput
    print(f"Training throughput (best of {args.rounds} alternating rounds of {args.images} images, batch {BATCH_SIZE})")
    print(f"  (a) plain {rates['a']:8.0f} images/s   rounds: {', '.join(f'{v:.0f}' for v in throughput['a'])}")
    print(f"  (b) fast  {rates['b']:8.0f} images/s   rounds: {', '.join(f'{v:.0f}' for v in throughput['b'])}\n",
          flush=True)

    models = {}
    if args.full:
        print(f"Full runs: {args.epochs} epochs each, as the notebook trains (validation every epoch)")
        for name, runtime in (("a", plain), ("b", fast)):
            run = train_full(code, runtime, split, args.epochs)
            models[name] = run.pop("model")
            report[f"full_{name}"] = run
            print(f"  ({name}) final {100 * run['final']:.2f}%, best {100 * run['best']:.2f}% "
                  f"(epoch {run['best_epoch']}), "
                  f"{run['seconds']:.0f} s ({run['images_per_s']:.0f} images/s)")
            print(f"      valid acc per epoch: {' '.join(f'{100 * a:.2f}' for a in run['valid_acc'])}", flush=True)
        gap = 100 * (report["full_b"]["final"] - report["full_a"]["final"])
        last = {name: 100 * np.mean(report[f"full_{name}"]["valid_acc"][-5:]) for name in ("a", "b")}
        print(f"  final accuracy (b) - (a): {gap:+.2f} points; mean of the last 5 epochs: (a) {last['a']:.2f}%, "
              f"(b) {last['b']:.2f}% ({last['b'] - last['a']:+.2f}); wall time (a)/(b): "
              f"{report['full_a']['seconds'] / report['full_b']['seconds']:.2f}x\n")

    predict_s = {}
    for name, runtime in (("a", plain), ("b", fast)):
        model = models.get(name) or new_model(code, runtime)[0]
        predict_s[name] = predict_seconds(model, X_test, runtime)
    report["predict_seconds"] = predict_s
    print(f"Prediction of {len(X_test)} test images")
    for name, runtime in (("a", plain), ("b", fast)):
        print(f"  ({name}) batch {runtime.predict_batch_size:>5}: {predict_s[name]:6.2f} s, "
              f"{len(X_test) / predict_s[name]:8.0f} images/s")

    speedup = rates["b"] / rates["a"]
    report["speedup"] = speedup
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nspeedup: {speedup:.2f}")


if __name__ == "__main__":
    main()
