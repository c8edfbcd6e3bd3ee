"""The package's shape, read from the code (an AST walk, every import at any depth): arrows only point down the
layers of docs/design.md, the rooms of gvu.models keep apart above their contract, no module imports itself through
others, every module imports, `from gvu` imports sit at module top except in the one lazy place (the CLI, so that
`gvu --help` stays fast), and no file or function grows past the sizes the design allows."""

import ast
import importlib
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "gvu"
# bottom to top; argcheck is stdlib-only argument parsing and datafile the weights-only reader of run files (torch
# only), both usable by any layer
LAYERS = ("argcheck", "datafile", "world", "eval", "models", "reward", "rl", "analysis", "demo", "perf", "cli")
LAZY_OK = {"gvu.cli"}  # the CLI imports each command's library code when the command runs
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 60
LONG_OK = {("gvu.cli", "build_parser")}  # the argument parser: one flat list of commands and flags
# gvu.models in rooms: the top-level modules are the contract and its plumbing; each room uses the contract and
# never the other room; the contract never imports a room; the spec loader names every kind's loader, so it alone
# imports the rooms, and no room imports it
ROOMS = ("builtin", "adapters")
LOADER = "gvu.models.load"


def modules(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = modules()


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def gvu_imports(module: str, path: Path,
                known: dict[str, Path] | None = None) -> list[tuple[str, int, bool]]:
    """(imported gvu module, line, at module top) for every import of a gvu module, at any depth; `known`: the
    package's modules, which names resolve to (this package's by default)."""
    known = MODULES if known is None else known
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
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "gvu" and name != "gvu":
                while name not in known and "." in name:
                    name = name.rpartition(".")[0]
                found.append((name, node.lineno, id(node) in top))
    return found


def import_graph(known: dict[str, Path]) -> dict[str, list[tuple[str, int, bool]]]:
    return {m: gvu_imports(m, p, known) for m, p in known.items()}


GRAPH = import_graph(MODULES)


def room(module: str) -> str | None:
    """A gvu.models module's place: one of ROOMS, 'loader', or 'contract' (the other top-level modules); None
    outside gvu.models."""
    parts = module.split(".")
    if parts[:2] != ["gvu", "models"]:
        return None
    if module == LOADER:
        return "loader"
    return parts[2] if len(parts) > 2 and parts[2] in ROOMS else "contract"


def room_crossings(graph: dict[str, list[tuple[str, int, bool]]]) -> list[str]:
    """Every import inside gvu.models that leaves its place: a room importing the other room or the loader, the
    contract importing a room or the loader."""
    out = []
    for m, edges in graph.items():
        source = room(m)
        if source in (None, "loader"):
            continue
        allowed = {"contract", source}
        whom = "the contract" + (f" and its own room ({source})" if source in ROOMS else "")
        out += [f"{m}:{line} imports {t} ({room(t)}); from the {source}, gvu.models may be imported only as {whom}"
                for t, line, _ in edges if room(t) is not None and room(t) not in allowed]
    return out


def test_the_layers_cover_the_package():
    assert {layer(m) for m in MODULES} - {None} == set(LAYERS)


def test_arrows_point_down():
    up = [f"{m}:{line} imports {t} ({layer(t)} is above {layer(m)})"
          for m, edges in GRAPH.items() for t, line, _ in edges
          if layer(m) and layer(t) and LAYERS.index(layer(t)) > LAYERS.index(layer(m))]
    assert not up, "\n".join(up)


def test_every_subpackage_of_models_is_a_room():
    """A new folder under gvu/models must be declared a room (and given its direction) before it holds code."""
    undeclared = sorted({m for m in MODULES if m.count(".") >= 3 and room(m) == "contract"})
    assert not undeclared, f"{undeclared}: modules of a gvu/models sub-package not in ROOMS {ROOMS}"
    assert all(f"gvu.models.{r}" in MODULES for r in ROOMS), f"a room of {ROOMS} has no package"


def test_rooms_keep_apart_above_the_contract():
    crossings = room_crossings(GRAPH)
    assert not crossings, "\n".join(crossings)


@pytest.mark.parametrize("file, line, importer, imported", [
    ("models/adapters/janus.py", "from gvu.models.builtin.model import BuiltinUMM", "gvu.models.adapters.janus",
     "gvu.models.builtin.model"),
    ("models/builtin/model.py", "from gvu.models.adapters import janus", "gvu.models.builtin.model",
     "gvu.models.adapters.janus"),
    ("models/adapters/emu3.py", "from ..builtin import grid", "gvu.models.adapters.emu3", "gvu.models.builtin.grid"),
    ("models/sampling.py", "from gvu.models.builtin.tokenizer import WordTokenizer", "gvu.models.sampling",
     "gvu.models.builtin.tokenizer"),
    ("models/protocol.py", "import gvu.models.adapters.xomni", "gvu.models.protocol", "gvu.models.adapters.xomni"),
    ("models/builtin/pretrain.py", "from gvu.models.load import load_model", "gvu.models.builtin.pretrain",
     "gvu.models.load"),
], ids=["adapter-to-builtin", "builtin-to-adapter", "relative-adapter-to-builtin", "contract-to-builtin",
        "contract-to-adapter", "builtin-to-loader"])
def test_the_room_check_fails_on_a_crossing(tmp_path, file, line, importer, imported):
    """The check above run on a copy of the package with one crossing import added: it reports that import, and
    only it (so the copy as it is passes)."""
    copy = tmp_path / "gvu"
    for path in MODULES.values():
        (copy / path.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, copy / path.relative_to(ROOT))
    target = copy / file
    text = target.read_text()
    target.write_text(text + line + "\n")
    crossings = room_crossings(import_graph(modules(copy)))
    at = text.count("\n") + 1
    assert len(crossings) == 1 and crossings[0].startswith(f"{importer}:{at} imports {imported} "), crossings


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
