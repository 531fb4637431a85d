#!/usr/bin/env python
"""`make figures`: a full RECIPE="best" run kept as docs/digit_recognizer.executed.ipynb, and the README's figures.

    python scripts/make_figures.py [-p NAME VALUE ...]   # runs the notebook (about 40 min on 2 CPU cores) first
    python scripts/make_figures.py --from output/digit_recognizer.ipynb   # or takes a notebook already executed

The figures are the notebook's own PNG outputs, cut from the executed copy byte for byte, so they always show what
that run drew. The copy is cleaned for GitHub: no widget state, no per-cell timing metadata, and paths inside the
repository shown relative to it (in papermill's record of the run and in what the cells printed).
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
    ("accuracy-vs-minutes", 0, "accuracy-vs-minutes.png"),
]
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def clean_executed(notebook: dict, root: Path = PROJECT_DIR) -> dict:
    """The executed notebook without widget state or outputs, per-cell timings, or this machine's path to root."""
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
            for out in cell["outputs"]:
                if out["output_type"] == "stream":  # "outputs go to /home/me/digit-recognizer/output": output
                    out["text"] = "".join(out["text"]).replace(f"{root}/", "").replace(str(root), ".")
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
                        help=f"a notebook parameter for the run (default: RECIPE best, OUTPUT_DIR {RUN_DIR}, the rest "
                             "the notebook's)")
    parser.add_argument("--docs-dir", type=Path, default=DOCS_DIR, help="where to write (default: docs/)")
    args = parser.parse_args(argv)
    executed = args.executed
    if executed is not None and args.parameter:
        parser.error("--from takes a notebook already executed, so -p has nothing to set; give one or the other")
    if executed is None:
        parameters = dict([("RECIPE", "best"), ("OUTPUT_DIR", RUN_DIR), *map(tuple, args.parameter)])
        status = run_notebook.main([part for pair in parameters.items() for part in ("-p", *pair)])
        if status:
            return status
        executed = PROJECT_DIR / parameters["OUTPUT_DIR"] / run_notebook.NOTEBOOK.name
    try:
        written = write_docs(executed, args.docs_dir)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
