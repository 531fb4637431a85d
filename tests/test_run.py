"""`make run` as a new user meets it: a bare clone fetches its data, the run shows one line per epoch as it goes,
and every failure ends in one line. The MNIST mirror is a local HTTP server (test_download's), never the internet."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest

import run_notebook
from conftest import REPO_DIR, learnable_digits, make_digits, write_test_csv, write_train_csv
from test_download import Mirror, idx_bytes

VENV = Path(sys.prefix)  # the environment running these tests: .venv, or .venv-min under `make test-min`
EPOCH_LINE = re.compile(r"reference model, epoch (\d)/3: train loss \d\.\d{4}, valid acc \d+\.\d\d%, "
                        r"\d+\.\d s, \d\d:\d\d left")
# What a user's shell could have set that would change the run: make passes any notebook parameter it finds in the
# environment, and a make calling this test (make test) exports its own level and flags to the make started here.
LEAKING = {"DATA_DIR", "EPOCHS", "BATCH_SIZE", "LR", "VALID_SIZE", "SEED", "TRAIN_ROWS", "TEST_ROWS", "OUTPUT_DIR",
           "FAST", "PROGRESS", "LOSS_LINES", "RESUME", "DETERMINISTIC", "RECIPE", "BEST_EPOCHS", "BEST_LR", "FOLDS",
           "ROUNDS", "TTA", "FROM", "MNIST_MIRRORS", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN",
           "KAGGLE_KERNEL_RUN_TYPE", "MAKELEVEL", "MAKEFLAGS", "MFLAGS"}


def make(clone: Path, *arguments: str, env: dict, **kwargs) -> subprocess.Popen:
    """Start `make ARGUMENTS` in clone with this test's environment, its output (stdout and stderr) as one stream."""
    command = ["make", "--no-print-directory", f"VENV={VENV}", "-o", f"{VENV}/.requirements-installed", *arguments]
    run = subprocess.Popen(command, cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           **kwargs)
    watchdog = threading.Timer(300, run.kill)  # a hung run fails the test instead of blocking the suite
    watchdog.daemon = True
    watchdog.start()
    return run


def clean_environment(tmp_path: Path, **extra: str) -> dict:
    """The environment of a user with no data anywhere, no Kaggle credentials and no Kaggle tree."""
    env = {name: value for name, value in os.environ.items() if name not in LEAKING}
    (tmp_path / "no-kaggle-config").mkdir(exist_ok=True)
    return {**env, "KAGGLE_CONFIG_DIR": str(tmp_path / "no-kaggle-config"), "KAGGLE_ROOT": str(tmp_path / "no-kaggle"),
            "PYTHONWARNINGS": "ignore", **extra}


@pytest.fixture
def fresh_clone(tmp_path) -> Path:
    """The project's files as git would check them out (this working tree's versions), with an empty data/."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO_DIR,
                            capture_output=True, text=True, check=True).stdout.split()
    clone = tmp_path / "clone"
    for name in listed:
        if (REPO_DIR / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_DIR / name, clone / name)
    assert sorted(p.name for p in (clone / "data").iterdir()) == ["README.md"]
    return clone


@pytest.fixture
def learnable_mirror(tmp_path):
    """A local mirror of stand-in MNIST files (4,000 learnable digits), and a sitecustomize that trusts their MD5s."""
    X, y = learnable_digits(4000, seed=3)
    files = {}
    for part, rows in (("train", slice(0, 3000)), ("t10k", slice(3000, 4000))):
        files[f"{part}-images-idx3-ubyte.gz"] = idx_bytes(X[rows].reshape(-1, 28, 28))
        files[f"{part}-labels-idx1-ubyte.gz"] = idx_bytes(y[rows])
    site = tmp_path / "site"
    site.mkdir()
    # The published MD5s are those of the real MNIST files; the stand-ins' replace them in the runner only.
    (site / "sitecustomize.py").write_text(
        "import json, os, sys\n"
        "if os.environ.get('TEST_MNIST_MD5S'):\n"
        "    sys.path.insert(0, os.path.join(os.environ['TEST_CLONE_DIR'], 'tools'))\n"
        "    import get_data\n"
        "    get_data.MNIST_FILES.update(json.loads(os.environ.pop('TEST_MNIST_MD5S')))\n")
    server = Mirror(files)
    yield server, {"PYTHONPATH": str(site), "MNIST_MIRRORS": server.url + "/good/",
                   "TEST_MNIST_MD5S": json.dumps({n: hashlib.md5(d).hexdigest() for n, d in files.items()})}
    server.close()


@pytest.mark.whole_pipeline
def test_make_run_on_a_bare_clone_fetches_the_data_and_shows_each_epoch_as_it_happens(tmp_path, fresh_clone,
                                                                                     learnable_mirror):
    mirror, mirror_env = learnable_mirror
    env = clean_environment(tmp_path, TEST_CLONE_DIR=str(fresh_clone), **mirror_env)
    # Started as `nohup make run &` starts it, with SIGINT ignored all the way down: the run must not need Ctrl-C.
    run = make(fresh_clone, "run", "EPOCHS=3", "BATCH_SIZE=20", env=env,
               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    lines, history_existed_at_epoch_1 = [], None
    for line in run.stdout:  # read as the run prints, not after it ends
        lines.append(line.rstrip("\n"))
        if EPOCH_LINE.fullmatch(lines[-1]) and lines[-1].startswith("reference model, epoch 1/3"):
            history_existed_at_epoch_1 = (fresh_clone / "output" / "history.csv").exists()
    assert run.wait(timeout=300) == 0, "\n".join(lines)
    text = "\n".join(lines)

    assert "No train.csv and test.csv found, so fetching them into data/ first" in text
    assert "built from MNIST's own files" in text and "This is MNIST in Kaggle's layout" in text
    assert len(mirror.requests) == 4  # all four files, from the local mirror
    assert [int(EPOCH_LINE.fullmatch(line).group(1)) for line in lines if EPOCH_LINE.fullmatch(line)] == [1, 2, 3]
    assert history_existed_at_epoch_1 is False  # epoch 1's line came while the run was still training
    assert not any(line.startswith(("loss: ", "acc: ", "Epoch ")) for line in lines)  # the notebook keeps those
    assert "Executing" not in text and "Traceback" not in text
    assert lines[-1] == "wrote output/submission.csv and output/digit_recognizer.ipynb"

    submission = pd.read_csv(fresh_clone / "output" / "submission.csv")
    assert len(submission) == 1600 and submission["ImageId"].tolist() == list(range(1, 1601))  # 40% of 4,000
    assert re.search(r"submission\.csv: accuracy (0\.9\d+|1\.0+) \(\d+ of 1600 correct\)", text), text  # and it learned
    executed = json.loads((fresh_clone / "output" / "digit_recognizer.ipynb").read_text())
    outputs = [out for cell in executed["cells"] if cell["cell_type"] == "code" for out in cell["outputs"]]
    assert not any("application/vnd.jupyter.widget-view+json" in out.get("data", {}) for out in outputs)
    printed = "".join("".join(out.get("text", "")) for out in outputs)
    assert "0%|" not in printed and "loss: " in printed and "reference model, epoch 3/3" in printed


def last_line_before_make(lines: list[str]) -> str:
    """The last line the run printed; make's own "make: *** [...] Error 1" always follows a failed recipe."""
    assert re.fullmatch(r"make: \*\*\* \[Makefile:\d+: run\] Error 1", lines[-1]), lines
    return lines[-2]


def test_make_run_with_no_data_and_no_network_fails_in_one_line(tmp_path, fresh_clone):
    env = clean_environment(tmp_path, MNIST_MIRRORS="http://127.0.0.1:9/")  # nothing listens: connection refused
    run = make(fresh_clone, "run", env=env)
    output, _ = run.communicate(timeout=120)
    lines = output.strip().splitlines()
    assert run.returncode == 2, output
    line = last_line_before_make(lines)
    assert line.startswith("error: no data, and fetching it failed. Tried Kaggle: no credentials"), line
    assert "MNIST's mirrors: could not download train-images-idx3-ubyte.gz from any mirror (http://127.0.0.1:9/" in line
    assert line.count("`kaggle competitions download -c digit-recognizer -p data && unzip") == 1  # by hand
    assert line.endswith("`make data` or `make run` fetches it; or point DATA_DIR at a folder with train.csv and "
                         "test.csv.")
    assert "Traceback" not in output and "papermill" not in output.lower()
    assert not (fresh_clone / "output" / "digit_recognizer.ipynb").exists()  # the notebook never started
    assert not [p for p in (fresh_clone / "data").rglob("*") if p.is_file() and p.name != "README.md"]


def test_a_failing_notebook_ends_make_run_with_its_error_and_the_executed_notebook(tmp_path):
    X, y = make_digits(100)
    write_train_csv(tmp_path / "train.csv", X, y)
    (tmp_path / "test.csv").write_text(",".join(f"pixel{i}" for i in range(784)) + "\n" + "1," * 783 + "oops\n")
    output_dir = tmp_path / "output"
    run = make(REPO_DIR, "run", f"DATA_DIR={tmp_path}", "EPOCHS=1", f"OUTPUT_DIR={output_dir}",
               env=clean_environment(tmp_path))
    output, _ = run.communicate(timeout=180)
    line = last_line_before_make(output.strip().splitlines())
    executed = json.loads((output_dir / "digit_recognizer.ipynb").read_text())
    failed = [cell for cell in executed["cells"] if cell["cell_type"] == "code"
              for out in cell["outputs"] if out["output_type"] == "error"]
    assert len(failed) == 1 and "load_test_csv" in "".join(failed[0]["source"])
    assert line == (f"error: ValueError: {tmp_path / 'test.csv'}: row 1 (line 2), column 'pixel783': 'oops' is not a "
                    "number; pixels must be integers 0-255, so fix that cell or re-download the file. (the executed "
                    f"notebook {output_dir / 'digit_recognizer.ipynb'} shows where, "
                    f"cell [{failed[0]['execution_count']}])")
    assert "Traceback" not in output


def test_an_explicit_data_dir_without_the_csvs_is_not_fetched_into(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # main() moves to the repository root; monkeypatch moves back afterwards
    status = run_notebook.main(["-p", "DATA_DIR", str(tmp_path / "nowhere"),
                                "-p", "OUTPUT_DIR", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(error) == 1
    assert error[0].startswith("error: train.csv and test.csv not found; searched: ")
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "out").exists()


@pytest.fixture
def no_data_here(monkeypatch, tmp_path):
    """run_notebook as on a machine with no data: find_data_dir finds none, and the repository stays untouched."""
    monkeypatch.chdir(tmp_path)

    def nowhere(data_dir=None):
        raise FileNotFoundError("train.csv and test.csv not found")

    monkeypatch.setattr(run_notebook, "find_data_dir", nowhere)
    return monkeypatch


@pytest.mark.parametrize("credentials, tried", [
    (True, "Tried Kaggle, with the credentials found: Kaggle refused the download (403): accept the rules"),
    (False, "Tried Kaggle: no credentials (~/.kaggle/kaggle.json or KAGGLE_USERNAME and KAGGLE_KEY), so MNIST's "
            "mirrors: Kaggle refused the download (403): accept the rules")])
def test_a_failed_fetch_says_which_source_was_tried(no_data_here, capsys, credentials, tried):
    def refused(data_dir):
        raise RuntimeError("Kaggle refused the download (403): accept the rules.")

    no_data_here.setattr(run_notebook, "download_data", refused)
    no_data_here.setattr(run_notebook, "kaggle_credentials_found", lambda: credentials)
    assert run_notebook.main([]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"error: no data, and fetching it failed. {tried}."), error


class FakePapermill:
    """Stands in for papermill.execute_notebook: prints like a notebook would, then raises what it is given."""

    def __init__(self, error: BaseException):
        self.error = error

    def __call__(self, *args, stdout_file, **kwargs):
        stdout_file.write("reference model, epoch 1/15: ...\nloss: 0.1 [  100/33600]\nhalf a line")
        raise self.error


def test_ctrl_c_says_how_to_carry_on(monkeypatch, tmp_path, capsys):
    import papermill

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run_notebook, "ensure_data", lambda data_dir: None)
    monkeypatch.setattr(papermill, "execute_notebook", FakePapermill(KeyboardInterrupt()))
    assert run_notebook.main(["-p", "OUTPUT_DIR", str(tmp_path / "out")]) == 130
    captured = capsys.readouterr()
    assert captured.out == "reference model, epoch 1/15: ...\nhalf a line\n"  # the unfinished line is not lost
    assert captured.err.strip() == (f"interrupted: {tmp_path / 'out'} keeps a checkpoint of every finished epoch; the "
                                    "same command with RESUME=True carries on from them.")


@pytest.mark.sigint
def test_papermills_messages_after_ctrl_c_go_to_the_kernel_log_not_the_terminal(monkeypatch, tmp_path, capsys, caplog):
    import papermill

    def execute_notebook(*args, **kwargs):
        logging.getLogger("papermill").warning("Passed unknown parameter: EPOHCS")  # the user's to see
        try:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C in the terminal
        finally:  # papermill shuts the kernel down, and nbclient notices that it has gone
            logging.getLogger("papermill").error("Kernel died while waiting for execute reply.")

    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal; the sigint marker puts back its own
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run_notebook, "ensure_data", lambda data_dir: None)
    monkeypatch.setattr(papermill, "execute_notebook", execute_notebook)
    with caplog.at_level(logging.WARNING, logger="papermill"):
        assert run_notebook.main(["-p", "OUTPUT_DIR", str(tmp_path / "out")]) == 130
    assert [record.getMessage() for record in caplog.records] == ["Passed unknown parameter: EPOHCS"]
    assert capsys.readouterr().err.strip().startswith("interrupted: ")
    assert (tmp_path / "out" / "kernel.log").read_text() == \
        "ERROR papermill: Kernel died while waiting for execute reply.\n"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the runner's own handler is gone again
    assert not logging.getLogger("papermill").filters  # and so is its filter


@pytest.mark.sigint
def test_where_sigint_is_ignored_the_runner_leaves_it_ignored(tmp_path):
    # Under `nohup make run &` (the sigint marker starts the test so), Ctrl-C cannot come, and nothing may undo that.
    with run_notebook.quiet_after_ctrl_c(tmp_path / "kernel.log"):
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_a_kernel_that_dies_ends_in_one_line(monkeypatch, tmp_path, capsys):
    import papermill
    from nbclient.exceptions import DeadKernelError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run_notebook, "ensure_data", lambda data_dir: None)
    monkeypatch.setattr(papermill, "execute_notebook", FakePapermill(DeadKernelError("Kernel died\nmore")))
    assert run_notebook.main(["-p", "OUTPUT_DIR", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.strip() == (f"error: DeadKernelError: Kernel died (the executed notebook "
                                               f"{tmp_path / 'out' / 'digit_recognizer.ipynb'} shows where; the "
                                               f"kernel's own messages are in {tmp_path / 'out' / 'kernel.log'})")


def test_shutting_the_kernel_down_after_ctrl_c_interrupts_its_running_cell_once(tmp_path):
    # After Ctrl-C, papermill shuts make run's kernel down. Its running cell must get one SIGINT: none, and it trains
    # on until killed; two, and the second may land in the notebook's handling of the first ("Exception ignored in").
    import asyncio

    started, stopped = tmp_path / "started", tmp_path / "stopped"
    busy_cell = f"""
import signal, time
deadline = time.monotonic() + 60
def stop(*_):
    global deadline
    deadline = min(deadline, time.monotonic() + 1)  # a second more: time for any second SIGINT to come
signal.signal(signal.SIGINT, stop)
open({str(started)!r}, "w").close()
while time.monotonic() < deadline:
    time.sleep(0.01)
open({str(stopped)!r}, "w").close()
"""
    sent = []

    async def shut_down_while_busy() -> None:
        manager = run_notebook.kernel_logging_to(tmp_path / "kernel.log")(kernel_name="python3")
        manager.shutdown_wait_time = 20  # the cell's extra second, on a busy CI runner, before any SIGTERM
        await manager.start_kernel(cwd=str(tmp_path), env={**os.environ, "PYDEVD_DISABLE_FILE_VALIDATION": "1"})
        # The signals are noted as they are sent (the real ones still go): Python runs a handler once for two SIGINTs
        # that come close together, so the kernel itself cannot count them.
        send = manager._async_signal_kernel

        async def noting(signum: int) -> None:
            sent.append(signal.Signals(signum).name)
            await send(signum)

        manager._async_signal_kernel = noting
        client = manager.client()
        client.start_channels()
        try:
            await client.wait_for_ready(timeout=120)
            client.execute(busy_cell)
            for _ in range(1200):
                if started.exists():
                    break
                await asyncio.sleep(0.05)
            await manager.shutdown_kernel()
        finally:
            client.stop_channels()
            if await manager.is_alive():  # the test failed before the shutdown: leave no kernel behind
                await manager.shutdown_kernel(now=True)

    asyncio.run(shut_down_while_busy())
    assert started.exists(), (tmp_path / "kernel.log").read_text()
    assert stopped.exists(), "the running cell was never interrupted"
    assert sent == ["SIGINT"]


def test_the_terminal_gets_whole_lines_without_the_reference_per_batch_lines():
    class Sink:
        text = ""

        def write(self, text):
            self.text += text

        def flush(self):
            pass

    sink = Sink()
    terminal = run_notebook.TerminalLines(sink)
    for chunk in ["device: cpu\nEpoch 1\n-------------------------------\nloss: 2.310378 [  ", "100/33600]\n",
                  "acc: 96.49%, average_loss: 0.135642\nreference model, epoch 1/15: train loss 0.3",
                  "1, valid acc 96.49%, 12.0 s, 02:48 left\nloss: is a word\n-----\n",
                  "interrupted: every worker stopped; each model's checkpoint keeps its last finished epoch, and "
                  "RESUME=True carries on from them.\nhalf a li"]:  # the notebook's own; the runner says its own
        terminal.write(chunk)
    assert sink.text == ("device: cpu\nreference model, epoch 1/15: train loss 0.31, valid acc 96.49%, 12.0 s, "
                         "02:48 left\nloss: is a word\n-----\n")  # the unfinished line waits for its end


@pytest.mark.parametrize("text, value", [("True", True), ("False", False), ("None", None), ("15", 15), ("1e-3", 1e-3),
                                         ("'best'", "best"), ("best", "best"), ("../shared/digit-recognizer",
                                                                                "../shared/digit-recognizer"),
                                         ("lines", "lines"), ("[1, 2]", "[1, 2]")])
def test_parameter_values_are_read_as_papermill_reads_them(text, value):
    assert run_notebook.parse_value(text) == value and type(run_notebook.parse_value(text)) is type(value)


def test_make_kernel_registers_the_venv_under_a_clear_name(tmp_path):
    run = make(REPO_DIR, "kernel", env={**clean_environment(tmp_path), "JUPYTER_DATA_DIR": str(tmp_path)})
    output, _ = run.communicate(timeout=120)
    assert run.returncode == 0, output
    spec = json.loads((tmp_path / "kernels" / "digit-recognizer" / "kernel.json").read_text())
    assert spec["display_name"] == "digit-recognizer (.venv)"
    assert Path(spec["argv"][0]).parent == VENV / "bin" and spec["argv"][-4:] == ["-m", "ipykernel_launcher", "-f",
                                                                                  "{connection_file}"]


def test_make_figures_runs_the_best_recipe_or_takes_an_executed_notebook(tmp_path):
    def dry_run(*arguments):
        return subprocess.run(["make", "-n", *arguments], cwd=REPO_DIR, capture_output=True, text=True,
                              check=True, env=clean_environment(tmp_path)).stdout.strip()

    assert dry_run("figures") == ".venv/bin/python tools/make_figures.py"
    assert dry_run("figures", "RESUME=True") == ".venv/bin/python tools/make_figures.py  -p RESUME 'True'"
    assert dry_run("figures", "FROM=output/x.ipynb") == ".venv/bin/python tools/make_figures.py --from 'output/x.ipynb'"


def test_make_lab_opens_the_notebook_after_registering_the_kernel(tmp_path):
    dry_run = subprocess.run(["make", "-n", "lab"], cwd=REPO_DIR, capture_output=True, text=True, check=True,
                             env=clean_environment(tmp_path)).stdout
    lines = dry_run.strip().splitlines()
    assert "ipykernel install --user --name digit-recognizer" in lines[-2]
    assert lines[-1] == ".venv/bin/jupyter lab digit_recognizer.ipynb"


def run_in_a_terminal(command: list[str], cwd: Path, env: dict, interrupt_after: tuple[str, ...],
                      timeout: float = 300) -> tuple[str, str, int]:
    """Run command in a pseudo-terminal and press Ctrl-C as a terminal does, once every line of interrupt_after has
    been shown: SIGINT to the terminal's foreground process group (make, the runner, all they started in it). Returns
    what the terminal showed before the interrupt and after it, and the exit status."""
    with warnings.catch_warnings():  # Python 3.12 warns that forking a process with threads may deadlock the child;
        warnings.simplefilter("ignore", DeprecationWarning)  # this child only changes folder and execs at once
        pid, fd = pty.fork()
    if pid == 0:  # the child: a session of its own, with the pty as its controlling terminal
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # as a terminal's shell starts a program, however pytest started
        os.chdir(cwd)
        os.execvpe(command[0], command, env)
    shown, interrupted_at, deadline = b"", None, time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 0.5)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the terminal closed: everything in it has exited
                break
            if not chunk:
                break
            shown += chunk
        if interrupted_at is None and all(line.encode() in shown for line in interrupt_after):
            interrupted_at = len(shown)
            os.killpg(os.tcgetpgrp(fd), signal.SIGINT)
    else:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    cut = len(shown) if interrupted_at is None else interrupted_at
    return (shown[:cut].decode(errors="replace"), shown[cut:].decode(errors="replace"),
            os.waitstatus_to_exitcode(status))


@pytest.mark.whole_pipeline
@pytest.mark.sigint
@pytest.mark.parametrize("workers, interrupt_after", [(1, ("fold 2, epoch 2/6",)),
                                                      (2, ("fold 1, epoch 2/6", "fold 2, epoch 2/6"))])
def test_ctrl_c_in_a_terminal_shows_the_interrupted_line_only_and_resume_finishes_the_same_submission(
        tmp_path, workers, interrupt_after):
    # WORKERS=1: the folds one after another, interrupted in the second. WORKERS=2: both at once, interrupted in both.
    # Ctrl-C once each fold that is interrupted has shown epoch 2, so it has saved epoch 1 (an epoch's line comes before
    # its checkpoint), however far one worker lags behind the other on a busy machine.
    X, y = learnable_digits(300)
    write_train_csv(tmp_path / "train.csv", X, y)
    write_test_csv(tmp_path / "test.csv", learnable_digits(100, seed=1)[0])
    env = clean_environment(tmp_path)
    recipe = [f"DATA_DIR={tmp_path}", "EPOCHS=1", "BATCH_SIZE=20", "RECIPE=best", "BEST_EPOCHS=6", "FOLDS=2",
              f"WORKERS={workers}"]
    straight = make(REPO_DIR, "run", *recipe, f"OUTPUT_DIR={tmp_path / 'straight'}", env=env)
    output, _ = straight.communicate(timeout=300)
    assert straight.returncode == 0, output

    command = ["make", "--no-print-directory", f"VENV={VENV}", "-o", f"{VENV}/.requirements-installed", "run",
               *recipe, f"OUTPUT_DIR={tmp_path / 'stopped'}"]
    before, after, status = run_in_a_terminal(command, REPO_DIR, env, interrupt_after=interrupt_after)
    lines = [line for line in after.replace("\r\n", "\n").splitlines() if line.strip()]
    assert lines[0] == (f"interrupted: {tmp_path / 'stopped'} keeps a checkpoint of every finished epoch; the same "
                        "command with RESUME=True carries on from them."), after
    assert re.fullmatch(r"make: \*\*\* \[Makefile:\d+: run\] Interrupt", lines[1]) and len(lines) == 2, after
    assert status != 0 and "Traceback" not in before + after and "ZMQError" not in before + after
    assert (tmp_path / "stopped" / "kernel.log").is_file()  # where the kernel's own messages went, if it had any
    saved = {path: path.stat().st_mtime_ns for path in (tmp_path / "stopped").glob("best-*.pt")}
    time.sleep(2)  # no worker trains on after the run has stopped: no checkpoint changes
    assert {path: path.stat().st_mtime_ns for path in (tmp_path / "stopped").glob("best-*.pt")} == saved

    resumed = make(REPO_DIR, "run", *recipe, f"OUTPUT_DIR={tmp_path / 'stopped'}", "RESUME=True", env=env)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert "resumed from" in output
    if workers == 1:
        assert "fold 1, epoch" not in output  # fold 1's model was done: loaded, not trained
    for fold in (1, 2) if workers == 2 else (2,):
        shown = [int(epoch) for epoch in re.findall(rf"fold {fold}, epoch (\d)/6", before)]
        for epoch in range(1, max(shown)):  # saved before the interrupt: loaded, not trained again
            assert f"fold {fold}, epoch {epoch}/6" not in output, (fold, epoch, output)
        if max(shown) < 6:  # the interrupt stopped it: it carries on to its last epoch
            assert f"fold {fold}, epoch 6/6" in output, (fold, output)
    for name in ("submission.csv", "submission_reference.csv"):
        assert (tmp_path / "stopped" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name
