#!/usr/bin/env python
"""`make figures`: a full RECIPE="best" run kept as docs/digit_recognizer.executed.ipynb, and the README's figures.

    python scripts/make_figures.py [-p NAME VALUE ...]   # runs the notebook (about 40 min on 2 CPU cores) first
    python scripts/make_figures.py --from output/digit_recognizer.ipynb   # or takes a notebook already executed

The figures are the notebook's own PNG outputs, cut from the executed copy byte for byte, so they always show what
that run drew. The copy is cleaned for GitHub: no widget state, no per-cell timing metadata, no absolute paths in
papermill's record of the run.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_DIR / "scripts"))

import run_notebook  # noqa: E402

DOCS_DIR = PROJECT_DIR / "docs"
EXECUTED_NAME = "digit_recognizer.executed.ipynb"
RUN_DIR = "output/figures"  # where `make figures` runs the notebook (its checkpoints stay there, for RESUME)
FIGURES = [  # (the cell's tag, which of its images, the file under docs/): what the README shows
    ("sample-digits", 0, "sample-digits.png"),
    ("learning-curves", 0, "learning-curves.png"),
    ("errors-reference", 0, "confusion-matrix.png"),
    ("worst-errors", 0, "worst-errors.png"),
    ("augmentation", 0, "augmentation.png"),
    ("best-analysis", 2, "ensemble-learning-curves.png"),  # after the ensemble's confusion matrix and worst errors
]
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def clean_executed(notebook: dict) -> dict:
    """The executed notebook without widget state or outputs, per-cell timings, or this machine's paths."""
    notebook["metadata"].pop("widgets", None)
    record = notebook["metadata"].get("papermill", {})
    record.pop("environment_variables", None)
    for key in ("input_path", "output_path"):
        if record.get(key):
            record[key] = Path(record[key]).name
    for cell in notebook["cells"]:
        for key in ("papermill", "execution"):
            cell["metadata"].pop(key, None)
        if cell["cell_type"] == "code":  # a progress widget saved headless shows as a frozen "0%" bar on GitHub
            cell["outputs"] = [out for out in cell["outputs"] if WIDGET_VIEW not in out.get("data", {})]
    return notebook


def cell_images(notebook: dict, tag: str) -> list[bytes]:
    """The PNG images that the code cell tagged `tag` drew, in order."""
    cells = [cell for cell in notebook["cells"] if tag in cell["metadata"].get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"expected one cell tagged {tag!r} in the executed notebook, found {len(cells)}.")
    return [base64.b64decode("".join(out["data"]["image/png"])) for out in cells[0].get("outputs", [])
            if "image/png" in out.get("data", {})]


def write_docs(executed: Path, docs_dir: Path = DOCS_DIR) -> list[Path]:
    """Clean the executed notebook into docs_dir and cut the README's figures from it; returns the files written."""
    notebook = clean_executed(json.loads(executed.read_text(encoding="utf-8")))
    if notebook["metadata"].get("papermill", {}).get("exception"):
        raise ValueError(f"{executed}: the run failed, so its outputs are incomplete; fix it and run again.")
    docs_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for tag, index, name in FIGURES:
        images = cell_images(notebook, tag)
        if index >= len(images):
            raise ValueError(f"{executed}: the cell tagged {tag!r} drew {len(images)} images, not {index + 1}; "
                             'was it a RECIPE="best" run?')
        (docs_dir / name).write_bytes(images[index])
        written.append(docs_dir / name)
    copy = docs_dir / EXECUTED_NAME
    copy.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return [copy, *written]


def main(argv: list[str] | None = None) -> int:
    """Run the notebook (unless --from), then write docs/; 0 on success, 1 with a one-line error."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="executed", type=Path,
                        help='an executed RECIPE="best" notebook to use (default: run one into output/figures/)')
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a notebook parameter for the run (default: RECIPE best, everything else the notebook's)")
    args = parser.parse_args(argv)
    executed = args.executed
    if executed is None:
        parameters = [["RECIPE", "best"], ["OUTPUT_DIR", RUN_DIR], *args.parameter]
        status = run_notebook.main([part for pair in parameters for part in ("-p", *pair)])
        if status:
            return status
        executed = PROJECT_DIR / RUN_DIR / run_notebook.NOTEBOOK.name
    try:
        written = write_docs(executed)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path.relative_to(PROJECT_DIR)} ({path.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
