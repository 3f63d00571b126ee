"""Propagation kinds (Spring's meanings), rollback-only, savepoints, durable, and misuse errors."""

from __future__ import annotations

import contextlib
import inspect

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

import uow
from tests.conftest import Item, names
from uow import Propagation


def add(name: str) -> None:
    uow.session.add(Item(name=name))
    uow.session.flush()


def test_requires_new_suspends_and_survives_the_outer_rollback(
    manager: uow.UnitOfWorkManager, engine: Engine, backend: str
) -> None:
    sessions: list[Session] = []

    @uow.transactional(propagation=Propagation.REQUIRES_NEW)
    def audit() -> None:
        sessions.append(uow.current_session())
        add("audit")

    with pytest.raises(RuntimeError), uow.unit_of_work() as outer:
        audit()  # before the outer writes: on SQLite a second writer would wait for the lock
        assert uow.current_session() is outer  # restored after the inner unit
        add("outer")
        raise RuntimeError
    assert sessions[0] is not outer
    assert names(engine) == ["audit"]


def test_nested_rolls_back_only_its_savepoint(manager: uow.UnitOfWorkManager, engine: Engine) -> None:
    @uow.transactional(propagation=Propagation.NESTED)
    def risky(name: str, fail: bool) -> None:
        add(name)
        if fail:
            raise ValueError(name)

    with uow.unit_of_work():
        add("before")
        with pytest.raises(ValueError):
            risky("undone", True)
        risky("kept", False)
        add("after")
    assert names(engine) == ["after", "before", "kept"]


def test_nested_work_is_lost_when_the_outer_unit_rolls_back(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    with pytest.raises(KeyError), uow.unit_of_work():
        with uow.unit_of_work(propagation=Propagation.NESTED):
            add("released")
        raise KeyError
    assert names(engine) == []


def test_nested_without_a_unit_begins_one(manager: uow.UnitOfWorkManager, engine: Engine) -> None:
    with uow.unit_of_work(propagation=Propagation.NESTED):
        add("alone")
    assert names(engine) == ["alone"]


def test_caught_failure_of_a_joined_unit_rolls_the_outer_back(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    @uow.transactional
    def inner() -> None:
        add("inner")
        raise ValueError("inner failed")

    with pytest.raises(uow.UnexpectedRollback) as info, uow.unit_of_work():
        add("outer")
        with contextlib.suppress(ValueError):
            inner()
    assert isinstance(info.value.__cause__, ValueError)
    assert "rollback-only" in str(info.value)
    assert names(engine) == []


def test_caught_joined_failure_inside_a_savepoint_only_undoes_the_savepoint(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    @uow.transactional
    def inner() -> None:
        add("inner")
        raise ValueError

    with uow.unit_of_work():
        add("outer")
        with pytest.raises(uow.UnexpectedRollback), uow.unit_of_work(propagation=Propagation.NESTED):
            add("in-savepoint")
            with contextlib.suppress(ValueError):
                inner()
    assert names(engine) == ["outer"]


def test_mandatory_supports_not_supported_never(manager: uow.UnitOfWorkManager, engine: Engine) -> None:
    @uow.transactional(propagation=Propagation.MANDATORY)
    def mandatory() -> Session:
        return uow.current_session()  # type: ignore[no-any-return]

    @uow.transactional(propagation=Propagation.SUPPORTS)
    def supports() -> bool:
        return manager.in_unit()

    @uow.transactional(propagation=Propagation.NOT_SUPPORTED)
    def not_supported() -> bool:
        return manager.in_unit()

    @uow.transactional(propagation="never")
    def never() -> str:
        return "ran"

    with pytest.raises(uow.PropagationError, match="MANDATORY"):
        mandatory()
    assert supports() is False
    assert not_supported() is False
    assert never() == "ran"
    with uow.unit_of_work() as session:
        assert mandatory() is session
        assert supports() is True
        assert not_supported() is False
        assert uow.current_session() is session  # the suspended unit is back
        with pytest.raises(uow.PropagationError, match="NEVER"):
            never()


def test_durable_refuses_to_run_inside_a_unit(manager: uow.UnitOfWorkManager, engine: Engine) -> None:
    @uow.transactional(durable=True)
    def payment() -> None:
        add("paid")

    with pytest.raises(uow.PropagationError, match="durable"), uow.unit_of_work():
        payment()
    payment()
    assert names(engine) == ["paid"]


def test_decorator_keeps_what_it_wraps() -> None:
    class Service:
        @uow.transactional
        def method(self, x: int) -> int:
            """Do it."""
            return x

        @uow.transactional
        @classmethod
        async def factory(cls, y: str) -> str:
            return y

        @staticmethod
        @uow.transactional(read_only=True)
        async def helper(z: float) -> float:
            return z

    assert Service.method.__name__ == "method" and Service.method.__doc__ == "Do it."
    assert list(inspect.signature(Service.method).parameters) == ["self", "x"]
    assert inspect.iscoroutinefunction(Service.factory)
    assert inspect.iscoroutinefunction(Service.helper)
    assert not inspect.iscoroutinefunction(Service().method)


def test_misuse_raises_clear_errors(engine: Engine) -> None:
    with pytest.raises(uow.NotConfiguredError, match="configure"):
        uow.current_session()
    with pytest.raises(uow.NotDecoratableError):
        uow.transactional(42)  # type: ignore[call-overload]
    with pytest.raises(uow.NotDecoratableError, match="generator"):

        @uow.transactional
        def gen() -> object:
            yield 1

    with pytest.raises(uow.InvalidOptionError, match="propagation"):
        uow.transactional(propagation="SOMETIMES")
    with pytest.raises(uow.InvalidOptionError, match="retry"):
        uow.transactional(retry=-1)
    with pytest.raises(uow.InvalidOptionError, match="AUTOCOMMIT"):
        uow.transactional(isolation_level="AUTOCOMMIT")
    uow.configure(engine)
    with pytest.raises(uow.NoActiveUnitOfWork, match="transactional"):
        uow.session.add(Item(name="x"))
    with pytest.raises(uow.NoActiveUnitOfWork, match="when_no_unit"):
        uow.on_commit(print)
    inner = uow.unit_of_work(isolation_level="READ UNCOMMITTED")
    with uow.unit_of_work(isolation_level="SERIALIZABLE"), pytest.raises(uow.IsolationLevelConflict), inner:
        pass
