"""The package's imports go one way: no module imports itself through others.

Every module of ``dip_lightning`` is parsed with :mod:`ast` and every import statement counts:
at module level, inside functions and under ``if TYPE_CHECKING:``. ``from pkg import name``
imports the submodule ``pkg.name`` when there is one, else ``pkg``; importing a module also
runs the ``__init__`` of each package above it that the importer is not itself inside. Any
cycle in that graph fails, printed. Subprocesses check what the light imports load.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = "dip_lightning"


def package_modules(root: Path = REPO / PACKAGE) -> dict[str, Path]:
    """Every module of the package: its dotted name (a package's is its ``__init__``'s)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def ancestors(name: str) -> list[str]:
    """The packages above module ``name``: ``a.b.c`` -> ``['a', 'a.b']``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of the package that importing ``name`` (at ``path``) runs, by its own
    import statements and the package ``__init__`` each of them runs first."""
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in modules else base)
    edges: set[str] = set()
    inside = set(ancestors(name)) | {name}
    for target in targets:
        while target and target not in modules:  # ``import a.b.name`` of a non-module name
            target = target.rpartition(".")[0]
        if not target.startswith(PACKAGE):
            continue
        edges.update(a for a in [*ancestors(target), target] if a not in inside)
        if target != name:
            edges.add(target)
    return edges


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imported(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as the list of its modules (the first repeated at the end)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The walker itself: function-level and TYPE_CHECKING imports, ``from pkg import
    submodule``, relative imports and the package ``__init__`` run on the way."""
    root = tmp_path / PACKAGE
    for folder in ("a", "b"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "a" / "x.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from dip_lightning.b.y import Y\n"
        "def f():\n    from dip_lightning.b import z\n"
    )
    (root / "b" / "y.py").write_text("from ..a import x\nclass Y: pass\n")
    (root / "b" / "z.py").write_text("import os\n")
    modules = package_modules(root)
    graph = {name: imported(name, path, modules) for name, path in modules.items()}
    assert graph["dip_lightning.a.x"] == {
        "dip_lightning.b",
        "dip_lightning.b.y",
        "dip_lightning.b.z",
    }
    assert graph["dip_lightning.b.y"] == {"dip_lightning.a", "dip_lightning.a.x"}
    assert find_cycle(graph) == ["dip_lightning.a.x", "dip_lightning.b.y", "dip_lightning.a.x"]
    (root / "b" / "y.py").write_text("class Y: pass\n")
    graph = {name: imported(name, path, modules) for name, path in modules.items()}
    assert find_cycle(graph) is None


def test_no_module_imports_itself_through_others() -> None:
    graph = import_graph()
    assert len(graph) > 40 and graph["dip_lightning.tasks.base"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_layers_import_downwards_only() -> None:
    """Callbacks import nothing of the tasks, degradations nothing of the data, and metrics
    neither of them."""
    graph = import_graph()
    rules = {
        "dip_lightning.callbacks": ("dip_lightning.tasks",),
        "dip_lightning.degradations": ("dip_lightning.data", "dip_lightning.tasks"),
        "dip_lightning.metrics": ("dip_lightning.tasks", "dip_lightning.callbacks"),
    }
    for layer, forbidden in rules.items():
        for name, targets in graph.items():
            if name == layer or name.startswith(layer + "."):
                wrong = sorted(t for t in targets if t.startswith(forbidden))
                assert not wrong, f"{name} imports {wrong}"


def loaded_by(statement: str) -> list[str]:
    """The package's modules in ``sys.modules`` after ``statement`` in a fresh interpreter."""
    code = (
        f"import sys, json\n{statement}\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({PACKAGE!r}))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout.splitlines()[-1]))


@pytest.mark.parametrize(
    ("statement", "forbidden"),
    [
        ("import dip_lightning.callbacks", "dip_lightning.tasks"),
        ("import dip_lightning.degradations", "dip_lightning.data"),
        ("import dip_lightning.metrics", "dip_lightning.tasks"),
    ],
)
def test_a_lower_layer_loads_alone(statement: str, forbidden: str) -> None:
    loaded = loaded_by(statement)
    assert statement.split()[-1] in loaded
    assert not [m for m in loaded if m == forbidden or m.startswith(forbidden + ".")], loaded


STEP_METHODS = {"training_step", "validation_step", "test_step", "predict_step", "optimizer_step"}


def step_methods(path: Path) -> list[str]:
    """``Class.method`` for each of Lightning's step methods a class of ``path`` defines."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                is_function = isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
                if is_function and item.name in STEP_METHODS:
                    found.append(f"{node.name}.{item.name}")
    return found


def test_the_loop_is_defined_once() -> None:
    """The steps of a fit live in ``tasks/base.py`` (``FitLoop``); no other module of the tasks
    defines one, and the loop's file stays small."""
    tasks = REPO / PACKAGE / "tasks"
    base = tasks / "base.py"
    assert step_methods(base) == ["FitLoop.training_step", "FitLoop.optimizer_step"]
    others = {p.name: step_methods(p) for p in sorted(tasks.glob("*.py")) if p != base}
    assert "batched.py" in others and "denoising.py" in others
    assert not any(others.values()), {k: v for k, v in others.items() if v}
    assert len(base.read_text().splitlines()) < 450


def test_step_methods_sees_a_definition(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("class A:\n    def training_step(self): ...\n    def other(self): ...\n")
    assert step_methods(source) == ["A.training_step"]
