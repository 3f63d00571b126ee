"""Unit options (read_only, isolation_level, no_rollback_on), sync/async misuse, the
public surface, and the DEBUG record per unit."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

import uow
from tests.conftest import Item, asyncio_and_trio, make_engine, names


def test_read_only_never_writes(manager: uow.UnitOfWorkManager, engine: Engine, backend: str) -> None:
    with pytest.raises(uow.ReadOnlyViolation, match="read_only"), uow.unit_of_work(read_only=True) as s:
        s.add(Item(name="flushed"))
        s.flush()
    with pytest.raises(uow.ReadOnlyViolation, match="pending"), uow.unit_of_work(read_only=True) as s:
        s.add(Item(name="pending"))
    with uow.unit_of_work(read_only=True) as s:
        assert s.scalars(select(Item)).all() == []
        if backend == "postgresql":
            assert s.scalar(text("SHOW transaction_read_only")) == "on"
    assert names(engine) == []
    with uow.unit_of_work() as s:  # the pooled connection is read-write again
        s.add(Item(name="written"))
        if backend == "postgresql":
            assert s.scalar(text("SHOW transaction_read_only")) == "off"
    assert names(engine) == ["written"]


def test_read_only_on_postgresql_refuses_raw_sql_writes(
    manager: uow.UnitOfWorkManager, engine: Engine, backend: str
) -> None:
    if backend != "postgresql":
        pytest.skip("READ ONLY transactions are PostgreSQL's")
    with pytest.raises(DBAPIError, match="read-only"), uow.unit_of_work(read_only=True) as s:
        s.execute(text("INSERT INTO items (name) VALUES ('raw')"))
    assert names(engine) == []


def test_isolation_level_applies_and_is_reset(
    manager: uow.UnitOfWorkManager, engine: Engine, backend: str
) -> None:
    if backend != "postgresql":
        pytest.skip("SHOW transaction_isolation is PostgreSQL's")
    with uow.unit_of_work(isolation_level="SERIALIZABLE") as s:
        assert s.scalar(text("SHOW transaction_isolation")) == "serializable"
        with uow.unit_of_work(isolation_level="serializable") as joined:  # same level: fine
            assert joined is s
    with uow.unit_of_work() as s:
        assert s.scalar(text("SHOW transaction_isolation")) == "read committed"


def test_joined_unit_asking_another_isolation_level_is_refused(manager: uow.UnitOfWorkManager) -> None:
    @uow.transactional(isolation_level="SERIALIZABLE")
    def strict() -> None:
        pass

    with pytest.raises(uow.IsolationLevelConflict, match="outermost"), uow.unit_of_work():
        strict()


def test_no_rollback_on_commits_and_still_raises(manager: uow.UnitOfWorkManager, engine: Engine) -> None:
    class Declined(Exception):
        pass

    @uow.transactional(no_rollback_on=Declined)
    def record_and_decline() -> None:
        uow.session.add(Item(name="attempt"))
        raise Declined

    @uow.transactional(no_rollback_on=(Declined,))
    def joined() -> None:
        raise Declined

    with pytest.raises(Declined):
        record_and_decline()
    with uow.unit_of_work() as s:  # a joined no_rollback_on error does not mark rollback-only
        s.add(Item(name="outer"))
        with pytest.raises(Declined):
            joined()
    assert names(engine) == ["attempt", "outer"]


@pytest.mark.anyio
@asyncio_and_trio
async def test_sync_session_io_on_the_event_loop_is_refused(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    @uow.transactional
    def sync_work() -> None:
        uow.session.add(Item(name="sync"))

    async with uow.unit_of_work():
        uow.session.add(Item(name="added"))  # no I/O: allowed on the loop
        with pytest.raises(uow.BlockingSessionUse, match="run_sync"):
            uow.session.execute(select(Item))
        with pytest.raises(uow.BlockingSessionUse, match="run_sync"):
            sync_work()
        await uow.run_sync(sync_work)
    assert names(engine) == ["added", "sync"]


@pytest.mark.anyio
@asyncio_and_trio  # the units never connect: the asyncio-only driver is never used
async def test_sync_code_on_an_async_manager_is_refused(async_manager: uow.UnitOfWorkManager) -> None:
    with pytest.raises(uow.SessionKindError, match="async with"), uow.unit_of_work():
        pass

    async def hook() -> None:
        pass

    async with uow.unit_of_work():
        uow.on_commit(hook)  # async hook in an async unit: fine


def test_async_hook_in_a_sync_unit_is_refused(manager: uow.UnitOfWorkManager) -> None:
    async def hook() -> None:
        pass

    with pytest.raises(uow.SessionKindError, match="async hook"), uow.unit_of_work():
        uow.on_commit(hook)


def test_manager_refuses_what_it_cannot_bind() -> None:
    with pytest.raises(uow.InvalidOptionError, match="Engine"):
        uow.UnitOfWorkManager(object())  # type: ignore[call-overload]


OPTION_VALUES = {
    "propagation": st.one_of(st.sampled_from(list(uow.Propagation)), st.text(max_size=15), st.integers()),
    "read_only": st.one_of(st.booleans(), st.integers(), st.text(max_size=3), st.none()),
    "isolation_level": st.one_of(
        st.none(), st.sampled_from(["SERIALIZABLE", "read committed", "AUTOCOMMIT", "x"]), st.integers()
    ),
    "retry": st.one_of(st.integers(-3, 5), st.booleans(), st.floats(allow_nan=True), st.text(max_size=2)),
    "no_rollback_on": st.one_of(
        st.sampled_from([(), ValueError, (KeyError, ValueError), BaseException, KeyboardInterrupt, int, "x"]),
        st.tuples(st.sampled_from([ValueError, str, 1])),
    ),
    "durable": st.one_of(st.booleans(), st.integers(0, 2), st.none()),
    "timeout": st.one_of(
        st.none(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(-2, 3),
        st.booleans(),
        st.text(max_size=2),
    ),
}


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional=OPTION_VALUES))
def test_any_option_value_gives_a_decorator_or_invalid_option_error(options: dict[str, object]) -> None:
    try:
        decorator = uow.transactional(**options)  # type: ignore[call-overload]
    except uow.InvalidOptionError as e:
        assert str(e)  # a message that says what was wrong
        return
    assert callable(decorator)


def test_all_is_complete_and_the_core_never_imports_starlette() -> None:
    public = {n for n in dir(uow) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(uow, n)).__name__ == "module"}
    assert set(uow.__all__) == public - modules
    assert (Path(uow.__file__).parent / "py.typed").exists()
    code = "import sys, uow; assert not any(m.split('.')[0] in ('starlette', 'fastapi') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
    for cls in (getattr(uow, n) for n in uow.__all__):
        if isinstance(cls, type) and issubclass(cls, Warning):
            assert issubclass(cls, UserWarning) and cls.__doc__  # UnitOfWorkWarning
        elif isinstance(cls, type) and issubclass(cls, Exception):
            assert issubclass(cls, uow.UnitOfWorkError) and cls.__doc__


def test_one_debug_record_per_unit(manager: uow.UnitOfWorkManager, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="uow"):
        with uow.unit_of_work() as s:
            s.add(Item(name="logged"))
            with uow.unit_of_work():  # joined: no record of its own
                pass
            with uow.unit_of_work(propagation=uow.Propagation.NESTED):
                pass
        with pytest.raises(ValueError), uow.unit_of_work():
            raise ValueError
    records = [r for r in caplog.records if r.name == "uow"]
    assert [(r.uow_outcome, r.uow_savepoint) for r in records] == [  # type: ignore[attr-defined]
        ("commit", True),
        ("commit", False),
        ("rollback", False),
    ]
    assert all(r.uow_duration >= 0 for r in records)  # type: ignore[attr-defined]
    assert [r.uow_propagation for r in records] == ["NESTED", "REQUIRED", "REQUIRED"]  # type: ignore[attr-defined]
    caplog.clear()
    with uow.unit_of_work():  # DEBUG off: nothing recorded
        pass
    assert [r for r in caplog.records if r.name == "uow"] == []


@pytest.mark.anyio  # asyncio only: AsyncEngine (aiosqlite, asyncpg)
async def test_async_session_read_only_and_isolation(
    async_manager: uow.UnitOfWorkManager, async_engine: AsyncEngine, backend: str
) -> None:
    async with uow.unit_of_work(isolation_level="SERIALIZABLE", read_only=True) as s:
        if backend == "postgresql":
            assert await s.scalar(text("SHOW transaction_isolation")) == "serializable"
            assert await s.scalar(text("SHOW transaction_read_only")) == "on"
    with pytest.raises(uow.ReadOnlyViolation):
        async with uow.unit_of_work(read_only=True) as s:
            s.add(Item(name="nope"))
    async with uow.unit_of_work() as s:
        assert list(await s.scalars(select(Item.name))) == []


@pytest.mark.anyio
async def test_read_only_on_one_pooled_postgresql_connection_then_read_write_again(tmp_path: Path) -> None:
    """READ ONLY goes out with the BEGIN; the connection goes back to the pool read-write."""
    engine = make_engine("postgresql", tmp_path, pool_size=1, max_overflow=0)
    manager = uow.UnitOfWorkManager(engine)
    try:

        def read_only_state() -> tuple[int, str]:
            session = manager.current_session()
            pid = session.scalar(text("SELECT pg_backend_pid()"))
            return pid, session.scalar(text("SHOW transaction_read_only"))

        def write(name: str) -> None:
            manager.current_session().execute(text("INSERT INTO items (name) VALUES (:n)"), {"n": name})

        seen: list[tuple[int, str]] = []
        for round in range(2):  # sync units, then async-driven ones whose session is sync
            with manager.unit_of_work(read_only=True):
                seen.append(read_only_state())
                with manager.unit_of_work(propagation=uow.Propagation.NESTED):  # a savepoint inside
                    seen.append(read_only_state())
            with pytest.raises(DBAPIError, match="read-only"), manager.unit_of_work(read_only=True):
                write("refused")
            with manager.unit_of_work():
                seen.append(read_only_state())
                write(f"sync {round}")
            async with manager.unit_of_work(read_only=True):
                seen.append(await manager.run_sync(read_only_state))
            with pytest.raises(DBAPIError, match="read-only"):
                async with manager.unit_of_work(read_only=True):
                    await manager.run_sync(write, "refused")
            async with manager.unit_of_work():
                seen.append(await manager.run_sync(read_only_state))
                await manager.run_sync(write, f"async {round}")
        assert [state for _, state in seen] == ["on", "on", "off", "on", "off"] * 2
        assert len({pid for pid, _ in seen}) == 1  # one pooled connection all along
        assert sorted(names(engine)) == ["async 0", "async 1", "sync 0", "sync 1"]
    finally:
        engine.dispose()


def test_read_only_with_a_timeout_is_read_only_and_bounded_on_postgresql(tmp_path: Path) -> None:
    """The budget's SET LOCAL comes after READ ONLY went out with the BEGIN: both hold."""
    engine = make_engine("postgresql", tmp_path, pool_size=1, max_overflow=0)
    manager = uow.UnitOfWorkManager(engine)
    try:
        with manager.unit_of_work(read_only=True, timeout=5):
            session = manager.current_session()
            assert session.scalar(text("SHOW transaction_read_only")) == "on"
            assert session.scalar(text("SHOW statement_timeout")) != "0"
        with manager.unit_of_work():
            session = manager.current_session()
            assert session.scalar(text("SHOW transaction_read_only")) == "off"
            assert session.scalar(text("SHOW statement_timeout")) == "0"
    finally:
        engine.dispose()
