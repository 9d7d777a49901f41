"""The package layout holds: no import cycle between wardgate's top-level packages (and
its top-level modules, config.py, gate.py, serve.py...: a cycle through one of them ties
packages together too), the shared core imports no protocol, and the PostgreSQL codec
stays sans-IO.

The graph is read from the source (every ``import`` in every module, including those
inside functions and under ``TYPE_CHECKING``), not from what happens to be imported at
run time: a late import still ties two packages together.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import wardgate

SRC = Path(wardgate.__file__).parent
PROTOCOLS = frozenset({"postgres", "ssh", "kubernetes"})
IO_MODULES = frozenset({"asyncio", "socket", "ssl", "selectors", "uvloop"})


def _module_name(path: Path) -> str:
    parts = ("wardgate", *path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> Iterator[str]:
    """Every module ``path`` names in an import statement, absolute; for ``from a
    import b`` both ``a`` and ``a.b`` (b may be a module or a name in a)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            yield module
            yield from (f"{module}.{alias.name}" for alias in node.names)


def _top(module: str) -> str | None:
    """The top-level package (or module) of wardgate a module belongs to."""
    parts = module.split(".")
    return parts[1] if parts[0] == "wardgate" and len(parts) > 1 else None


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _package_graph() -> dict[str, dict[str, list[str]]]:
    """package -> imported package -> the module imports that make the edge."""
    modules = _modules()
    graph: dict[str, dict[str, list[str]]] = {}
    for name, path in modules.items():
        source = _top(name)
        if source is None:
            continue
        graph.setdefault(source, {})
        for imported in _imports(path):
            target = _top(imported)
            if target is None or target == source or imported not in modules:
                continue
            graph[source].setdefault(target, []).append(f"{name} -> {imported}")
    return graph


def _cycle(graph: dict[str, dict[str, list[str]]]) -> list[str] | None:
    """One cycle of the graph as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def _describe(cycle: list[str], graph: dict[str, dict[str, list[str]]]) -> str:
    lines = [" -> ".join(cycle)]
    for a, b in zip(cycle, cycle[1:], strict=False):
        lines.append(f"  {a} -> {b} because:")
        lines.extend(f"    {edge}" for edge in sorted(set(graph[a][b]))[:5])
    return "\n".join(lines)


def test_no_import_cycle_between_top_level_packages() -> None:
    graph = _package_graph()
    cycle = _cycle(graph)
    assert cycle is None, "import cycle between packages:\n" + _describe(cycle, graph)


def test_core_imports_no_protocol_package() -> None:
    edges = _package_graph().get("core", {})
    wrong = [e for protocol in sorted(PROTOCOLS & set(edges)) for e in edges[protocol]]
    assert not wrong, "core must not import a protocol package:\n" + "\n".join(wrong)


def test_postgres_codec_is_sans_io() -> None:
    wrong = [
        f"{name} imports {imported}"
        for name, path in _modules().items()
        if name.startswith("wardgate.postgres.codec")
        for imported in _imports(path)
        if imported.split(".")[0] in IO_MODULES
    ]
    assert not wrong, "the codec must not do I/O:\n" + "\n".join(wrong)


def test_the_checks_see_a_cycle_and_every_kind_of_import() -> None:
    """The checks themselves: a cycle is found and described; an import inside a
    function counts (serve imports the listeners late), and so does one under
    TYPE_CHECKING (postgres/catalog.py names Services only for the type checker)."""
    graph = {
        "a": {"b": ["wardgate.a.x -> wardgate.b.y"]},
        "b": {"a": ["wardgate.b.y -> wardgate.a"]},
    }
    cycle = _cycle(graph)
    assert cycle == ["a", "b", "a"]
    assert "wardgate.b.y -> wardgate.a" in _describe(cycle, graph)
    assert _cycle({"a": {"b": []}, "b": {}}) is None
    real = _package_graph()
    assert "postgres" in real["serve"]
    assert "wardgate.postgres.catalog -> wardgate.core.services" in real["postgres"]["core"]
