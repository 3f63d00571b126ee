"""Cancelled units: committed or rolled back, never half, and the connection back in the pool.

Every case runs on a sync engine (the body's queries through ``uow.run_sync``)
and on an ``AsyncSession``, on SQLite and PostgreSQL, cancelled three ways:
``Task.cancel()``, anyio ``CancelScope.cancel()``, and a ``move_on_after``
deadline that expires. The moments are real: a query that sleeps in the
database, and a COMMIT that waits (a deferred PostgreSQL trigger that sleeps;
on SQLite a reader whose shared lock holds the COMMIT back).

On asyncio every case runs; on trio, the sync engine's cases cancelled by anyio's
scopes (``Task.cancel()`` is asyncio's, and so are the ``AsyncSession`` drivers,
aiosqlite and asyncpg): see :func:`matrix`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

import uow
from tests.conftest import ANYIO_BACKENDS, Item, _require_pg, async_pg_url, make_engine, names

pytestmark = pytest.mark.reliability

SLOW = 0.3  # seconds a slow query or a slow COMMIT takes
WAYS = ["task", "scope", "deadline"]
PATHS = ["run_sync", "async_session"]


def matrix(ways: list[str]) -> pytest.MarkDecorator:
    """Parametrize ``anyio_backend``, ``target`` (its path) and ``way`` with the cases that exist.

    asyncio runs every path and way; trio runs the sync engine's path (the
    ``AsyncSession`` drivers are asyncio's) cancelled by anyio's scopes
    (``Task.cancel()`` is asyncio's).
    """
    cases = [
        pytest.param(loop, path, way, id=f"{path}-{way}-{loop}")
        for loop in ANYIO_BACKENDS
        for path in PATHS
        for way in ways
        if loop == "asyncio" or (path == "run_sync" and way != "task")
    ]
    return pytest.mark.parametrize(("anyio_backend", "target", "way"), cases, indirect=["target"])


@dataclass
class Target:
    backend: str
    path: str  # "run_sync": sync engine driven from async code; "async_session"
    manager: uow.UnitOfWorkManager
    engine: Engine  # the unit's (sync) engine: events and pool
    reader: Engine  # a separate engine to read what was committed
    db_file: Path
    query_started: threading.Event = field(default_factory=threading.Event)
    commit_started: threading.Event = field(default_factory=threading.Event)
    rollbacks: int = 0

    @property
    def slow_sql(self) -> str:
        return f"SELECT pg_sleep({SLOW})" if self.backend == "postgresql" else f"SELECT uow_sleep({SLOW})"

    def checked_out(self) -> int:
        return int(self.engine.pool.checkedout())  # type: ignore[attr-defined]

    def rows(self) -> list[str]:
        return names(self.reader)


def _install_slow_commit(engine: Engine) -> None:
    """PostgreSQL: a row named 'slow' makes COMMIT take SLOW seconds (a deferred trigger)."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE OR REPLACE FUNCTION uow_slow_commit() RETURNS trigger AS $$ "
                f"BEGIN PERFORM pg_sleep({SLOW}); RETURN NULL; END $$ LANGUAGE plpgsql"
            )
        )
        conn.execute(
            text(
                "CREATE CONSTRAINT TRIGGER items_slow_commit AFTER INSERT ON items "
                "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.name = 'slow') "
                "EXECUTE FUNCTION uow_slow_commit()"
            )
        )


def _sqlite_sleep_function(dbapi_connection: Any, _: Any) -> None:
    dbapi_connection.create_function("uow_sleep", 1, time.sleep)


@pytest.fixture
async def target(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> AsyncIterator[Target]:
    """The unit's engine and its probes; the path comes from the test (indirect parametrization)."""
    reader = make_engine(backend, tmp_path)  # creates the tables
    db_file = tmp_path / "test.db"
    if backend == "postgresql":
        _install_slow_commit(reader)
    path: str = request.param
    if path == "run_sync":
        url = f"sqlite:///{db_file}" if backend == "sqlite" else _require_pg()
        engine = create_engine(url, connect_args={"timeout": 5} if backend == "sqlite" else {})
        sync_engine = engine
        bind: Any = engine
    else:
        url = f"sqlite+aiosqlite:///{db_file}" if backend == "sqlite" else async_pg_url(_require_pg())
        async_engine = create_async_engine(url)
        sync_engine = async_engine.sync_engine
        bind = async_engine
    if backend == "sqlite":
        event.listen(sync_engine, "connect", _sqlite_sleep_function)
    t = Target(backend, path, uow.UnitOfWorkManager(bind), sync_engine, reader, db_file)

    def on_execute(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "sleep(" in statement:
            t.query_started.set()

    def on_commit(_: Any) -> None:
        t.commit_started.set()

    def on_rollback(_: Any) -> None:
        t.rollbacks += 1

    event.listen(sync_engine, "before_cursor_execute", on_execute)
    event.listen(sync_engine, "commit", on_commit)
    event.listen(sync_engine, "rollback", on_rollback)
    yield t
    checked_out = t.checked_out()
    if path == "run_sync":
        engine.dispose()
    else:
        await async_engine.dispose()
    reader.dispose()
    assert checked_out == 0, f"{checked_out} connection(s) still checked out"


def _hold_shared_lock(db_file: Path, until: threading.Event) -> None:
    """SQLite: hold a reader's shared lock, which makes a COMMIT wait, until SLOW after *until*."""
    ready = threading.Event()

    def run() -> None:
        conn = sqlite3.connect(db_file, isolation_level=None)
        try:
            conn.execute("BEGIN")
            conn.execute("SELECT count(*) FROM items").fetchall()
            ready.set()
            until.wait(5)
            time.sleep(SLOW)
            conn.execute("COMMIT")
        finally:
            conn.close()

    threading.Thread(target=run, daemon=True).start()
    assert ready.wait(5)


def make_unit(t: Target, moment: str, reached: threading.Event) -> Callable[[], Awaitable[None]]:
    """A unit that writes two rows, with a pause, a slow query or a slow COMMIT at *moment*."""
    second = "slow" if moment == "commit" else "b"

    async def pause() -> None:
        reached.set()
        await anyio.sleep(30)

    async def prepare_slow_commit() -> None:
        if t.backend == "sqlite":
            await anyio.to_thread.run_sync(_hold_shared_lock, t.db_file, t.commit_started)

    if t.path == "run_sync":

        def add(name: str) -> None:
            session = t.manager.current_session()
            session.add(Item(name=name))
            session.flush()

        def slow_query() -> None:
            t.manager.current_session().execute(text(t.slow_sql))

        @t.manager.transactional
        async def unit() -> None:
            if moment == "before":
                await pause()
            await uow.run_sync(add, "a")
            if moment == "during":
                await uow.run_sync(slow_query)
            if moment == "after":
                await pause()
            await uow.run_sync(add, second)
            if moment == "commit":
                await prepare_slow_commit()

    else:

        @t.manager.transactional
        async def unit() -> None:
            session = t.manager.current_session()
            if moment == "before":
                await pause()
            session.add(Item(name="a"))
            await session.flush()
            if moment == "during":
                await session.execute(text(t.slow_sql))
            if moment == "after":
                await pause()
            session.add(Item(name=second))
            await session.flush()
            if moment == "commit":
                await prepare_slow_commit()

    return unit


def _loop_callbacks() -> tuple[Callable[..., object], Callable[[], float]]:
    """Return the running event loop's ``call_soon_threadsafe`` and clock.

    A call scheduled from a thread runs outside any task, where anyio cannot
    tell its backend: it uses the loop's own clock.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not asyncio: trio
        import trio

        return trio.lowlevel.current_trio_token().run_sync_soon, trio.current_time
    return loop.call_soon_threadsafe, loop.time


class Canceller:
    """Run a unit in a task of its own and cancel it one of three ways, once or again.

    ``task`` is asyncio's ``Task.cancel()`` (asyncio only); ``scope`` and
    ``deadline`` are anyio's, the unit then runs in a task group's task.
    """

    def __init__(self, way: str) -> None:
        self.way = way
        self.call_soon_threadsafe, self.clock = _loop_callbacks()
        self.task: asyncio.Task[None] | None = None
        self.inner: anyio.CancelScope | None = None
        self.outer: anyio.CancelScope | None = None
        self.completed = False
        self.finished = False
        self.error: Exception | None = None
        self.again_count = 0

    async def _body(self, unit: Callable[[], Awaitable[None]]) -> None:
        try:
            if self.way == "deadline":
                with anyio.move_on_after(60) as self.outer, anyio.move_on_after(60) as self.inner:
                    await unit()
                    self.completed = True
            else:
                with anyio.CancelScope() as self.outer, anyio.CancelScope() as self.inner:
                    await unit()
                    self.completed = True
        except Exception as e:  # raised by run() as is, not in a task group's ExceptionGroup
            self.error = e
        finally:
            self.finished = True

    def _cancel(self, scope: anyio.CancelScope | None) -> None:
        if self.way == "task":
            assert self.task is not None
            self.task.cancel()
            return
        assert scope is not None
        if self.way == "scope":
            scope.cancel()
        else:
            scope.deadline = self.clock()  # the deadline expires now

    def again(self) -> None:
        """Cancel again (from any thread): the task again, or the enclosing scope."""
        self.again_count += 1
        self.call_soon_threadsafe(self._cancel, self.outer)

    async def _cancel_at(self, moment: threading.Event | None, delay: float) -> None:
        if moment is not None:
            with anyio.fail_after(10):
                while not moment.is_set():
                    assert not self.finished, "the unit ended before the moment to cancel it"
                    await anyio.sleep(0.002)
            await anyio.sleep(delay)
        self._cancel(self.inner)

    async def run(
        self, unit: Callable[[], Awaitable[None]], moment: threading.Event | None, delay: float = 0.0
    ) -> bool:
        """Cancel *delay* seconds after *moment* (None: at once); return True if the task ended cancelled."""
        cancelled = False
        if self.way == "task":
            self.task = asyncio.create_task(self._body(unit))
            await self._cancel_at(moment, delay)
            with anyio.fail_after(10):
                await asyncio.wait([self.task])
            cancelled = self.task.cancelled()
        else:  # a scope swallows its own cancellation
            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._body, unit)
                    await self._cancel_at(moment, delay)
        if self.error is not None:
            raise self.error
        return cancelled


def _check_rolled_back(t: Target, cancelled: bool, c: Canceller) -> None:
    assert t.rows() == []
    assert t.checked_out() == 0
    assert not c.completed
    assert cancelled is (c.way == "task")  # anyio scopes swallow their own cancellation


# --- the matrix ---------------------------------------------------------------------


@pytest.mark.anyio
@matrix(WAYS)
async def test_cancel_before_the_first_query_rolls_back(target: Target, way: str) -> None:
    reached = threading.Event()
    c = Canceller(way)
    cancelled = await c.run(make_unit(target, "before", reached), reached)
    _check_rolled_back(target, cancelled, c)


@pytest.mark.anyio  # asyncio only: a task cancelled before its first step (Task.cancel())
@pytest.mark.parametrize("target", PATHS, indirect=True)
async def test_cancel_before_the_task_starts(target: Target) -> None:
    c = Canceller("task")
    cancelled = await c.run(make_unit(target, "before", threading.Event()), None)
    _check_rolled_back(target, cancelled, c)


@pytest.mark.anyio
@matrix(WAYS)
async def test_cancel_during_a_query_rolls_back(target: Target, way: str) -> None:
    if target.path == "async_session" and target.backend == "sqlite":
        pytest.skip(
            "SQLAlchemy invalidates an aiosqlite connection whose query is cancelled and closes "
            "it with the cursor still open: sqlite3 keeps the 'closed' connection, and its write "
            "lock, alive until the cursor is collected (reproduced without uow)"
        )
    c = Canceller(way)
    cancelled = await c.run(make_unit(target, "during", threading.Event()), target.query_started, 0.05)
    _check_rolled_back(target, cancelled, c)
    assert target.rollbacks >= 1 or target.path == "async_session"


@pytest.mark.anyio
@matrix(WAYS)
async def test_cancel_after_a_query_rolls_back(target: Target, way: str) -> None:
    reached = threading.Event()
    c = Canceller(way)
    cancelled = await c.run(make_unit(target, "after", reached), reached)
    _check_rolled_back(target, cancelled, c)
    assert target.rollbacks == 1


@pytest.mark.anyio
@matrix(WAYS)
async def test_cancel_during_commit_commits(target: Target, way: str) -> None:
    c = Canceller(way)
    started = time.monotonic()
    cancelled = await c.run(make_unit(target, "commit", threading.Event()), target.commit_started, 0.05)
    assert time.monotonic() - started >= SLOW, "the COMMIT was not slow: the test proves nothing"
    # the COMMIT had begun: it is finished (shielded), then the cancellation is raised
    assert target.rows() == ["a", "slow"]
    assert target.checked_out() == 0
    assert cancelled is (way == "task")
    assert c.completed is (way != "task")


@pytest.mark.anyio
@matrix(WAYS)
async def test_cancel_again_while_the_rollback_runs(target: Target, way: str) -> None:
    reached = threading.Event()
    c = Canceller(way)
    seen: list[str] = []

    def cancel_again(*_: Any) -> None:
        c.again()
        if target.path == "run_sync":
            time.sleep(0.05)  # the rollback runs in a worker thread: keep it busy a moment
        seen.append(threading.current_thread().name)

    event.listen(target.engine, "rollback", cancel_again)
    event.listen(target.engine.pool, "checkin", cancel_again)
    try:
        cancelled = await c.run(make_unit(target, "after", reached), reached)
    finally:
        event.remove(target.engine, "rollback", cancel_again)
        event.remove(target.engine.pool, "checkin", cancel_again)
    assert c.again_count == 2, "cancelled again during the rollback and the check-in"
    assert target.rows() == []
    assert target.checked_out() == 0
    assert not c.completed
    assert cancelled is (way == "task")
    # the connection went back clean: the next unit works on it
    async with target.manager.unit_of_work() as session:
        session.add(Item(name="next"))
    assert target.rows() == ["next"]
    assert target.checked_out() == 0


# --- savepoints and hooks under cancellation ---------------------------------------


@pytest.mark.anyio
@matrix(["scope", "deadline"])
async def test_cancelled_savepoint_rolls_back_and_the_outer_unit_goes_on(target: Target, way: str) -> None:
    """A scope cancelled inside a unit ends a NESTED unit; the outer unit commits only its own rows."""
    m = target.manager
    paused = anyio.Event()

    def add(name: str) -> None:
        m.current_session().add(Item(name=name))
        m.current_session().flush()

    async def write(name: str) -> None:
        if target.path == "run_sync":
            await uow.run_sync(add, name)
        else:
            m.current_session().add(Item(name=name))
            await m.current_session().flush()

    async def cancel_when_paused(scope: anyio.CancelScope) -> None:
        await paused.wait()
        if way == "scope":
            scope.cancel()
        else:
            scope.deadline = anyio.current_time()

    async with m.unit_of_work():
        await write("outer")
        async with anyio.create_task_group() as tg:
            with anyio.move_on_after(60) as scope:
                tg.start_soon(cancel_when_paused, scope)
                async with m.unit_of_work(propagation="NESTED"):
                    await write("nested")
                    paused.set()
                    await anyio.sleep(30)
                    await write("never")
            assert scope.cancelled_caught
        await write("after")
    assert target.rows() == ["after", "outer"]
    assert target.checked_out() == 0


@pytest.mark.anyio
@pytest.mark.parametrize("moment", ["after", "commit"])
@matrix(WAYS)
async def test_hooks_of_the_outcome_run_when_cancelled(target: Target, way: str, moment: str) -> None:
    """Cancelled before COMMIT: on_rollback hooks run. Cancelled during COMMIT: on_commit hooks run."""
    ran: list[str] = []
    reached = threading.Event()
    m = target.manager
    inner = make_unit(target, moment, reached)

    async def async_hook(tag: str) -> None:
        await anyio.sleep(0.01)  # a real await: it must not be cancelled half-way
        ran.append(tag)

    async def unit() -> None:
        async with m.unit_of_work():  # the outermost unit; `inner` joins it
            m.on_commit(lambda: ran.append("commit sync"))
            m.on_commit(lambda: async_hook("commit async"))
            m.on_rollback(lambda: ran.append("rollback sync"))
            m.on_rollback(lambda: async_hook("rollback async"))
            await inner()

    moment_event = reached if moment == "after" else target.commit_started
    c = Canceller(way)
    cancelled = await c.run(unit, moment_event, 0.05 if moment == "commit" else 0.0)
    assert cancelled is (way == "task")
    assert target.checked_out() == 0
    if moment == "after":
        assert target.rows() == []
        assert ran == ["rollback sync", "rollback async"]
    else:
        assert target.rows() == ["a", "slow"]
        assert ran == ["commit sync", "commit async"]


@pytest.mark.anyio  # asyncio only: a native Task.cancel() is the point
async def test_sync_session_is_never_used_by_two_threads_when_cancelled(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    """Task.cancel() during run_sync: the unit's end waits for the thread, it does not race it."""
    in_query = threading.Event()
    busy = threading.Lock()
    overlaps: list[str] = []

    def slow_work() -> None:
        with busy:
            uow.session.add(Item(name="x"))
            uow.session.flush()
            in_query.set()
            time.sleep(0.2)
            uow.session.add(Item(name="y"))
            uow.session.flush()

    def guard(*_: Any) -> None:
        if busy.locked():
            overlaps.append("rollback or check-in while the worker thread used the session")

    @uow.transactional
    async def unit() -> None:
        await uow.run_sync(slow_work)

    event.listen(engine, "rollback", guard)
    event.listen(engine.pool, "checkin", guard)
    event.listen(Session, "after_soft_rollback", guard)
    try:
        c = Canceller("task")
        assert await c.run(unit, in_query)
        await anyio.sleep(0.3)
    finally:
        event.remove(engine, "rollback", guard)
        event.remove(engine.pool, "checkin", guard)
        event.remove(Session, "after_soft_rollback", guard)
    assert overlaps == []
    assert names(engine) == []
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
