"""The package's layering: no import cycle among uow's modules, at run time or through type hints."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import uow

PACKAGE = Path(uow.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> set[str]:
    """Every uow module *path* imports, anywhere in it (``TYPE_CHECKING`` blocks and functions too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("uow"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if not target.startswith("uow"):
                continue
            for alias in node.names:  # `from . import _finisher` names a module
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in MODULES else target)
    return found


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        edges = set()
        for target in _imports(path, name):
            while target not in MODULES and "." in target:
                target = target.rpartition(".")[0]
            if target in MODULES and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_at_run_time_or_through_type_hints() -> None:
    graph = _graph()
    # packages import their modules; a module importing its package would be a cycle too
    graph = {name: {t for t in edges if not name.startswith(t + ".")} for name, edges in graph.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_checker_sees_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_lazy_imports_inside_functions() -> None:
    """Imports sit at the top of each module (a lazy one either hides a cycle or costs at every call)."""
    lazy = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lazy += [
                    f"{name}:{inner.lineno}"
                    for inner in ast.walk(node)
                    if isinstance(inner, (ast.Import, ast.ImportFrom))
                ]
    assert lazy == []


def test_the_core_never_imports_an_integration() -> None:
    core = [name for name in MODULES if not name.startswith("uow.starlette") and name != "uow.pytest_plugin"]
    for name in core:
        source = MODULES[name].read_text()
        assert "starlette" not in {
            alias.split(".")[0]
            for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for alias in (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            )
        }, name


def test_only_uow_otel_imports_opentelemetry() -> None:
    """OpenTelemetry is optional: the core reaches it only through the observer slot that uow.otel fills."""
    importing = sorted(
        name
        for name, path in MODULES.items()
        if "opentelemetry"
        in {
            alias.split(".")[0]
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for alias in (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            )
        }
    )
    assert importing == ["uow.otel"]


BROKERS = {"celery", "kombu", "dramatiq", "redis", "arq"}


def _top_level_imports(source: str) -> set[str]:
    return {
        alias.split(".")[0]
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        if not (isinstance(node, ast.ImportFrom) and node.level)
        for alias in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""])
    }


def test_only_the_outbox_publishers_import_a_broker() -> None:
    """A broker library is imported by its own publisher module only; nothing else imports those modules."""
    publishers = {"uow.outbox.celery", "uow.outbox.dramatiq"}
    graph = _graph()
    for name, path in MODULES.items():
        if name not in publishers:
            assert not _top_level_imports(path.read_text()) & BROKERS, name
        assert not graph[name] & publishers, f"{name} imports a publisher module"
        if not name.startswith("uow.outbox"):
            assert not {t for t in graph[name] if t.startswith("uow.outbox")}, f"{name} imports the outbox"


def test_importing_uow_and_its_outbox_imports_no_broker() -> None:
    code = (
        "import sys, uow, uow.outbox, uow.outbox.relay, uow.outbox.consumer\n"
        f"found = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(BROKERS)!r})\n"
        "assert not found, found\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PACKAGE.parent)
    subprocess.run(
        [sys.executable, "-c", "import sys, uow; assert 'uow.outbox' not in sys.modules"],
        check=True,
        cwd=PACKAGE.parent,
    )


def test_listeners_are_installed_on_every_new_factory_even_where_an_id_is_reused() -> None:
    """uow marks the session class it listens on; it never asks SQLAlchemy's id()-keyed registry."""
    import gc

    from sqlalchemy import create_engine

    engine = create_engine("sqlite://")
    for _ in range(50):  # factories come and go; addresses get reused
        manager = uow.UnitOfWorkManager(engine)
        assert manager.session_factory.class_.__dict__.get("_uow_listening") is True
        del manager
        gc.collect()
    engine.dispose()
