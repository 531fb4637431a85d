#!/usr/bin/env python
"""`make run`: fetch the data if there is none, then execute digit_recognizer.ipynb headless with papermill.

    python tools/run_notebook.py [-p NAME VALUE ...]    # e.g. -p EPOCHS 2 -p RECIPE best; paths: from the repo root

What the notebook prints reaches the terminal as it happens: with PROGRESS="lines" (the default here, so that the
saved notebook holds text, not frozen progress widgets) one line per epoch with the loss, the validation accuracy,
the seconds and the time left. The reference's per-batch lines ("loss: ... [  100/33600]") stay in the executed
notebook only. Any failure ends with one line: what went wrong and where to look. The kernel's own messages (not the
notebook's output), and papermill's after Ctrl-C, go to OUTPUT_DIR/kernel.log, so that Ctrl-C, which stops the
run, ends with one line too.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

PROJECT_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_DIR))

from get_data import download_data, kaggle_credentials_found
from mnist_helpers import find_data_dir, output_dir_for

NOTEBOOK = PROJECT_DIR / "digit_recognizer.ipynb"
# The reference's own lines: shown in the notebook, left out of the terminal, where one line per epoch says enough.
REFERENCE_LINES = re.compile(r"Epoch \d+|-{31}|loss: .*\[ *\d+/ *\d+\]|acc: .*%, average_loss: .*")
# The notebook's own line after Ctrl-C with several workers: in a terminal the runner says it, in its own one line.
NOTEBOOK_ONLY = re.compile(r"interrupted: every worker stopped; .*")


def parse_value(text: str) -> object:
    """A parameter's value as papermill's command line reads it: True, None, 3, 1e-3 or 'best' as Python; else text."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a path, or a bare word such as best
    return value if isinstance(value, (bool, int, float, str, type(None))) else text


class TerminalLines:
    """A file-like sink for the notebook's printed output: whole lines to the terminal, less the reference's."""

    def __init__(self, stream: TextIO):
        """Write to stream (the terminal)."""
        self.stream, self.pending = stream, ""

    def write(self, text: str) -> None:
        """Buffer text; pass on each finished line that is not one of the reference's per-batch lines."""
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            if not (REFERENCE_LINES.fullmatch(line) or NOTEBOOK_ONLY.fullmatch(line)):
                self.stream.write(line + "\n")
        self.stream.flush()

    def flush(self) -> None:
        """Lines are flushed as they are written."""

    def close(self) -> None:
        """Pass on a last line that never got its newline."""
        if self.pending:
            self.write("\n")


def ensure_data(data_dir: object) -> None:
    """Check the data is there; with no DATA_DIR and none found, fetch it into data/ as `make data` does."""
    if data_dir is not None:
        find_data_dir(str(data_dir))  # the user's own folder: a one-line FileNotFoundError if it lacks the CSVs
        return
    try:
        find_data_dir()
        return
    except FileNotFoundError:
        print("No train.csv and test.csv found, so fetching them into data/ first, as `make data` does.", flush=True)
    with_kaggle = kaggle_credentials_found()
    try:
        download_data(PROJECT_DIR / "data")
    except (RuntimeError, ValueError, OSError) as error:
        tried = "Kaggle, with the credentials found" if with_kaggle else \
            "Kaggle: no credentials (~/.kaggle/kaggle.json or KAGGLE_USERNAME and KAGGLE_KEY), so MNIST's mirrors"
        raise RuntimeError(f"no data, and fetching it failed. Tried {tried}: {error} Once that is fixed, "
                           "`make data` or `make run` fetches it; or point DATA_DIR at a folder with train.csv "
                           "and test.csv.") from None


def kernel_logging_to(path: Path) -> type:
    """A kernel manager whose kernel writes its own messages to path, not to the terminal that started it."""
    from jupyter_client import AsyncKernelManager  # here, so that a missing-data error comes without Jupyter's start-up

    class KernelLoggingToFile(AsyncKernelManager):
        async def start_kernel(self, **kw) -> None:
            """Start the kernel with its stdout and stderr in the log (what the notebook prints reaches us anyway)."""
            with open(path, "ab") as log:  # the kernel gets its own copy of the descriptor
                return await super().start_kernel(**{"stdout": log, "stderr": log, **kw})

    # After Ctrl-C, papermill shuts the kernel down, and jupyter_client (8 and later) interrupts its running cell
    # first, once: the training stops at once instead of running on until it is killed. A second interrupt of our
    # own would land in the notebook's handling of the first, and print "Exception ignored in: <generator ...>".
    return KernelLoggingToFile


class QuietAfterCtrlC(logging.Filter):
    """The papermill logger's own messages (nbclient's too, which it is given): on to the terminal (an unknown
    parameter, say) until Ctrl-C, then to the kernel's log."""

    def __init__(self, log: Path) -> None:
        """Write what comes after Ctrl-C to log."""
        super().__init__()
        self.log, self.after_ctrl_c = log, False

    def filter(self, record: logging.LogRecord) -> bool:
        """Pass the record on, or after Ctrl-C keep it in the log: "Kernel died while waiting for execute reply" is
        only nbclient noticing, while it shuts the kernel down, that the kernel has stopped as it was asked to."""
        if self.after_ctrl_c:
            with open(self.log, "a") as log:
                log.write(f"{record.levelname} {record.name}: {record.getMessage()}\n")
        return not self.after_ctrl_c


@contextlib.contextmanager
def quiet_after_ctrl_c(log: Path) -> Iterator[None]:
    """Within the block, Ctrl-C raises KeyboardInterrupt as ever, and papermill's messages after it go to log."""
    quiet, papermill_log = QuietAfterCtrlC(log), logging.getLogger("papermill")

    def interrupt(signum: int, frame: object) -> None:
        quiet.after_ctrl_c = True
        signal.default_int_handler(signum, frame)  # raises KeyboardInterrupt

    found = signal.getsignal(signal.SIGINT)
    ours = found is signal.default_int_handler and threading.current_thread() is threading.main_thread()
    try:
        papermill_log.addFilter(quiet)
        if ours:  # not where SIGINT is ignored (nohup ... &), nor where someone else handles it
            signal.signal(signal.SIGINT, interrupt)
        yield
    finally:
        papermill_log.removeFilter(quiet)
        if ours:
            signal.signal(signal.SIGINT, found)


def main(argv: list[str] | None = None) -> int:
    """Run the notebook; 0 on success, 1 with a one-line error, 130 when interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a notebook parameter, as for papermill (default: the notebook's own; OUTPUT_DIR output, "
                             "PROGRESS lines)")
    args = parser.parse_args(argv)
    os.chdir(PROJECT_DIR)  # relative paths mean the same here and in the notebook's kernel, which runs here
    parameters = {"OUTPUT_DIR": "output", "PROGRESS": "lines"}
    parameters.update((name, parse_value(value)) for name, value in args.parameter)
    output_dir = output_dir_for(parameters["OUTPUT_DIR"], create=False)  # None: /kaggle/working on Kaggle, else output
    executed = output_dir / NOTEBOOK.name
    try:
        ensure_data(parameters.get("DATA_DIR"))
    except (FileNotFoundError, RuntimeError) as error:  # no data, and none fetched: the notebook is not started
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # pooch keeps no half-downloaded file, so the same command simply fetches it again
        print("\ninterrupted while fetching the data; nothing half-downloaded was kept, and the same command "
              "fetches it again.", file=sys.stderr, flush=True)
        return 130
    import papermill  # here, so that a missing-data error comes without Jupyter's start-up time

    output_dir.mkdir(parents=True, exist_ok=True)
    kernel_log = output_dir / "kernel.log"
    kernel_log.unlink(missing_ok=True)  # this run's messages only
    terminal = TerminalLines(sys.stdout)
    try:
        with quiet_after_ctrl_c(kernel_log):
            papermill.execute_notebook(str(NOTEBOOK), str(executed), parameters=parameters, cwd=str(PROJECT_DIR),
                                       kernel_name="python3", progress_bar=False, stdout_file=terminal,
                                       stderr_file=sys.stderr, kernel_manager_class=kernel_logging_to(kernel_log),
                                       extra_arguments=["--IPKernelApp.log_level=ERROR"])  # not its start-up notes
    except KeyboardInterrupt:
        terminal.close()
        print(f"\ninterrupted: {output_dir} keeps a checkpoint of every finished epoch; the same command with "
              "RESUME=True carries on from them.", file=sys.stderr, flush=True)
        return 130
    except Exception as error:  # the notebook's own error, or its kernel died: one line either way
        terminal.close()
        name, message = getattr(error, "ename", type(error).__name__), getattr(error, "evalue", str(error))
        cell = f", cell [{error.exec_count}]" if getattr(error, "exec_count", None) else ""
        first_line = message.strip().splitlines()[0] if message.strip() else "no message"
        where = f"the executed notebook {executed} shows where{cell}"
        where += "" if hasattr(error, "ename") else f"; the kernel's own messages are in {kernel_log}"
        print(f"error: {name}: {first_line} ({where})", file=sys.stderr)
        return 1
    terminal.close()
    print(f"wrote {output_dir / 'submission.csv'} and {executed}")
    return 0


def end_by_sigint() -> None:
    """End this process as Ctrl-C ends a program, killed by SIGINT, so that make and shells see an interrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)


if __name__ == "__main__":
    status = main()
    if status == 130:
        end_by_sigint()
    sys.exit(status)
