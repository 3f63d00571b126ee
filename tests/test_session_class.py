"""A manager is generic in its session class: ``sqlmodel.Session`` is what the type checker sees.

The ``assert_type`` lines are checked by ``mypy --strict`` (``scripts/test``
runs it on ``tests/``, and ``test_this_file_type_checks`` runs it here); the
tests check at run time that the types told are the classes handed out.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlmodel
from fastapi import Depends, FastAPI
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import Field, SQLModel, select
from starlette.middleware import Middleware
from typing_extensions import assert_type

import uow
from tests.examples import client
from uow.starlette import UnitOfWorkMiddleware, session_dependency

ROOT = Path(__file__).resolve().parent.parent


class Hero(SQLModel, table=True):
    __tablename__ = "session_class_heroes"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True)


@pytest.fixture
def heroes(engine: Engine) -> Engine:
    Hero.__table__.drop(engine, checkfirst=True)  # type: ignore[attr-defined]
    Hero.__table__.create(engine)  # type: ignore[attr-defined]
    return engine


def test_a_manager_of_sqlmodel_sessions_is_typed_so(heroes: Engine) -> None:
    manager = uow.UnitOfWorkManager(heroes, class_=sqlmodel.Session)
    assert_type(manager, uow.UnitOfWorkManager[sqlmodel.Session])
    with manager.unit_of_work():
        assert_type(manager.session, sqlmodel.Session)
        assert_type(manager.current_session(), sqlmodel.Session)
        manager.session.add(Hero(name="ada"))
        found = manager.session.exec(select(Hero)).all()
        assert_type(found, Sequence[Hero])
        assert [hero.name for hero in found] == ["ada"]
        assert isinstance(manager.current_session(), sqlmodel.Session)


def test_a_sessionmaker_of_sqlmodel_sessions_types_the_manager(heroes: Engine) -> None:
    factory = sessionmaker(heroes, class_=sqlmodel.Session, expire_on_commit=False)
    manager = uow.UnitOfWorkManager(factory)
    assert_type(manager, uow.UnitOfWorkManager[sqlmodel.Session])

    @manager.transactional
    def create(name: str) -> Hero:
        hero = Hero(name=name)
        manager.session.add(hero)
        return hero

    assert create("bob").name == "bob"  # expire_on_commit=False: readable after the unit
    with manager.unit_of_work():
        assert manager.session.exec(select(Hero.name)).all() == ["bob"]


def test_configure_returns_the_typed_manager(heroes: Engine) -> None:
    manager = uow.configure(heroes, class_=sqlmodel.Session, autoflush=False)
    assert_type(manager, uow.UnitOfWorkManager[sqlmodel.Session])
    assert manager is uow.get_manager()
    with uow.unit_of_work():
        assert isinstance(manager.session.exec(select(Hero)).all(), list)
        assert manager.session.autoflush is False


def test_without_a_class_the_session_is_sqlalchemys(engine: Engine) -> None:
    manager = uow.configure(engine)
    assert_type(manager, uow.UnitOfWorkManager[Session])
    assert_type(
        uow.UnitOfWorkManager(sessionmaker(engine, expire_on_commit=False)), uow.UnitOfWorkManager[Session]
    )
    with manager.unit_of_work():
        assert_type(manager.session, Session)
        assert type(manager.current_session()).__mro__[1] is Session  # uow's guarded subclass of it
    assert_type(uow.configure(manager), uow.UnitOfWorkManager[Session])
    untyped: uow.UnitOfWorkManager = manager  # a bare annotation is UnitOfWorkManager[Any]
    assert_type(untyped.session, Any)


def test_current_session_with_a_class_is_typed_and_checked(heroes: Engine) -> None:
    uow.configure(heroes, class_=sqlmodel.Session)
    with uow.unit_of_work():
        session = uow.current_session(sqlmodel.Session)
        assert_type(session, sqlmodel.Session)
        assert_type(uow.current_session(), Any)
        session.add(Hero(name="dee"))
        assert session.exec(select(Hero.name)).all() == ["dee"]
    uow.configure(heroes)  # a plain Session: asking for SQLModel's is a clear error
    with uow.unit_of_work(), pytest.raises(uow.SessionKindError, match="class_=sqlmodel"):
        uow.current_session(sqlmodel.Session)
    with pytest.raises(uow.NoActiveUnitOfWork):
        uow.current_session(sqlmodel.Session)


@pytest.mark.anyio
async def test_an_async_manager_is_typed_with_async_sessions(async_engine: AsyncEngine) -> None:
    manager = uow.UnitOfWorkManager(async_engine)
    assert_type(manager, uow.UnitOfWorkManager[AsyncSession])
    async with manager.unit_of_work():
        assert_type(manager.session, AsyncSession)
        assert isinstance(manager.current_session(), AsyncSession)


@pytest.mark.anyio
async def test_session_dependency_is_typed_with_the_managers_class(heroes: Engine) -> None:
    manager = uow.UnitOfWorkManager(heroes, class_=sqlmodel.Session)
    provide = session_dependency(manager)
    app = FastAPI(middleware=[Middleware(UnitOfWorkMiddleware, manager=manager)])

    @app.post("/heroes", status_code=201)
    def create(name: str, db: sqlmodel.Session = Depends(provide)) -> list[str]:
        db.add(Hero(name=name))
        return list(db.exec(select(Hero.name)).all())

    async with client(app) as http:
        response = await http.post("/heroes", params={"name": "cy"})
    assert response.status_code == 201
    assert response.json() == ["cy"]
    with manager.unit_of_work():
        assert manager.session.exec(select(Hero.name)).all() == ["cy"]


def test_this_file_type_checks() -> None:
    """mypy --strict on this file: the assert_type lines above are what a SQLModel user gets."""
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir=/dev/null", __file__],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
