"""Fixtures shared by the suite: every database test runs on a SQLite file and on PostgreSQL.

PostgreSQL comes from ``UOW_TEST_POSTGRES_URL`` (a sync URL such as
``postgresql+psycopg://uow:uow@127.0.0.1:5432/uow``). Without it, the suite
starts a throwaway cluster of its own (``tests/pgcluster.py``: ``initdb`` in a
temporary directory, a free port of 127.0.0.1) when PostgreSQL is installed,
and removes it at the end; it never touches a cluster it did not create. With
neither, the PostgreSQL cases are skipped, unless ``UOW_REQUIRE_POSTGRES=1`` (as
in CI), which turns that into a failure.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, String, create_engine, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import uow
from tests import pgcluster, pgreplica

REQUIRE_PG = os.environ.get("UOW_REQUIRE_POSTGRES") == "1"
_cluster: pgcluster.Cluster | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _cluster
    if os.environ.get("UOW_TEST_POSTGRES_URL") or not pgcluster.available():
        return
    _cluster = pgcluster.Cluster().start()
    # subprocesses (real servers, workers) find it the same way
    os.environ["UOW_TEST_POSTGRES_URL"] = _cluster.url


def pytest_unconfigure(config: pytest.Config) -> None:
    global _cluster
    if _cluster is not None:
        _cluster.stop()
        _cluster = None
        del os.environ["UOW_TEST_POSTGRES_URL"]


def pg_url() -> str | None:
    """The PostgreSQL URL the suite uses, or None if there is none."""
    return os.environ.get("UOW_TEST_POSTGRES_URL")


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)


class Counter(Base):
    __tablename__ = "counters"
    id: Mapped[int] = mapped_column(primary_key=True)
    value: Mapped[int] = mapped_column(default=0)


def _require_pg() -> str:
    url = pg_url()
    if url is None:
        if REQUIRE_PG:
            pytest.fail("UOW_REQUIRE_POSTGRES=1 but UOW_TEST_POSTGRES_URL is not set")
        pytest.skip("install PostgreSQL or set UOW_TEST_POSTGRES_URL to run the PostgreSQL cases")
    return url


def async_pg_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql+asyncpg://").replace(
        "postgresql://", "postgresql+asyncpg://"
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "postgresql":
        _require_pg()
    return name


def make_engine(backend: str, tmp_path: Path, **kw: object) -> Engine:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'test.db'}"
        kw.setdefault("connect_args", {"timeout": 5})
    else:
        url = _require_pg()
    engine = create_engine(url, **kw)
    uow.enable_sqlite_savepoints(engine)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    return engine


@pytest.fixture
def engine(backend: str, tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(backend, tmp_path)
    yield eng
    checked_out = eng.pool.checkedout()  # type: ignore[attr-defined]
    eng.dispose()
    assert checked_out == 0, f"{checked_out} connection(s) still checked out after the test"


@pytest.fixture
def manager(engine: Engine) -> Iterator[uow.UnitOfWorkManager]:
    m = uow.configure(engine)
    yield m
    uow.reset_defaults()


@pytest.fixture
async def async_engine(backend: str, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    sync = make_engine(backend, tmp_path)
    sync.dispose()
    url = (
        f"sqlite+aiosqlite:///{tmp_path / 'test.db'}" if backend == "sqlite" else async_pg_url(_require_pg())
    )
    eng = create_async_engine(url)
    yield eng
    checked_out = eng.sync_engine.pool.checkedout()  # type: ignore[attr-defined]
    await eng.dispose()
    assert checked_out == 0, f"{checked_out} connection(s) still checked out after the test"


@pytest.fixture
def async_manager(async_engine: AsyncEngine) -> Iterator[uow.UnitOfWorkManager]:
    m = uow.configure(async_engine)
    yield m
    uow.reset_defaults()


def names(engine: Engine) -> list[str]:
    """Return the committed item names, read on a connection of its own."""
    with engine.connect() as conn:
        return sorted(conn.scalars(select(Item.name)))


def count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count(Item.id))) or 0)


@pytest.fixture(scope="session")
def replica_pair() -> Iterator[pgreplica.Pair]:
    """A primary of its own and a streaming replica of it, for the whole run (started on first use)."""
    if not (pgcluster.available() and pgreplica.can_replicate()):
        if REQUIRE_PG:
            pytest.fail("UOW_REQUIRE_POSTGRES=1 but PostgreSQL's pg_basebackup is not installed")
        pytest.skip("install PostgreSQL (with pg_basebackup) to run the replica cases")
    pair = pgreplica.Pair().start()
    try:
        yield pair
    finally:
        pair.stop()


@pytest.fixture(autouse=True)
def _reset_default_manager() -> Iterator[None]:
    yield
    uow.reset_defaults()


# --- the event loop of async tests --------------------------------------------------
#
# ``@pytest.mark.anyio`` tests run on asyncio by default: the fixture below. A test
# whose code is backend-agnostic (anyio's API, uow's, threads) runs on trio too when
# it also carries ``@asyncio_and_trio``: anyio's documented idiom, a direct
# parametrization of the ``anyio_backend`` fixture, written once here::
#
#     @pytest.mark.anyio
#     @asyncio_and_trio
#     async def test_something(manager: uow.UnitOfWorkManager) -> None: ...
#
# Its ids end in ``-asyncio`` / ``-trio`` (``-k trio`` selects the trio cases). A test
# that needs the backend's name takes the ``anyio_backend`` argument. Tests that stay on
# asyncio say why next to their marker; the usual reasons: an ``AsyncEngine`` (the
# suite's drivers, aiosqlite and asyncpg, run on asyncio only), or asyncio's own API
# being the point (``Task.cancel()``, ``asyncio.gather`` leaving siblings running).
# For a module or class made only of such async tests, ``pytestmark = [pytest.mark.anyio,
# asyncio_and_trio]`` does the same (not in a module with sync tests: pytest refuses to
# parametrize a test that does not use ``anyio_backend``).

ANYIO_BACKENDS = ("asyncio", "trio")

#: Run a ``@pytest.mark.anyio`` test on asyncio and on trio.
asyncio_and_trio = pytest.mark.parametrize("anyio_backend", ANYIO_BACKENDS)


@pytest.fixture
def anyio_backend() -> str:
    """The backend of an async test that does not choose: asyncio (see ``asyncio_and_trio``)."""
    return "asyncio"
