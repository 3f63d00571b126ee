"""Failures found in the field, each provoked for real: no write lost silently, no hang.

The real-server side (uvicorn, hypercorn, granian behind common middleware
stacks) is in ``tests/field``; these are the in-process cases.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi import BackgroundTasks, Depends, FastAPI
from sqlalchemy import Engine, create_engine, event, select, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Message

import uow
from tests.conftest import Item, make_engine, names
from tests.test_middleware import add_item, body_then, client, http_scope, starlette_app
from uow.starlette import BackgroundTask, UnitOfWorkMiddleware, provide_session


def held_commits(engine: Engine, started: threading.Event, release: threading.Event) -> None:
    """Make every COMMIT on *engine* say when it starts, and wait for *release* before it goes on."""

    def held(_conn: Any) -> None:
        started.set()
        assert release.wait(10), "the COMMIT was never released"

    event.listen(engine, "commit", held)


async def forever() -> Message:
    await anyio.sleep(60)
    return {"type": "http.disconnect"}


# --- 6: a request cancelled while its COMMIT runs -------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("way", ["task", "scope"])
async def test_cancelled_during_commit_the_chosen_response_start_goes_out(
    manager: uow.UnitOfWorkManager, engine: Engine, way: str
) -> None:
    """The COMMIT completes: the client learns of it (the 201 goes out), never a 500 for a kept write."""
    committing = threading.Event()
    cancelled = threading.Event()
    held_commits(engine, committing, cancelled)
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    app = starlette_app(Route("/items/{name}", add_item, methods=["POST"]))

    async def run() -> None:
        await app(http_scope("POST", "/items/x"), body_then(forever), send)

    async def when_committing() -> None:
        with anyio.fail_after(10):
            while not committing.is_set():
                await anyio.sleep(0.002)

    if way == "task":
        task = asyncio.ensure_future(run())
        await when_committing()
        task.cancel()
        cancelled.set()  # the COMMIT goes on only now: the cancellation came while it ran
        with pytest.raises(asyncio.CancelledError):
            await task
    else:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await when_committing()
            tg.cancel_scope.cancel()
            cancelled.set()
    assert names(engine) == ["x"]
    assert sent and sent[0]["type"] == "http.response.start" and sent[0]["status"] == 201
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_cancelled_before_the_commit_rolls_back_and_nothing_starts(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    reached = threading.Event()

    def slow_endpoint(request: Request) -> Response:
        uow.session.add(Item(name="x"))
        uow.session.flush()
        reached.set()
        time.sleep(0.3)
        return PlainTextResponse("", status_code=201)

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    app = starlette_app(Route("/", slow_endpoint, methods=["POST"]))
    task = asyncio.ensure_future(app(http_scope("POST", "/"), body_then(forever), send))
    with anyio.fail_after(10):
        while not reached.is_set():
            await anyio.sleep(0.002)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert names(engine) == []
    assert all(m["type"] != "http.response.start" or m["status"] >= 500 for m in sent)
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


# --- 7: two databases, two middlewares --------------------------------------------------------------


def _deferred_fk_engine(path: Path) -> Engine:
    """A SQLite database whose ``child`` rows are checked against ``parent`` only at COMMIT."""
    engine = create_engine(f"sqlite:///{path}")

    @event.listens_for(engine, "connect")
    def foreign_keys_on(dbapi_connection: Any, _: Any) -> None:
        dbapi_connection.execute("PRAGMA foreign_keys=ON")

    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE parent (id INTEGER PRIMARY KEY)"))
        conn.execute(
            text(
                "CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER "
                "REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)"
            )
        )
    return engine


@pytest.mark.anyio
async def test_two_databases_a_partial_commit_names_the_database_that_kept_its_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    items = make_engine("sqlite", tmp_path)
    orders = _deferred_fk_engine(tmp_path / "orders.db")
    inner = uow.UnitOfWorkManager(items, name="items-db")
    outer = uow.UnitOfWorkManager(orders, name="orders-db")

    def endpoint(request: Request) -> Response:
        inner.session.add(Item(name="kept"))
        outer.session.execute(text("INSERT INTO child (parent_id) VALUES (42)"))  # fails at COMMIT
        return PlainTextResponse("", status_code=201)

    app = Starlette(
        routes=[Route("/", endpoint, methods=["POST"])],
        middleware=[
            Middleware(UnitOfWorkMiddleware, manager=outer),  # outermost: commits last
            Middleware(UnitOfWorkMiddleware, manager=inner),
        ],
    )
    caught: list[BaseException] = []

    async def send(message: Message) -> None:
        pass

    with caplog.at_level(logging.ERROR, logger="uow"):
        try:
            await app(http_scope("POST", "/"), body_then(forever), send)
        except BaseException as e:
            caught.append(e)
    assert len(caught) == 1 and isinstance(caught[0], uow.PartialCommit)
    assert (caught[0].kept, caught[0].failed) == (("items-db",), "orders-db")
    assert "items-db" in str(caught[0]) and "orders-db" in str(caught[0])
    assert any("items-db" in r.getMessage() and "orders-db" in r.getMessage() for r in caplog.records)
    assert names(items) == ["kept"]  # the window the docs describe
    with orders.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM child")) == 0
    async with client(app) as c:
        assert (await c.post("/")).status_code == 500  # the client is told
    items.dispose()
    orders.dispose()


# --- 8: a session used after its unit ended ---------------------------------------------------------


@pytest.mark.anyio
async def test_provide_session_after_the_response_raises_and_holds_no_connection(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    errors: list[BaseException] = []
    kept: list[Session] = []

    def later(db: Session) -> None:
        try:
            db.add(Item(name="late"))
            db.flush()
        except BaseException as e:
            errors.append(e)

    app = FastAPI(middleware=[Middleware(UnitOfWorkMiddleware)])

    @app.post("/items", status_code=201)
    def create(tasks: BackgroundTasks, db: Session = Depends(provide_session)) -> dict[str, str]:
        db.add(Item(name="a"))
        tasks.add_task(later, db)  # a plain FastAPI background task: after the response
        kept.append(db)
        return {}

    async with client(app) as c:
        assert (await c.post("/items")).status_code == 201
    assert len(errors) == 1 and isinstance(errors[0], uow.SessionEnded), errors
    session = kept[0]
    with pytest.raises(uow.SessionEnded, match="already ended"):
        session.execute(select(Item))
    with pytest.raises(uow.SessionEnded):
        session.scalar(text("SELECT 1"))
    assert names(engine) == ["a"]
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_a_kept_reference_to_a_units_session_raises_after_the_unit(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    with uow.unit_of_work() as session:
        session.add(Item(name="a"))
    with pytest.raises(uow.SessionEnded):
        session.add(Item(name="b"))  # it would begin a transaction nobody commits
    with pytest.raises(uow.SessionEnded):
        session.get(Item, 1)
    with pytest.raises(uow.SessionEnded):  # every attempt, not only the first
        session.get(Item, 1)
    assert names(engine) == ["a"]
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


# --- 9: concurrent savepoints in one transaction ---------------------------------------------------


@pytest.mark.anyio
async def test_concurrent_nested_units_are_refused_never_silently_lost(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    a_open = anyio.Event()
    release = anyio.Event()
    committed: list[str] = []

    async def nested(name: str, fail: bool) -> None:
        async with uow.unit_of_work(propagation=uow.Propagation.NESTED):

            def add_and_flush() -> None:
                uow.session.add(Item(name=name))
                uow.session.flush()

            await uow.run_sync(add_and_flush)
            uow.on_commit(lambda: committed.append(name))
            if name == "a":
                a_open.set()
                await release.wait()
            if fail:
                raise LookupError(name)

    async def b_while_a_is_open() -> None:
        await a_open.wait()
        try:
            await nested("b", fail=False)
        finally:
            release.set()

    async with uow.unit_of_work():
        results = await asyncio.gather(nested("a", fail=True), b_while_a_is_open(), return_exceptions=True)
        assert isinstance(results[0], LookupError)
        assert isinstance(results[1], uow.SavepointConflict)
        # one after another, savepoints work
        await nested("c", fail=False)
    assert names(engine) == ["c"]
    assert committed == ["c"]  # every hook that ran matches a kept row


@pytest.mark.anyio
async def test_work_of_another_task_inside_an_open_savepoint_is_refused(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    open_ = anyio.Event()
    done = anyio.Event()

    async def in_savepoint() -> None:
        async with uow.unit_of_work(propagation=uow.Propagation.NESTED):
            open_.set()
            await done.wait()
            raise LookupError("rolled back")

    async def joined_write() -> None:
        await open_.wait()
        try:
            await uow.run_sync(lambda: uow.session.add(Item(name="would-vanish")))
        finally:
            done.set()

    async with uow.unit_of_work():
        results = await asyncio.gather(in_savepoint(), joined_write(), return_exceptions=True)
    assert isinstance(results[0], LookupError)
    assert isinstance(results[1], uow.SavepointConflict)
    assert names(engine) == []


# --- 10: a BackgroundTask made inside a REQUIRES_NEW unit follows the request ---------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("status", [201, 409])
async def test_background_task_made_in_requires_new_follows_the_requests_outcome(
    manager: uow.UnitOfWorkManager, engine: Engine, status: int
) -> None:
    ran: list[str] = []

    def endpoint(request: Request) -> Response:
        uow.session.add(Item(name="request"))
        with uow.unit_of_work(propagation=uow.Propagation.REQUIRES_NEW) as own:
            own.add(Item(name="own"))
            task = BackgroundTask(ran.append, "task")
        return JSONResponse({}, status_code=status, background=task)

    async with client(starlette_app(Route("/", endpoint, methods=["POST"]))) as c:
        assert (await c.post("/")).status_code == status
    if status == 201:
        assert (names(engine), ran) == (["own", "request"], ["task"])
    else:
        assert (names(engine), ran) == (["own"], [])  # the request rolled back: no task


# --- 11: threads that inherit the request's context ---------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("hop", ["asyncio.to_thread", "run_in_threadpool"])
async def test_gathered_threads_that_inherit_the_unit_use_the_session_one_at_a_time(
    manager: uow.UnitOfWorkManager, engine: Engine, hop: str
) -> None:
    def write(i: int) -> None:
        for j in range(5):
            uow.session.add(Item(name=f"t{i}-{j}"))
            uow.session.flush()

    async def endpoint(request: Request) -> Response:
        run = asyncio.to_thread if hop == "asyncio.to_thread" else run_in_threadpool
        await asyncio.gather(*(run(write, i) for i in range(4)))
        return PlainTextResponse("", status_code=201)

    async with client(starlette_app(Route("/", endpoint, methods=["POST"]))) as c:
        assert (await c.post("/")).status_code == 201
    assert len(names(engine)) == 20
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_a_thread_left_running_after_its_unit_is_stopped_at_its_next_use(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    errors: list[BaseException] = []
    finished = threading.Event()

    def slow_write() -> None:
        try:
            time.sleep(0.3)  # the request answers meanwhile
            uow.session.add(Item(name="orphan"))
            uow.session.flush()
        except BaseException as e:
            errors.append(e)
        finally:
            finished.set()

    async def endpoint(request: Request) -> Response:
        await uow.run_sync(lambda: uow.session.add(Item(name="request")))
        with pytest.raises(asyncio.TimeoutError):  # TimeoutError itself from Python 3.11
            await asyncio.wait_for(asyncio.to_thread(slow_write), 0.05)
        return PlainTextResponse("", status_code=201)

    async with client(starlette_app(Route("/", endpoint, methods=["POST"]))) as c:
        assert (await c.post("/")).status_code == 201
    assert finished.wait(10)
    assert len(errors) == 1 and isinstance(errors[0], uow.SessionEnded)
    assert names(engine) == ["request"]
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_the_no_unit_message_names_the_threads_that_do_not_see_a_unit(manager: uow.UnitOfWorkManager) -> None:
    with pytest.raises(uow.NoActiveUnitOfWork) as info:
        uow.current_session()
    message = str(info.value)
    assert "threading.Thread" in message and "run_sync" in message


# --- 12: run_sync with an AsyncSession unit ---------------------------------------------------------


@pytest.mark.anyio
async def test_run_sync_in_an_async_session_unit_raises_instead_of_a_silent_no_op(
    async_manager: uow.UnitOfWorkManager, async_engine: AsyncEngine
) -> None:
    async with uow.unit_of_work() as session:
        with pytest.raises(uow.SessionKindError, match="AsyncSession"):
            await uow.run_sync(lambda: uow.session.execute(text("SELECT 1")))
        session.add(Item(name="a"))  # the unit itself goes on
    async with async_engine.connect() as conn:
        assert list(await conn.scalars(select(Item.name))) == ["a"]


# --- provide_session on the event loop with a sync engine ---------------------------------------------


@pytest.mark.anyio
async def test_provide_session_used_on_the_event_loop_with_a_sync_engine_raises(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    app = FastAPI(middleware=[Middleware(UnitOfWorkMiddleware)])

    @app.get("/count")
    async def count(db: Session = Depends(provide_session)) -> int:
        return len(db.scalars(select(Item)).all())  # would block the loop for the whole query

    async with client(app) as c:
        response = await c.get("/count")
    assert response.status_code == 500
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]

    with pytest.raises(uow.BlockingSessionUse):
        await app(http_scope("GET", "/count"), body_then(forever), _discard)


async def _discard(message: Message) -> None:
    pass


# --- 13: REQUIRES_NEW inside a request needs a second connection ---------------------------------


@pytest.mark.anyio
async def test_requires_new_inside_a_request_needs_a_second_connection(backend: str, tmp_path: Path) -> None:
    """With pool_size=1 the inner unit waits for a connection its own request holds (docs: size pools)."""
    engine = make_engine(backend, tmp_path, pool_size=1, max_overflow=0, pool_timeout=0.5)
    uow.configure(engine)

    def endpoint(request: Request) -> Response:
        uow.session.add(Item(name="request"))
        uow.session.flush()  # the request's unit now holds the only connection
        with uow.unit_of_work(propagation=uow.Propagation.REQUIRES_NEW) as own:
            own.add(Item(name="own"))
        return PlainTextResponse("", status_code=201)

    async with client(starlette_app(Route("/", endpoint, methods=["POST"]))) as c:
        assert (await c.post("/")).status_code == 500  # QueuePool limit reached, timed out
    assert names(engine) == []
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    engine.dispose()
