"""The engine's layering (DESIGN.md, "Layering"), read from the source with `ast`: no module of `harness/` except the
leaves (the CLI, `harness/bench/`) imports a plugin package (`methods`, `benchmarks`) at module level, and no project
modules import each other in a cycle at module level. Lazy imports inside functions are the registry lookups."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "methods", "benchmarks", "sweeps", "reports")
PLUGINS = ("methods", "benchmarks")
LEAVES = ("harness.cli", "harness.cliargs", "harness.cliparsers", "harness.bench")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_imports() -> dict[str, set[str]]:
    """{module: project modules it imports at module level (TYPE_CHECKING blocks excepted)}."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            deps = set()
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
                    continue
                for n in node.body if isinstance(node, ast.Try) else [node]:
                    names = ([a.name for a in n.names] if isinstance(n, ast.Import) else
                             [n.module] if isinstance(n, ast.ImportFrom) and n.module and not n.level else [])
                    deps |= {m for m in names if m.split(".")[0] in PACKAGES}
            out[_module(path)] = deps
    return out


def _owner(name: str, modules: set[str]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def test_the_engine_imports_no_plugin_at_module_level():
    found = {(m, d) for m, deps in module_imports().items() for d in deps
             if m.startswith("harness") and not m.startswith(LEAVES) and d.split(".")[0] in PLUGINS}
    assert not found, f"engine modules importing plugins at module level: {sorted(found)}"


def test_no_import_cycle_among_project_modules():
    imports = module_imports()
    graph = {m: {o for d in deps if (o := _owner(d, set(imports))) and o != m} for m, deps in imports.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:  # d is on the path that led to m
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(d):] + [m, d]))
            if d not in state:
                visit(d, path + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_the_walk_sees_a_real_import():
    """Guard against a walk that finds nothing: the engine's run module imports the contract beside it."""
    assert "harness.method" in module_imports()["harness.engine"]
