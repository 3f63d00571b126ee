"""timeout=: a unit's budget, enforced by PostgreSQL (statement_timeout, lock_timeout) and SQLite (interrupt).

Every timeout here is provoked for real: ``pg_sleep``, a row lock held by another
connection, a long recursive query on a SQLite file, a commit after the
deadline. Timings are asserted one way tightly (never before the budget) and
the other way loosely (well before the work itself would have ended).
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import Engine, Table, create_engine, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import sessionmaker
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

import uow
import uow.testing
from tests.conftest import Counter, Item, async_pg_url, asyncio_and_trio, make_engine, names, pg_url
from uow.starlette import UnitOfWorkMiddleware, provide_session

#: a statement that runs for minutes on SQLite unless it is interrupted
LONG_SQLITE = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
    "SELECT count(*) FROM c WHERE x < 1000000000"
)
#: the same, ending quickly (a few ms): what a connection must still run afterwards
SHORT_SQLITE = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20000) SELECT count(*) FROM c"
)
BUDGET = 0.5
#: the loose bound: far below how long the work would run if nothing stopped it
LATE = 15.0
APP = "uow-timeout-test"


def _pool_engine(backend: str, tmp_path: Path) -> Engine:
    """One pooled connection, so that the next unit runs on the connection that timed out."""
    kw: dict[str, Any] = {"pool_size": 1, "max_overflow": 0}
    if backend == "postgresql":
        kw["connect_args"] = {"application_name": APP}
    return make_engine(backend, tmp_path, **kw)


@pytest.fixture
def one_conn(backend: str, tmp_path: Path) -> Iterator[Engine]:
    engine = _pool_engine(backend, tmp_path)
    uow.configure(engine)
    yield engine
    checked_out = engine.pool.checkedout()  # type: ignore[attr-defined]
    engine.dispose()
    assert checked_out == 0


def _long_statement(backend: str) -> str:
    return LONG_SQLITE if backend == "sqlite" else "SELECT pg_sleep(60)"


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a DB-API error, wrapped by SQLAlchemy or not."""
    orig = getattr(exc, "orig", exc)
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def _idle_in_transaction(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = :app "
                    "AND state LIKE 'idle in transaction%'"
                ),
                {"app": APP},
            )
            or 0
        )


# --- options ------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, 0.0, "1", True, math.inf, math.nan])
def test_a_bad_timeout_is_refused_at_once(bad: Any) -> None:
    with pytest.raises(uow.InvalidOptionError, match="positive number of seconds"):
        uow.transactional(timeout=bad)
    with pytest.raises(uow.InvalidOptionError, match="positive number of seconds"):
        uow.unit_of_work(timeout=bad)
    with pytest.raises(uow.InvalidOptionError, match="positive number of seconds"):
        UnitOfWorkMiddleware(lambda s, r, se: None, timeout=bad)  # type: ignore[arg-type,return-value]


def test_a_timeout_without_a_transaction_is_refused() -> None:
    with pytest.raises(uow.InvalidOptionError, match="no transaction to bound"):
        uow.unit_of_work(timeout=1, propagation=uow.Propagation.NOT_SUPPORTED)


def test_other_databases_refuse_a_timeout_at_the_unit_start() -> None:
    # a real MySQL dialect (given sqlite3 as its DB-API so that nothing needs installing);
    # the unit refuses before it connects
    engine = create_engine("mysql://u@127.0.0.1:1/db", module=sqlite3)
    manager = uow.UnitOfWorkManager(engine)
    with pytest.raises(uow.TimeoutUnsupported, match="mysql database"), manager.unit_of_work(timeout=1):
        pytest.fail("the unit must not start")
    with manager.unit_of_work():  # without a budget it is an ordinary unit
        pass
    with pytest.raises(uow.TimeoutUnsupported):
        UnitOfWorkMiddleware(lambda s, r, se: None, manager, timeout=1)  # type: ignore[arg-type,return-value]
    unbound = uow.UnitOfWorkManager(sessionmaker(expire_on_commit=False))
    with pytest.raises(uow.TimeoutUnsupported, match="no bind"), unbound.unit_of_work(timeout=1):
        pass
    engine.dispose()


# --- the budget runs out --------------------------------------------------------


def test_a_long_statement_is_stopped_at_the_budget_and_the_unit_rolls_back(
    backend: str, one_conn: Engine
) -> None:
    started = time.monotonic()
    with (
        pytest.raises(uow.UnitTimeout, match=r"timeout=0\.5 s") as caught,
        uow.unit_of_work(timeout=BUDGET) as s,
    ):
        s.add(Item(name="lost"))
        s.flush()
        s.execute(text(_long_statement(backend)))
    elapsed = time.monotonic() - started
    assert BUDGET <= elapsed < LATE
    cause = caught.value.__cause__
    assert isinstance(cause, DBAPIError)
    if backend == "postgresql":
        assert _sqlstate(cause) == "57014"
    else:
        assert "interrupted" in str(cause)
    assert one_conn.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert names(one_conn) == []
    if backend == "postgresql":
        assert _idle_in_transaction(one_conn) == 0


def test_the_connection_is_clean_for_the_next_unit(backend: str, one_conn: Engine) -> None:
    with one_conn.connect() as conn:
        default = conn.scalar(text("SHOW statement_timeout")) if backend == "postgresql" else None
    with pytest.raises(uow.UnitTimeout), uow.unit_of_work(timeout=BUDGET) as s:
        if backend == "postgresql":
            assert s.scalar(text("SHOW statement_timeout")) not in (default, "0")
            assert s.scalar(text("SHOW lock_timeout")) not in (default, "0")
        s.execute(text(_long_statement(backend)))
    # the same pooled connection, past the old deadline, in a unit without a budget
    with uow.unit_of_work() as s:
        if backend == "postgresql":
            assert s.scalar(text("SHOW statement_timeout")) == default  # SET LOCAL ended with its transaction
            assert s.scalar(text("SHOW lock_timeout")) == "0"
            assert s.scalar(text("SELECT 1 FROM pg_sleep(0.6)")) == 1
        else:
            assert s.scalar(text(SHORT_SQLITE)) == 20000  # the progress handler is gone
    # units that end in time, by COMMIT, or (read-only on SQLite) by closing their session
    for read_only in (False, True):
        with uow.unit_of_work(timeout=0.6, read_only=read_only) as s:
            s.execute(text("SELECT 1"))
        time.sleep(0.65)  # their deadline passes
        with uow.unit_of_work(read_only=read_only) as s:
            assert s.scalar(text(SHORT_SQLITE if backend == "sqlite" else "SELECT 20000")) == 20000
            if backend == "postgresql":
                assert s.scalar(text("SHOW statement_timeout")) == default


def test_a_unit_past_its_budget_is_refused_at_its_next_statement(backend: str, one_conn: Engine) -> None:
    statements: list[str] = []
    with pytest.raises(uow.UnitTimeout, match="before a statement"), uow.unit_of_work(timeout=1.0) as s:
        s.execute(text("SELECT 1"))
        time.sleep(1.05)  # work that is not the database's
        statements.append("sent")
        s.execute(text("SELECT 2"))
        statements.append("ran")
    assert statements == ["sent"]


def test_a_commit_past_the_deadline_rolls_back(backend: str, one_conn: Engine) -> None:
    with pytest.raises(uow.UnitTimeout, match="before the commit"), uow.unit_of_work(timeout=1.0) as s:
        s.add(Item(name="late"))
        s.flush()
        time.sleep(1.05)
    assert names(one_conn) == []
    with uow.unit_of_work(timeout=5) as s:  # in time: committed
        s.add(Item(name="early"))
    assert names(one_conn) == ["early"]


def test_a_caught_timeout_cannot_commit_what_remains(backend: str, one_conn: Engine) -> None:
    with pytest.raises(uow.UnitTimeout), uow.unit_of_work(timeout=BUDGET) as s:
        s.add(Item(name="kept?"))
        s.flush()
        try:
            with uow.unit_of_work(propagation=uow.Propagation.NESTED) as inner:
                inner.execute(text(_long_statement(backend)))
        except uow.UnitTimeout:
            pass  # the savepoint rolled back; the outer unit's budget is spent all the same
    assert names(one_conn) == []


def test_later_statements_get_only_what_is_left_of_the_budget(tmp_path: Path) -> None:
    engine = _pool_engine("postgresql", tmp_path)
    manager = uow.UnitOfWorkManager(engine)
    started = time.monotonic()
    with pytest.raises(uow.UnitTimeout), manager.unit_of_work(timeout=3.0) as s:
        s.execute(text("SELECT 1"))  # statement_timeout is 3 s now
        time.sleep(2.0)
        s.execute(text("SELECT pg_sleep(60)"))  # with 3 s of its own it would end at 5 s
    elapsed = time.monotonic() - started
    assert 3.0 <= elapsed < 4.5
    engine.dispose()


def test_a_lock_wait_ends_at_the_budget(tmp_path: Path) -> None:
    engine = _pool_engine("postgresql", tmp_path)
    with engine.begin() as conn:
        conn.execute(cast(Table, Counter.__table__).insert().values(id=1, value=0))
    other = create_engine(pg_url() or "", poolclass=None)
    manager = uow.UnitOfWorkManager(engine)
    with other.connect() as holder:
        holder.execute(update(Counter).where(Counter.id == 1).values(value=99))  # the row lock, held
        started = time.monotonic()
        with pytest.raises(uow.UnitTimeout) as caught, manager.unit_of_work(timeout=BUDGET) as s:
            s.execute(update(Counter).where(Counter.id == 1).values(value=1))
        elapsed = time.monotonic() - started
        holder.rollback()
    assert BUDGET <= elapsed < LATE
    assert isinstance(caught.value.__cause__, DBAPIError)
    assert _sqlstate(caught.value.__cause__) in ("55P03", "57014")  # lock_timeout, or statement_timeout first
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert _idle_in_transaction(engine) == 0
    with manager.unit_of_work() as s:  # the lock is free, the connection fine
        s.execute(update(Counter).where(Counter.id == 1).values(value=2))
    with engine.connect() as conn:
        assert conn.scalar(select(Counter.value)) == 2
    other.dispose()
    engine.dispose()


def test_deferred_work_in_a_postgresql_commit_is_bounded_too(tmp_path: Path) -> None:
    engine = _pool_engine("postgresql", tmp_path)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS audited"))
        conn.execute(text("CREATE TABLE audited (id int)"))
        conn.execute(
            text(
                "CREATE OR REPLACE FUNCTION slow_audit() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN PERFORM pg_sleep(60); RETURN NULL; END $$"
            )
        )
        conn.execute(
            text(
                "CREATE CONSTRAINT TRIGGER audit AFTER INSERT ON audited DEFERRABLE INITIALLY DEFERRED "
                "FOR EACH ROW EXECUTE FUNCTION slow_audit()"
            )
        )
    manager = uow.UnitOfWorkManager(engine)
    started = time.monotonic()
    with pytest.raises(uow.UnitTimeout) as caught, manager.unit_of_work(timeout=BUDGET) as s:
        s.execute(text("INSERT INTO audited VALUES (1)"))  # quick: the trigger runs at COMMIT
    assert BUDGET <= time.monotonic() - started < LATE
    assert _sqlstate(cast(BaseException, caught.value.__cause__)) == "57014"
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM audited")) == 0
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert _idle_in_transaction(engine) == 0
    # a deferred constraint that fails there fails as it would in COMMIT, and leaves nothing open
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE audited"))
        conn.execute(text("CREATE TABLE audited (id int UNIQUE DEFERRABLE INITIALLY DEFERRED)"))
    with pytest.raises(IntegrityError), manager.unit_of_work(timeout=5) as s:
        s.execute(text("INSERT INTO audited VALUES (1), (1)"))
    with manager.unit_of_work(timeout=5) as s:
        s.execute(text("INSERT INTO audited VALUES (1), (2)"))
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM audited")) == 2
    assert _idle_in_transaction(engine) == 0
    engine.dispose()


def test_a_timed_out_unit_is_not_retried(backend: str, one_conn: Engine) -> None:
    runs: list[int] = []

    @uow.transactional(timeout=BUDGET, retry=3)
    def slow() -> None:
        runs.append(1)
        uow.session.execute(text(_long_statement(backend)))

    with pytest.raises(uow.UnitTimeout):
        slow()
    assert runs == [1]


# --- propagation ------------------------------------------------------------------


def test_a_joined_unit_cannot_extend_the_budget(backend: str, one_conn: Engine) -> None:
    with uow.unit_of_work(timeout=20):
        with (
            pytest.raises(uow.TimeoutConflict, match=r"timeout=50.*timeout=20"),
            uow.unit_of_work(timeout=50),
        ):
            pass
        with (
            pytest.raises(uow.TimeoutConflict),
            uow.unit_of_work(timeout=30, propagation=uow.Propagation.NESTED),
        ):
            pass
        with uow.unit_of_work(timeout=20) as s:  # as long as the outer budget: checked, and fine
            s.execute(text("SELECT 1"))
        with uow.unit_of_work(timeout=10) as s:  # shorter: fine (the outer deadline still rules)
            s.execute(text("SELECT 1"))
    with (
        uow.unit_of_work(),
        pytest.raises(uow.TimeoutConflict, match="no timeout"),
        uow.unit_of_work(timeout=1),
    ):
        pass


def test_requires_new_has_a_budget_of_its_own(backend: str, tmp_path: Path) -> None:
    engine = make_engine(backend, tmp_path, pool_size=2, max_overflow=0)
    manager = uow.UnitOfWorkManager(engine)
    new = uow.Propagation.REQUIRES_NEW
    sleep = "SELECT pg_sleep(0.6)" if backend == "postgresql" else SHORT_SQLITE
    # an inner budget longer than the outer one: the inner unit runs to its end
    with (
        pytest.raises(uow.UnitTimeout, match="before the commit"),
        manager.unit_of_work(timeout=0.5),
        manager.unit_of_work(timeout=5, propagation=new) as inner,
    ):
        inner.add(Item(name="inner"))
        inner.execute(text(sleep))
        time.sleep(0.6)
    assert names(engine) == ["inner"]
    # an inner budget when the outer unit has none: only the inner unit runs out
    with manager.unit_of_work() as outer:
        outer.add(Item(name="outer"))
        with pytest.raises(uow.UnitTimeout), manager.unit_of_work(timeout=BUDGET, propagation=new) as inner:
            inner.execute(text(_long_statement(backend)))
    assert names(engine) == ["inner", "outer"]
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    engine.dispose()


def test_units_with_a_budget_run_under_uow_testing(backend: str, one_conn: Engine) -> None:
    with uow.testing.rollback_after(one_conn):
        with uow.unit_of_work(timeout=5) as s:  # commits to a savepoint of the test's transaction
            s.add(Item(name="in the test"))
        with pytest.raises(uow.UnitTimeout, match="before the commit"), uow.unit_of_work(timeout=0.2) as s:
            s.add(Item(name="late"))
            time.sleep(0.25)
        with uow.unit_of_work(read_only=True) as s:
            assert list(s.scalars(select(Item.name))) == ["in the test"]
    assert names(one_conn) == []


# --- async ---------------------------------------------------------------------------


def _async_url(driver: str, tmp_path: Path) -> tuple[str, str]:
    """(backend, URL) of an AsyncEngine with *driver*, its tables made."""
    backend = "sqlite" if driver == "aiosqlite" else "postgresql"
    make_engine(backend, tmp_path).dispose()  # the tables (skips without PostgreSQL)
    if driver == "aiosqlite":
        return backend, f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
    url = pg_url() or ""
    return backend, async_pg_url(url) if driver == "asyncpg" else url  # postgresql+psycopg: its async side


ASYNC_DRIVERS = pytest.mark.parametrize("driver", ["aiosqlite", "asyncpg", "psycopg"])


@pytest.mark.anyio  # asyncio: the AsyncEngine drivers run on asyncio here
@ASYNC_DRIVERS
async def test_async_engines_stop_a_long_statement_at_the_budget(driver: str, tmp_path: Path) -> None:
    backend, url = _async_url(driver, tmp_path)
    engine: AsyncEngine = create_async_engine(url, pool_size=1, max_overflow=0)
    manager = uow.UnitOfWorkManager(engine)
    started = time.monotonic()
    with pytest.raises(uow.UnitTimeout) as caught:
        async with manager.unit_of_work(timeout=BUDGET) as s:
            s.add(Item(name="lost"))
            await s.flush()
            await s.execute(text(_long_statement(backend)))
    assert BUDGET <= time.monotonic() - started < LATE
    assert isinstance(caught.value.__cause__, DBAPIError)
    assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    async with manager.unit_of_work() as s:  # the same connection, clean
        if backend == "postgresql":
            assert await s.scalar(text("SHOW lock_timeout")) == "0"
        else:
            assert await s.scalar(text(SHORT_SQLITE)) == 20000
        assert await s.scalar(select(Item.name)) is None

    @manager.transactional(timeout=5)
    async def quick() -> None:
        manager.session.add(Item(name="quick"))

    await quick()
    async with manager.unit_of_work() as s:
        assert (await s.scalars(select(Item.name))).all() == ["quick"]
    await engine.dispose()


@pytest.mark.anyio
@asyncio_and_trio
async def test_a_sync_engine_from_async_code_is_bounded_too(backend: str, one_conn: Engine) -> None:
    with pytest.raises(uow.UnitTimeout):
        async with uow.unit_of_work(timeout=BUDGET):
            await uow.run_sync(lambda: uow.session.execute(text(_long_statement(backend))))
    assert one_conn.pool.checkedout() == 0  # type: ignore[attr-defined]


# --- the request middleware ------------------------------------------------------------


def _timed_app(backend: str, timeout: float) -> Starlette:
    def slow_write(request: Request) -> Response:
        uow.session.add(Item(name="slow"))
        uow.session.flush()
        uow.session.execute(text(_long_statement(backend)))
        return PlainTextResponse("never", status_code=201)

    def caught(request: Request) -> Response:
        uow.session.add(Item(name="caught"))
        uow.session.flush()
        with contextlib.suppress(DBAPIError):  # the handler answers as if all went well
            uow.session.execute(text(_long_statement(backend)))
        return PlainTextResponse("ok", status_code=201)

    def late(request: Request) -> Response:
        uow.session.add(Item(name="late"))
        uow.session.flush()
        time.sleep(timeout + 0.1)  # work that is not the database's
        return PlainTextResponse("ok", status_code=201)

    def quick(request: Request) -> Response:
        uow.session.add(Item(name="quick"))
        return PlainTextResponse("ok", status_code=201)

    def no_database(request: Request) -> Response:
        time.sleep(timeout + 0.1)
        return PlainTextResponse("ok")

    routes = [
        Route(f"/{f.__name__}", f, methods=["GET", "POST"])
        for f in (slow_write, caught, late, quick, no_database)
    ]
    return Starlette(routes=routes, middleware=[Middleware(UnitOfWorkMiddleware, timeout=timeout)])


@pytest.mark.anyio
async def test_a_request_that_runs_out_of_time_is_answered_503(backend: str, one_conn: Engine) -> None:
    app = _timed_app(backend, BUDGET)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        started = time.monotonic()
        response = await client.post("/slow_write")
        assert BUDGET <= time.monotonic() - started < LATE
        assert response.status_code == 503
        assert "ran out of time" in response.text
        assert (await client.post("/caught")).status_code == 503  # the commit finds the budget spent
        assert (await client.post("/late")).status_code == 503
        assert names(one_conn) == []
        assert one_conn.pool.checkedout() == 0  # type: ignore[attr-defined]
        assert (await client.post("/quick")).status_code == 201
        assert names(one_conn) == ["quick"]
        # the budget bounds the request's database work: a request without any is not cut
        assert (await client.get("/no_database")).status_code == 200
    if backend == "postgresql":
        assert _idle_in_transaction(one_conn) == 0


@pytest.mark.anyio
async def test_the_middleware_raises_unit_timeout_to_the_server(backend: str, one_conn: Engine) -> None:
    app = _timed_app(backend, BUDGET)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        with pytest.raises(uow.UnitTimeout) as caught:
            await client.post("/late")
    assert "before the commit" in str(caught.value)


@pytest.mark.anyio  # asyncio: the AsyncEngine drivers run on asyncio here
@ASYNC_DRIVERS
async def test_a_fastapi_request_on_an_async_engine_that_runs_out_of_time_is_answered_503(
    driver: str, tmp_path: Path
) -> None:
    backend, url = _async_url(driver, tmp_path)
    engine = create_async_engine(url, pool_size=1, max_overflow=0)
    uow.configure(engine)
    api = FastAPI(middleware=[Middleware(UnitOfWorkMiddleware, timeout=BUDGET)])

    @api.post("/slow", status_code=201)
    async def slow(db: AsyncSession = Depends(provide_session)) -> dict[str, int]:
        db.add(Item(name="slow"))
        await db.flush()
        await db.execute(text(_long_statement(backend)))
        return {"never": 1}

    @api.post("/quick", status_code=201)
    async def quick(db: AsyncSession = Depends(provide_session)) -> dict[str, int]:
        db.add(Item(name="quick"))
        return {"ok": 1}

    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        started = time.monotonic()
        assert (await client.post("/slow")).status_code == 503
        assert BUDGET <= time.monotonic() - started < LATE
        assert (await client.post("/quick")).status_code == 201
    async with uow.unit_of_work(read_only=True) as s:
        assert (await s.scalars(select(Item.name))).all() == ["quick"]
    assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    await engine.dispose()
