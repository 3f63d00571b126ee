"""retry=N: real serialization failures, deadlocks and SQLite busy errors are re-run; others are not."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import cast

import anyio
import pytest
from sqlalchemy import Engine, Table, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import uow
from tests.conftest import Counter, Item, async_pg_url, asyncio_and_trio, make_engine, names

pytestmark = pytest.mark.reliability

FAST = (0.001, 0.02)  # retry back-off (base, cap) that keeps the suite quick


def _value(engine: Engine, counter_id: int = 1) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(Counter.value).where(Counter.id == counter_id)) or 0)


def _seed_counters(engine: Engine, *ids: int) -> None:
    with engine.begin() as conn:
        for i in ids:
            conn.execute(cast(Table, Counter.__table__).insert().values(id=i, value=0))


@pytest.fixture
def pg_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine("postgresql", tmp_path, pool_size=10, max_overflow=0)
    _seed_counters(engine, 1, 2)
    yield engine
    checked_out = engine.pool.checkedout()  # type: ignore[attr-defined]
    engine.dispose()
    assert checked_out == 0


def _run_threads(count: int, target: object) -> list[BaseException]:
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            target(i)  # type: ignore[operator]
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return errors


# --- PostgreSQL: serialization failures and deadlocks ------------------------------


def test_serializable_increments_from_threads_are_exact(pg_engine: Engine) -> None:
    manager = uow.UnitOfWorkManager(pg_engine, retry_backoff=FAST)
    threads, per_thread = 8, 5
    attempts = 0
    lock = threading.Lock()
    start = threading.Barrier(threads)

    @manager.transactional(isolation_level="SERIALIZABLE", retry=50)
    def increment() -> None:
        nonlocal attempts
        with lock:
            attempts += 1
        session = manager.current_session()
        assert session.connection().get_isolation_level() == "SERIALIZABLE"
        counter = session.get(Counter, 1)
        assert counter is not None
        time.sleep(0.002)  # widen the read-modify-write window so the writers collide
        counter.value += 1

    def work(_: int) -> None:
        start.wait(10)
        for _ in range(per_thread):
            increment()

    errors = _run_threads(threads, work)
    assert errors == []
    assert _value(pg_engine) == threads * per_thread
    assert attempts > threads * per_thread, "no serialization failure happened, nothing was retried"


def test_real_deadlock_is_retried_and_both_commit(pg_engine: Engine) -> None:
    barrier = threading.Barrier(2)
    attempts = [0, 0]
    seen: list[str] = []

    def remember(e: BaseException) -> bool:
        seen.append(str(getattr(getattr(e, "orig", e), "sqlstate", "")))
        return False  # only watches; the built-in rules classify

    manager = uow.UnitOfWorkManager(pg_engine, retry_on=remember, retry_backoff=FAST)

    @manager.transactional(retry=3)
    def lock_both(i: int) -> None:
        attempts[i] += 1
        session = manager.current_session()
        session.execute(text("SET LOCAL deadlock_timeout = '50ms'"))
        first, second = (1, 2) if i == 0 else (2, 1)
        session.execute(update(Counter).where(Counter.id == first).values(value=Counter.value + 1))
        if attempts[i] == 1:
            barrier.wait(10)  # both hold their first row: now each wants the other's
        session.execute(update(Counter).where(Counter.id == second).values(value=Counter.value + 1))

    errors = _run_threads(2, lock_both)
    assert errors == []
    assert sorted(attempts) == [1, 2], "exactly one deadlock victim, re-run once"
    assert "40P01" in seen
    assert _value(pg_engine, 1) == 2
    assert _value(pg_engine, 2) == 2


def test_deadlock_without_retry_raises(pg_engine: Engine) -> None:
    manager = uow.UnitOfWorkManager(pg_engine)
    barrier = threading.Barrier(2)

    @manager.transactional
    def lock_both(i: int) -> None:
        session = manager.current_session()
        session.execute(text("SET LOCAL deadlock_timeout = '50ms'"))
        first, second = (1, 2) if i == 0 else (2, 1)
        session.execute(update(Counter).where(Counter.id == first).values(value=Counter.value + 1))
        barrier.wait(10)
        session.execute(update(Counter).where(Counter.id == second).values(value=Counter.value + 1))

    errors = _run_threads(2, lock_both)
    assert len(errors) == 1
    assert isinstance(errors[0], OperationalError)
    assert getattr(errors[0].orig, "sqlstate", None) == "40P01"
    assert _value(pg_engine, 1) == 1 and _value(pg_engine, 2) == 1


def _concurrent_update(engine: Engine) -> None:
    """Commit an increment of counter 1 from a connection of its own."""
    with engine.begin() as conn:
        conn.execute(update(Counter).where(Counter.id == 1).values(value=Counter.value + 100))


def test_repeatable_read_conflict_is_retried_once(pg_engine: Engine) -> None:
    """A deterministic 40001: our snapshot is older than a concurrent committed update."""
    manager = uow.UnitOfWorkManager(pg_engine, retry_backoff=FAST)
    attempts = 0

    @manager.transactional(isolation_level="REPEATABLE READ", retry=2)
    def increment() -> None:
        nonlocal attempts
        attempts += 1
        session = manager.current_session()
        session.scalar(select(Counter.value).where(Counter.id == 1))  # takes the snapshot
        if attempts == 1:
            _concurrent_update(pg_engine)
        session.execute(update(Counter).where(Counter.id == 1).values(value=Counter.value + 1))

    increment()
    assert attempts == 2
    assert _value(pg_engine) == 101


# --- SQLite: database is locked --------------------------------------------------


def _hold_write_lock(path: Path, seconds: float) -> tuple[threading.Thread, threading.Event]:
    """Hold SQLite's write lock (BEGIN IMMEDIATE) from a second connection for *seconds*."""
    locked = threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            locked.set()
            time.sleep(seconds)
            conn.execute("COMMIT")
        finally:
            conn.close()

    thread = threading.Thread(target=hold)
    thread.start()
    assert locked.wait(5)
    return thread, locked


@pytest.fixture
def busy_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine("sqlite", tmp_path, connect_args={"timeout": 0.02})
    yield engine
    checked_out = engine.pool.checkedout()  # type: ignore[attr-defined]
    engine.dispose()
    assert checked_out == 0


def test_sqlite_database_is_locked_is_retried(busy_engine: Engine, tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def remember(e: BaseException) -> bool:
        errors.append(e)
        return False  # only watches; the built-in rules classify

    manager = uow.UnitOfWorkManager(busy_engine, retry_on=remember, retry_backoff=(0.01, 0.05))
    attempts = 0

    @manager.transactional(retry=100)
    def write() -> None:
        nonlocal attempts
        attempts += 1
        manager.current_session().add(Item(name="written"))

    holder, _ = _hold_write_lock(tmp_path / "test.db", 0.3)
    try:
        write()
    finally:
        holder.join()
    assert attempts > 1
    assert any("database is locked" in str(e) for e in errors)
    assert names(busy_engine) == ["written"]


def test_sqlite_database_is_locked_without_retry_raises(busy_engine: Engine, tmp_path: Path) -> None:
    manager = uow.UnitOfWorkManager(busy_engine)

    @manager.transactional
    def write() -> None:
        manager.current_session().add(Item(name="lost"))

    holder, _ = _hold_write_lock(tmp_path / "test.db", 0.2)
    try:
        with pytest.raises(OperationalError, match="database is locked"):
            write()
    finally:
        holder.join()
    assert names(busy_engine) == []


# --- what is not retried ---------------------------------------------------------


def test_non_transient_errors_are_not_retried(manager: uow.UnitOfWorkManager, engine: Engine) -> None:
    attempts = {"value": 0, "integrity": 0}

    @uow.transactional(retry=5)
    def value_error() -> None:
        attempts["value"] += 1
        uow.session.add(Item(name="v"))
        uow.session.flush()
        raise ValueError("not transient")

    @uow.transactional(retry=5)
    def duplicate() -> None:
        attempts["integrity"] += 1
        uow.session.add_all([Item(name="dup"), Item(name="dup")])

    with pytest.raises(ValueError):
        value_error()
    with pytest.raises(IntegrityError):
        duplicate()
    assert attempts == {"value": 1, "integrity": 1}
    assert names(engine) == []


def test_retry_gives_up_after_n_extra_attempts(engine: Engine) -> None:
    class Flaky(Exception):
        pass

    manager = uow.UnitOfWorkManager(engine, retry_on=lambda e: isinstance(e, Flaky), retry_backoff=(0, 0))
    attempts = 0

    @manager.transactional(retry=3)
    def always() -> None:
        nonlocal attempts
        attempts += 1
        manager.current_session().add(Item(name=f"a{attempts}"))
        manager.current_session().flush()
        raise Flaky

    with pytest.raises(Flaky):
        always()
    assert attempts == 4
    assert names(engine) == []


def test_retry_on_a_joined_unit_is_a_propagation_error(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    ran: list[str] = []

    @uow.transactional(retry=3)
    def joined() -> None:
        ran.append("joined")

    @uow.transactional(retry=3, propagation=uow.Propagation.NESTED)
    def nested() -> None:
        ran.append("nested")

    @uow.transactional(retry=3, propagation=uow.Propagation.REQUIRES_NEW)
    def own() -> None:
        ran.append("own")
        uow.session.add(Item(name="own"))

    with uow.unit_of_work() as session:
        session.add(Item(name="outer"))
        with pytest.raises(uow.PropagationError, match="retry"):
            joined()
        with pytest.raises(uow.PropagationError, match="retry"):
            nested()
        own()  # begins a transaction of its own: allowed
    assert ran == ["own"]
    assert names(engine) == ["outer", "own"]
    nested()  # outermost: NESTED begins, so retry is allowed
    assert ran == ["own", "nested"]


def test_retry_on_predicate_adds_a_classification(engine: Engine) -> None:
    class Flaky(Exception):
        pass

    counts = {"plain": 0, "classified": 0}

    def body(manager: uow.UnitOfWorkManager, key: str) -> None:
        counts[key] += 1
        manager.current_session().add(Item(name=key))
        if counts[key] == 1:
            # raised from another error: the predicate sees the whole chain
            try:
                raise Flaky("first attempt")
            except Flaky as e:
                raise RuntimeError("wrapped") from e

    plain = uow.UnitOfWorkManager(engine, retry_backoff=(0, 0))
    classified = uow.UnitOfWorkManager(engine, retry_on=lambda e: isinstance(e, Flaky), retry_backoff=(0, 0))
    with pytest.raises(RuntimeError, match="wrapped"):
        plain.transactional(retry=2)(body)(plain, "plain")
    classified.transactional(retry=2)(body)(classified, "classified")
    assert counts == {"plain": 1, "classified": 2}
    assert names(engine) == ["classified"]


@pytest.mark.anyio
@asyncio_and_trio
@pytest.mark.parametrize("kind", ["def", "async def"])
async def test_the_debug_record_of_each_run_counts_the_retries_before_it(
    engine: Engine, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    class Flaky(Exception):
        pass

    manager = uow.UnitOfWorkManager(engine, retry_on=lambda e: isinstance(e, Flaky), retry_backoff=(0, 0))
    runs = 0

    def work() -> None:
        nonlocal runs
        runs += 1
        manager.current_session().add(Item(name=f"run{runs}"))
        if runs < 3:
            raise Flaky(runs)

    with caplog.at_level(logging.DEBUG, logger="uow"):
        if kind == "def":
            manager.transactional(retry=3)(work)()
        else:

            @manager.transactional(retry=3)
            async def run() -> None:
                await uow.run_sync(work)

            await run()
    ends = [r for r in caplog.records if hasattr(r, "uow_outcome")]
    assert [(r.uow_outcome, r.uow_retries) for r in ends] == [  # type: ignore[attr-defined]
        ("rollback", 0),
        ("rollback", 1),
        ("commit", 2),
    ]
    assert "retries=2" in ends[-1].getMessage()
    assert [r.uow_retry for r in caplog.records if hasattr(r, "uow_retry")] == [1, 2]
    assert names(engine) == ["run3"]


def test_retry_on_must_be_callable(engine: Engine) -> None:
    with pytest.raises(uow.InvalidOptionError):
        uow.UnitOfWorkManager(engine, retry_on="40001")  # type: ignore[call-overload]


def test_with_block_refuses_retry(manager: uow.UnitOfWorkManager) -> None:
    with pytest.raises(uow.InvalidOptionError, match="retry"):
        uow.unit_of_work(retry=2)


# --- async ------------------------------------------------------------------------


@pytest.fixture
async def pg_async_engine(pg_engine: Engine) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(async_pg_url(str(pg_engine.url.render_as_string(hide_password=False))))
    yield engine
    checked_out = engine.sync_engine.pool.checkedout()  # type: ignore[attr-defined]
    await engine.dispose()
    assert checked_out == 0


@pytest.mark.anyio  # asyncio only: AsyncEngine (aiosqlite, asyncpg)
async def test_async_session_serializable_increments_from_tasks(
    pg_engine: Engine, pg_async_engine: AsyncEngine
) -> None:
    manager = uow.UnitOfWorkManager(pg_async_engine, retry_backoff=FAST)
    tasks, per_task = 8, 4
    attempts = 0

    @manager.transactional(isolation_level="SERIALIZABLE", retry=50)
    async def increment() -> None:
        nonlocal attempts
        attempts += 1
        session = manager.current_session()
        counter = await session.get(Counter, 1)
        assert counter is not None
        await anyio.sleep(0.002)  # let the other tasks read the same value
        counter.value += 1

    async def work() -> None:
        for _ in range(per_task):
            await increment()

    async with anyio.create_task_group() as tg:
        for _ in range(tasks):
            tg.start_soon(work)
    assert _value(pg_engine) == tasks * per_task
    assert attempts > tasks * per_task


@pytest.mark.anyio
@asyncio_and_trio
async def test_async_def_on_sync_engine_is_retried(pg_engine: Engine) -> None:
    manager = uow.UnitOfWorkManager(pg_engine, retry_backoff=FAST)
    attempts = 0

    @manager.transactional(isolation_level="REPEATABLE READ", retry=2)
    async def increment() -> None:
        nonlocal attempts
        attempts += 1

        def body() -> None:
            session = manager.current_session()
            session.scalar(select(Counter.value).where(Counter.id == 1))
            if attempts == 1:
                _concurrent_update(pg_engine)
            session.execute(update(Counter).where(Counter.id == 1).values(value=Counter.value + 1))

        await uow.run_sync(body)

    await increment()
    assert attempts == 2
    assert _value(pg_engine) == 101


@pytest.mark.anyio  # asyncio only: AsyncEngine (aiosqlite, asyncpg)
async def test_async_sqlite_busy_is_retried_and_other_errors_are_not(tmp_path: Path) -> None:
    sync = make_engine("sqlite", tmp_path)
    sync.dispose()
    engine = create_async_engine(
        f"sqlite+aiosqlite:///{tmp_path / 'test.db'}", connect_args={"timeout": 0.02}
    )
    manager = uow.UnitOfWorkManager(engine, retry_backoff=(0.01, 0.05))
    attempts = {"busy": 0, "value": 0}

    @manager.transactional(retry=100)
    async def write() -> None:
        attempts["busy"] += 1
        manager.current_session().add(Item(name="written"))

    @manager.transactional(retry=100)
    async def fails() -> None:
        attempts["value"] += 1
        manager.current_session().add(Item(name="never"))
        await manager.current_session().flush()
        raise ValueError

    try:
        holder, _ = await anyio.to_thread.run_sync(_hold_write_lock, tmp_path / "test.db", 0.3)
        await write()
        await anyio.to_thread.run_sync(holder.join)
        with pytest.raises(ValueError):
            await fails()
        assert attempts["busy"] > 1
        assert attempts["value"] == 1
        async with engine.connect() as conn:
            assert list(await conn.scalars(select(Item.name))) == ["written"]
        assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        await engine.dispose()


@pytest.mark.anyio
@asyncio_and_trio  # the units never connect: the asyncio-only driver is never used
async def test_async_retry_on_joined_unit_is_a_propagation_error(
    async_manager: uow.UnitOfWorkManager,
) -> None:
    ran = 0

    @uow.transactional(retry=1)
    async def joined() -> None:
        nonlocal ran
        ran += 1

    async with uow.unit_of_work():
        with pytest.raises(uow.PropagationError):
            await joined()
    assert ran == 0
    await joined()
    assert ran == 1
