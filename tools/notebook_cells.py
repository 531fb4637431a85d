"""Run the notebook's own code outside Jupyter: its tagged code cells, executed in order into one namespace.

The tests and the benchmarks use it, so that they exercise the model and the loops exactly as the notebook holds
them, with no copy to drift:

    from notebook_cells import run_notebook_cells
    code = run_notebook_cells("digit_recognizer.ipynb", "imports", "model", "train-loop")
    model = code["TwoConvCNN"]()
"""

from __future__ import annotations

import json
import os
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parents[1] / "digit_recognizer.ipynb"


def notebook_code_cells(notebook: str | os.PathLike = NOTEBOOK) -> list[tuple[list[str], str]]:
    """The notebook's code cells as (tags, source) pairs, read as plain JSON (no Jupyter packages needed)."""
    with open(notebook, encoding="utf-8") as file:
        cells = json.load(file)["cells"]
    return [(cell.get("metadata", {}).get("tags", []), "".join(cell["source"])) for cell in cells
            if cell["cell_type"] == "code"]


def run_notebook_cells(notebook: str | os.PathLike = NOTEBOOK, *tags: str) -> dict:
    """Execute the code cells with these tags, in the order given, and return their namespace."""
    cells = notebook_code_cells(notebook)
    namespace: dict = {}
    for tag in tags:
        tagged = [source for cell_tags, source in cells if tag in cell_tags]
        if len(tagged) != 1:
            raise ValueError(f"{notebook}: expected one code cell tagged {tag!r}, found {len(tagged)}.")
        exec(compile(tagged[0], f"{Path(notebook).name}[{tag}]", "exec"), namespace)
    return namespace
