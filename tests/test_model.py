"""The notebook's own model and training loop, executed from its tagged cells."""

from __future__ import annotations

import ast
import builtins
import dataclasses
import json
import re
import symtable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import (
    NOTEBOOK,
    learnable_digits,
    make_digits,
    notebook_namespace,
    run_notebook_in_process,
    write_test_csv,
    write_train_csv,
)
from mnist_helpers import Runtime, choose_runtime, make_loaders
from notebook_cells import notebook_code_cells


@pytest.fixture(scope="module")
def notebook():
    return notebook_namespace("imports", "model", "train-loop")


def test_model_has_340138_parameters_and_ten_logits(notebook):
    model = notebook["TwoConvCNN"]()
    assert sum(p.numel() for p in model.parameters()) == 340_138
    assert model(torch.zeros(5, 1, 28, 28)).shape == (5, 10)
    assert model(torch.zeros(1, 28, 28)).shape == (1, 10)  # an unbatched image, as torchinfo's reference call


def run_cell(tag: str, namespace: dict):
    """Execute the notebook cell tagged `tag` in namespace; return the value of its last line, as Jupyter shows it."""
    source = next(source for tags, source in notebook_code_cells(NOTEBOOK) if tag in tags)
    body = ast.parse(source)
    last = body.body.pop()
    exec(compile(body, f"[{tag}]", "exec"), namespace)
    return eval(compile(ast.Expression(last.value), f"[{tag}]", "eval"), namespace)


def test_the_summary_cells_print_the_reference_figures_and_the_hand_count_agrees(notebook, capsys):
    namespace = {**notebook, "device": torch.device("cpu"), "runtime": choose_runtime("cpu", fast=False)}
    unbatched = run_cell("summary", namespace)  # the reference's call, with one unbatched (1, 28, 28) image
    assert unbatched.total_params == 340_138 and round(unbatched.total_mult_adds / 1e6, 2) == 212.54
    table = str(unbatched)
    assert "Total params: 340,138" in table and re.search(r"Total mult-adds \(.*\): 212\.54", table)
    capsys.readouterr()
    batched = run_cell("mult-adds", namespace)  # a real batch of one, and both figures worked out by hand
    assert round(batched.total_mult_adds / 1e6, 2) == 14.21
    assert capsys.readouterr().out.splitlines()[:2] == [
        f"torchinfo, unbatched: {unbatched.total_mult_adds:,} mult-adds",  # 212,535,722
        f"real, per image:      {batched.total_mult_adds:,} mult-adds"]    # 14,207,402


def test_loss_falls_on_a_fixed_batch(notebook):
    # The notebook's own train_one_epoch, over one fixed batch of 32 images, 60 times: the loss falls only if the
    # loop runs forward, loss, backward and the optimizer's step (with zero_grad left out, Adam still gets there).
    torch.manual_seed(0)
    model, loss_fn, runtime = notebook["TwoConvCNN"](), nn.CrossEntropyLoss(), choose_runtime("cpu", fast=False)
    X, y = learnable_digits(32)
    one_batch, _ = make_loaders(X, y, None, None, batch_size=32, seed=0, runtime=runtime)
    optimizer, scaler = torch.optim.Adam(model.parameters(), lr=1e-3), runtime.grad_scaler()
    xb, yb = next(iter(one_batch))

    def loss_with_dropout_off() -> float:
        model.eval()
        with torch.no_grad():
            return loss_fn(model(xb), yb).item()

    before = loss_with_dropout_off()
    for _ in range(60):
        notebook["train_one_epoch"](model, one_batch, loss_fn, optimizer, scaler, runtime, log_every=0)
    assert loss_with_dropout_off() < 0.25 * before  # 0.0003 here; 0.36 after 20 epochs


def test_the_reference_trains_with_the_fused_adam_the_runtime_asks_for(tmp_path):
    # choose_runtime asks for it on CUDA (tests/test_fast_path.py); the CPU runs fused Adam too, so it shows here.
    X, y = make_digits(60)
    write_train_csv(tmp_path / "train.csv", X, y)
    write_test_csv(tmp_path / "test.csv", X[:10])
    parameters = {"DATA_DIR": str(tmp_path), "EPOCHS": 1, "PROGRESS": False, "LOSS_LINES": False,
                  "OUTPUT_DIR": str(tmp_path / "output")}
    for fused in (True, None):
        def with_fused(namespace, fused=fused):
            namespace["runtime"] = dataclasses.replace(namespace["runtime"], fused=fused)

        run = run_notebook_in_process(parameters, until_tag="train", after={"device": with_fused})
        assert run["optimizer"].defaults["fused"] is fused


@pytest.mark.parametrize("runtime", [choose_runtime("cpu", fast=False), choose_runtime("cpu", bf16=True),
                                     Runtime(torch.device("cpu"), fast=True, amp_dtype=torch.float16,
                                             channels_last=True, data_on_device=True)],
                         ids=["plain", "cpu-bf16", "fp16-with-grad-scaler"])
def test_loops_print_the_reference_lines_and_set_the_mode(notebook, capsys, runtime):
    torch.manual_seed(0)
    X, y = make_digits(50)  # few and small batches: this CPU has no fp16 arithmetic, so fp16 runs slowly here
    train_loader, valid_loader = make_loaders(X[:40], y[:40], X[40:], y[40:], batch_size=2, seed=0, runtime=runtime)
    model, loss_fn = runtime.prepare_model(notebook["TwoConvCNN"]()), nn.CrossEntropyLoss()
    optimizer, scaler = torch.optim.Adam(model.parameters(), lr=1e-3), runtime.grad_scaler()
    assert scaler.is_enabled() == (runtime.amp_dtype == torch.float16)

    train_loss, train_acc = notebook["train_one_epoch"](model, train_loader, loss_fn, optimizer, scaler, runtime,
                                                        log_every=5)
    assert model.training and train_loss > 0 and 0 <= train_acc <= 1
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())  # fp32 master weights
    valid_loss, valid_acc = notebook["evaluate"](model, valid_loader, loss_fn, runtime)
    assert not model.training and valid_loss > 0 and valid_acc in {k / 10 for k in range(11)}

    lines = capsys.readouterr().out.splitlines()
    assert [line[-13:] for line in lines[:4]] == ["[    2/   40]", "[   12/   40]", "[   22/   40]", "[   32/   40]"]
    assert all(re.fullmatch(r"loss: \d\.\d{6} \[ *\d+/ *\d+\]", line) for line in lines[:4]), lines
    assert re.fullmatch(r"acc: \d+\.\d{2}%, average_loss: \d\.\d{6}", lines[4]), lines
    assert lines[4] == f"acc: {100 * valid_acc:.2f}%, average_loss: {valid_loss:.6f}"


def test_model_accepts_channels_last_and_gives_the_same_logits(notebook):
    torch.manual_seed(0)
    model = notebook["TwoConvCNN"]().eval()
    xb = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        expected = model(xb)
        model = model.to(memory_format=torch.channels_last)
        got = model(xb.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_bf16_training_learns_like_fp32(notebook, capsys):
    """A few epochs on a learnable toy task: the bf16 fast path reaches the accuracy of the plain path."""
    rng = np.random.default_rng(0)
    y = np.arange(400) % 10
    X = np.zeros((400, 784), dtype=np.uint8)
    for i, label in enumerate(y):  # digit k lights up a bar in row band k, plus noise
        image = rng.integers(0, 60, (28, 28))
        image[2 + 2 * label: 4 + 2 * label, 4:24] = 255
        X[i] = image.ravel()
    curves: dict[str, list] = {"plain": [], "bf16": []}
    # Three seeds: one run's epoch-4 training loss swings by half with nothing but its arithmetic changed (Adam
    # blows the last bits up; seed 4 of the old pipeline, and seed 0 of this one, each alone miss the tolerance);
    # their mean curve is the precision's, which is what is compared.
    runtimes = {"plain": choose_runtime("cpu", fast=False), "bf16": choose_runtime("cpu", bf16=True)}
    for seed in range(3):
        runs = {}
        for name, runtime in runtimes.items():
            torch.manual_seed(seed)  # the same initial weights and dropout for both; make_loaders: the same batches
            train_loader, valid_loader = make_loaders(X[:300], y[:300], X[300:], y[300:], batch_size=20, seed=seed,
                                                      runtime=runtime)
            model, loss_fn = runtime.prepare_model(notebook["TwoConvCNN"]()), nn.CrossEntropyLoss()
            optimizer, scaler = torch.optim.Adam(model.parameters(), lr=2e-3), runtime.grad_scaler()
            train_losses = [notebook["train_one_epoch"](model, train_loader, loss_fn, optimizer, scaler, runtime)[0]
                            for _ in range(4)]
            runs[name] = (train_losses, *notebook["evaluate"](model, valid_loader, loss_fn, runtime))
            curves[name].append(train_losses)
        (_, plain_valid_loss, plain_acc), (_, bf16_valid_loss, bf16_acc) = runs["plain"], runs["bf16"]
        assert plain_acc >= 0.9, runs  # the task is learnt at all, so that the comparison means something
        assert abs(bf16_acc - plain_acc) <= 0.03, runs  # at most 3 of the 100 validation images apart
        assert abs(bf16_valid_loss - plain_valid_loss) <= 0.05 + 0.25 * plain_valid_loss, runs
    np.testing.assert_allclose(np.mean(curves["bf16"], axis=0), np.mean(curves["plain"], axis=0), rtol=0.5,
                               atol=0.05, err_msg=str(curves))  # epoch by epoch, the same curve


# --- The notebook's functions and classes take what they use as arguments -------------------------------------

COMPREHENSIONS = {"listcomp", "setcomp", "dictcomp", "genexpr"}  # their own scopes, but part of the code around them


def definition_time_names(tree: ast.Module) -> dict[str, set[str]]:
    """Names a module-level def or class reads when it is defined: decorators, defaults, annotations, bases.

    symtable counts those as reads of the cell itself, but they are the function's or the class's: a default of
    BATCH_SIZE freezes the notebook's value into it.
    """
    found: dict[str, set[str]] = {}
    statements = list(tree.body)
    while statements:
        node = statements.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if isinstance(node, ast.ClassDef):
                parts = [*node.decorator_list, *node.bases, *(keyword.value for keyword in node.keywords)]
            else:
                arguments = node.args
                every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs,
                         *filter(None, (arguments.vararg, arguments.kwarg))]
                parts = [*node.decorator_list, *arguments.defaults, *filter(None, arguments.kw_defaults),
                         *filter(None, (argument.annotation for argument in every)), *filter(None, [node.returns])]
            found[node.name] = {name.id for part in parts for name in ast.walk(part)
                                if isinstance(name, ast.Name) and isinstance(name.ctx, ast.Load)}
        else:  # module-level if, for, with, try: their bodies are module level too
            statements += [child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt)]
    return found


def hidden_globals(notebook: Path) -> list[str]:
    """Every read of a notebook global by a function or class of the notebook, one line each; [] when none.

    Allowed: builtins, what the notebook imports, and the functions and classes it defines. Anything else (a
    parameter such as BATCH_SIZE, runtime, output_dir, X_train, RESUME) exists only in a full run of the notebook,
    so a caller that runs the cells into its own namespace, as the tests and the benchmarks do, cannot see it.
    """
    cells = [(",".join(tags) or "untagged", source) for tags, source in notebook_code_cells(notebook)]
    tops = [symtable.symtable(source, f"[{tag}]", "exec") for tag, source in cells]
    allowed = set(dir(builtins)) | {symbol.get_name() for top in tops for symbol in top.get_symbols()
                                    if symbol.is_imported() or symbol.is_namespace()}

    def own(table: symtable.SymbolTable) -> set[str]:
        """Globals this scope reads or writes, with those of the comprehensions inside it."""
        names = {symbol.get_name() for symbol in table.get_symbols()
                 if symbol.is_global() and (symbol.is_referenced() or symbol.is_assigned())}
        for child in table.get_children():
            if child.get_type() not in ("function", "class") or child.get_name() in COMPREHENSIONS:
                names |= own(child)
        return names

    problems = []

    def visit(table: symtable.SymbolTable, outer: str, tag: str, at_definition: dict[str, set[str]]) -> None:
        for child in table.get_children():
            if child.get_type() in ("function", "class") and child.get_name() not in COMPREHENSIONS:
                name = f"{outer}.{child.get_name()}" if outer else child.get_name()
                kind = "class" if child.get_type() == "class" else "function"
                for hidden in sorted((own(child) | at_definition.get(name, set())) - allowed):
                    problems.append(f"{kind} {name} (cell [{tag}]) reads the notebook global {hidden}")
                visit(child, name, tag, {})
            else:
                visit(child, outer, tag, {})

    for (tag, source), top in zip(cells, tops):
        visit(top, "", tag, definition_time_names(ast.parse(source)))
    return problems


def test_the_notebooks_functions_and_classes_read_no_notebook_globals():
    """train_member and the rest take what they use as arguments, so experiments.py can call them as they are."""
    tops = [symtable.symtable(source, f"[{tags}]", "exec") for tags, source in notebook_code_cells(NOTEBOOK)]
    defined = {symbol.get_name() for top in tops for symbol in top.get_symbols() if symbol.is_namespace()}
    assert {"TwoConvCNN", "train_one_epoch", "evaluate", "fit", "StrongerCNN", "Recipe", "train_member",
            "train_kfold"} <= defined
    assert hidden_globals(NOTEBOOK) == []


def test_a_function_that_reads_a_notebook_global_is_named_with_the_global(tmp_path):
    """The check above can fail: a copy of the notebook where some functions and classes read globals."""
    plants = {  # cell tag: (the notebook's text, the same with a notebook global read instead)
        "model": [("return self.fc3(x)", "return self.fc3(x).to(device)")],             # TwoConvCNN.forward
        "train-loop": [("verbose=True):", "verbose=LOSS_LINES):"),                       # evaluate's default
                       ("for xb, yb in loader:", "for xb, yb in [batch for batch in valid_loader]:")],  # in a listcomp
        "model-best": [("bias=False)", "bias=not runtime.fast)")],                      # StrongerCNN.__init__.conv
        "best-recipe": [("    batch_size: int\n", "    batch_size: int = BATCH_SIZE\n")],  # Recipe's class body
        "best-kfold": [("recipe.batch_size, member.seed,", "BATCH_SIZE, member.seed,"),       # train_member
                       ("resume=resume, progress=progress)", "resume=RESUME, progress=progress)")],  # train_kfold
    }
    notebook = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    for cell in notebook["cells"]:
        for tag in cell["metadata"].get("tags", []):
            source = "".join(cell["source"])
            for old, new in plants.pop(tag, []):
                assert source.count(old) == 1, (tag, old)
                source = source.replace(old, new)
            cell["source"] = source
    assert not plants
    broken = tmp_path / "digit_recognizer.ipynb"
    broken.write_text(json.dumps(notebook), encoding="utf-8")
    assert hidden_globals(broken) == [
        "function TwoConvCNN.forward (cell [model]) reads the notebook global device",
        "function evaluate (cell [train-loop]) reads the notebook global LOSS_LINES",
        "function evaluate (cell [train-loop]) reads the notebook global valid_loader",
        "function StrongerCNN.__init__.conv (cell [model-best]) reads the notebook global runtime",
        "class Recipe (cell [best-recipe]) reads the notebook global BATCH_SIZE",
        "function train_member (cell [best-kfold]) reads the notebook global BATCH_SIZE",
        "function train_kfold (cell [best-kfold]) reads the notebook global RESUME",
    ]
