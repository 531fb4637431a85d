#!/usr/bin/env python
"""`make figures`: a full RECIPE="best" run kept as docs/digit_recognizer.executed.ipynb, and the figures of docs/.

    python tools/make_figures.py [-p NAME VALUE ...]   # runs the notebook (about 30 min on 2 CPU cores) first
    python tools/make_figures.py --from output/figures/digit_recognizer.ipynb   # or takes a notebook already executed

The notebook's figures are its own PNG outputs, cut from the executed copy byte for byte, so they always show what
that run drew. The copy is cleaned for GitHub: no widget state, no per-cell timing metadata, and paths inside the
repository shown relative to it (in papermill's record of the run and in what the cells printed). One more figure,
docs/accuracy-vs-minutes.png, puts that run's models (its experiments.csv, beside the executed notebook) among the
ideas that benchmarks/experiments.py measured on a CPU (benchmarks/experiments.tsv), for docs/experiments.md.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

import pandas as pd

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR / "tools"))

import run_notebook

DOCS_DIR = PROJECT_DIR / "docs"
EXECUTED_NAME = "digit_recognizer.executed.ipynb"
RUN_DIR = "output/figures"  # where `make figures` runs the notebook (its checkpoints stay there, for RESUME)
FIGURES = [  # (the cell's tag, which of its images, the file under docs/): what README.md and docs/ show
    ("sample-digits", 0, "sample-digits.png"),
    ("learning-curves", 0, "learning-curves.png"),
    ("errors-reference", 0, "confusion-matrix.png"),
    ("worst-errors", 0, "worst-errors.png"),
    ("augmentation", 0, "augmentation.png"),
    ("folds", 0, "folds.png"),
    ("best-curves", 0, "ensemble-learning-curves.png"),
]
MEASURED = PROJECT_DIR / "benchmarks" / "experiments.tsv"
ACCURACY_PLOT = "accuracy-vs-minutes.png"
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


def measured_points(measured: pd.DataFrame, device: str = "cpu") -> pd.DataFrame:
    """Per variant of an experiments table (benchmarks/experiments.tsv): its K-fold runs' out-of-fold accuracy, and
    the earlier runs' mean single model and largest ensemble on one validation split."""
    rows = measured[measured["device"] == device]
    kind = rows["kind"] if "kind" in rows else pd.Series(index=rows.index, dtype=object)
    points = []
    for (idea, weights, tta), group in rows.groupby(["idea", "weights", "tta"], sort=False):
        variant = idea + ("" if weights == "raw" else f", {weights} weights") + ("" if tta == "none" else ", shift TTA")
        for _, row in group[kind[group.index] == "oof"].iterrows():  # one model per row: out of fold, all rows
            points.append({"variant": f"{variant}, out of fold", "kind": "oof", "models": 1,
                           "valid_acc": row["valid_acc"], "minutes": row["train_minutes"]})
        group = group[kind[group.index].isna()]
        single, ensembles = group[group["models"] == 1], group[group["models"] > 1]
        if len(single):
            points.append({"variant": variant, "kind": "validation", "models": 1,
                           "valid_acc": single["valid_acc"].mean(), "minutes": single["train_minutes"].mean()})
        if len(ensembles):
            largest = ensembles.sort_values("models").iloc[-1]
            points.append({"variant": variant, "kind": "validation", "models": int(largest["models"]),
                           "valid_acc": largest["valid_acc"], "minutes": largest["train_minutes"]})
    return pd.DataFrame(points, columns=["variant", "kind", "models", "valid_acc", "minutes"])


def plot_accuracy_vs_minutes(experiments: pd.DataFrame, measured: pd.DataFrame | None = None):
    """Accuracy against training minutes, all of it and the top: a run's models and its out-of-fold figure, among
    measured points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = experiments.assign(minutes=experiments["train_seconds"] / 60, acc=100 * experiments["valid_acc"])
    columns = ["variant", "kind", "models", "valid_acc", "minutes"]
    other = measured if measured is not None else pd.DataFrame(columns=columns)
    other = other.assign(acc=100 * other["valid_acc"].astype(float))
    top = max(run["acc"].max(), other["acc"].max() if len(other) else 0)
    bottom = min(run["acc"].min(), other["acc"].min() if len(other) else 100)
    out_of_fold = run["recipe"].str.contains("out of fold")
    singles, pooled = run[~out_of_fold], run[out_of_fold]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, low in zip(axes, (bottom - 0.2, top - 0.3)):  # everything, then the top 0.3 points of it
        ax.plot(singles["minutes"], singles["acc"], "o", color="black",
                label="the recorded run: each model, on its own held-out images")
        ax.plot(pooled["minutes"], pooled["acc"], "s", color="black", markersize=8,
                label="the recorded run: out of fold, every image (minutes: all its models)")
        for n, (variant, points) in enumerate(other.groupby("variant", sort=False)):
            if (points["kind"] == "oof").all():
                ax.plot(points["minutes"], points["acc"], "D", color=f"C{n % 10}", markersize=6,
                        label=f"{variant} (all rows, minutes: all its models)")
            else:  # one model, then the ensemble
                ax.plot(points["minutes"], points["acc"], "x:", color=f"C{n % 10}", markersize=7,
                        label=f"{variant} (one validation split: mean of {points['models'].max()} models, "
                              "then together)")
        ax.set(xlabel="training minutes", ylabel="accuracy (%)", ylim=(low, top + 0.05))
        ax.grid(alpha=0.3)
    for _, row in run[run["recipe"] == "reference"].iterrows():
        axes[0].annotate("reference", (row["minutes"], row["acc"]), xytext=(6, -3), textcoords="offset points",
                         fontsize=8)
    axes[0].set_title("Accuracy against training time")
    axes[1].set_title("The top of it")
    axes[1].legend(loc="lower right", fontsize=6)
    fig.tight_layout()
    return fig


def write_accuracy_plot(experiments_csv: Path, path: Path, measured_tsv: Path = MEASURED) -> Path:
    """The accuracy-per-minute plot of a run (its experiments.csv) among the CPU ideas of experiments.tsv, as a PNG."""
    if not experiments_csv.is_file():
        raise ValueError(f"{experiments_csv}: not found; the executed notebook's run writes it beside the notebook.")
    measured = measured_points(pd.read_csv(measured_tsv, sep="\t"), "cpu") if measured_tsv.is_file() else None
    fig = plot_accuracy_vs_minutes(pd.read_csv(experiments_csv), measured)
    fig.savefig(path, dpi=80, metadata={"Software": None})  # no version stamp: the same inputs, the same bytes
    return path


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
    written.append(write_accuracy_plot(executed.parent / "experiments.csv", docs_dir / ACCURACY_PLOT))
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
    status = main()
    if status == 130:  # interrupted: end by SIGINT, as `make run` does, so that make says "Interrupt"
        run_notebook.end_by_sigint()
    sys.exit(status)
