"""The house plan as a test: qrdeploy's feature packages import one way (the rule table below, the
same as docs/architecture.md), no module imports itself back through others, and imports inside
functions are kept for optional heavy dependencies only (torch, matplotlib, and the torch side of
qrdeploy.train). Every import is read from the source with ast, those inside functions and
`if TYPE_CHECKING:` blocks included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "qrdeploy"

#: Layers from the bottom up: a package may import packages of lower layers and itself, nothing
#: of its own layer or above. (Top-level modules count as packages of their own name.)
LAYERS: list[set[str]] = [
    {"errors"},
    {"core"},
    {"data", "graphio"},
    {"hardening", "gradients"},
    {"model"},
    {"attacks"},
    {"evaluation", "spectral", "margins"},
    {"report", "gate", "train", "bitsearch"},
    {"paper"},
    {"commands"},
    {"cli"},
    {"api", "__main__"},
]
LAYER = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
#: Third-party modules that may be imported inside functions: optional extras and heavy imports.
LAZY_OK = {"torch", "torchvision", "matplotlib", "onnxruntime", "mlxtend", "safetensors", "ray"}
#: qrdeploy modules that need torch at import time; the deploy side imports them lazily.
TORCH_SIDE = ("qrdeploy.train.",)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package(module: str) -> str:
    """'qrdeploy.evaluation.runner' -> 'evaluation'; the package itself -> 'api'."""
    parts = module.split(".")
    return "api" if len(parts) == 1 else parts[1]


def _imports() -> dict[str, list[tuple[str, bool, int]]]:
    """module -> [(imported module, inside a function, line)] for qrdeploy imports and lazy
    third-party imports."""
    out: dict[str, list[tuple[str, bool, int]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found: list[tuple[str, bool, int]] = []
        lazy_nodes = {id(n) for fn in ast.walk(tree)
                      if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
                      for n in ast.walk(fn)}
        for node in ast.walk(tree):
            lazy = id(node) in lazy_nodes
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module == "qrdeploy":  # `from qrdeploy import x`: x may be a module
                    found += [(f"qrdeploy.{a.name}" if (PACKAGE / a.name).exists()
                               or (PACKAGE / f"{a.name}.py").exists() else "qrdeploy",
                               lazy, node.lineno) for a in node.names]
                else:
                    found.append((node.module, lazy, node.lineno))
            elif isinstance(node, ast.Import):
                found += [(a.name, lazy, node.lineno) for a in node.names]
        out[name] = found
    return out


IMPORTS = _imports()


def test_every_package_has_a_layer() -> None:
    packages = {_package(m) for m in IMPORTS}
    assert packages == set(LAYER), "add new packages to LAYERS (and docs/architecture.md)"


def _violations() -> list[str]:
    bad = []
    for module, found in IMPORTS.items():
        src = _package(module)
        for target, _, line in found:
            if not target.startswith("qrdeploy"):
                continue
            dst = _package(target)
            if dst == src:
                continue
            if LAYER[dst] >= LAYER[src]:
                bad.append(f"{module}:{line} imports {target} ({src} -> {dst})")
    return bad


def test_imports_go_one_way() -> None:
    assert _violations() == []


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph = {m: sorted({t for t, _, _ in f if t in IMPORTS and t != m})
             for m, f in IMPORTS.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_between_modules() -> None:
    assert _cycles() == []


def test_function_level_imports_only_for_optional_heavy_dependencies() -> None:
    bad = []
    for module, found in IMPORTS.items():
        for target, lazy, line in found:
            if not lazy:
                continue
            if target.startswith("qrdeploy"):
                if target.startswith(TORCH_SIDE) or target == "qrdeploy.train":
                    if not module.startswith("qrdeploy.train"):
                        continue  # the deploy side reaches torch code only when asked
                    if module == "qrdeploy.train":
                        continue  # `import qrdeploy.train` works without torch
                bad.append(f"{module}:{line} imports {target} inside a function")
            elif target.split(".")[0] not in LAZY_OK:
                bad.append(f"{module}:{line} imports {target} inside a function")
    assert bad == []


@pytest.mark.parametrize(("rule", "src", "dst"), [
    ("a lower package importing a higher one is refused", "qrdeploy.attacks.loop",
     "qrdeploy.evaluation.runner"),
    ("graph files never import the hardening passes", "qrdeploy.graphio.graph",
     "qrdeploy.hardening.passes"),
])
def test_the_rule_table_refuses_upward_imports(rule: str, src: str, dst: str) -> None:
    """The check itself can fail: an upward import added to the graph is reported."""
    IMPORTS[src].append((dst, False, 1))
    try:
        assert _violations() == [f"{src}:1 imports {dst} ({_package(src)} -> {_package(dst)})"], \
            rule
    finally:
        IMPORTS[src].pop()


def test_a_cycle_added_to_the_graph_is_found() -> None:
    IMPORTS["qrdeploy.core.stats"].append(("qrdeploy.core.fileio", False, 1))
    IMPORTS["qrdeploy.core.fileio"].append(("qrdeploy.core.stats", False, 1))
    try:
        assert ["qrdeploy.core.fileio", "qrdeploy.core.stats"] in _cycles()
    finally:
        IMPORTS["qrdeploy.core.stats"].pop()
        IMPORTS["qrdeploy.core.fileio"].pop()
