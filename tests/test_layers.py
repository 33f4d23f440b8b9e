"""vggt_bench's layers: every import points down the layers, and no modules import each other in a cycle.

Each module belongs to the layer of its subpackage (``vggt_bench.measure.run`` to ``measure``);
a module may import its own layer and the layers below it, never one above. Every import counts:
at module level and inside functions (an import inside a function still ties the two modules
together, it only hides the tie until the call), relative and absolute.
"""

from __future__ import annotations

import ast
import os
from typing import Dict, List, Optional, Set, Tuple

import vggt_bench

ROOT = os.path.dirname(os.path.abspath(vggt_bench.__file__))
PACKAGE = "vggt_bench"
# Bottom first. The package itself (vggt_bench/__init__.py, __main__.py) sits on top.
LAYERS = ["core", "measure", "profiling", "analysis", "report", "launch", "commands", "cli", "__main__"]

Import = Tuple[str, int, str]  # (imported module, line, the import as written)


def modules() -> Dict[str, str]:
    """``{dotted module name: file path}`` of every module of the package."""
    found = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, ROOT)[: -len(".py")].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                found[".".join([PACKAGE] + parts)] = path
    return found


def layer(module: str) -> Optional[int]:
    """The module's layer (its index in LAYERS), len(LAYERS) for the package itself, None for none."""
    parts = module.split(".")
    if len(parts) == 1:
        return len(LAYERS)
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else None


def _known(name: str, known: Set[str]) -> Optional[str]:
    """The module a dotted name imports: itself, else its longest prefix that is a module."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str, path: str, known: Set[str]) -> List[Import]:
    """Every import of ``module`` that names a module of the package, wherever it is in the file."""
    with open(path) as f:
        source = f.read()
    tree = ast.parse(source, path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found: List[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from x import y` imports x, and x.y where y is a module; x is left out where it is this
            # module's own package or one above it: Python initialises those before this module anyway
            own = module == base or module.startswith(base + ".")
            names = ([] if own else [base]) + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        text = ast.get_source_segment(source, node) or ""
        for name in names:
            target = _known(name, known) if name.split(".")[0] == PACKAGE else None
            if target is not None and target != module and (target, node.lineno, text) not in found:
                found.append((target, node.lineno, text))
    return found


def graph() -> Tuple[Dict[str, str], Dict[str, List[Import]]]:
    files = modules()
    return files, {m: imports(m, path, set(files)) for m, path in files.items()}


def cycles(edges: Dict[str, List[Import]]) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target, _, _ in edges.get(node, []):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_every_module_is_in_a_layer():
    files, _ = graph()
    outside = sorted(m for m in files if layer(m) is None)
    assert not outside, f"modules in no layer (LAYERS: {', '.join(LAYERS)}): {', '.join(outside)}"


def test_imports_point_down_the_layers():
    files, edges = graph()
    upward = []
    for module, found in sorted(edges.items()):
        mine = layer(module)
        for target, line, text in found:
            theirs = layer(target)
            if mine is not None and theirs is not None and theirs > mine:
                upward.append(f"{os.path.relpath(files[module], os.path.dirname(ROOT))}:{line}: {text!r} imports "
                              f"{target} ({LAYERS[theirs]}), above {module}'s layer ({LAYERS[mine]})")
    assert not upward, "imports pointing up a layer:\n" + "\n".join(upward)


def test_no_import_cycles():
    files, edges = graph()
    found = []
    for component in cycles(edges):
        members = set(component)
        ties = [f"  {os.path.relpath(files[m], os.path.dirname(ROOT))}:{line}: {text!r}"
                for m in component for target, line, text in edges[m] if target in members]
        found.append(" <-> ".join(component) + "\n" + "\n".join(ties))
    assert not found, "import cycles:\n" + "\n".join(found)


def test_no_module_imports_another_ones_private_names():
    """A name with a leading underscore is its module's own: code another module needs is public."""
    files, _ = graph()
    private = []
    for module, path in sorted(files.items()):
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith(PACKAGE)):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        private.append(f"{os.path.relpath(path, os.path.dirname(ROOT))}:{node.lineno}: {alias.name}")
    assert not private, "private names imported from another module:\n" + "\n".join(private)


def test_the_walk_sees_imports_inside_functions_and_relative_ones(tmp_path):
    """The walk itself: a relative import inside a function is an edge, and a cycle is found."""
    known = {"vggt_bench.measure.a", "vggt_bench.measure.b", "vggt_bench.core.c"}
    a = tmp_path / "a.py"
    a.write_text("def f():\n    from .b import g\n    from ..core import c\n")
    found = imports("vggt_bench.measure.a", str(a), known)
    assert [(t, line) for t, line, _ in found] == [("vggt_bench.measure.b", 2), ("vggt_bench.core.c", 3)]
    edges = {"vggt_bench.measure.a": found, "vggt_bench.measure.b": [("vggt_bench.measure.a", 1, "import")]}
    assert cycles(edges) == [["vggt_bench.measure.a", "vggt_bench.measure.b"]]
