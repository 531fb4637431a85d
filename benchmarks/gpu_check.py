#!/usr/bin/env python
"""One check of the whole project on a CUDA GPU, in under 8 minutes on a datacenter card.

Stages, in this order, each in its own process with its own time limit (the JSON says which ran and how it ended):
  1. facts:     the GPU, its compute capability, this PyTorch's arch list, and what get_device / choose_runtime pick;
  2. tests:     `pytest -m gpu tests/test_gpu.py` (autocast steps, DeviceBatches, prediction vs the CPU,
                checkpoint resume, a real out-of-memory error);
  3. reference: the notebook run headless (papermill) with its defaults: the reference model's 15 epochs, timed;
  4. bench:     `benchmarks/bench_training.py --full` on the GPU;
  5. best:      the notebook with RECIPE="best" (its K-fold models), timed, with its out-of-fold
                accuracy.
It writes gpu-check.json and gpu-check.txt (a short table) to --out, after every stage. facts and tests need no data;
the other stages look for it when they start, and without it each says so in one line and the next one runs. On a GPU
machine that has no data, carry it gzipped (the raw CSVs are over what can be carried): `make gpu-data` writes
.gpu/data/*.csv.gz, a git-ignored folder that this script finds by itself and the loaders read as they are.

    python benchmarks/gpu_check.py --data-dir ../shared/digit-recognizer    # or: make gpu-check DATA_DIR=...
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pandas as pd
import torch

REPO_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_DIR))

from mnist_helpers import choose_runtime, device_facts, find_data_dir, get_device

NOTEBOOK = REPO_DIR / "digit_recognizer.ipynb"
CARRIED_DATA = REPO_DIR / ".gpu" / "data"  # make gpu-data: the CSVs gzipped, carried to a GPU machine (git-ignored)
NOTEBOOK_STAGES = {"reference": {}, "best": {"RECIPE": "best"}}  # the notebook's parameters for each of its runs
STAGE_LIMITS = {"tests": 150, "reference": 150, "bench": 200, "best": 420}  # seconds, each at most


def parse_args() -> argparse.Namespace:
    """Command-line options; every default is in the help."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="folder with train.csv and test.csv, plain or gzipped (default: as the "
                                           "notebook searches, then .gpu/data)")
    parser.add_argument("--out", type=Path, default=REPO_DIR / "output" / "gpu-check",
                        help="where the JSON, the table and the runs' outputs go (default: output/gpu-check)")
    parser.add_argument("--budget", type=float, default=460,
                        help="seconds for all stages together; a stage gets what is left, up to its own limit "
                             "(default: 460)")
    parser.add_argument("--stages", default="facts,tests,reference,bench,best",
                        help="comma-separated stages to run (default: all five)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny runs (1 epoch, 2 small models) that check this script itself, on any device")
    return parser.parse_args()


def facts() -> dict:
    """What the hardware reports, what PyTorch would say about bf16, and what the project picks."""
    device = get_device()
    fast = choose_runtime(device)
    report = {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
              "arch_list": torch.cuda.get_arch_list(), "device": str(device), **device_facts(device),
              "precision": fast.precision, "grad_scaler": fast.amp_dtype == torch.float16,
              "channels_last": fast.channels_last,
              "data_on_device": fast.data_on_device, "cudnn_benchmark": fast.cudnn_benchmark,
              "predict_batch_size": fast.predict_batch_size}
    for package in ("numpy", "pandas", "matplotlib", "sklearn", "papermill", "torchinfo"):
        try:
            report[f"{package}_version"] = __import__(package).__version__
        except ImportError:
            report[f"{package}_version"] = None
    if torch.cuda.is_available():
        report.update(gpus=torch.cuda.device_count(), memory_gb=round(torch.cuda.get_device_properties(0).total_memory
                                                                      / 2**30, 1),
                      torch_says_bf16=torch.cuda.is_bf16_supported())
    return report


def data_dir_for(data_dir: str | None) -> Path:
    """The data for the stages that train: --data-dir, else the notebook's search, else .gpu/data; one-line error."""
    try:
        return find_data_dir(data_dir)
    except FileNotFoundError:
        if data_dir is None and (CARRIED_DATA / "train.csv.gz").is_file():
            return find_data_dir(CARRIED_DATA)
        raise


def run(command: list[str], limit: float, log: Path) -> dict:
    """Run one stage's command with a time limit; its output goes to log. Returns rc and seconds."""
    start = time.perf_counter()
    with open(log, "w") as file:
        try:
            done = subprocess.run(command, cwd=REPO_DIR, stdout=file, stderr=subprocess.STDOUT, timeout=limit)
            rc = done.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    return {"rc": rc, "seconds": round(time.perf_counter() - start, 1), "log": log.name}


def notebook_text(path: Path) -> str:
    """All text the executed notebook's code cells printed."""
    if not path.is_file():
        return ""
    cells = json.loads(path.read_text())["cells"]
    return "".join("".join(output.get("text", "")) for cell in cells if cell["cell_type"] == "code"
                   for output in cell.get("outputs", []))


def papermill(out: Path, name: str, data_dir: Path, limit: float, **parameters) -> dict:
    """Execute the notebook headless with these parameters into out/name; return its timings and accuracies."""
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    executed = folder / NOTEBOOK.name
    command = [sys.executable, "-m", "papermill", str(NOTEBOOK), str(executed), "--cwd", str(REPO_DIR), "-k", "python3",
               "--no-progress-bar", "-p", "DATA_DIR", str(data_dir), "-p", "OUTPUT_DIR", str(folder),
               "-p", "PROGRESS", "False"]
    for key, value in parameters.items():
        command += ["-p", key, str(value)]
    result = run(command, limit, out / f"{name}.log")
    text = notebook_text(executed)
    history = folder / "history.csv"
    if history.is_file():
        frame = pd.read_csv(history)
        result.update(epochs=len(frame), train_seconds=round(float(frame["seconds"].sum()), 1),
                      valid_acc_final=round(100 * float(frame["valid_acc"].iloc[-1]), 2),
                      valid_acc_best=round(100 * float(frame["valid_acc"].max()), 2))
    for key, pattern in (("device_line", r"device: .*"), ("fast_path_line", r"fast path: .*"),
                         ("oof_line", r"out-of-fold.*: \d+\.\d\d% .*"),
                         ("member_lines", r"(?:round \d+, )?fold \d+ \(seed \d+\): .*")):
        found = re.findall(pattern, text)
        if found:
            result[key] = found if key == "member_lines" else found[0]
    experiments = folder / "experiments.csv"
    if experiments.is_file():
        result["experiments"] = pd.read_csv(experiments).round(5).to_dict("records")
    return result


def pytest_stage(out: Path, limit: float) -> dict:
    """The GPU tests, with their counts from the JUnit XML."""
    xml = out / "gpu-tests.xml"
    result = run([sys.executable, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-p", "no:cacheprovider", "-q",
                  f"--junitxml={xml}"], limit, out / "tests.log")
    if xml.is_file():
        suite = ElementTree.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite[0]
        result.update({key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")})
        result["passed"] = result["tests"] - result["failures"] - result["errors"] - result["skipped"]
        reasons = sorted({skip.get("message", "") for skip in suite.iter("skipped")})
        if result["passed"] == 0 and result["tests"] == result["skipped"]:  # nothing ran: say so, never "passed"
            result["status"] = f"skipped: {result['tests']} of {result['tests']}, {'; '.join(reasons) or 'no tests'}"
        else:
            result["status"] = "failed" if result["failures"] or result["errors"] else "passed"
    return result


def bench_stage(out: Path, data_dir: Path, limit: float, options: list[str]) -> dict:
    """bench_training.py --full on the device get_device picks; its JSON report."""
    report = out / "bench.json"
    result = run([sys.executable, "benchmarks/bench_training.py", "--full", "--device", str(get_device()),
                  "--data-dir", str(data_dir), "--json", str(report), *options], limit, out / "bench.log")
    if report.is_file():
        result.update(json.loads(report.read_text()))
    return result


def table(report: dict) -> str:
    """A short text summary of the report."""
    f, lines = report.get("facts", {}), []
    lines.append(f"GPU check, {report['date']}: {f.get('DEVICE_NAME')} (compute capability {f.get('CAPABILITY')}), "
                 f"torch {f.get('torch')}, CUDA {f.get('cuda')}, cuDNN {f.get('cudnn')}")
    lines.append(f"  picks: device {f.get('device')}, autocast {f.get('precision')}, "
                 f"GradScaler {f.get('grad_scaler')}, "
                 f"channels_last {f.get('channels_last')} (torch.cuda.is_bf16_supported(): {f.get('torch_says_bf16')})")
    for name, stage in report.get("stages", {}).items():
        summary = {key: stage[key] for key in ("rc", "status", "seconds", "tests", "passed", "failures", "errors",
                                               "skipped", "epochs", "train_seconds", "valid_acc_final",
                                               "valid_acc_best", "speedup") if key in stage}
        lines.append(f"  {name:<10} {summary}")
        for key in ("oof_line", "member_lines"):
            if key in stage:
                found = [stage[key]] if isinstance(stage[key], str) else stage[key]
                lines += [f"             {line}" for line in found]
        for pipeline in ("full_a", "full_b"):
            if pipeline in stage:
                run_ = stage[pipeline]
                lines.append(f"             ({pipeline[-1]}) {len(run_['valid_acc'])} epochs "
                             f"{run_['seconds']:.1f} s, final "
                             f"{100 * run_['final']:.2f}%, {run_['images_per_s']:.0f} images/s")
        if "predict_seconds" in stage:
            lines.append("             predict the test images: " + ", ".join(
                f"({name}) {seconds:.2f} s" for name, seconds in stage["predict_seconds"].items()))
    return "\n".join(lines)


def main() -> None:
    """Run the stages in order within the budget, writing the JSON and the table after each."""
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    stages = args.stages.split(",")
    report = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "data_dir": None, "budget_s": args.budget, "stages": {}}
    start = time.perf_counter()
    deadline = start + args.budget
    smoke = dict(EPOCHS=1, BEST_EPOCHS=1, FOLDS=2) if args.smoke else {}
    bench_options = ["--epochs", "1", "--images", "200", "--rounds", "1"] if args.smoke else []
    if "facts" in stages:
        report["facts"] = facts()
    for name in ("tests", "reference", "bench", "best"):
        if name not in stages:
            continue
        limit = min(STAGE_LIMITS[name], deadline - time.perf_counter())
        if limit < 20:
            report["stages"][name] = {"rc": "skipped: out of time"}
            continue
        try:
            data_dir = None if name == "tests" else data_dir_for(args.data_dir)  # the tests need no data
        except FileNotFoundError as error:
            print(f"gpu_check: {name} skipped, no data (--data-dir, or `make gpu-data` where the data is)", flush=True)
            result = {"rc": f"skipped: no data: {error}"}
        else:
            print(f"gpu_check: {name} (up to {limit:.0f} s)", flush=True)
            if data_dir is not None:
                report["data_dir"] = str(data_dir)
            if name == "tests":
                result = pytest_stage(args.out, limit)
            elif name == "bench":
                result = bench_stage(args.out, data_dir, limit, bench_options)
            else:
                result = papermill(args.out, name, data_dir, limit, **NOTEBOOK_STAGES[name], **smoke)
        report["stages"][name] = result
        (args.out / "gpu-check.json").write_text(json.dumps(report, indent=2, default=str))
        (args.out / "gpu-check.txt").write_text(table(report) + "\n")
    report["seconds"] = round(time.perf_counter() - start, 1)
    (args.out / "gpu-check.json").write_text(json.dumps(report, indent=2, default=str))
    (args.out / "gpu-check.txt").write_text(table(report) + "\n")
    print(table(report))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
