"""Commit, rollback and close of a unit: decorator and block, sync and async."""

from __future__ import annotations

import contextlib
import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

import uow
from tests.conftest import Item, asyncio_and_trio, count, names


def test_decorator_commits_on_return(manager: uow.UnitOfWorkManager, engine: Engine) -> None:
    @uow.transactional
    def add(name: str) -> int:
        item = Item(name=name)
        uow.session.add(item)
        uow.session.flush()
        return item.id

    item_id = add("a")
    assert isinstance(item_id, int)
    assert names(engine) == ["a"]


def test_decorator_rolls_back_on_exception(manager: uow.UnitOfWorkManager, engine: Engine) -> None:
    @uow.transactional
    def add_then_fail() -> None:
        uow.session.add(Item(name="a"))
        uow.session.flush()
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        add_then_fail()
    assert names(engine) == []


def test_block_yields_session_and_commits(manager: uow.UnitOfWorkManager, engine: Engine) -> None:
    with uow.unit_of_work() as session:
        assert isinstance(session, Session)
        assert session is uow.current_session()
        session.add(Item(name="b"))
    assert names(engine) == ["b"]


def test_block_rolls_back_and_closes(manager: uow.UnitOfWorkManager, engine: Engine) -> None:
    with pytest.raises(RuntimeError), uow.unit_of_work() as session:
        session.add(Item(name="b"))
        session.flush()
        raise RuntimeError
    assert names(engine) == []
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_returned_objects_stay_readable(manager: uow.UnitOfWorkManager) -> None:
    @uow.transactional
    def make() -> Item:
        item = Item(name="kept")
        uow.session.add(item)
        return item

    item = make()
    assert item.name == "kept"  # expire_on_commit=False: no DetachedInstanceError


def test_unit_that_never_touches_the_db_makes_no_session(manager: uow.UnitOfWorkManager) -> None:
    made: list[Session] = []

    @uow.transactional
    def noop() -> int:
        unit = manager.current_boundary()
        assert unit is not None
        made.append(unit.tx.session)  # type: ignore[arg-type]
        return 1

    assert noop() == 1
    assert made == [None]


def test_joined_unit_shares_session(manager: uow.UnitOfWorkManager, engine: Engine) -> None:
    seen: list[Session] = []

    @uow.transactional
    def inner() -> None:
        seen.append(uow.current_session())
        uow.session.add(Item(name="inner"))

    @uow.transactional
    def outer() -> None:
        seen.append(uow.current_session())
        inner()

    outer()
    assert seen[0] is seen[1]
    assert names(engine) == ["inner"]


@pytest.mark.anyio
@asyncio_and_trio
async def test_async_def_with_sync_engine_uses_run_sync(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    @uow.transactional
    async def add(name: str) -> int:
        def work() -> int:
            item = Item(name=name)
            uow.session.add(item)
            uow.session.flush()
            return item.id

        return await uow.run_sync(work)

    assert isinstance(await add("x"), int)
    assert names(engine) == ["x"]


@pytest.mark.anyio
@asyncio_and_trio
async def test_async_def_rolls_back(manager: uow.UnitOfWorkManager, engine: Engine) -> None:
    @uow.transactional
    async def add() -> None:
        def add_and_flush() -> None:
            uow.session.add(Item(name="x"))
            uow.session.flush()

        await uow.run_sync(add_and_flush)
        raise KeyError("no")

    with pytest.raises(KeyError):
        await add()
    assert names(engine) == []


@pytest.mark.anyio  # asyncio only: AsyncEngine (aiosqlite, asyncpg)
async def test_async_session_path(async_manager: uow.UnitOfWorkManager, async_engine: AsyncEngine) -> None:
    @uow.transactional
    async def add(name: str) -> None:
        session = uow.current_session()
        assert isinstance(session, AsyncSession)
        session.add(Item(name=name))
        await session.flush()

    @uow.transactional
    async def fail() -> None:
        uow.current_session().add(Item(name="no"))
        await uow.current_session().flush()
        raise ValueError

    await add("yes")
    with pytest.raises(ValueError):
        await fail()
    async with uow.unit_of_work(read_only=True) as session:
        assert list(await session.scalars(select(Item.name))) == ["yes"]


@pytest.mark.anyio
@asyncio_and_trio
async def test_async_with_block_on_sync_engine(manager: uow.UnitOfWorkManager, engine: Engine) -> None:
    async with uow.unit_of_work() as session:
        assert isinstance(session, Session)
        await uow.run_sync(session.add, Item(name="blk"))
    assert count(engine) == 1


# --- a unit's session is freed as soon as the unit is done, not by the cyclic collector ---------


@contextlib.contextmanager
def cyclic_gc_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.parametrize("fails", [False, True])
def test_a_sync_units_session_is_freed_when_it_ends(manager: uow.UnitOfWorkManager, fails: bool) -> None:
    refs: list[weakref.ref[Session]] = []

    @uow.transactional
    def work() -> None:
        refs.append(weakref.ref(uow.current_session()))
        uow.session.execute(select(1))
        if fails:
            raise ValueError("boom")

    with cyclic_gc_off():
        with contextlib.suppress(ValueError):
            work()
        assert refs[0]() is None, "the session lives on in a reference cycle"


@pytest.mark.anyio
async def test_an_async_units_session_is_freed_when_it_ends(
    manager: uow.UnitOfWorkManager, async_manager: uow.UnitOfWorkManager
) -> None:
    """Both kinds: an async def unit on a sync engine, and one on an async engine."""
    refs: list[weakref.ref[Any]] = []

    @manager.transactional
    async def on_sync_engine() -> None:
        refs.append(weakref.ref(manager.current_session()))
        await manager.run_sync(lambda: manager.session.execute(select(1)))

    @async_manager.transactional
    async def on_async_engine() -> None:
        refs.append(weakref.ref(async_manager.current_session()))
        await async_manager.session.execute(select(1))

    with cyclic_gc_off():
        await on_sync_engine()
        await on_async_engine()
        assert [ref() for ref in refs] == [None, None], "a session lives on in a reference cycle"
