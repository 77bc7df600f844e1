"""The house rules (README, "Layout"), checked on the source: no import cycle, small modules
and functions, a CLI that reaches the library only through its public API."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "seqlib"
# The CLI may use the API and what defines its choices; never the store, trainer or math.
CLI_MAY_IMPORT = {
    "seqlib.api",
    "seqlib.choices",
    "seqlib.config",
    "seqlib.methods",
    "seqlib.errors",
    "seqlib._version",
    "seqlib.glance",  # the read commands' fast path: the store as plain JSON, no pydantic
    "seqlib.selection",  # torch-free parsing of "a,b=0.5", for hints before anything loads
}


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        out[name] = ast.parse(path.read_text())
    return out


def _imports(tree: ast.Module, everywhere: bool) -> set[str]:
    """seqlib modules imported (at module level only, unless ``everywhere``); ``from seqlib
    import x`` counts as importing ``seqlib.x`` when x is a module."""
    nodes = ast.walk(tree) if everywhere else tree.body
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("seqlib"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                is_module = (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists()
                found.add(sub if is_module else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("seqlib")}
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt in graph and not state.get(nxt):
                if found := visit(nxt, [*path, nxt]):
                    return found
        state[node] = 2
        return None

    for start in graph:
        if not state.get(start) and (found := visit(start, [start])):
            return found
    return None


def test_the_import_graph_has_no_cycle_at_module_level_in_functions_or_for_type_checking():
    modules = _modules()
    for everywhere in (False, True):  # True: imports inside functions and `if TYPE_CHECKING:` too
        graph = {name: _imports(tree, everywhere) - {name} for name, tree in modules.items() if name != "seqlib"}
        assert _cycle(graph) is None, everywhere
    # and the checker does find one when there is one, also one planted inside a function
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    planted = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from seqlib.api import Library\n")
    inner = ast.parse("def f():\n    from seqlib.render import compose\n")
    assert _imports(planted, everywhere=True) == {"seqlib.api"} and _imports(planted, everywhere=False) == set()
    assert _imports(inner, everywhere=True) == {"seqlib.render"}
    graph = {name: _imports(tree, True) - {name} for name, tree in modules.items() if name != "seqlib"}
    graph["seqlib.repo"] = graph["seqlib.repo"] | _imports(inner, everywhere=True)  # repo -> render -> repo
    assert _cycle(graph) is not None


def test_the_repository_imports_no_verb():
    verbs = {"seqlib.adding", "seqlib.adopt", "seqlib.render", "seqlib.notes", "seqlib.reserve", "seqlib.verify"}
    verbs |= {"seqlib.report", "seqlib.api"}  # seqlib.export is also the LoRA file format (concept_hash)
    assert not _imports(_modules()["seqlib.repo"], everywhere=True) & verbs


def test_no_module_over_400_lines_and_no_function_over_80():
    long_functions = []
    for path in PACKAGE.rglob("*.py"):
        lines = path.read_text().count("\n")
        assert lines <= 400, f"{path.name}: {lines} lines"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 80:
                long_functions.append(f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long_functions


def test_the_cli_reaches_the_library_only_through_its_public_api():
    for name, tree in _modules().items():
        if name.startswith("seqlib.cli"):
            outside = {m for m in _imports(tree, everywhere=True) if not m.startswith("seqlib.cli")}
            assert outside <= CLI_MAY_IMPORT, (name, outside - CLI_MAY_IMPORT)


def _imported_anywhere(tree: ast.Module) -> set[str]:
    """Every module name an import statement anywhere in ``tree`` names (top-level package for
    third parties, the full name for seqlib's own)."""
    found = set()
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        found |= {n if n.startswith("seqlib") else n.split(".")[0] for n in names}
    return found


def test_the_store_never_imports_torch_and_the_worlds_never_import_the_store():
    assert _imported_anywhere(ast.parse("def f():\n    import torch.nn\n")) == {"torch"}  # the checker sees it
    modules = _modules()
    store_side = ["store", "objects", "backends", "format", "format_legacy", "history", "selection", "capacity"]
    store_side += ["crosstalk"]
    for name in store_side + ["collect"]:
        heavy = _imported_anywhere(modules[f"seqlib.{name}"]) & {"torch", "diffusers", "transformers"}
        assert not heavy, f"seqlib.{name} imports {heavy}: the store must open without torch"
    for name in ("world", "world_lab", "heldout"):  # pictures only: they know nothing of libraries
        own = {m for m in _imported_anywhere(modules[f"seqlib.{name}"]) if m.startswith("seqlib")}
        assert own <= {"seqlib.world", "seqlib.world_lab", "seqlib.heldout"}, f"seqlib.{name} imports {own}"


def test_the_read_commands_fast_path_imports_no_pydantic_rich_or_torch():
    # seqlib.glance and everything it imports, at any depth and inside functions too; what only
    # `if TYPE_CHECKING:` imports never runs
    modules = {
        name: ast.Module([n for n in tree.body if not _type_checking_only(n)], []) for name, tree in _modules().items()
    }
    seen, todo = set(), ["seqlib.glance"]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += [m for m in _imports(modules[name], everywhere=True) if m in modules]
    assert {"seqlib.glance", "seqlib.canonical", "seqlib.capacity", "seqlib.crosstalk", "seqlib.derived"} <= seen
    for name in seen:
        heavy = _imported_anywhere(modules[name]) & {"pydantic", "rich", "torch", "seqlib.format"}
        assert not heavy, f"{name} imports {heavy}: `seqlib list` would pay for it"


def _type_checking_only(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
