"""The package reads as the pipeline: every import runs down the floors of docs/DEVELOPING.md (never up, never
sideways between stages that stand side by side), no Python file is over 500 lines, and the views import no torch.

Imports are read from the source (``ast``), lazy ones inside functions included, so an arrow hidden in a function
body counts as much as one at the top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "attnsae"

# each top-level module or folder of the package -> its floor; stages on one floor never import each other
FLOORS: dict[str, int] = {
    "errors": 0,
    "io": 1, "downloads": 1, "memory": 1,
    "corpus": 2,
    "models": 3,
    "activations": 4,
    "sae": 5,
    "attribution": 6, "evals": 6, "training": 6,
    "studies": 7, "graph": 7,
    "views": 8,
    "serve": 9, "jobs": 9,
    "cli": 10,
}
# modules above every floor: the package's own entry points
ENTRY = {"__init__", "__main__"}
# the shared helpers of a floor that the other stages of that floor may use
SHARED = {"io", "downloads", "memory"}


def stage_of(module: str) -> str:
    """``attnsae.models.zoo`` -> ``models``; ``attnsae`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _typing_only(tree: ast.AST) -> set[ast.AST]:
    """The import nodes under ``if TYPE_CHECKING:`` (never run)."""
    return {n for block in ast.walk(tree) if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
            for stmt in block.body for n in ast.walk(stmt)}


def imports_of(path: Path, run_only: bool = False) -> list[tuple[str, int]]:
    """``[(attnsae module imported, line)]`` of one source file, at any depth (lazy imports too); ``run_only``:
    without those under ``if TYPE_CHECKING:``."""
    module = "attnsae." + ".".join(path.relative_to(SRC).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    package = package.removesuffix(".__init__")
    found = []
    tree = ast.parse(path.read_text(), str(path))
    skip = _typing_only(tree) if run_only else set()
    for node in ast.walk(tree):
        if node in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            found += [(t, node.lineno) for t in names if t.split(".")[0] == "attnsae"]
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "attnsae"]
    return found


def source_files() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "reference" not in p.parts)


def test_every_import_runs_down_the_floors():
    bad = []
    for path in source_files():
        here = "__init__" if path == SRC / "__init__.py" else "__main__" if path == SRC / "__main__.py" \
            else path.relative_to(SRC).parts[0].removesuffix(".py")
        for target, line in imports_of(path):
            there = stage_of(target)
            if here in ENTRY or there == here or there == "__init__" and target == "attnsae":
                continue
            if there in ENTRY:
                bad.append(f"{path.relative_to(SRC)}:{line} imports {target} (the package's entry point)")
            elif FLOORS[there] > FLOORS[here]:
                bad.append(f"{path.relative_to(SRC)}:{line} imports {target}: {here} (floor {FLOORS[here]}) "
                           f"reaches up to {there} (floor {FLOORS[there]})")
            elif FLOORS[there] == FLOORS[here] and there not in SHARED:
                bad.append(f"{path.relative_to(SRC)}:{line} imports {target}: {here} and {there} stand side by "
                           "side")
    assert not bad, "\n".join(bad)


def test_every_stage_has_a_floor():
    stages = {p.name.removesuffix(".py") for p in SRC.iterdir()
              if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())) and p.name != "reference"}
    assert stages - ENTRY == set(FLOORS)


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(SRC)))
def test_no_python_file_is_over_500_lines(path):
    n = len(path.read_text().splitlines())
    assert n <= 500, f"{path.relative_to(SRC)} has {n} lines: split it by idea"


def test_views_import_no_torch():
    """The views take data, so they load without torch: every module they reach, transitively, is torch-free."""
    graph: dict[str, set[str]] = {}
    for path in source_files():
        module = "attnsae." + ".".join(path.relative_to(SRC).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        typing_only = _typing_only(tree)
        run = [n for n in ast.walk(tree) if n not in typing_only]
        third = {a.name.split(".")[0] for n in run if isinstance(n, ast.Import) for a in n.names}
        third |= {(n.module or "").split(".")[0] for n in run if isinstance(n, ast.ImportFrom) and not n.level}
        graph[module] = {t for t, _ in imports_of(path, run_only=True)} | ({"torch"} if "torch" in third else set())

    def reaches_torch(module: str, seen: set[str]) -> list[str] | None:
        for target in graph.get(module, ()):
            if target == "torch":
                return [module]
            parts = target.split(".")  # importing a module runs its packages' __init__ first
            for candidate in (".".join(parts[:i]) for i in range(len(parts), 1, -1)):
                if candidate in graph and candidate not in seen:
                    seen.add(candidate)
                    path = reaches_torch(candidate, seen)
                    if path:
                        return [module, *path]
        return None

    for module in sorted(m for m in graph if m.startswith("attnsae.views")):
        chain = reaches_torch(module, {module})
        assert chain is None, " -> ".join(chain) + " -> torch"
