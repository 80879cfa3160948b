"""The shape of the house, read from the code with `ast`: data flows one way.

    contract  <-  distill  <-  export  <-  pocketrec (the front door)
    contract  <-  app      <-------------  pocketrec

- no import cycle between modules (imports inside functions count too);
- no library module imports the front door `pocketrec`;
- each stage imports only the stages below it; `contract` and `app` only what ships with the
  app (the standard library, numpy, and for the app flet, sqlite_utils, onnxruntime);
- a domain folder (`medication/`, `news/`) never imports the other domain of its stage;
- no library file over 600 lines.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("contract", "distill", "export", "app", "pocketrec")
# what each of our packages may import of our own
MAY_IMPORT = {
    "contract": {"contract"},
    "distill": {"contract", "distill"},
    "export": {"contract", "distill", "export"},
    "app": {"contract", "app"},
    "pocketrec": set(PACKAGES),
}
THIRD_PARTY = {
    "contract": {"numpy"},
    # tokenizers is optional: the news runtime falls back to its pure-Python WordPiece
    "app": {"numpy", "flet", "sqlite_utils", "onnxruntime", "tokenizers"},
}
DOMAINS = ("medication", "news")
MAX_LINES = 600


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def library_files() -> dict[str, Path]:
    return {
        module_name(p): p
        for pkg in PACKAGES
        for p in sorted((ROOT / pkg).rglob("*.py"))
        if "__pycache__" not in p.parts
    }


def imports_of(name: str, path: Path, known: set[str]) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, resolved to a module of ours where it is
    one (`from distill.data import vocab` -> distill.data.vocab), else the imported name."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.append((node.lineno, sub if sub in known else module))
    return found


def import_graph() -> dict[str, list[tuple[int, str]]]:
    files = library_files()
    known = set(files)
    graph = {}
    for name, path in files.items():
        edges = []
        for line, target in imports_of(name, path, known):
            # an import of a.b.c also runs a and a.b: point at the deepest module of ours
            while target not in known and "." in target:
                target = target.rpartition(".")[0]
            edges.append((line, target))
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def own_edges() -> dict[str, list[str]]:
    graph = import_graph()
    ours = set(graph)
    # a package's __init__ is run by every import of its modules; an edge to the package
    # itself from inside it is that, not a cycle
    return {
        a: sorted({t for _, t in edges if t in ours and t != a and not a.startswith(t + ".")})
        for a, edges in graph.items()
    }


def test_the_packages_exist():
    files = library_files()
    for pkg in PACKAGES:
        assert pkg in files, f"{pkg}/__init__.py is missing"
    assert "pocketrec.cli" in files


def test_no_import_cycle():
    cycle = find_cycle(own_edges())
    assert cycle is None, " -> ".join(cycle or [])


def test_stages_import_only_the_stages_below():
    bad = []
    for name, edges in import_graph().items():
        pkg = name.split(".")[0]
        for line, target in edges:
            root = target.split(".")[0]
            if root in PACKAGES and root not in MAY_IMPORT[pkg]:
                bad.append(f"{name}:{line} imports {target}")
    assert bad == [], "\n".join(bad)


def test_no_library_module_imports_the_front_door():
    bad = [
        f"{name}:{line} imports {target}"
        for name, edges in import_graph().items()
        if not name.startswith("pocketrec")
        for line, target in edges
        if target.split(".")[0] == "pocketrec"
    ]
    assert bad == [], "\n".join(bad)


@pytest.mark.parametrize("pkg", sorted(THIRD_PARTY))
def test_what_ships_with_the_app_imports_only_the_app_libraries(pkg):
    allowed = set(sys.stdlib_module_names) | THIRD_PARTY[pkg] | MAY_IMPORT[pkg]
    bad = [
        f"{name}:{line} imports {target}"
        for name, edges in import_graph().items()
        if name.split(".")[0] == pkg
        for line, target in edges
        if target.split(".")[0] not in allowed
    ]
    assert bad == [], "\n".join(bad)


def test_a_domain_never_imports_the_other_domain():
    bad = []
    for name, targets in own_edges().items():
        parts = name.split(".")
        if len(parts) < 2 or parts[1] not in DOMAINS:
            continue
        for target in targets:
            tparts = target.split(".")
            if len(tparts) > 1 and tparts[0] == parts[0] and tparts[1] in DOMAINS:
                if tparts[1] != parts[1]:
                    bad.append(f"{name} imports {target}")
    assert bad == [], "\n".join(bad)


def test_no_library_file_over_the_limit():
    long = {
        str(path.relative_to(ROOT)): n
        for path in library_files().values()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}, long


def test_the_checks_can_fail():
    # the cycle finder and the import resolver on made-up input
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b"], "b": []}) is None
    tree_known = {"distill.data", "distill.data.vocab"}
    path = ROOT / "tests" / "_shape_probe.py"
    path.write_text("from distill.data import vocab\nfrom .x import y\nimport torch\n")
    try:
        got = imports_of("app.views.visit", path, tree_known)
    finally:
        path.unlink()
    assert got == [(1, "distill.data.vocab"), (2, "app.views.x"), (3, "torch")]
