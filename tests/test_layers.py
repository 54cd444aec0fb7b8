"""Imports only point down the layers of docs/design.md, and no module imports itself round a cycle.

Every module of src/diffspace is parsed (imports inside functions included). A module may import its own
package and any lower rank; imports inside functions are kept for what is optional or heavy: modules
outside diffspace, and in cli/ (so `diffspace --help` answers without importing torch)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "diffspace"
RANKS = {
    "types": 0, "utils": 0, "rng": 0, "config": 0, "files": 0, "__init__": 0,
    "paths": 1, "nets": 1, "data": 1,
    "param": 2,
    "losses": 3, "samplers": 3,
    "discrete": 4, "families": 4,
    "train": 5,
    "eval": 6,
    "runs": 7,
    "cli": 8,
    "__main__": 9,
}


def _modules() -> dict[str, Path]:
    out = {}
    for f in SRC.rglob("*.py"):
        parts = f.relative_to(SRC.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _imports(f: Path, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported diffspace module, line, inside a function) for every import in file f."""
    tree = ast.parse(f.read_text())
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                for a in child.names:  # `from pkg import sub` imports the submodule pkg.sub
                    sub = f"{child.module}.{a.name}"
                    found.append((sub if sub in modules else child.module, child.lineno, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


def _rank(module: str) -> int:
    parts = module.split(".")
    return RANKS[parts[1] if len(parts) > 1 else "__init__"]


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _edges():
    modules = _modules()
    return modules, {m: _imports(f, modules) for m, f in modules.items()}


def test_every_package_has_a_rank():
    modules, _ = _edges()
    packages = {_package(m) or "__init__" for m in modules}
    assert packages <= set(RANKS), packages - set(RANKS)


def test_imports_point_down():
    modules, edges = _edges()
    bad = []
    for m, imports in edges.items():
        for target, line, in_function in imports:
            if not target.startswith("diffspace"):
                continue
            where = f"{modules[m].relative_to(SRC.parent)}:{line} imports {target}"
            if _package(target) != _package(m) and _rank(target) > _rank(m):
                bad.append(f"{where} (rank {_rank(m)} -> {_rank(target)})")
            if in_function and _package(m) != "cli":
                bad.append(f"{where} inside a function")
    assert not bad, "upward or hidden imports:\n" + "\n".join(bad)


def test_no_import_cycles():
    modules, edges = _edges()
    graph = {m: {t for t, _, _ in imports if t in modules and t != m} for m, imports in edges.items()}
    state, cycles = {}, []

    def walk(m, stack):
        state[m] = "open"
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                walk(t, stack + [t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            walk(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_argparse_lives_in_cli_only():
    for f in SRC.rglob("*.py"):
        if f.parent.name == "cli":
            continue
        text = f.read_text()
        assert "argparse" not in text and "Namespace" not in text, f
