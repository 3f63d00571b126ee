"""The field app: one ASGI app hosting every middleware stack, for real server processes.

Served as ``tests.field.app:app``; reads its database URL from
``UOW_FIELD_DB_URL`` (the tests create the tables before starting it). The
root dispatches on the first path segment to one Starlette app per stack
(``/plain/...``, ``/replay-outside/...``, see :data:`STACKS`) and keeps a
record of each request that carries ``?name=``: what the server delivered
to the stack, the status it was sent, whether the app raised, when it ended.
``GET /record?name=X`` returns it, ``POST /release?name=X`` lets a waiting
``/gone`` answer; ``GET /health`` answers without routing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import anyio
from sqlalchemy import func, select
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import uow
from tests.field.common import DB_URL_ENV, MISSING_PARENT, STACKS, Parent, Row, make_engine
from uow.starlette import UnitOfWorkMiddleware

#: how long /gone waits for the message after the body, at most
GONE_WAIT = 8.0

engine = make_engine(os.environ[DB_URL_ENV])
manager = uow.configure(engine)

#: name -> what happened to the request that carried ?name=
RECORDS: dict[str, dict[str, Any]] = {}
#: name -> set by ``POST /release?name=``: the client of /gone has closed its socket
RELEASES: dict[str, anyio.Event] = {}


# -- the middlewares the stacks are made of ------------------------------------------------------


class Passthrough(BaseHTTPMiddleware):
    """The most trivial BaseHTTPMiddleware."""

    async def dispatch(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        return await call_next(request)


class ReplayBody:
    """The body-logging recipe: read the whole body, then hand the app a receive that replays it.

    The replaying receive answers every call at once and never says
    ``http.disconnect``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        more_body = True
        while more_body:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            more_body = message.get("more_body", False)
        body = b"".join(chunks)

        async def replay() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


MIDDLEWARE: dict[str, list[Middleware]] = {
    "plain": [Middleware(UnitOfWorkMiddleware)],
    "basehttp-inside": [Middleware(UnitOfWorkMiddleware), Middleware(Passthrough)],
    "basehttp-outside": [Middleware(Passthrough), Middleware(UnitOfWorkMiddleware)],
    "gzip-outside": [Middleware(GZipMiddleware, minimum_size=1), Middleware(UnitOfWorkMiddleware)],
    "replay-outside": [Middleware(ReplayBody), Middleware(UnitOfWorkMiddleware)],
}


# -- endpoints -----------------------------------------------------------------------------------


def _name(request: Request) -> str:
    return request.query_params["name"]


def _add(name: str, body: str | None = None, parent_id: int | None = None) -> None:
    uow.session.add(Row(name=name, body=body, parent_id=parent_id))
    uow.session.flush()


def write(request: Request) -> Response:
    """2xx: the row must be committed."""
    _add(_name(request))
    return PlainTextResponse("written", status_code=201)


async def fail(request: Request) -> Response:
    """An exception after the flush: 500, nothing kept."""
    name = _name(request)
    await uow.run_sync(_add, name)
    raise RuntimeError(f"field app: /fail raises after writing {name}")


def badcommit(request: Request) -> Response:
    """A row whose deferred foreign key fails only at COMMIT: the 201 must become a 500."""
    _add(_name(request), parent_id=MISSING_PARENT)
    return PlainTextResponse("written, for now", status_code=201)


def _touch() -> int:
    return int(uow.session.scalar(select(func.count()).select_from(Parent)) or 0)


async def echo(request: Request) -> Response:
    """Use the database, then read the body and keep it; answer it back."""
    name = _name(request)
    await uow.run_sync(_touch)
    body = await request.body()
    await uow.run_sync(_add, name, body.decode("ascii"))
    return Response(body, status_code=201, media_type="text/plain")


async def gone(request: Request) -> Response:
    """Write, then wait for the message after the body (a disconnect, once the client is gone).

    Where a middleware answers that receive() itself (a replayed body), the
    app cannot learn that the client left: it answers once the test says the
    client has closed its socket (``POST /release``), so the response starts
    after the client is gone there too. Neither wait is longer than
    :data:`GONE_WAIT`.
    """
    name = _name(request)
    record = RECORDS[name]
    release = RELEASES[name] = anyio.Event()
    await request.body()
    await uow.run_sync(_add, name)
    record["written"] = True
    received = "nothing"
    with anyio.move_on_after(GONE_WAIT):
        received = (await request.receive())["type"]
    record["received"] = received
    if received != "http.disconnect":
        with anyio.move_on_after(GONE_WAIT):
            await release.wait()
    return PlainTextResponse("gone?", status_code=201)


def ignore_body(request: Request) -> Response:
    """Write, answer 201 without reading the (large) body."""
    _add(_name(request))
    return PlainTextResponse("did not read it", status_code=201)


async def ignore_body_no_db(request: Request) -> Response:
    """The control for ``ignore-body``: the same answer, no database."""
    return PlainTextResponse("did not read it", status_code=201)


async def pool(request: Request) -> Response:
    return JSONResponse({"checkedout": engine.pool.checkedout()})  # type: ignore[attr-defined]


async def health(request: Request) -> Response:
    return PlainTextResponse("ok")


ENDPOINTS: list[tuple[str, Callable[[Request], Any], str]] = [
    ("write", write, "POST"),
    ("fail", fail, "POST"),
    ("badcommit", badcommit, "POST"),
    ("echo", echo, "POST"),
    ("gone", gone, "POST"),
    ("ignore-body", ignore_body, "POST"),
    ("ignore-body-no-db", ignore_body_no_db, "POST"),
    ("pool", pool, "GET"),
    ("health", health, "GET"),
]


def build(stack: str) -> Starlette:
    routes = [Route(f"/{stack}/{path}", fn, methods=[method]) for path, fn, method in ENDPOINTS]
    return Starlette(routes=routes, middleware=MIDDLEWARE[stack])


# -- the root ------------------------------------------------------------------------------------


class Root:
    """Dispatch to the stack named by the first path segment; keep a record of named requests."""

    def __init__(self, stacks: dict[str, ASGIApp]) -> None:
        self.stacks = stacks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        name = query.get("name", [None])[0]
        if path == "/health":
            await _answer(send, 200, b"ok")
            return
        if path == "/record":
            body = json.dumps(RECORDS.get(name or "")).encode()
            await _answer(send, 200, body, b"application/json")
            return
        if path == "/release":
            release = RELEASES.get(name or "")
            if release is not None:
                release.set()
            await _answer(send, 200 if release is not None else 404, b"released")
            return
        app = self.stacks.get(path.split("/")[1])
        if app is None:
            await _answer(send, 404, b"no such stack")
            return
        if name is None:
            await app(scope, receive, send)
            return
        record: dict[str, Any] = {
            "path": path,
            "from_server": [],  # the types of the messages the server delivered to the stack
            "status": None,
            "error": None,
            "done": False,
        }
        RECORDS[name] = record

        async def spy_receive() -> Message:
            message = await receive()
            if len(record["from_server"]) < 100:
                record["from_server"].append(message["type"])
            return message

        async def spy_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                record["status"] = message["status"]
            await send(message)

        try:
            await app(scope, spy_receive, spy_send)
        except BaseException as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            record["done"] = True

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await manager.dispose()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _answer(send: Send, status: int, body: bytes, content_type: bytes = b"text/plain") -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


app = Root({stack: build(stack) for stack in STACKS})
