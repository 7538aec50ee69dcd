"""The package's imports point one way. Read from the source with `ast` (nothing imported), counting
imports inside functions and under `TYPE_CHECKING` too: a cycle dodged by a late import is still a
cycle, and a layer that reaches up is found wherever the import sits."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "mhtrain"


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every project module `name` imports, wherever the import statement is."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                root = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*root, base] if base else root)
            # `from package import module` imports the module; `from module import name`, the module
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_in_the_package_counting_every_late_import():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path):
    """The check above can fail: two modules whose only link back is an import inside a function."""
    edges = {"a": {"b"}, "b": set(), "c": set()}
    (tmp_path / "b.py").write_text("def late():\n    from a import x\n")
    edges["b"] = {t for t in imports("b", tmp_path / "b.py", {"a": tmp_path, "b": tmp_path})}
    assert cycles(edges) == [["a", "b"]]


@pytest.mark.parametrize(("lower", "upper"), [
    ("mhtrain.study", "mhtrain.evaluate"),  # evaluate reads studies; a study never needs a report
    ("mhtrain.models", "mhtrain.study"),  # models and data know no Optuna
    ("mhtrain.data", "mhtrain.study"),
    ("mhtrain.population", "mhtrain.study"),  # fit of a population knows no Optuna either
    ("mhtrain.pbt", "mhtrain.study"),
    ("mhtrain.pbt", "mhtrain.population"),
])
def test_layers_import_only_downward(lower, upper):
    reach = {m: sorted(t for t in deps if t == upper or t.startswith(upper + "."))
             for m, deps in graph().items() if m == lower or m.startswith(lower + ".")}
    assert {m: t for m, t in reach.items() if t} == {}


def test_the_trial_lifecycle_knows_nothing_of_slurm():
    assert "mhtrain.study.slurm" not in graph()["mhtrain.study.lifecycle"]


@pytest.mark.parametrize("folder", ["bench", "studies"])
def test_every_mhtrain_name_the_scripts_import_exists(folder):
    """bench/ and studies/ import mhtrain as a user would; a module moved or renamed inside the
    package must not leave one of them importing a name that is gone (bench/ needs peers' packages
    to run, so its imports are checked by reading it)."""
    import importlib
    import importlib.util

    missing = []
    for path in sorted((ROOT / folder).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mhtrain":
                module = importlib.import_module(node.module)
                missing += [f"{path.name}: {node.module}.{a.name}" for a in node.names
                            if not hasattr(module, a.name) and
                            importlib.util.find_spec(f"{node.module}.{a.name}") is None]
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == "mhtrain" and importlib.util.find_spec(a.name) is None:
                        missing.append(f"{path.name}: {a.name}")
    assert missing == []
