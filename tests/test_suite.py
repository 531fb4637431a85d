"""The suite itself: it passes however it is started, in a terminal or in the background with Ctrl-C ignored."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

from conftest import REPO_DIR


def ignore_ctrl_c() -> None:
    """In the child before it starts: SIGINT ignored, as a non-interactive shell leaves a `nohup ... &` job."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_the_tests_that_use_ctrl_c_pass_in_a_pytest_started_as_nohup_starts_it():
    # `nohup make test > log 2>&1 &` or a CI runner: Python installs no KeyboardInterrupt handler, and every child
    # inherits the ignore. The whole_pipeline one (Ctrl-C in a pseudo-terminal) meets the same start through
    # conftest's sigint fixture, which the in-process ones meet too.
    files = [str(path) for path in sorted((REPO_DIR / "tests").glob("test_*.py"))
             if "@pytest.mark.sigint" in path.read_text() and path.name != Path(__file__).name]
    done = subprocess.run([sys.executable, "-m", "pytest", "-m", "sigint and not whole_pipeline", "-p",
                           "no:cacheprovider", "-q", *files], cwd=REPO_DIR, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, preexec_fn=ignore_ctrl_c, timeout=300)
    summary = done.stdout.strip().splitlines()[-1]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.fullmatch(r"=* ?(\d+) passed, \d+ deselected in .*", summary) and int(
        re.search(r"(\d+) passed", summary).group(1)) >= 3, summary


def test_the_fuzzing_draws_the_same_examples_on_every_run(request):
    # conftest's "repeatable" profile, unless a run asks for another with --hypothesis-profile
    from test_fuzz_loaders import FUZZ

    if request.config.getoption("hypothesis_profile", None) in (None, "repeatable"):
        assert FUZZ.derandomize and FUZZ.database is None and FUZZ.max_examples == 250
