#!/usr/bin/env python
"""`make kaggle`: write kaggle/digit_recognizer.ipynb, the notebook as one file to import on Kaggle.

    python tools/make_kaggle.py            # writes kaggle/digit_recognizer.ipynb
    python tools/make_kaggle.py --check    # exits 1, saying so, if the file is out of step with its sources

It is digit_recognizer.ipynb with one cell before the rest: `%%writefile mnist_helpers.py` and the helper's source,
collapsed in Jupyter and its input hidden on Kaggle. On Kaggle, *File > Import Notebook* of this one file and
*Add Input > digit-recognizer* are all it needs; no utility script to attach. It is generated, never edited by hand
(a test fails when it is out of step). kaggle/kernel-metadata.json beside it is for `kaggle kernels push -p kaggle`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
NOTEBOOK = PROJECT_DIR / "digit_recognizer.ipynb"
HELPER = PROJECT_DIR / "mnist_helpers.py"
KAGGLE_NOTEBOOK = PROJECT_DIR / "kaggle" / "digit_recognizer.ipynb"


def kaggle_notebook(notebook: dict, helper_source: str) -> dict:
    """The notebook with a first, collapsed cell that writes the helper beside it (Kaggle's working folder)."""
    writer = {"cell_type": "code", "execution_count": None, "id": "write-mnist-helpers", "outputs": [],
              "metadata": {"jupyter": {"source_hidden": True}, "_kg_hide-input": True, "_kg_hide-output": True,
                           "tags": ["write-helper"]},
              "source": "%%writefile mnist_helpers.py\n" + helper_source}
    return {**notebook, "cells": [writer, *notebook["cells"]]}


def render(notebook: dict) -> str:
    """The file's text: the notebook as JSON, as the repository stores notebooks."""
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


def expected_text() -> str:
    """What kaggle/digit_recognizer.ipynb must hold, from today's notebook and helper."""
    notebook = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    return render(kaggle_notebook(notebook, HELPER.read_text(encoding="utf-8")))


def main(argv: list[str] | None = None) -> int:
    """Write the Kaggle notebook, or with --check say whether it is in step; 0 when it is (or was written)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check that the file is in step (default: write)")
    args = parser.parse_args(argv)
    text = expected_text()
    if args.check:
        if KAGGLE_NOTEBOOK.is_file() and KAGGLE_NOTEBOOK.read_text(encoding="utf-8") == text:
            return 0
        print(f"{KAGGLE_NOTEBOOK.relative_to(PROJECT_DIR)} is out of step with digit_recognizer.ipynb and "
              "mnist_helpers.py; run `make kaggle`.", file=sys.stderr)
        return 1
    KAGGLE_NOTEBOOK.parent.mkdir(exist_ok=True)
    KAGGLE_NOTEBOOK.write_text(text, encoding="utf-8")
    print(f"wrote {KAGGLE_NOTEBOOK.relative_to(PROJECT_DIR)} ({len(text) / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
