"""The package's shape, read from the code (an AST walk, every import at any depth): arrows only point down the
layers of docs/design.md, no module imports itself through others, every module imports, `from gvu` imports sit at
module top except in the one lazy place (the CLI, so that `gvu --help` stays fast), and no file or function grows
past the sizes the design allows."""

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "gvu"
# bottom to top; argcheck is stdlib-only argument parsing and datafile the weights-only reader of run files (torch
# only), both usable by any layer
LAYERS = ("argcheck", "datafile", "world", "eval", "models", "reward", "rl", "analysis", "demo", "perf", "cli")
LAZY_OK = {"gvu.cli"}  # the CLI imports each command's library code when the command runs
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 60
LONG_OK = {("gvu.cli", "build_parser")}  # the argument parser: one flat list of commands and flags


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = modules()


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def gvu_imports(module: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported gvu module, line, at module top) for every import of a gvu module, at any depth."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "gvu" and name != "gvu":
                while name not in MODULES and "." in name:
                    name = name.rpartition(".")[0]
                found.append((name, node.lineno, id(node) in top))
    return found


GRAPH = {m: gvu_imports(m, p) for m, p in MODULES.items()}


def test_the_layers_cover_the_package():
    assert {layer(m) for m in MODULES} - {None} == set(LAYERS)


def test_arrows_point_down():
    up = [f"{m}:{line} imports {t} ({layer(t)} is above {layer(m)})"
          for m, edges in GRAPH.items() for t, line, _ in edges
          if layer(m) and layer(t) and LAYERS.index(layer(t)) > LAYERS.index(layer(m))]
    assert not up, "\n".join(up)


def test_no_import_cycle():
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]):
        state[m] = 1
        for t, _, _ in GRAPH.get(m, []):
            if t == m:
                continue
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in MODULES:
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_gvu_imports_at_module_top():
    lazy = [f"{m}:{line} imports {t} inside a function" for m, edges in GRAPH.items() if m not in LAZY_OK
            for t, line, at_top in edges if not at_top]
    assert not lazy, "\n".join(lazy)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_imports(module):
    importlib.import_module(module)


def test_sizes():
    big = []
    for m, path in MODULES.items():
        text = path.read_text()
        if text.count("\n") > MAX_FILE_LINES:
            big.append(f"{path.relative_to(ROOT.parent)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (m, node.name) not in LONG_OK:
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    big.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} {node.name}: {n} lines")
    assert not big, "\n".join(big)
