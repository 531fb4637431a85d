#!/usr/bin/env python
"""`make figures`: a full RECIPE="best" run kept as docs/digit_recognizer.executed.ipynb, and the figures of docs/.

    python tools/make_figures.py [-p NAME VALUE ...]   # runs the notebook (about 30 min on 2 CPU cores) first
    python tools/make_figures.py --from output/figures/digit_recognizer.ipynb   # or takes a notebook already executed
    python tools/make_figures.py --plot-only    # only docs/accuracy-vs-minutes.png, after a new experiment

The notebook's figures are its own PNG outputs, cut from the executed copy byte for byte, so they always show what
that run drew. The copy is cleaned for GitHub: no widget state, no per-cell timing metadata, and paths inside the
repository shown relative to it (in papermill's record of the run and in what the cells printed). One more figure,
docs/accuracy-vs-minutes.png, draws the recipes that benchmarks/experiments.py measured out of fold on one machine
(benchmarks/experiments.tsv) as accuracy against minutes, with their frontier, for docs/experiments.md: those of
the machine that the run was made on (this one, or --machine), with that run's own out-of-fold figure (its
experiments.csv, beside the executed notebook) as a star. Where none was measured there, and with --plot-only, it
draws the machine with the most recipes, and no star: minutes compare only on one machine.
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
POINT_COLUMNS = ["machine", "idea", "models", "acc", "error", "minutes", "frontier"]  # frontier_points' columns
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


def frontier_points(measured: pd.DataFrame, machine: str | None = None) -> pd.DataFrame:
    """One point per recipe that benchmarks/experiments.py measured out of fold on one machine (by default the one
    with the most recipes, of those the one measured last): raw weights, no TTA, its latest run; accuracy and standard
    error in percent, wall minutes, and whether it is on the frontier (no point as fast or faster is as accurate)."""
    kind = measured["kind"] if "kind" in measured else pd.Series(index=measured.index, dtype=object)
    wall = measured["wall_minutes"] if "wall_minutes" in measured else pd.Series(index=measured.index, dtype=float)
    rows = measured[kind.isin(["oof", "oof-avg"]) & (measured["weights"] == "raw") & (measured["tta"] == "none")
                    & wall.notna() & (kind.eq("oof-avg") | measured["seed"].eq("round 1"))]
    if rows.empty:
        return pd.DataFrame(columns=POINT_COLUMNS)
    if machine is None:  # one machine's minutes only: the one with the most recipes, ties to the one measured last
        recipes = rows.drop_duplicates(["machine", "idea", "kind"]).groupby("machine", sort=False).size()
        machine = max(recipes.index, key=lambda name: (recipes[name], rows.index[rows["machine"] == name].max()))
    rows = rows[rows["machine"] == machine].drop_duplicates(["idea", "kind"], keep="last")
    points = pd.DataFrame({"machine": rows["machine"], "idea": rows["idea"], "models": rows["models"].astype(int),
                           "acc": 100 * rows["valid_acc"], "error": 100 * rows["std_error"],
                           "minutes": rows["wall_minutes"].astype(float)}).sort_values(
        ["minutes", "acc"], ascending=[True, False], ignore_index=True)
    # One model a row: a point is on the frontier if every point as fast or faster is less accurate.
    single = points["models"] == 1
    best_before = points["acc"].where(single).cummax().shift(fill_value=-1.0)
    points["frontier"] = single & (points["acc"] > best_before)
    return points[POINT_COLUMNS]


def plot_accuracy_vs_minutes(points: pd.DataFrame, recorded: pd.DataFrame | None = None):
    """Out-of-fold accuracy (± 1 standard error) against wall minutes, one point per recipe, with the frontier, and
    the recorded run (its experiments.csv) as a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    single, averaged = points[points["models"] == 1], points[points["models"] > 1]
    ax.errorbar(single["minutes"], single["acc"], yerr=single["error"], fmt="o", color="C0", capsize=3,
                label="a recipe: one model a row, ± 1 standard error")
    if len(averaged):
        ax.errorbar(averaged["minutes"], averaged["acc"], yerr=averaged["error"], fmt="s", color="C2", capsize=3,
                    mfc="none", label="the same, ROUNDS = 2: each row by the average of the 2 models that never saw it")
    frontier = points[points["frontier"].astype(bool)]
    ax.plot(frontier["minutes"], frontier["acc"], "-", color="C1", label="the frontier: nothing faster is better")
    for _, point in points.iterrows():
        ax.annotate(point["idea"], (point["minutes"], point["acc"]), xytext=(5, 4), textcoords="offset points",
                    fontsize=8)
    if recorded is not None:
        run = recorded[recorded["recipe"] == "best, out of fold"]
        if len(run) and "wall_seconds" in run:
            ax.plot(run["wall_seconds"] / 60, 100 * run["valid_acc"], "*", color="black", markersize=13,
                    label="the recorded run (make figures)")
    ax.set(xlabel="minutes to train every model of the recipe (wall, with its WORKERS)",
           ylabel="out-of-fold accuracy over all rows (%)",
           title="Accuracy against training time" + (f", on {points['machine'].iloc[0]}" if len(points) else ""))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def write_accuracy_plot(experiments_csv: Path | None, path: Path, measured_tsv: Path | None = None,
                        machine: str | None = None) -> Path:
    """The frontier of the recipes measured out of fold on machine (experiments.tsv), with the figure of a run made
    there (its experiments.csv) as a star; with neither, the machine with the most recipes and no star."""
    if experiments_csv is not None and not experiments_csv.is_file():
        raise ValueError(f"{experiments_csv}: not found; the executed notebook's run writes it beside the notebook.")
    measured_tsv = measured_tsv or MEASURED
    measured = pd.read_csv(measured_tsv, sep="\t") if measured_tsv.is_file() else None
    points = frontier_points(measured, machine) if measured is not None else pd.DataFrame(columns=POINT_COLUMNS)
    recorded = None if experiments_csv is None else pd.read_csv(experiments_csv)
    if measured is not None and machine is not None and points.empty:  # the run's minutes compare with none here
        elsewhere = frontier_points(measured)
        if not elsewhere.empty:  # so another machine's recipes, without the run; with none anywhere, the run alone
            points, recorded = elsewhere, None
            print(f"note: {measured_tsv.name} has no recipe measured on {machine}, the machine of the run, so the "
                  f"plot shows {points['machine'].iloc[0]}'s, without the run")
    fig = plot_accuracy_vs_minutes(points, recorded)
    fig.savefig(path, dpi=80, metadata={"Software": None})  # no version stamp: the same inputs, the same bytes
    return path


def this_machine() -> str:
    """This machine, as benchmarks/experiments.py names it in experiments.tsv (its CPU and threads, or its GPU)."""
    if str(PROJECT_DIR / "benchmarks") not in sys.path:  # here, not at import: the script imports torch
        sys.path.append(str(PROJECT_DIR / "benchmarks"))
    from experiments import machine

    return machine()


def write_docs(executed: Path, docs_dir: Path = DOCS_DIR, machine: str | None = None) -> list[Path]:
    """Clean the executed notebook into docs_dir and cut the README's figures from it, its run made on machine
    (default: this one); returns the files written."""
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
    # The run's minutes compare with those measured on its own machine only
    written.append(write_accuracy_plot(executed.parent / "experiments.csv", docs_dir / ACCURACY_PLOT,
                                       machine=machine or this_machine()))
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
    parser.add_argument("--plot-only", action="store_true",
                        help=f"draw only {ACCURACY_PLOT}, from benchmarks/experiments.tsv: the machine with the most "
                             "recipes, no run's star (default: run or take a notebook, and write every figure)")
    parser.add_argument("--machine", help="the machine --from's run was made on, as benchmarks/experiments.tsv names "
                                          "it, e.g. 'AMD EPYC, 2 threads' (default: this one)")
    parser.add_argument("--docs-dir", type=Path, default=DOCS_DIR, help="where to write (default: docs/)")
    args = parser.parse_args(argv)
    executed = args.executed
    if executed is not None and args.parameter:
        parser.error("--from takes a notebook already executed, so -p has nothing to set; give one or the other")
    if args.plot_only and (executed is not None or args.parameter or args.machine):
        parser.error("--plot-only draws from benchmarks/experiments.tsv alone: --from, -p and --machine have nothing "
                     "to do")
    if args.machine and executed is None:
        parser.error("--machine names the machine of --from's run; a run made now is made on this one")
    if args.plot_only:
        args.docs_dir.mkdir(parents=True, exist_ok=True)
        path = write_accuracy_plot(None, args.docs_dir / ACCURACY_PLOT)
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")
        return 0
    if executed is None:
        parameters = dict([("RECIPE", "best"), ("OUTPUT_DIR", RUN_DIR), *map(tuple, args.parameter)])
        status = run_notebook.main([part for pair in parameters.items() for part in ("-p", *pair)])
        if status:
            return status
        executed = PROJECT_DIR / parameters["OUTPUT_DIR"] / run_notebook.NOTEBOOK.name
    try:
        written = write_docs(executed, args.docs_dir, args.machine)
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
