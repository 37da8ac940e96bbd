"""The import direction of sdkit's layers (README, "Layout"), read from the source with `ast`: a module imports only
from its own layer or the ones below, and nothing but the interface imports the package root.

    leaf       version, errors, atomic, grids, progress          (import only each other and the standard library)
    shared     schema/ (leaf modules only), models, schedulers, training/, control/, data/, eval/, ...
    tasks      tasks/ (one runner per task, and the registry)
    jobs       jobs/ (recipe files: parse, run, dry-run)
    interface  cli/, server/, the package root (sdkit/__init__.py: the Python API), __main__
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sdkit

ROOT = Path(sdkit.__file__).parent
LEAVES = {"sdkit.version", "sdkit.errors", "sdkit.atomic", "sdkit.grids", "sdkit.progress"}
RANKS = {"leaf": 0, "shared": 1, "tasks": 2, "jobs": 3, "interface": 4}


def layer(module: str) -> str:
    if module in LEAVES:
        return "leaf"
    if module in ("sdkit", "sdkit.__main__") or module.startswith(("sdkit.cli", "sdkit.server")):
        return "interface"
    if module.startswith("sdkit.jobs"):
        return "jobs"
    if module.startswith("sdkit.tasks"):
        return "tasks"
    return "shared"


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, module) of every sdkit import in the file, at any depth (lazy imports inside functions count);
    `from sdkit import x` names the submodule sdkit.x when there is one, else the package root."""
    known = modules()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "sdkit"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "sdkit":
                continue
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.append((node.lineno, child if child in known else base))
    return found


def test_the_layer_table_knows_every_module() -> None:
    assert set(LEAVES) <= set(modules()), "a leaf module was renamed: update LEAVES"
    assert {layer(m) for m in modules()} == set(RANKS)


@pytest.mark.parametrize("module", sorted(modules()))
def test_imports_point_down(module: str) -> None:
    path = modules()[module]
    own = layer(module)
    for line, target in imports(module, path):
        where = f"{path.relative_to(ROOT.parent)}:{line} imports {target}"
        if target == "sdkit":
            assert own == "interface", f"{where}: the package root is the public API; import the module itself"
            continue
        assert RANKS[layer(target)] <= RANKS[own], f"{where}: a {layer(target)} module, above {own}"
        if own == "leaf":
            assert target in LEAVES, f"{where}: a leaf imports leaves only"
        if module.startswith("sdkit.schema"):
            assert target.startswith("sdkit.schema") or target in LEAVES or target == "sdkit.data.world", (
                f"{where}: schemas depend on leaves (and the shapes world's word lists) only"
            )
