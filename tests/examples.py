"""What the tests of ``docs/examples/`` share: loading an example afresh, reading rows, an HTTP client.

Each example is loaded from its path inside a temporary directory, so the
relative ``sqlite:///x.db`` URLs the examples use land there.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sqlite3
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from sqlalchemy import Engine

import uow

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"

Load = Callable[[str], ModuleType]


def dispose_engines(module: ModuleType) -> None:
    """Close the pools of the sync engines an example made at import."""
    for value in vars(module).values():
        engine = value.engine if isinstance(value, uow.UnitOfWorkManager) else value
        if isinstance(engine, Engine):
            engine.dispose()
        if isinstance(value, uow.UnitOfWorkManager) and value.router is not None:
            for replica in value.router.replicas:
                if isinstance(replica.engine, Engine):
                    replica.engine.dispose()


def example_loader(folder: str = "") -> Callable[[Path, pytest.MonkeyPatch], Iterator[Load]]:
    """A ``load_example`` fixture for ``docs/examples/<folder>``: load(relative path) imports it afresh."""

    @pytest.fixture
    def load_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Load]:
        monkeypatch.chdir(tmp_path)
        loaded: list[ModuleType] = []

        def load(relative: str) -> ModuleType:
            path = EXAMPLES / folder / relative
            name = "docs_example_" + str(path.relative_to(EXAMPLES)).removesuffix(".py").replace("/", "_")
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            loaded.append(module)
            spec.loader.exec_module(module)
            return module

        yield load
        for module in loaded:
            dispose_engines(module)
            sys.modules.pop(module.__name__, None)
        uow.reset_defaults()

    return load_example


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    """Read committed rows with the sqlite3 module: nothing of uow or SQLAlchemy involved."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return connection.execute(sql).fetchall()


def client(app: object, *, raise_app_exceptions: bool = True) -> httpx.AsyncClient:
    """An HTTP client that calls the ASGI app in-process; with raise_app_exceptions=False it gets the 500."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")
