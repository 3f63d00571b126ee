"""on_commit / on_rollback hooks: when they run, in which order, on which thread, and how they fail."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.ext.asyncio import AsyncEngine

import uow
from tests.conftest import Item, asyncio_and_trio, names


def _pool_checked_out(engine: Engine | AsyncEngine) -> int:
    sync = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    return int(sync.pool.checkedout())  # type: ignore[attr-defined]


def _add(name: str) -> None:
    uow.session.add(Item(name=name))
    uow.session.flush()


# --- sync units ------------------------------------------------------------------


def test_on_commit_runs_after_outermost_commit_fifo_once(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    calls: list[tuple[str, int, list[str]]] = []

    def hook(tag: str) -> Callable[[], None]:
        # what the hook sees: the pool (its connection is back) and the
        # committed rows, read on a connection of its own
        def run() -> None:
            calls.append((tag, _pool_checked_out(engine), names(engine)))

        return run

    @uow.transactional
    def inner() -> None:
        _add("inner")
        uow.on_commit(hook("second"))

    @uow.transactional
    def outer() -> None:
        _add("outer")
        uow.on_commit(hook("first"))
        inner()
        assert calls == [], "a joined unit ending must not run hooks"
        with uow.unit_of_work(propagation=uow.Propagation.NESTED):
            _add("nested")
            uow.on_commit(hook("third"))
        assert calls == [], "a released savepoint must not run hooks"
        uow.on_commit(hook("fourth"))

    outer()
    everything = ["inner", "nested", "outer"]
    assert calls == [
        ("first", 0, everything),
        ("second", 0, everything),
        ("third", 0, everything),
        ("fourth", 0, everything),
    ]
    # a later unit does not run them again
    with uow.unit_of_work() as session:
        session.add(Item(name="later"))
    assert len(calls) == 4


def test_on_commit_dropped_on_rollback_and_on_rollback_runs(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    ran: list[str] = []

    @uow.transactional
    def fails() -> None:
        _add("x")
        uow.on_commit(lambda: ran.append("commit"))
        uow.on_rollback(lambda: ran.append(f"rollback1 rows={names(engine)}"))
        uow.on_rollback(lambda: ran.append(f"rollback2 out={_pool_checked_out(engine)}"))
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        fails()
    assert ran == ["rollback1 rows=[]", "rollback2 out=0"]
    assert names(engine) == []


def test_on_rollback_dropped_on_commit(manager: uow.UnitOfWorkManager, engine: Engine) -> None:
    ran: list[str] = []

    @uow.transactional
    def works() -> None:
        _add("x")
        uow.on_rollback(lambda: ran.append("rollback"))
        uow.on_commit(lambda: ran.append("commit"))

    works()
    assert ran == ["commit"]
    assert names(engine) == ["x"]


def test_rolled_back_savepoint_drops_its_commit_hooks_and_runs_its_rollback_hooks(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    ran: list[str] = []

    with uow.unit_of_work():
        _add("kept")
        uow.on_commit(lambda: ran.append("outer commit"))
        with pytest.raises(KeyError), uow.unit_of_work(propagation="NESTED"):
            _add("undone")
            uow.on_commit(lambda: ran.append("nested commit"))
            uow.on_rollback(lambda: ran.append("nested rollback"))
            raise KeyError
        assert ran == ["nested rollback"]
    assert ran == ["nested rollback", "outer commit"]
    assert names(engine) == ["kept"]


def test_joined_unit_failure_drops_the_outer_commit_hooks(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    ran: list[str] = []

    @uow.transactional
    def inner() -> None:
        uow.on_commit(lambda: ran.append("inner commit"))
        raise LookupError

    with pytest.raises(uow.UnexpectedRollback), uow.unit_of_work():
        _add("x")
        uow.on_commit(lambda: ran.append("outer commit"))
        uow.on_rollback(lambda: ran.append("outer rollback"))
        with pytest.raises(LookupError):
            inner()
    assert ran == ["outer rollback"]
    assert names(engine) == []


def test_failing_hook_keeps_commit_runs_others_raises_hook_error(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    ran: list[str] = []
    cause = RuntimeError("hook broke")

    def broken() -> None:
        ran.append("broken")
        raise cause

    @uow.transactional
    def work() -> int:
        _add("x")
        uow.on_commit(lambda: ran.append("before"))
        uow.on_commit(broken)
        uow.on_commit(lambda: ran.append("after"))
        return 1

    with pytest.raises(uow.HookError) as info:
        work()
    assert info.value.__cause__ is cause
    assert ran == ["before", "broken", "after"]
    assert names(engine) == ["x"]
    assert _pool_checked_out(engine) == 0


def test_failing_rollback_hook_is_noted_on_the_body_error(
    manager: uow.UnitOfWorkManager, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> None:
        raise OSError("rollback hook broke")

    # the body's own error wins; the hook's failure is logged, and attached to it as a
    # note where Python has notes (3.11+)
    with caplog.at_level(logging.ERROR, logger="uow"), pytest.raises(ValueError) as info, uow.unit_of_work():
        _add("x")
        uow.on_rollback(broken)
        raise ValueError("body")
    assert any("rollback hook broke" in r.getMessage() for r in caplog.records)
    if sys.version_info >= (3, 11):
        notes = getattr(info.value, "__notes__", [])
        assert any("rollback hook broke" in n for n in notes)
    assert names(engine) == []


def test_robust_hook_logs_and_goes_on(
    manager: uow.UnitOfWorkManager, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("robust hook broke")

    @uow.transactional
    def work() -> None:
        _add("x")
        uow.on_commit(broken, robust=True)
        uow.on_commit(lambda: ran.append("after"))

    with caplog.at_level(logging.ERROR, logger="uow"):
        work()  # no exception
    assert ran == ["after"]
    assert names(engine) == ["x"]
    records = [r for r in caplog.records if r.name == "uow" and r.exc_info]
    assert len(records) == 1
    assert records[0].exc_info is not None
    assert isinstance(records[0].exc_info[1], RuntimeError)
    assert "robust hook broke" in str(records[0].exc_info[1])


class Flaky(Exception):
    """Classified as transient by the manager's retry_on below."""


def test_hooks_of_a_retried_failed_attempt_are_dropped(engine: Engine) -> None:
    uow.configure(engine, retry_on=lambda e: isinstance(e, Flaky), retry_backoff=(0, 0))
    ran: list[str] = []
    attempts = 0

    @uow.transactional(retry=3)
    def work() -> None:
        nonlocal attempts
        attempts += 1
        _add(f"attempt{attempts}")

        def committed(n: int = attempts) -> None:
            ran.append(f"commit{n}")

        def rolled_back(n: int = attempts) -> None:
            ran.append(f"rollback{n}")

        uow.on_commit(committed)
        uow.on_rollback(rolled_back)
        if attempts < 3:
            raise Flaky

    work()
    assert attempts == 3
    # each failed attempt rolled back (so its on_rollback ran); only the last one committed
    assert ran == ["rollback1", "rollback2", "commit3"]
    assert names(engine) == ["attempt3"]


def test_hook_opening_a_unit_gets_a_new_independent_one(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    sessions: list[Any] = []
    ran: list[str] = []

    def hook() -> None:
        assert not manager.in_unit()
        with uow.unit_of_work() as session:
            sessions.append(session)
            session.add(Item(name="from hook"))
            uow.on_commit(lambda: ran.append("hook's own hook"))
        ran.append(f"hook saw {names(engine)}")

    with uow.unit_of_work() as session:
        sessions.append(session)
        _add("first")
        uow.on_commit(hook)
    assert sessions[0] is not sessions[1]
    assert ran == ["hook's own hook", "hook saw ['first', 'from hook']"]
    assert names(engine) == ["first", "from hook"]
    assert _pool_checked_out(engine) == 0


def test_hook_failing_in_its_own_unit_does_not_touch_the_first(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    def hook() -> None:
        with uow.unit_of_work() as session:
            session.add(Item(name="first"))  # duplicate: the hook's unit fails at commit

    with pytest.raises(uow.HookError) as info, uow.unit_of_work():
        _add("first")
        uow.on_commit(hook)
    assert "IntegrityError" in type(info.value.__cause__).__name__
    assert names(engine) == ["first"]


def test_hooks_outside_a_unit_are_refused(manager: uow.UnitOfWorkManager) -> None:
    with pytest.raises(uow.NoActiveUnitOfWork):
        uow.on_commit(lambda: None)
    with pytest.raises(uow.NoActiveUnitOfWork):
        uow.on_rollback(lambda: None)
    ran: list[int] = []
    uow.on_commit(lambda: ran.append(1), when_no_unit="run")
    uow.on_rollback(lambda: ran.append(2), when_no_unit="ignore")
    assert ran == [1]


def test_async_hook_in_a_sync_unit_is_refused(manager: uow.UnitOfWorkManager, engine: Engine) -> None:
    async def hook() -> None:
        pass

    with pytest.raises(uow.SessionKindError), uow.unit_of_work():
        uow.on_commit(hook)


# --- async units ------------------------------------------------------------------


@pytest.mark.anyio
@asyncio_and_trio
async def test_async_unit_on_sync_engine_runs_every_kind_of_hook(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    loop_thread = threading.get_ident()
    ran: list[tuple[str, bool, int, list[str]]] = []

    def record(tag: str) -> None:
        on_loop = threading.get_ident() == loop_thread
        ran.append((tag, on_loop, _pool_checked_out(engine), names(engine)))

    async def async_hook() -> None:
        record("async")

    async def coroutine_hook(tag: str) -> None:
        record(tag)

    @uow.transactional
    async def work() -> None:
        await uow.run_sync(_add, "x")
        uow.on_commit(async_hook)
        uow.on_commit(lambda: record("sync"))
        uow.on_commit(lambda: coroutine_hook("lambda coroutine"))
        uow.on_rollback(lambda: record("rollback"))

    await work()
    assert ran == [
        ("async", True, 0, ["x"]),
        ("sync", False, 0, ["x"]),  # a sync hook runs in a worker thread
        ("lambda coroutine", True, 0, ["x"]),  # its coroutine is awaited on the loop
    ]


@pytest.mark.anyio  # asyncio only: AsyncEngine (aiosqlite, asyncpg)
async def test_async_session_unit_runs_hooks_and_drops_them_on_rollback(
    async_manager: uow.UnitOfWorkManager, async_engine: AsyncEngine
) -> None:
    ran: list[str] = []

    async def read() -> list[str]:
        async with async_engine.connect() as conn:
            return sorted(await conn.scalars(select(Item.name)))

    async def after_commit() -> None:
        ran.append(f"async out={_pool_checked_out(async_engine)} rows={await read()}")

    async def after_rollback() -> None:
        ran.append(f"async rollback rows={await read()}")

    @uow.transactional
    async def work(fail: bool) -> None:
        session = uow.current_session()
        session.add(Item(name="fail" if fail else "ok"))
        await session.flush()
        uow.on_commit(after_commit)
        uow.on_commit(lambda: ran.append("sync"))
        uow.on_rollback(after_rollback)
        if fail:
            raise ValueError

    await work(False)
    assert ran == ["async out=0 rows=['ok']", "sync"]
    ran.clear()
    with pytest.raises(ValueError):
        await work(True)
    assert ran == ["async rollback rows=['ok']"]


@pytest.mark.anyio
@asyncio_and_trio
async def test_failing_async_hook_keeps_commit_and_raises(
    manager: uow.UnitOfWorkManager, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[str] = []
    cause = ConnectionError("async hook broke")

    async def broken() -> None:
        raise cause

    async def robust_broken() -> None:
        raise RuntimeError("logged, not raised")

    def sync_after() -> None:
        ran.append("after")

    @uow.transactional
    async def work() -> None:
        await uow.run_sync(_add, "x")
        uow.on_commit(robust_broken, robust=True)
        uow.on_commit(broken)
        uow.on_commit(sync_after)

    with caplog.at_level(logging.ERROR, logger="uow"), pytest.raises(uow.HookError) as info:
        await work()
    assert info.value.__cause__ is cause
    assert ran == ["after"]
    assert names(engine) == ["x"]
    logged = [r.exc_info[1] for r in caplog.records if r.name == "uow" and r.exc_info]
    assert [str(e) for e in logged] == ["logged, not raised"]


@pytest.mark.anyio
@asyncio_and_trio
async def test_async_hooks_of_retried_attempts_are_dropped(engine: Engine) -> None:
    uow.configure(engine, retry_on=lambda e: isinstance(e, Flaky), retry_backoff=(0, 0))
    ran: list[str] = []
    attempts = 0

    @uow.transactional(retry=2)
    async def work() -> None:
        nonlocal attempts
        attempts += 1
        n = attempts

        async def hook() -> None:
            ran.append(f"commit{n}")

        await uow.run_sync(_add, f"attempt{n}")
        uow.on_commit(hook)
        if n == 1:
            raise Flaky

    await work()
    assert attempts == 2
    assert ran == ["commit2"]
    assert names(engine) == ["attempt2"]


@pytest.mark.anyio  # asyncio only: AsyncEngine (aiosqlite, asyncpg)
async def test_async_hook_opening_a_unit_gets_a_new_one(
    async_manager: uow.UnitOfWorkManager, async_engine: AsyncEngine
) -> None:
    sessions: list[Any] = []

    async def hook() -> None:
        assert not async_manager.in_unit()
        async with uow.unit_of_work() as session:
            sessions.append(session)
            session.add(Item(name="from hook"))

    async with uow.unit_of_work() as session:
        sessions.append(session)
        session.add(Item(name="first"))
        uow.on_commit(hook)
    assert sessions[0] is not sessions[1]
    async with async_engine.connect() as conn:
        assert sorted(await conn.scalars(select(Item.name))) == ["first", "from hook"]
