"""benchmarks/bench_training.py end to end, on small generated CSVs (a few seconds of training)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import REPO_DIR, make_digits, write_test_csv, write_train_csv
from mnist_helpers import choose_runtime, get_device


def test_quick_benchmark_reports_every_figure_and_ends_with_the_speedup(tmp_path):
    X, y = make_digits(1500)
    write_train_csv(tmp_path / "train.csv", X, y)
    write_test_csv(tmp_path / "test.csv", make_digits(600, seed=1)[0])
    done = subprocess.run([sys.executable, "benchmarks/bench_training.py", "--quick", "--data-dir", str(tmp_path),
                           "--images", "300", "--rounds", "1", "--json", str(tmp_path / "report.json")],
                          cwd=REPO_DIR, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"data: real digits from {tmp_path}" in out and "torch " in out and "device: cpu" in out
    assert re.search(r"plain pd\.read_csv +\d+\.\d\d s +peak RSS +\d+ MB", out)
    assert re.search(r"load\+validate / plain read: \d+\.\d\dx", out)
    assert re.search(r"\(a\) plain +\d+ images/s", out) and re.search(r"\(b\) fast +\d+ images/s", out)
    assert "Prediction of 600 test images" in out
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(r"speedup: \d+\.\d\d", last), last
    report = json.loads((tmp_path / "report.json").read_text())
    assert abs(report["speedup"] - float(last.split()[1])) < 0.006
    assert set(report["predict_seconds"]) == {"a", "b"} and all(v > 0 for v in report["predict_seconds"].values())


def test_benchmark_refuses_a_folder_without_the_csvs(tmp_path):
    done = subprocess.run([sys.executable, "benchmarks/bench_training.py", "--quick", "--data-dir", str(tmp_path)],
                          cwd=REPO_DIR, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [f"bench_training.py: no train.csv and test.csv in {tmp_path}; "
                                                "pass the folder that holds them."]


@pytest.mark.whole_pipeline
def test_gpu_check_runs_every_stage_and_writes_its_report(tmp_path):
    # --smoke: the same five stages with 1 epoch and small models, on whatever device there is (here the CPU,
    # where the GPU tests skip), so that the script a GPU machine runs once is known to work end to end.
    X, y = make_digits(300)
    write_train_csv(tmp_path / "train.csv", X, y)
    write_test_csv(tmp_path / "test.csv", make_digits(50, seed=1)[0])
    out = tmp_path / "check"
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--smoke", "--data-dir", str(tmp_path),
                           "--out", str(out)], cwd=REPO_DIR, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "gpu-check.json").read_text())
    device = get_device()
    assert report["facts"]["device"] == str(device)
    assert report["facts"]["precision"] == choose_runtime(device).precision
    stages = report["stages"]
    assert [stages[name]["rc"] for name in ("tests", "reference", "bench", "best")] == [0, 0, 0, 0], stages
    assert stages["tests"]["tests"] == 7 and stages["tests"]["failures"] == stages["tests"]["errors"] == 0
    assert stages["reference"]["epochs"] == 1 and 0 <= stages["reference"]["valid_acc_final"] <= 100
    assert stages["bench"]["speedup"] > 0 and set(stages["bench"]["predict_seconds"]) == {"a", "b"}
    assert stages["best"]["oof_line"].startswith("out-of-fold: ")
    assert len(stages["best"]["member_lines"]) == 2
    table = (out / "gpu-check.txt").read_text()
    assert table.startswith("GPU check, ") and "picks: device" in table and "out-of-fold: " in table
    assert done.stdout.strip().endswith(table.strip())  # the same table, printed last
