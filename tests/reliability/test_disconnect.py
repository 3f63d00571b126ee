"""Client disconnects against a real uvicorn server on 127.0.0.1: during a slow request and
during a streaming response. Nothing the client was not told about is kept; the pool drains."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
import uvicorn
from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

import uow
from tests.conftest import Item, make_engine, names
from uow.starlette import UnitOfWorkMiddleware

pytestmark = pytest.mark.reliability


def _app(reached: dict[str, threading.Event]) -> Starlette:
    def slow(request: Request) -> Response:
        uow.session.add(Item(name="slow"))
        uow.session.flush()
        reached["slow"].set()
        time.sleep(1.0)  # the client hangs up meanwhile
        return PlainTextResponse("done", status_code=201)

    async def slow_checks(request: Request) -> Response:
        def add_and_flush() -> None:
            uow.session.add(Item(name="checked"))
            uow.session.flush()

        await uow.run_sync(add_and_flush)
        reached["slow"].set()
        await anyio.sleep(1.0)  # the client hangs up meanwhile
        await request.body()
        if await request.is_disconnected():  # through uow's receive wrapper: uow sees it too
            return PlainTextResponse("gone", status_code=499)
        return PlainTextResponse("done", status_code=201)

    async def stream(request: Request) -> Response:
        await uow.run_sync(lambda: uow.session.add(Item(name="before-stream")))

        async def body() -> AsyncIterator[bytes]:
            yield b"first chunk\n"
            async with uow.unit_of_work() as session:
                await uow.run_sync(session.add, Item(name="during-stream"))
                reached["stream"].set()
                for _ in range(100):
                    await anyio.sleep(0.05)  # the client hangs up meanwhile
                    yield b"more\n"

        return StreamingResponse(body())

    return Starlette(
        routes=[
            Route("/slow", slow, methods=["POST"]),
            Route("/slow-checks", slow_checks, methods=["POST"]),
            Route("/stream", stream),
        ],
        middleware=[Middleware(UnitOfWorkMiddleware)],
    )


@pytest.fixture
def server(backend: str, tmp_path: Path) -> Iterator[tuple[Engine, int, dict[str, threading.Event]]]:
    engine = make_engine(backend, tmp_path)
    uow.configure(engine)
    reached = {"slow": threading.Event(), "stream": threading.Event()}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    config = uvicorn.Config(_app(reached), host="127.0.0.1", port=port, log_level="error", lifespan="off")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield engine, port, reached
    srv.should_exit = True
    thread.join(timeout=20)
    engine.dispose()


def _wait_for_pool(engine: Engine) -> None:
    deadline = time.monotonic() + 10
    while engine.pool.checkedout():  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "a connection stayed checked out"
        time.sleep(0.02)


def test_a_disconnect_the_app_saw_rolls_back(
    server: tuple[Engine, int, dict[str, threading.Event]],
) -> None:
    engine, port, reached = server
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"POST /slow-checks HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        assert reached["slow"].wait(10)
    # the socket is closed while the endpoint still works; it asks whether the client is
    # gone (through uow's receive wrapper), so the unit rolls back whatever it answers
    time.sleep(1.5)
    _wait_for_pool(engine)
    assert names(engine) == []


def test_a_client_that_vanishes_unseen_may_have_its_write_committed(
    server: tuple[Engine, int, dict[str, threading.Event]],
) -> None:
    """uow never reads the request by itself: a disconnect nobody asked about goes unseen (documented)."""
    engine, port, reached = server
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        assert reached["slow"].wait(10)
    time.sleep(1.5)
    _wait_for_pool(engine)
    assert names(engine) == ["slow"]


def test_disconnect_during_a_streaming_response(
    server: tuple[Engine, int, dict[str, threading.Event]],
) -> None:
    engine, port, reached = server
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        received = b""
        while b"first chunk" not in received:
            received += conn.recv(4096)
        assert received.startswith(b"HTTP/1.1 200")
        assert reached["stream"].wait(10)
    _wait_for_pool(engine)
    time.sleep(0.3)
    # the request's unit committed before the first byte; the unit opened in the
    # stream was cancelled with it and rolled back
    assert names(engine) == ["before-stream"]
    _wait_for_pool(engine)


def test_a_client_that_stays_gets_its_commit(
    server: tuple[Engine, int, dict[str, threading.Event]],
) -> None:
    engine, port, _ = server
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := conn.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 201")
    assert names(engine) == ["slow"]
    _wait_for_pool(engine)
