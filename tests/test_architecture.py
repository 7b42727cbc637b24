"""The map of the code, checked: floors (core <- tracer <- editor <- locus <- ui, bench <- app.py, the locus command),
no cycles, honest imports.

Every product module's imports are read with `ast` (nothing is imported). A module may import its
own package and the floors below it; no two files may import each other, even through others; an
import inside a function needs a `# lazy: reason` comment (a measured start-up cost); no
`except ImportError` may guard a module of this repository. The tabs are thin: ui/tabs/*.py import only Gradio,
the standard library, core.errors, ui.* and locus (TAB_DEBTS lists what some still import past that).
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "tracer", "editor", "locus", "ui", "bench")
FLOORS = {"core": 0, "tracer": 1, "editor": 2, "locus": 3, "ui": 4, "bench": 4, "app": 5}
# The `locus` command sits on top of everything (it starts the app too); the rest of locus/ is the public API
MODULE_FLOORS = {"locus.cli": 5, "locus.__main__": 6}
SIBLINGS_APART = {("ui", "bench"), ("bench", "ui")}  # same floor, but neither may use the other
# Inside editor/: what an edit is, then running the model, the statistics, the methods, choosing layers,
# judging edits, the studies built on them, and the command line on top.
EDITOR_FLOORS = {"edits": 0, "passes": 1, "statistics": 2, "methods": 3, "layers": 4, "evaluation": 5, "studies": 6,
                 "cli": 7, "__main__": 8}


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported local module, dotted
    line: int
    in_function: bool
    lazy_reason: bool


def product_files() -> dict[str, Path]:
    """{dotted module name: path} of every product module (tests excluded)."""
    files = {"app": ROOT / "app.py"}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            files[name] = path
    return files


def _resolve(name: str, modules: set[str]) -> str | None:
    """The local module `name` refers to (a submodule, or the package that defines a name)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _has_lazy_reason(lines: list[str], node: ast.stmt) -> bool:
    """A '# lazy:' comment on the statement, or in the comment/import lines right above it."""
    if any("# lazy:" in line for line in lines[node.lineno - 1 : node.end_lineno]):
        return True
    index = node.lineno - 2
    while index >= 0:
        text = lines[index].strip()
        if "# lazy:" in text:
            return True
        if not (text.startswith("#") or text.startswith(("from ", "import "))):
            return False
        index -= 1
    return False


def module_imports(name: str, path: Path, modules: set[str]) -> list[Import]:
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                targets = [f"{child.module}.{alias.name}" for alias in child.names]
            else:
                targets = []
            for target in targets:
                local = _resolve(target, modules)
                if local is not None and local != name:
                    found.append(Import(name, local, child.lineno, in_function, _has_lazy_reason(lines, child)))
            if targets and in_function and not any(_resolve(t, modules) for t in targets):
                # a third-party import inside a function is laziness too: it needs its reason
                found.append(Import(name, targets[0], child.lineno, True, _has_lazy_reason(lines, child)))
            visit(child, inside)

    visit(tree, False)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, list[Import]]:
    files = product_files()
    modules = set(files)
    return {name: module_imports(name, path, modules) for name, path in files.items()}


def package_of(module: str) -> str:
    return module.split(".")[0]


def floor_of(module: str) -> int:
    return MODULE_FLOORS.get(module, FLOORS[package_of(module)])


def test_nothing_imports_upward(graph):
    upward = []
    for name, imports in graph.items():
        for item in imports:
            if package_of(item.target) not in FLOORS:
                continue  # third party
            source, target = package_of(name), package_of(item.target)
            if floor_of(item.target) > floor_of(name) or (source, target) in SIBLINGS_APART:
                upward.append(f"{name}:{item.line} imports {item.target}")
    assert not upward, "imports against the floors core <- tracer <- editor <- locus <- ui, bench <- app.py:\n" + "\n".join(upward)


def editor_part(module: str) -> str:
    """'editor.methods.memit' -> 'methods'; 'editor.cli' -> 'cli' (the editor's own floors)."""
    return module.split(".")[1] if module.count(".") else ""


def test_editor_parts_import_only_their_floor_and_below(graph):
    parts = {editor_part(name) for name in graph if package_of(name) == "editor"} - {""}
    assert parts == set(EDITOR_FLOORS), f"every part of editor/ has a floor: {sorted(parts ^ set(EDITOR_FLOORS))}"
    upward = [
        f"{name}:{item.line} imports {item.target}"
        for name, imports in graph.items() if package_of(name) == "editor" and editor_part(name)
        for item in imports if package_of(item.target) == "editor" and editor_part(item.target)
        and EDITOR_FLOORS[editor_part(item.target)] > EDITOR_FLOORS[editor_part(name)]
    ]
    assert not upward, ("imports against editor/'s floors " + " <- ".join(EDITOR_FLOORS) + ":\n" + "\n".join(upward))


def test_no_cycles_between_files(graph):
    edges = {
        name: sorted({item.target for item in imports if package_of(item.target) in FLOORS and item.target in graph})
        for name, imports in graph.items()
    }
    cycles = [component for component in strongly_connected(edges) if len(component) > 1]
    assert not cycles, "files that import each other (directly or through others): " + "; ".join(
        " <-> ".join(sorted(component)) for component in cycles
    )


def test_imports_inside_functions_say_why(graph):
    unexplained = [
        f"{name}:{item.line} imports {item.target} inside a function"
        for name, imports in graph.items()
        for item in imports
        if item.in_function and not item.lazy_reason
    ]
    assert not unexplained, "imports belong at the top of the module; lazy ones need a '# lazy: reason' comment:\n" + "\n".join(unexplained)


def test_no_import_error_guards_around_local_modules():
    modules = set(product_files())
    guarded = []
    for name, path in product_files().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Try):
                continue
            caught = set()
            for handler in node.handlers:
                types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
                caught.update(getattr(item, "id", getattr(item, "attr", "")) for item in types if item is not None)
            if not caught & {"ImportError", "ModuleNotFoundError"}:
                continue
            for inner in (child for statement in node.body for child in ast.walk(statement)):
                if isinstance(inner, ast.ImportFrom) and inner.module and _resolve(inner.module, modules):
                    guarded.append(f"{name}:{inner.lineno} {inner.module}")
                elif isinstance(inner, ast.Import) and any(_resolve(a.name, modules) for a in inner.names):
                    guarded.append(f"{name}:{inner.lineno}")
    assert not guarded, "a module of this repository is always there; do not hide its breakage:\n" + "\n".join(guarded)


# The app is a thin client: a tab (ui/tabs/*.py) lays out components and calls handlers that use Gradio, the
# standard library, core.errors (the messages it raises), ui.* and the public API (locus); everything else it
# needs from the tracer and the editor goes through one ui service module per tab (ui/editing.py for the Edit
# tab, ui/ranges.py for Choose R, ui/averages.py for Averages, ui/tracing.py for Trace, ui/testing.py for Test).
TAB_IMPORTS = ("gradio", "core.errors", "ui", "locus")
# Debts, by tab: what a tab still imports past the rule, listed so the rule passes and the debt is written down.
# An entry that is no longer imported fails the test: strike it off when it is paid.
TAB_DEBTS: dict[str, set[str]] = {}


def tab_imports(path: Path, modules: set[str]) -> set[str]:
    """Every module a tab imports outside the standard library: local ones resolved, others by their full name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [_resolve(name, modules) or node.module for name in names]
        else:
            continue
        found.update(name for name in names if name.split(".")[0] not in sys.stdlib_module_names | {"__future__"})
    return found


def thin_tab_allows(module: str) -> bool:
    return any(module == allowed or module.startswith(allowed + ".") for allowed in TAB_IMPORTS)


def test_tabs_are_thin_clients():
    files = product_files()
    modules = set(files)
    tabs = {name: path for name, path in files.items() if name.startswith("ui.tabs.") and name != "ui.tabs"}
    assert set(TAB_DEBTS) <= set(tabs), f"debts listed for tabs that do not exist: {sorted(set(TAB_DEBTS) - set(tabs))}"
    beyond, paid = [], []
    for name, path in sorted(tabs.items()):
        imported = tab_imports(path, modules)
        extra = {module for module in imported if not thin_tab_allows(module)}
        debts = TAB_DEBTS.get(name, set())
        beyond += [f"{name} imports {module}" for module in sorted(extra - debts)]
        paid += [f"{name} no longer imports {module}" for module in sorted(debts - extra)]
    assert not beyond, ("a tab imports only gradio, the standard library, core.errors, ui.* and locus; put the rest in "
                        "its ui service module:\n" + "\n".join(beyond))
    assert not paid, "strike these paid debts off TAB_DEBTS:\n" + "\n".join(paid)


def test_the_thin_tab_rule_sees_what_it_must(tmp_path):
    modules = {"core.errors", "tracer", "tracer.figures", "ui", "ui.editing"}
    path = tmp_path / "tab.py"
    path.write_text("import html\nimport gradio as gr\nimport plotly.graph_objects as go\nfrom core.errors import InputError\n"
                    "from tracer import figures\nfrom ui.editing import rows\n\ndef f():\n    from tracer.figures import x\n")
    found = tab_imports(path, modules)
    assert found == {"gradio", "plotly.graph_objects", "core.errors", "tracer.figures", "ui.editing"}
    assert sorted(module for module in found if not thin_tab_allows(module)) == ["plotly.graph_objects", "tracer.figures"]


def strongly_connected(edges: dict[str, list[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components of a directed graph {node: [successors]}."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = lowlink[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in edges.get(node, []):
            if successor not in index:
                connect(successor)
                lowlink[node] = min(lowlink[node], lowlink[successor])
            elif successor in on_stack:
                lowlink[node] = min(lowlink[node], index[successor])
        if lowlink[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            components.append(component)

    for node in edges:
        if node not in index:
            connect(node)
    return components


def test_the_checker_sees_what_it_must(tmp_path):
    """The rules fail on a bad example (so a green run means something)."""
    modules = {"core.a", "tracer.b", "ui.c"}
    path = tmp_path / "example.py"
    path.write_text("import tracer.b\n\ndef f():\n    from ui.c import x\n    import json\n")
    found = module_imports("core.a", path, modules)
    assert [(item.target, item.in_function, item.lazy_reason) for item in found] == [
        ("tracer.b", False, False), ("ui.c", True, False), ("json", True, False),
    ]
    assert [len(c) for c in strongly_connected({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) if len(c) > 1] == [3]
