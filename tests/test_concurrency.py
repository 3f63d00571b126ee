"""Threads and tasks: run_sync, serialized use of one sync session, session I/O off the event loop."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
from sqlalchemy import Engine, event, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

import uow
from tests.conftest import Item, asyncio_and_trio, count, make_engine, names

pytestmark = pytest.mark.reliability


def _add(name: str) -> int:
    item = Item(name=name)
    uow.session.add(item)
    uow.session.flush()
    return item.id


@pytest.mark.anyio
@asyncio_and_trio
async def test_run_sync_runs_in_a_worker_thread_and_sees_the_unit(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    loop_thread = threading.get_ident()
    seen: dict[str, Any] = {}

    def work(name: str, *, suffix: str) -> int:
        seen["thread"] = threading.get_ident()
        seen["session"] = uow.current_session()
        seen["in_unit"] = manager.in_unit()
        return _add(name + suffix)

    @uow.transactional
    async def run() -> int:
        seen["outer"] = uow.current_session()
        return await uow.run_sync(work, "a", suffix="b")

    assert isinstance(await run(), int)
    assert seen["thread"] != loop_thread
    assert seen["session"] is seen["outer"]
    assert seen["in_unit"] is True
    assert names(engine) == ["ab"]
    # outside any unit it runs in a thread too, with no unit visible
    assert await uow.run_sync(manager.in_unit) is False


@pytest.mark.anyio
@asyncio_and_trio
async def test_sync_session_use_from_the_loop_is_refused(manager: uow.UnitOfWorkManager) -> None:
    async with uow.unit_of_work():
        uow.session.add(Item(name="no I/O: fine"))
        with pytest.raises(uow.BlockingSessionUse):
            uow.session.execute(select(1))
        with pytest.raises(uow.BlockingSessionUse), uow.unit_of_work():
            pass


@pytest.mark.anyio
@asyncio_and_trio
async def test_gathered_run_sync_calls_in_one_unit_are_serialized(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    intervals: list[tuple[float, float, int]] = []

    def work(i: int) -> None:
        start = time.perf_counter()
        _add(f"item{i:02}")
        time.sleep(0.01)  # long enough for unserialized calls to overlap
        uow.session.flush()
        intervals.append((start, time.perf_counter(), threading.get_ident()))

    @uow.transactional
    async def run() -> None:
        async with anyio.create_task_group() as tg:  # its tasks inherit the unit
            for i in range(10):
                tg.start_soon(uow.run_sync, work, i)

    await run()
    assert len(intervals) == 10
    intervals.sort()
    for (_, end, _), (next_start, _, _) in itertools.pairwise(intervals):
        assert end <= next_start, "two threads used the unit's session at the same time"
    assert count(engine) == 10


@pytest.mark.anyio  # asyncio only: gather leaving the siblings of a failed child running is the point
async def test_gathered_run_sync_in_a_failing_unit_roll_back_together(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    def work(i: int) -> None:
        _add(f"item{i}")
        if i == 3:
            raise ValueError("one of them failed")

    @uow.transactional
    async def run() -> None:
        await asyncio.gather(*(uow.run_sync(work, i) for i in range(6)))

    with pytest.raises(ValueError):
        await run()
    # the siblings gather did not cancel ran before the rollback, not after it
    assert count(engine) == 0
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.mark.anyio
@asyncio_and_trio
async def test_run_sync_calls_of_a_failing_task_group_in_one_unit_roll_back_together(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    """A task group cancels the siblings of a failed child: those waiting for the session
    stop there, one in its thread finishes first; then the unit rolls back all of it."""

    def work(i: int) -> None:
        _add(f"item{i}")
        if i == 3:
            raise ValueError("one of them failed")

    @uow.transactional
    async def run() -> None:
        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(uow.run_sync, work, i)

    with pytest.raises(Exception) as info:  # an ExceptionGroup (a builtin from Python 3.11)
        await run()
    assert info.group_contains(ValueError, match="one of them failed")
    assert count(engine) == 0
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.mark.anyio  # asyncio only: gather returning while a child still runs is the point
async def test_orphaned_run_sync_does_not_share_the_session_with_the_unit_end(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    """gather() raises as soon as one child fails; a sibling may still be in its thread.

    The unit's end (rollback, close) must wait for it instead of using the
    session from a second thread at the same time.
    """
    in_thread = threading.Event()
    overlaps: list[str] = []
    busy = threading.Lock()

    def slow() -> None:
        with busy:
            _add("slow")
            in_thread.set()
            time.sleep(0.2)

    def guard(*_: Any) -> None:
        if busy.locked():
            overlaps.append("the unit ended while run_sync was using its session")

    async def fail() -> None:
        await anyio.to_thread.run_sync(in_thread.wait)
        raise KeyError("fail")

    @uow.transactional
    async def run() -> None:
        await asyncio.gather(uow.run_sync(slow), fail())

    listeners = [(engine, "rollback", guard), (engine.pool, "checkin", guard)]
    for target, name, fn in listeners:
        event.listen(target, name, fn)
    try:
        with pytest.raises(KeyError):
            await run()
        await anyio.sleep(0.3)
    finally:
        for target, name, fn in listeners:
            event.remove(target, name, fn)
    assert overlaps == []
    assert count(engine) == 0


@pytest.mark.anyio
@asyncio_and_trio
async def test_run_sync_of_a_task_outliving_its_unit_does_not_share_the_session_with_the_unit_end(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    """The structured twin of the test above, on every backend: a task the unit starts on a
    task group opened outside it inherits the unit and outlives it, still in its thread
    when the unit ends. The unit's end waits for that thread."""
    in_thread = threading.Event()
    overlaps: list[str] = []
    busy = threading.Lock()

    def slow() -> None:
        with busy:
            _add("slow")
            in_thread.set()
            time.sleep(0.2)

    def guard(*_: Any) -> None:
        if busy.locked():
            overlaps.append("the unit ended while run_sync was using its session")

    @uow.transactional
    async def run(tg: anyio.abc.TaskGroup) -> None:
        tg.start_soon(uow.run_sync, slow)
        await anyio.to_thread.run_sync(in_thread.wait)
        raise KeyError("fail")

    listeners = [(engine, "rollback", guard), (engine.pool, "checkin", guard)]
    for target, name, fn in listeners:
        event.listen(target, name, fn)
    try:
        async with anyio.create_task_group() as tg:
            with pytest.raises(KeyError):
                await run(tg)
    finally:
        for target, name, fn in listeners:
            event.remove(target, name, fn)
    assert overlaps == []
    assert count(engine) == 0


@pytest.mark.anyio
@asyncio_and_trio
async def test_concurrent_units_started_outside_a_unit_get_their_own_sessions(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    sessions: list[Any] = []
    all_started = anyio.Event()

    @uow.transactional
    async def work(i: int) -> None:
        mine = uow.current_session()
        sessions.append(mine)
        if len(sessions) == 5:
            all_started.set()
        await all_started.wait()  # every unit is open at once
        await uow.run_sync(_add, f"task{i}")
        assert uow.current_session() is mine
        assert await uow.run_sync(uow.current_session) is mine

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(work, i)
    assert len({id(s) for s in sessions}) == 5
    assert names(engine) == [f"task{i}" for i in range(5)]


@pytest.mark.anyio  # asyncio only: AsyncEngine (aiosqlite, asyncpg)
async def test_concurrent_async_session_units_get_their_own_sessions(
    async_manager: uow.UnitOfWorkManager, async_engine: AsyncEngine
) -> None:
    sessions: list[Any] = []
    all_started = anyio.Event()

    @uow.transactional
    async def work(i: int) -> None:
        session = uow.current_session()
        sessions.append(session)
        if len(sessions) == 4:
            all_started.set()
        await all_started.wait()
        session.add(Item(name=f"task{i}"))
        await session.flush()
        assert uow.current_session() is session

    await asyncio.gather(*(work(i) for i in range(4)))
    assert len({id(s) for s in sessions}) == 4
    async with async_engine.connect() as conn:
        assert await conn.scalar(select(func.count(Item.id))) == 4


# --- sync session I/O never on the event loop -------------------------------------


@pytest.fixture
def io_threads(engine: Engine) -> Iterator[dict[str, list[int]]]:
    """Record the thread of every begin, commit, rollback and connection check-in."""
    seen: dict[str, list[int]] = {"begin": [], "commit": [], "rollback": [], "checkin": []}

    def recorder(kind: str) -> Any:
        def record(*_: Any) -> None:
            seen[kind].append(threading.get_ident())

        return record

    listeners = [(engine, kind, recorder(kind)) for kind in ("begin", "commit", "rollback")]
    listeners.append((engine.pool, "checkin", recorder("checkin")))  # type: ignore[arg-type]
    for target, kind, fn in listeners:
        event.listen(target, kind, fn)
    yield seen
    for target, kind, fn in listeners:
        event.remove(target, kind, fn)


@pytest.mark.anyio
@asyncio_and_trio
async def test_sync_session_commit_and_close_run_off_the_loop(
    manager: uow.UnitOfWorkManager, engine: Engine, io_threads: dict[str, list[int]]
) -> None:
    loop_thread = threading.get_ident()

    @uow.transactional
    async def write(name: str) -> None:
        uow.session.add(Item(name=name))  # no I/O yet: the flush happens at commit

    @uow.transactional
    async def fail() -> None:
        await uow.run_sync(_add, "nope")
        raise ValueError

    @uow.transactional(isolation_level="SERIALIZABLE")
    async def begins_at_start() -> None:
        pass

    for i in range(3):
        await write(f"w{i}")
    with pytest.raises(ValueError):
        await fail()
    await begins_at_start()
    async with uow.unit_of_work(read_only=True) as session:
        await uow.run_sync(session.scalar, select(func.count(Item.id)))

    # the read-only unit COMMITs its READ ONLY transaction on PostgreSQL, and only closes elsewhere
    postgresql = engine.dialect.name == "postgresql"
    assert len(io_threads["commit"]) == (5 if postgresql else 4)
    assert len(io_threads["rollback"]) == (1 if postgresql else 2)  # elsewhere the pool rolls it back
    assert len(io_threads["checkin"]) == 6
    for kind, threads in io_threads.items():
        assert loop_thread not in threads, f"a {kind} ran on the event loop thread"
    assert names(engine) == ["w0", "w1", "w2"]


@pytest.mark.anyio
@asyncio_and_trio
async def test_loop_keeps_ticking_while_a_slow_commit_runs(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    commit_window: list[int] = []
    ticks = 0

    def slow_commit(_: Any) -> None:
        commit_window.append(ticks)
        time.sleep(0.2)  # a slow COMMIT, in whatever thread runs it
        commit_window.append(ticks)

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.005)
            ticks += 1

    @uow.transactional
    async def write() -> None:
        await uow.run_sync(_add, "slow")

    event.listen(engine, "commit", slow_commit)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(heartbeat)
            await write()
            tg.cancel_scope.cancel()
    finally:
        event.remove(engine, "commit", slow_commit)
    before, after = commit_window
    assert after - before >= 5, "the event loop stood still while the commit ran"
    assert names(engine) == ["slow"]


@pytest.mark.anyio
@asyncio_and_trio
async def test_finisher_threads_bound_how_many_sessions_end_at_once(
    manager: uow.UnitOfWorkManager, engine: Engine, anyio_backend: str
) -> None:
    lock = threading.Lock()
    running = peak = 0
    threads: set[str] = set()

    def slow_commit(_: Any) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            threads.add(threading.current_thread().name)
        time.sleep(0.05)
        with lock:
            running -= 1

    counts: list[int] = []

    def count_items() -> int:
        return cast(int, uow.session.scalar(select(func.count(Item.id))))

    @uow.transactional
    async def read() -> None:  # readers: SQLite lets their transactions overlap
        counts.append(int(await uow.run_sync(count_items)))

    uow.set_finisher_threads(2)
    event.listen(engine, "commit", slow_commit)
    try:
        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(read)
    finally:
        event.remove(engine, "commit", slow_commit)
        uow.set_finisher_threads(32)
    assert counts == [0] * 6
    assert peak == 2, f"{peak} commits ran at once with 2 finisher threads"
    if anyio_backend == "asyncio":  # uow's own threads; elsewhere anyio's, under the finisher's limiter
        assert threads == {"uow-finisher"}
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.mark.anyio  # asyncio only: a native Task.cancel() is the point
async def test_task_cancel_waits_for_the_finisher_then_raises(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    """A native Task.cancel() while the session ends: the COMMIT finishes, then CancelledError."""
    committing = threading.Event()
    cancel_sent = threading.Event()
    committed = threading.Event()

    def slow_commit(_: Any) -> None:
        committing.set()
        assert cancel_sent.wait(10)  # the COMMIT goes on only once the task was cancelled
        time.sleep(0.05)
        committed.set()

    @uow.transactional
    async def write() -> None:
        await uow.run_sync(_add, "slow")

    event.listen(engine, "commit", slow_commit)
    try:
        task = asyncio.ensure_future(write())
        while not committing.is_set():
            await asyncio.sleep(0.001)
        task.cancel()
        cancel_sent.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert committed.is_set(), "the task ended before its COMMIT did"
    finally:
        event.remove(engine, "commit", slow_commit)
    assert names(engine) == ["slow"]
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.mark.anyio  # asyncio only: the finisher pool serves asyncio loops (anyio's threads elsewhere)
async def test_a_job_given_to_a_finisher_pool_after_its_shutdown_still_runs() -> None:
    """set_finisher_threads() may replace the pool between a caller's lookup and its submit."""
    from uow._finisher import FinisherPool

    pool = FinisherPool(2)
    loop = asyncio.get_running_loop()
    assert await pool.submit(loop, lambda: 1) == 1
    pool.shutdown(wait=True)
    assert not any(t.is_alive() for t in pool.threads)
    with anyio.fail_after(5):
        assert await pool.submit(loop, lambda: 2) == 2
    late = pool.threads[-1]
    late.join(5)
    assert not late.is_alive(), "the thread started for the late job did not leave"


# --- a small pool under many concurrent units -------------------------------------


@pytest.fixture
def small_pool_engine(backend: str, tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(backend, tmp_path, pool_size=2, max_overflow=0, pool_timeout=10)
    yield engine
    checked_out = engine.pool.checkedout()  # type: ignore[attr-defined]
    engine.dispose()
    assert checked_out == 0


@pytest.mark.anyio
@asyncio_and_trio
async def test_small_pool_many_concurrent_units_complete(small_pool_engine: Engine) -> None:
    manager = uow.UnitOfWorkManager(small_pool_engine)
    units = 150

    results: list[int] = []

    @manager.transactional
    async def handle(i: int) -> None:
        # two trips to a worker thread per unit, the second one holding the
        # connection the first one checked out
        def write() -> None:
            manager.current_session().add(Item(name=f"unit{i:03}"))
            manager.current_session().flush()

        await uow.run_sync(write)
        results.append(
            int(
                await uow.run_sync(
                    lambda: manager.current_session().scalars(select(func.count(Item.id))).one()
                )
            )
        )

    started = time.monotonic()
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for i in range(units):
                tg.start_soon(handle, i)
    assert len(results) == units
    assert count(small_pool_engine) == units
    assert small_pool_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert time.monotonic() - started < 9, "units waited for the pool timeout"
