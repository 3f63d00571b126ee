"""UnitOfWorkMiddleware: one lazy unit per request, committed before the response starts."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import itertools
import threading
import time
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fastapi import BackgroundTasks as FastAPIBackgroundTasks
from fastapi import Depends, FastAPI
from sqlalchemy import Engine, event, select, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.background import BackgroundTasks
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import uow
from tests.conftest import Item, make_engine, names
from uow.starlette import (
    BackgroundTask,
    UnitOfWorkMiddleware,
    lifespan,
    provide_session,
    session_dependency,
)


def client(app: ASGIApp) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def starlette_app(*routes: Route, **mw: Any) -> Starlette:
    return Starlette(routes=list(routes), middleware=[Middleware(UnitOfWorkMiddleware, **mw)])


def add_item(request: Request) -> Response:
    uow.session.add(Item(name=request.path_params["name"]))
    uow.session.flush()
    return JSONResponse({}, status_code=int(request.query_params.get("status", "201")))


class Recorder:
    """An outer pure ASGI middleware that logs when http.response.start passes."""

    def __init__(self, app: ASGIApp, log: list[str]) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def recording(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.log.append(f"response.start {message['status']}")
            await send(message)

        await self.app(scope, receive, recording)


@pytest.mark.anyio
async def test_commit_happens_before_the_response_starts(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    log: list[str] = []
    event.listen(engine, "commit", lambda conn: log.append("commit"))
    app = Recorder(starlette_app(Route("/items/{name}", add_item, methods=["POST"])), log)
    async with client(app) as c:
        assert (await c.post("/items/a")).status_code == 201
    assert log == ["commit", "response.start 201"]
    assert names(engine) == ["a"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("mode", "extra", "status", "kept"),
    [
        ("autocommit", {}, 200, True),
        ("autocommit", {}, 204, True),
        ("autocommit", {}, 302, False),
        ("autocommit", {}, 404, False),
        ("autocommit", {}, 500, False),
        ("autocommit_include_redirect", {}, 302, True),
        ("autocommit_include_redirect", {}, 400, False),
        ("manual", {}, 200, False),
        ("autocommit", {"extra_commit_statuses": {409}}, 409, True),
        ("autocommit", {"extra_rollback_statuses": [201]}, 201, False),
    ],
)
async def test_commit_modes(
    manager: uow.UnitOfWorkManager, engine: Engine, mode: str, extra: dict[str, Any], status: int, kept: bool
) -> None:
    app = starlette_app(Route("/items/{name}", add_item, methods=["POST"]), commit_mode=mode, **extra)
    async with client(app) as c:
        assert (await c.post("/items/x", params={"status": status})).status_code == status
    assert names(engine) == (["x"] if kept else [])


@pytest.mark.anyio
async def test_manual_mode_keeps_what_the_endpoint_commits(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    def endpoint(request: Request) -> Response:
        uow.session.add(Item(name="committed"))
        uow.session.commit()
        uow.session.add(Item(name="not"))
        uow.session.flush()
        return PlainTextResponse("ok")

    async with client(starlette_app(Route("/", endpoint), commit_mode="manual")) as c:
        assert (await c.get("/")).status_code == 200
    assert names(engine) == ["committed"]


@pytest.mark.anyio
async def test_exceptions_and_http_exceptions_roll_back(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    def boom(request: Request) -> Response:
        uow.session.add(Item(name="boom"))
        uow.session.flush()
        raise RuntimeError("boom")

    def forbidden(request: Request) -> Response:
        uow.session.add(Item(name="forbidden"))
        uow.session.flush()
        raise HTTPException(403)

    async with client(starlette_app(Route("/boom", boom), Route("/forbidden", forbidden))) as c:
        assert (await c.get("/boom")).status_code == 500
        assert (await c.get("/forbidden")).status_code == 403
    assert names(engine) == []


@pytest.mark.anyio
async def test_failed_commit_answers_500_never_the_2xx(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    def duplicate(request: Request) -> Response:
        uow.session.add(Item(name="dup"))  # not flushed: the INSERT fails at COMMIT
        return JSONResponse({"ok": True}, status_code=201)

    log: list[str] = []
    app = Recorder(starlette_app(Route("/dup", duplicate, methods=["POST"])), log)
    async with client(app) as c:
        assert (await c.post("/dup")).status_code == 201
        assert (await c.post("/dup")).status_code == 500
    assert log == ["response.start 201", "response.start 500"]
    assert names(engine) == ["dup"]


@pytest.mark.anyio
async def test_caught_failure_of_a_joined_unit_answers_500(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    @uow.transactional
    def inner() -> None:
        uow.session.add(Item(name="inner"))
        uow.session.flush()
        raise ValueError

    def endpoint(request: Request) -> Response:
        uow.session.add(Item(name="outer"))
        with contextlib.suppress(ValueError):
            inner()
        return PlainTextResponse("looks fine")

    async with client(starlette_app(Route("/", endpoint))) as c:
        assert (await c.get("/")).status_code == 500
    assert names(engine) == []


@pytest.mark.anyio
async def test_requests_that_do_not_use_the_db_check_out_nothing(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    checkouts: list[int] = []
    event.listen(engine, "checkout", lambda *a: checkouts.append(1))

    async def plain(request: Request) -> Response:
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        return PlainTextResponse("no db")

    def sync_plain(request: Request) -> Response:
        return PlainTextResponse("no db either")

    async with client(starlette_app(Route("/a", plain), Route("/s", sync_plain))) as c:
        for _ in range(5):
            assert (await c.get("/a")).status_code == 200
            assert (await c.get("/s")).status_code == 200
    assert checkouts == []


@pytest.mark.anyio
async def test_a_unit_first_used_in_a_worker_thread_still_guards_the_event_loop(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    refused: list[str] = []

    async def endpoint(request: Request) -> Response:
        # the request's unit is made here, in a worker thread, on first use
        await anyio.to_thread.run_sync(lambda: uow.session.add(Item(name="made-in-a-thread")))
        try:
            uow.session.execute(select(Item))  # back on the event loop: it would block it
        except uow.BlockingSessionUse:
            refused.append("on the loop")
        return JSONResponse({}, status_code=201)

    async with client(starlette_app(Route("/", endpoint, methods=["POST"]))) as c:
        assert (await c.post("/")).status_code == 201
    assert refused == ["on the loop"]
    assert names(engine) == ["made-in-a-thread"]


@pytest.mark.anyio
async def test_a_thread_that_first_uses_the_session_after_the_response_is_refused(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    responded = threading.Event()
    outcome: list[BaseException | str] = []

    def late() -> None:
        responded.wait(5)
        try:
            uow.session.add(Item(name="late"))
            outcome.append("used")
        except uow.UnitOfWorkError as e:
            outcome.append(e)

    async def endpoint(request: Request) -> Response:
        thread = threading.Thread(target=contextvars.copy_context().run, args=(late,))
        thread.start()
        return PlainTextResponse("no db here")

    checkouts: list[int] = []
    event.listen(engine, "checkout", lambda *a: checkouts.append(1))
    async with client(starlette_app(Route("/", endpoint))) as c:
        assert (await c.get("/")).status_code == 200
    responded.set()
    for _ in range(100):
        if outcome:
            break
        await anyio.sleep(0.05)
    assert len(outcome) == 1 and isinstance(outcome[0], uow.SessionEnded), outcome
    assert checkouts == []


class Passthrough(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        return await call_next(request)


@pytest.mark.anyio
@pytest.mark.parametrize("where", ["before", "after"])
async def test_everything_in_a_request_sees_one_session(
    manager: uow.UnitOfWorkManager, engine: Engine, where: str
) -> None:
    seen: list[Session] = []

    @uow.transactional
    def nested() -> None:
        seen.append(uow.current_session())

    async def async_dep() -> Session:
        return uow.current_session()  # type: ignore[no-any-return]

    def sync_dep() -> Session:
        return uow.current_session()  # type: ignore[no-any-return]

    fastapi_mw = [Middleware(UnitOfWorkMiddleware)]
    fastapi_mw.insert(0 if where == "before" else 1, Middleware(Passthrough))
    app = FastAPI(middleware=fastapi_mw)

    @app.post("/sync")
    def sync_endpoint(
        a: Session = Depends(async_dep),
        s: Session = Depends(sync_dep),
        p: Session = Depends(provide_session),
        c: Session = Depends(uow.current_session),
    ) -> dict[str, bool]:
        seen.extend([a, s, p, c, uow.current_session()])
        nested()
        p.add(Item(name="sync"))
        return {"ok": True}

    @app.post("/async")
    async def async_endpoint(p: Session = Depends(provide_session)) -> dict[str, bool]:
        seen.append(p)
        await uow.run_sync(nested)
        p.add(Item(name="async"))
        return {"ok": True}

    async with client(app) as c:
        assert (await c.post("/sync")).status_code == 200
        assert len({id(s) for s in seen}) == 1
        seen.clear()
        assert (await c.post("/async")).status_code == 200
        assert len({id(s) for s in seen}) == 1
    assert names(engine) == ["async", "sync"]


@pytest.mark.anyio
async def test_provide_session_is_async_and_session_dependency_uses_its_manager(
    engine: Engine,
) -> None:
    import inspect

    assert inspect.iscoroutinefunction(provide_session)
    other = uow.UnitOfWorkManager(engine)  # not the default one
    app = FastAPI(middleware=[Middleware(UnitOfWorkMiddleware, manager=other)])

    other_session = session_dependency(other)

    @app.post("/")
    def create(db: Session = Depends(other_session)) -> dict[str, bool]:
        db.add(Item(name="other"))
        return {"ok": True}

    async with client(app) as c:
        assert (await c.post("/")).status_code == 200
    assert names(engine) == ["other"]


@pytest.mark.anyio
async def test_streaming_body_cannot_use_the_ended_unit_but_can_open_its_own(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    errors: list[BaseException] = []

    def stream(request: Request) -> Response:
        uow.session.add(Item(name="before-stream"))

        async def body() -> AsyncIterator[bytes]:
            yield b"first "
            try:
                uow.session.add(Item(name="lost"))
            except uow.NoActiveUnitOfWork as e:
                errors.append(e)
            async with uow.unit_of_work() as session:
                await uow.run_sync(session.add, Item(name="in-stream"))
            yield b"second"

        return StreamingResponse(body())

    async with client(starlette_app(Route("/", stream))) as c:
        r = await c.get("/")
    assert r.text == "first second"
    assert len(errors) == 1 and "already ended" in str(errors[0])
    assert names(engine) == ["before-stream", "in-stream"]


@pytest.mark.anyio
@pytest.mark.parametrize("status", [201, 400])
async def test_background_tasks_run_in_their_own_unit_after_a_commit(
    manager: uow.UnitOfWorkManager, engine: Engine, status: int
) -> None:
    ran: list[tuple[str, bool]] = []
    request_sessions: list[Session] = []

    def sync_task(name: str) -> None:
        # sees the request's committed row, in a session of its own
        ran.append(("sync", uow.session.scalar(select(Item.id).where(Item.name == name)) is not None))
        assert uow.current_session() is not request_sessions[0]
        uow.session.add(Item(name=name + "-sync-task"))

    async def async_task(name: str) -> None:
        ran.append(("async", True))
        session = uow.current_session()
        assert session is not request_sessions[0]
        await uow.run_sync(session.add, Item(name=name + "-async-task"))

    def always(name: str) -> None:
        ran.append(("always", True))

    def on_rollback(name: str) -> None:
        ran.append(("rolled_back", True))

    def endpoint(request: Request) -> Response:
        request_sessions.append(uow.current_session())
        uow.session.add(Item(name="req"))
        tasks = BackgroundTasks(
            [
                BackgroundTask(sync_task, "req"),
                BackgroundTask(async_task, "req"),
                BackgroundTask(always, "req").when("always"),
                BackgroundTask(on_rollback, "req").when("rolled_back"),
            ]
        )
        return JSONResponse({}, status_code=status, background=tasks)

    async with client(starlette_app(Route("/", endpoint, methods=["POST"]))) as c:
        assert (await c.post("/")).status_code == status
    if status == 201:
        assert ran == [("sync", True), ("async", True), ("always", True)]
        assert names(engine) == ["req", "req-async-task", "req-sync-task"]
    else:
        assert ran == [("always", True), ("rolled_back", True)]
        assert names(engine) == []
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_background_task_through_fastapi_add_task(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    def welcome(name: str) -> None:
        uow.session.add(Item(name=f"welcome-{name}"))

    app = FastAPI(middleware=[Middleware(UnitOfWorkMiddleware)])

    @app.post("/{name}")
    def create(name: str, tasks: FastAPIBackgroundTasks) -> dict[str, bool]:
        uow.session.add(Item(name=name))
        tasks.add_task(BackgroundTask(welcome, name))
        return {"ok": True}

    async with client(app) as c:
        assert (await c.post("/ada")).status_code == 200
    assert names(engine) == ["ada", "welcome-ada"]


@pytest.mark.anyio
async def test_small_pool_under_many_concurrent_requests_slows_down_but_completes(
    backend: str, tmp_path: Any
) -> None:
    engine = make_engine(backend, tmp_path, pool_size=2, max_overflow=0, pool_timeout=20)
    uow.configure(engine)
    app = starlette_app(Route("/items/{name}", add_item, methods=["POST"]))
    async with client(app) as c:
        statuses = await asyncio.gather(*(c.post(f"/items/n{i}") for i in range(200)))
    assert [r.status_code for r in statuses] == [201] * 200
    assert len(names(engine)) == 200
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    engine.dispose()


@pytest.mark.anyio
async def test_cancelled_request_rolls_back_and_releases_the_connection(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    started = anyio.Event()

    async def slow(request: Request) -> Response:
        def add_and_flush() -> None:
            uow.session.add(Item(name="slow"))
            uow.session.flush()

        await uow.run_sync(add_and_flush)
        started.set()
        await anyio.sleep(10)
        return PlainTextResponse("never")

    app = starlette_app(Route("/", slow))

    async def call() -> None:
        async def receive() -> Message:
            await anyio.sleep(60)
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            pass

        await app(http_scope("GET", "/"), receive, send)

    task = asyncio.ensure_future(call())
    await started.wait()
    assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert names(engine) == []


@pytest.mark.anyio
async def test_websocket_unit_per_message(manager: uow.UnitOfWorkManager, engine: Engine) -> None:
    from starlette.routing import WebSocketRoute
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocket

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        async for text_ in websocket.iter_text():
            try:
                async with uow.unit_of_work() as session:
                    await uow.run_sync(session.add, Item(name=text_))
                    if text_ == "bad":
                        raise ValueError
                await websocket.send_text("saved")
            except ValueError:
                await websocket.send_text("rolled back")

    app = Starlette(routes=[WebSocketRoute("/ws", ws)], middleware=[Middleware(UnitOfWorkMiddleware)])

    def run() -> list[str]:
        with TestClient(app) as tc, tc.websocket_connect("/ws") as socket:
            replies = []
            for message in ["one", "bad", "two"]:
                socket.send_text(message)
                replies.append(socket.receive_text())
            return replies

    assert await anyio.to_thread.run_sync(run) == ["saved", "rolled back", "saved"]
    assert names(engine) == ["one", "two"]


@pytest.mark.anyio
async def test_lifespan_disposes_the_pool_and_runs_the_app_lifespan(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    from contextlib import asynccontextmanager

    from starlette.testclient import TestClient

    steps: list[str] = []

    @asynccontextmanager
    async def mine(app: Starlette) -> AsyncIterator[None]:
        steps.append("start")
        yield
        steps.append("stop")

    app = Starlette(
        routes=[Route("/items/{name}", add_item, methods=["POST"])],
        middleware=[Middleware(UnitOfWorkMiddleware)],
        lifespan=lifespan(manager, app_lifespan=mine),
    )

    def run() -> None:
        with TestClient(app) as tc:
            assert tc.post("/items/life").status_code == 201
            assert engine.pool.checkedin() >= 1  # type: ignore[attr-defined]

    await anyio.to_thread.run_sync(run)
    assert steps == ["start", "stop"]
    assert engine.pool.checkedin() == 0  # type: ignore[attr-defined]
    assert names(engine) == ["life"]


def test_bad_middleware_options_are_refused() -> None:
    app = Starlette()
    with pytest.raises(uow.InvalidOptionError, match="commit_mode"):
        UnitOfWorkMiddleware(app, commit_mode="always")  # type: ignore[arg-type]
    with pytest.raises(uow.InvalidOptionError, match="both"):
        UnitOfWorkMiddleware(app, extra_commit_statuses=[409], extra_rollback_statuses=[409])
    with pytest.raises(uow.InvalidOptionError, match="status codes"):
        UnitOfWorkMiddleware(app, extra_commit_statuses=[99])
    with pytest.raises(uow.InvalidOptionError, match="manager"):
        UnitOfWorkMiddleware(app, manager="db")  # type: ignore[arg-type]
    with pytest.raises(uow.InvalidOptionError, match="run_when"):
        BackgroundTask(print).when("sometimes")  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_pg_deferred_constraint_at_commit_answers_500(
    backend: str, manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    if backend != "postgresql":
        pytest.skip("deferred constraints are a PostgreSQL feature")
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS codes"))
        conn.execute(text("CREATE TABLE codes (code text UNIQUE DEFERRABLE INITIALLY DEFERRED)"))

    def endpoint(request: Request) -> Response:
        uow.session.execute(text("INSERT INTO codes VALUES ('a'), ('a')"))
        uow.session.add(Item(name="with-codes"))
        return PlainTextResponse("ok", status_code=201)

    async with client(starlette_app(Route("/", endpoint, methods=["POST"]))) as c:
        assert (await c.post("/")).status_code == 500
    assert names(engine) == []


# --- disconnects: uow reads nothing by itself; a disconnect the app saw rolls back ---------------


def http_scope(method: str, path: str) -> Scope:
    """The scope a server passes for a plain HTTP request, sent straight to an ASGI app."""
    return {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [],
        "query_string": b"",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "http",
        "server": ("test", 80),
        "client": ("c", 1),
        "root_path": "",
    }


async def drive(app: ASGIApp, receive: Receive) -> list[Message]:
    """Send one POST straight to *app* with the server's *receive*; return what the app sent."""
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await app(http_scope("POST", "/items/x"), receive, send)
    return sent


def body_then(rest: Receive) -> Receive:
    """A server's receive: the (empty) body first, then whatever *rest* does."""
    first = True

    async def receive() -> Message:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": b"", "more_body": False}
        return await rest()

    return receive


@pytest.mark.anyio
async def test_uow_never_calls_the_servers_receive_by_itself(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    """No probe: a body nobody asked for stays unread (no 100 Continue, no lost messages, no hang)."""
    calls = 0

    async def receive() -> Message:
        nonlocal calls
        calls += 1
        return {"type": "http.disconnect"}  # a client that already left, unseen by the app

    sent = await drive(starlette_app(Route("/items/{name}", add_item, methods=["POST"])), receive)
    assert calls == 0
    assert sent[0]["status"] == 201
    assert names(engine) == ["x"]  # documented: a client that vanishes unseen may have its write kept
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_a_disconnect_the_app_saw_makes_the_unit_roll_back(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    async def gone() -> Message:
        return {"type": "http.disconnect"}

    async def endpoint(request: Request) -> Response:
        def add_and_flush() -> None:
            uow.session.add(Item(name="x"))
            uow.session.flush()

        await uow.run_sync(add_and_flush)
        await request.body()
        assert await request.is_disconnected()  # read through uow's receive wrapper
        return PlainTextResponse("", status_code=201)

    sent = await drive(starlette_app(Route("/items/{name}", endpoint, methods=["POST"])), body_then(gone))
    assert sent[0]["status"] == 201  # the app's answer goes out (to nobody); the unit did not commit
    assert names(engine) == []
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_body_messages_reach_the_app_in_order(manager: uow.UnitOfWorkManager, engine: Engine) -> None:
    messages: list[Message] = [
        {"type": "http.request", "body": b"la", "more_body": True},
        {"type": "http.request", "body": b"te", "more_body": False},
    ]
    received: list[Message] = []

    async def server_receive() -> Message:
        return messages.pop(0)

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        def add_and_flush() -> None:
            uow.session.add(Item(name="x"))
            uow.session.flush()

        await uow.run_sync(add_and_flush)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        received.extend([await receive(), await receive()])
        await send({"type": "http.response.body", "body": b"ok"})

    await drive(UnitOfWorkMiddleware(endpoint), server_receive)
    assert [m["body"] for m in received] == [b"la", b"te"]
    assert names(engine) == ["x"]


class ReplayBody:
    """The body-logging recipe: read the whole body, then hand the app a receive that replays it.

    Its receive answers every call at once and never says ``http.disconnect``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)

        async def replay() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


@pytest.mark.anyio
async def test_behind_a_body_replaying_middleware_requests_end_and_commit(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    async def echo(request: Request) -> Response:
        body = await request.body()

        def add_and_flush() -> None:
            uow.session.add(Item(name=body.decode()))
            uow.session.flush()

        await uow.run_sync(add_and_flush)
        return PlainTextResponse(body, status_code=201)

    app = ReplayBody(starlette_app(Route("/echo", echo, methods=["POST"])))
    async with client(app) as c:
        with anyio.fail_after(10):  # it used to loop forever on the replayed receive
            response = await c.post("/echo", content=b"hello")
    assert (response.status_code, response.text) == (201, "hello")
    assert names(engine) == ["hello"]


@pytest.mark.anyio
async def test_behind_base_http_middleware_a_body_read_after_the_commit_reaches_the_app(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    """The body is read only after the response started (the commit): nothing uow did consumed it."""

    class Outer(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
            return await call_next(request)

    async def echo(scope: Scope, receive: Receive, send: Send) -> None:
        def add_and_flush() -> None:
            uow.session.add(Item(name="x"))
            uow.session.flush()

        await uow.run_sync(add_and_flush)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        await send({"type": "http.response.body", "body": body})

    app = Outer(UnitOfWorkMiddleware(echo))
    async with client(app) as c:
        with anyio.fail_after(10):
            response = await c.post("/echo", content=b"hello")
    assert (response.status_code, response.text) == (200, "hello")
    assert names(engine) == ["x"]


# --- a request's root: found through one context variable, whatever the manager --------------


@pytest.mark.anyio
async def test_a_not_supported_block_in_a_request_sees_no_unit(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    seen: dict[str, bool] = {}

    @uow.transactional(propagation=uow.Propagation.NOT_SUPPORTED)
    def outside_sync() -> bool:
        return manager.in_unit()

    @uow.transactional(propagation=uow.Propagation.NOT_SUPPORTED)
    async def outside_async() -> bool:
        return manager.in_unit()

    async def endpoint(request: Request) -> Response:
        seen["before"] = manager.in_unit()
        seen["async"] = await outside_async()
        seen["thread"] = await uow.run_sync(outside_sync)
        with pytest.raises(uow.NoActiveUnitOfWork):
            async with uow.unit_of_work(propagation=uow.Propagation.NOT_SUPPORTED):
                uow.session.add(Item(name="no unit here"))
        seen["after"] = manager.in_unit()
        await uow.run_sync(lambda: uow.session.add(Item(name="the request's")))
        return PlainTextResponse("", status_code=201)

    async with client(starlette_app(Route("/", endpoint, methods=["POST"]))) as c:
        assert (await c.post("/")).status_code == 201
    assert seen == {"before": True, "async": False, "thread": False, "after": True}
    assert names(engine) == ["the request's"]


@pytest.mark.anyio
async def test_nested_middlewares_of_one_manager_give_the_endpoint_the_inner_unit(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    """The inner middleware's unit is the innermost: it serves the endpoint and commits first."""
    log: list[str] = []

    def endpoint(request: Request) -> Response:
        uow.session.add(Item(name="inner"))
        return PlainTextResponse("", status_code=201)

    def on_commit(conn: Any) -> None:
        log.append("COMMIT")

    inner = UnitOfWorkMiddleware(Starlette(routes=[Route("/", endpoint, methods=["POST"])]))
    app = UnitOfWorkMiddleware(Recorder(inner, log))
    event.listen(engine, "commit", on_commit)
    async with client(app) as c:
        assert (await c.post("/")).status_code == 201
    assert names(engine) == ["inner"]
    # one COMMIT, the inner unit's, before the start left it; the outer unit was never made
    assert log == ["COMMIT", "response.start 201"]


class ConcurrentWrites:
    """An endpoint whose tasks all write through ``run_sync`` at once, and when each held the session."""

    def __init__(self, manager: uow.UnitOfWorkManager, count: int, prefix: str) -> None:
        self.manager = manager
        self.count = count
        self.prefix = prefix
        self.intervals: list[tuple[float, float]] = []

    def work(self, i: int) -> None:
        start = time.perf_counter()
        self.manager.session.add(Item(name=f"{self.prefix} {i:02}"))
        time.sleep(0.01)  # long enough for unserialized calls to overlap
        self.manager.session.flush()
        self.intervals.append((start, time.perf_counter()))

    async def endpoint(self, request: Request) -> Response:
        async with anyio.create_task_group() as tg:
            for i in range(self.count):
                tg.start_soon(uow.run_sync, self.work, i)
        return PlainTextResponse("", status_code=201)

    def assert_one_at_a_time(self) -> None:
        intervals = sorted(self.intervals)
        assert len(intervals) == self.count
        for (_, end), (next_start, _) in itertools.pairwise(intervals):
            assert end <= next_start, "two threads used the request's session at the same time"


@pytest.mark.anyio
@pytest.mark.parametrize("outer_kind", ["none", "async engine"])
async def test_run_sync_in_a_request_of_a_non_default_manager_is_serialized(
    engine: Engine, tmp_path: Path, outer_kind: str
) -> None:
    """Concurrent run_sync calls share the request's sync session one at a time.

    The manager is not the default one, and another manager's middleware (an
    async engine's) may sit outside it: the request's root is found all the same.
    """
    own = uow.UnitOfWorkManager(engine)
    writes = ConcurrentWrites(own, 8, "item")
    app: ASGIApp = UnitOfWorkMiddleware(
        Starlette(routes=[Route("/", writes.endpoint, methods=["POST"])]), manager=own
    )
    other = None
    if outer_kind == "async engine":
        other = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'other.db'}")
        app = UnitOfWorkMiddleware(app, manager=uow.UnitOfWorkManager(other))
    try:
        async with client(app) as c:
            assert (await c.post("/")).status_code == 201
    finally:
        if other is not None:
            await other.dispose()
    writes.assert_one_at_a_time()
    assert len(names(engine)) == 8


@pytest.mark.anyio
async def test_a_requests_session_is_freed_when_its_unit_ends(manager: uow.UnitOfWorkManager) -> None:
    """By the time the client has the response: no reference cycle, no thread still holding it."""
    refs: list[weakref.ref[Session]] = []

    def endpoint(request: Request) -> Response:
        refs.append(weakref.ref(uow.current_session()))
        uow.session.execute(select(1))
        return PlainTextResponse("")

    async with client(starlette_app(Route("/", endpoint))) as c:
        gc.collect()
        gc.disable()
        try:
            for _ in range(100):  # a thread that held on a moment too long did so in a few in 100
                refs.clear()
                assert (await c.get("/")).status_code == 200
                assert refs[0]() is None, "the request's session outlived its response"
        finally:
            gc.enable()


# --- a request served where a unit of its manager is already open: its own unit goes first ------


def _write_item(request: Request) -> Response:
    uow.session.add(Item(name=request.path_params["name"]))
    uow.session.flush()
    return PlainTextResponse("", status_code=201)


def test_a_request_from_a_test_client_inside_a_unit_commits_its_own(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    """TestClient hands the caller's context to the app: the caller's unit must not swallow the request's."""
    from starlette.testclient import TestClient

    app = starlette_app(Route("/{name}", _write_item, methods=["POST"]))
    with (
        TestClient(app) as tc,
        pytest.raises(RuntimeError, match="the caller's unit fails"),
        uow.unit_of_work(),
    ):
        uow.session.add(Item(name="caller's"))
        assert tc.post("/request's").status_code == 201
        assert names(engine) == ["request's"]  # committed before its response started
        raise RuntimeError("the caller's unit fails")
    assert names(engine) == ["request's"]


@pytest.mark.anyio
@pytest.mark.parametrize("around", ["unit", "suspended unit"])
async def test_a_request_inside_an_async_unit_has_a_unit_of_its_own(
    manager: uow.UnitOfWorkManager, engine: Engine, around: str
) -> None:
    """Called in-process inside a unit (or a NOT_SUPPORTED block in one), the request still commits."""
    writes = ConcurrentWrites(manager, 4, "request's")
    app = starlette_app(Route("/", writes.endpoint, methods=["POST"]))
    with pytest.raises(RuntimeError, match="the caller's unit fails"):
        async with uow.unit_of_work():
            await uow.run_sync(lambda: uow.session.add(Item(name="caller's")))
            async with contextlib.AsyncExitStack() as stack:
                if around == "suspended unit":
                    await stack.enter_async_context(
                        uow.unit_of_work(propagation=uow.Propagation.NOT_SUPPORTED)
                    )
                async with client(app) as c:
                    assert (await c.post("/")).status_code == 201
            raise RuntimeError("the caller's unit fails")
    assert names(engine) == [f"request's {i:02}" for i in range(4)]
    writes.assert_one_at_a_time()


@pytest.mark.anyio
async def test_a_requests_unit_keeps_the_options_it_began_with(
    manager: uow.UnitOfWorkManager, engine: Engine
) -> None:
    """An inner middleware that rewrites the method does not turn a read-only request read-write."""

    class MethodOverride:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and scope["method"] == "GET":
                scope["method"] = "POST"  # in place, as some method-override middlewares do
            await self.app(scope, receive, send)

    def endpoint(request: Request) -> Response:
        uow.session.add(Item(name="written"))
        return PlainTextResponse("", status_code=201)

    inner = Starlette(routes=[Route("/", endpoint, methods=["POST"])])
    app = UnitOfWorkMiddleware(MethodOverride(inner), read_only_methods={"GET"})
    async with client(app) as c:
        response = await c.get("/")
    assert response.status_code == 500  # ReadOnlyViolation: never a 201 for a dropped write
    assert names(engine) == []
