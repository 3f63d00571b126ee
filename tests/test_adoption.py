"""What an adopter meets first: an app that forgot to configure uow, a leftover ``commit()``."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import DetachedInstanceError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message

import uow
from tests.conftest import Item, names
from tests.test_middleware import client
from uow.starlette import UnitOfWorkMiddleware
from uow.testing import rollback_after


async def startup(app: ASGIApp) -> Message:
    """Run the ASGI lifespan protocol's startup and shutdown; return the app's answer to startup."""
    answered = anyio.Event()
    sent: list[Message] = []
    messages = [{"type": "lifespan.startup"}]

    async def receive() -> Message:
        if messages:
            return messages.pop(0)
        await answered.wait()
        return {"type": "lifespan.shutdown"}

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"].startswith("lifespan.startup."):
            answered.set()

    with anyio.fail_after(10):
        await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    return sent[0]


def health(request: Request) -> Response:
    return PlainTextResponse("ok")


def uses_db(request: Request) -> Response:
    uow.session.execute(text("SELECT 1"))
    return PlainTextResponse("db")


def app_without_configure(**kw: Any) -> Starlette:
    return Starlette(
        routes=[Route("/health", health), Route("/db", uses_db)],
        middleware=[Middleware(UnitOfWorkMiddleware)],
        **kw,
    )


@pytest.mark.anyio
async def test_an_unconfigured_app_fails_at_startup_with_the_fix_in_the_message() -> None:
    answer = await startup(app_without_configure())
    assert answer["type"] == "lifespan.startup.failed"
    assert "NotConfiguredError" in answer["message"] and "uow.configure(engine)" in answer["message"]


@pytest.mark.anyio
async def test_configure_in_the_apps_own_lifespan_is_in_time(engine: Engine) -> None:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        uow.configure(engine)
        yield

    answer = await startup(app_without_configure(lifespan=lifespan))
    assert answer["type"] == "lifespan.startup.complete"


@pytest.mark.anyio
async def test_without_a_manager_requests_that_need_no_database_are_answered() -> None:
    async with client(app_without_configure()) as c:
        assert (await c.get("/health")).text == "ok"
        assert (await c.get("/db")).status_code == 500  # uow.session: NotConfiguredError


# --- a leftover commit() inside a unit --------------------------------------------------------


def test_a_direct_commit_in_a_unit_warns_and_names_the_call_site(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    with (
        pytest.warns(uow.UnitOfWorkWarning, match="atomicity") as record,
        pytest.raises(LookupError),
        uow.unit_of_work() as session,
    ):
        session.add(Item(name="kept by the leftover commit"))
        session.commit()
        raise LookupError("the unit fails after it")
    assert record[0].filename == __file__  # the call site, not SQLAlchemy's or uow's code
    assert names(engine) == ["kept by the leftover commit"]  # what the warning is about


def test_a_direct_rollback_in_a_unit_warns(manager: uow.UnitOfWorkManager, engine: Engine) -> None:
    with pytest.warns(uow.UnitOfWorkWarning, match=r"rollback\(\)"), uow.unit_of_work() as session:
        session.add(Item(name="discarded"))
        session.flush()
        session.rollback()
    assert names(engine) == []


def test_strict_raises_before_the_commit_happens(engine: Engine) -> None:
    strict = uow.configure(engine, strict=True)
    with pytest.raises(uow.DirectEndError, match="commit"), strict.unit_of_work() as session:
        session.add(Item(name="never"))
        session.commit()
    assert names(engine) == []


def test_savepoints_failed_flushes_and_the_units_own_end_do_not_warn(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", uow.UnitOfWorkWarning)
        with uow.unit_of_work() as session:
            session.add(Item(name="a"))
            with uow.unit_of_work(propagation=uow.Propagation.NESTED):
                session.add(Item(name="b"))
            with pytest.raises(LookupError), uow.unit_of_work(propagation=uow.Propagation.NESTED):
                session.add(Item(name="c"))
                raise LookupError
            nested = session.begin_nested()
            nested.rollback()
        with pytest.raises(Exception, match=r"UNIQUE|unique|duplicate"), uow.unit_of_work() as session:
            session.add(Item(name="a"))
            session.flush()  # fails: the flush's own rollback is not the code's
    assert names(engine) == ["a", "b"]


@pytest.mark.anyio
async def test_manual_mode_commits_without_a_warning(manager: uow.UnitOfWorkManager, engine: Engine) -> None:
    def by_hand(request: Request) -> Response:
        uow.session.add(Item(name="by hand"))
        uow.session.commit()
        raise HTTPException(409)

    app = Starlette(
        routes=[Route("/", by_hand, methods=["POST"])],
        middleware=[Middleware(UnitOfWorkMiddleware, commit_mode="manual")],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", uow.UnitOfWorkWarning)
        async with client(app) as c:
            assert (await c.post("/")).status_code == 409
    assert names(engine) == ["by hand"]


@pytest.mark.anyio
async def test_a_leftover_commit_in_an_autocommit_request_warns(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    def leftover(request: Request) -> Response:
        uow.session.add(Item(name="kept despite the 409"))
        uow.session.commit()
        raise HTTPException(409)

    app = Starlette(
        routes=[Route("/", leftover, methods=["POST"])], middleware=[Middleware(UnitOfWorkMiddleware)]
    )
    with pytest.warns(uow.UnitOfWorkWarning, match="atomicity"):
        async with client(app) as c:
            assert (await c.post("/")).status_code == 409
    assert names(engine) == ["kept despite the 409"]


# --- uow.testing follows the app's configuration ------------------------------------------------


class AppSession(Session):
    """The app's own session class (as sqlmodel.Session is for a SQLModel app)."""

    def exec_sql(self, sql: str) -> Any:
        return self.execute(text(sql)).scalar()


def test_the_test_transaction_uses_the_configured_session_class_and_options(engine: Engine) -> None:
    uow.configure(engine, class_=AppSession, autoflush=False)
    with rollback_after(engine), uow.unit_of_work() as session:
        assert isinstance(session, AppSession)
        assert session.autoflush is False
        assert session.exec_sql("SELECT 1") == 1
        session.add(Item(name="rolled back after the test"))
    assert names(engine) == []
    with rollback_after(engine, autoflush=True), uow.unit_of_work() as session:
        assert session.autoflush is True  # the test's own options win


def test_a_factory_that_expires_on_commit_is_accepted_with_a_warning(engine: Engine) -> None:
    with pytest.warns(uow.UnitOfWorkWarning, match="DetachedInstanceError") as record:
        manager = uow.UnitOfWorkManager(sessionmaker(engine))
    assert record[0].filename == __file__

    @manager.transactional
    def create() -> Item:
        item = Item(name="expired")
        manager.session.add(item)
        return item

    item = create()
    with pytest.raises(DetachedInstanceError):  # what the warning said would break
        _ = item.name
    with warnings.catch_warnings():
        warnings.simplefilter("error", uow.UnitOfWorkWarning)
        uow.UnitOfWorkManager(sessionmaker(engine, expire_on_commit=False))  # no warning
