"""Fixtures for the testing page's tests: a test database, made once."""

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from app import Base
from sqlalchemy import Engine, create_engine
from sqlalchemy.ext.asyncio import create_async_engine

from uow.testing import TestTransaction, async_rollback_after


# --8<-- [start:engine]
@pytest.fixture(scope="session")
def uow_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """The engine `uow_test` runs each test on (any sync Engine: SQLite, PostgreSQL...)."""
    path = tmp_path_factory.mktemp("db") / "test.db"
    engine = create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)  # once per session; each test is rolled back
    yield engine
    engine.dispose()


# --8<-- [end:engine]


# --8<-- [start:async]
@pytest.fixture
async def uow_async(tmp_path: Path) -> AsyncIterator[TestTransaction]:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'test.db'}")
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    async with async_rollback_after(engine) as test:
        yield test
    await engine.dispose()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --8<-- [end:async]
