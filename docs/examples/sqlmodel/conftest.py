"""Fixtures of the SQLModel app's tests: a test database, its tables made once."""

import os
from collections.abc import Iterator

import httpx
import pytest
from app import app
from sqlalchemy import Engine
from sqlmodel import SQLModel, create_engine

from uow.testing import TestTransaction


# --8<-- [start:engine]
@pytest.fixture(scope="session")
def uow_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """The test database: TEST_DATABASE_URL (PostgreSQL, say), or a SQLite file."""
    default = f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"
    engine = create_engine(os.environ.get("TEST_DATABASE_URL", default))
    SQLModel.metadata.create_all(engine)  # once; each test is rolled back
    yield engine
    SQLModel.metadata.drop_all(engine)
    engine.dispose()


@pytest.fixture
def client(uow_test: TestTransaction) -> httpx.AsyncClient:
    """An HTTP client of the app; its requests commit to savepoints of the test's transaction."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --8<-- [end:engine]
