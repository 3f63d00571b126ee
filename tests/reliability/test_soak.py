"""Soak: thousands of mixed requests through the middleware; afterwards the rows match
the acknowledged writes exactly, no connection is checked out, the thread count is bounded.

``UOW_SOAK_REQUESTS`` sets the size per backend (default 3,000; the full run
documented in docs/reliability.md uses 10,000).
"""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import anyio
import httpx
import pytest
from sqlalchemy import Engine, func, select
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import uow
from tests.conftest import Item, make_engine
from uow.starlette import UnitOfWorkMiddleware

pytestmark = pytest.mark.reliability

SOAK = int(os.environ.get("UOW_SOAK_REQUESTS", "3000"))


def _app() -> Starlette:
    def read(request: Request) -> JSONResponse:
        n = uow.session.scalar(select(func.count(Item.id)))
        return JSONResponse({"count": n})

    def write(request: Request) -> JSONResponse:
        uow.session.add(Item(name=request.path_params["name"]))
        return JSONResponse({}, status_code=201)  # INSERT happens at commit

    def handler_error(request: Request) -> JSONResponse:
        uow.session.add(Item(name=request.path_params["name"]))
        uow.session.flush()
        raise RuntimeError("handler failed")

    async def slow_async(request: Request) -> JSONResponse:
        def work() -> None:
            uow.session.add(Item(name=request.path_params["name"]))
            uow.session.flush()

        await uow.run_sync(work)
        await anyio.sleep(0.05)  # a disconnect (cancellation) lands here
        return JSONResponse({}, status_code=201)

    def nodb(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route("/read", read),
            Route("/write/{name}", write, methods=["POST"]),
            Route("/error/{name}", handler_error, methods=["POST"]),
            Route("/slow/{name}", slow_async, methods=["POST"]),
            Route("/nodb", nodb),
        ],
        middleware=[Middleware(UnitOfWorkMiddleware)],
    )


@pytest.mark.anyio
@pytest.mark.parametrize("backend_name", ["sqlite", "postgresql"])
async def test_soak(backend_name: str, tmp_path: Path) -> None:
    engine: Engine = make_engine(
        backend_name, tmp_path, pool_size=5, max_overflow=0, pool_timeout=30, pool_pre_ping=True
    )
    uow.configure(engine)
    app = _app()
    rng = random.Random(1234)
    acknowledged: set[str] = set()
    outcomes: dict[str, int] = {}
    threads_seen = 0
    limiter = anyio.Semaphore(32)  # requests in flight

    async def one(client: httpx.AsyncClient, i: int) -> None:
        nonlocal threads_seen
        kind = rng.choices(
            ["read", "write", "duplicate", "error", "disconnect", "nodb"],
            weights=[30, 35, 5, 10, 10, 10],
        )[0]
        name = f"r{i}"
        async with limiter:
            if kind == "read":
                r = await client.get("/read")
            elif kind == "nodb":
                r = await client.get("/nodb")
            elif kind == "write":
                r = await client.post(f"/write/{name}")
            elif kind == "duplicate":  # a commit failure: the name was already written
                r = await client.post("/write/r0")
            elif kind == "error":
                r = await client.post(f"/error/{name}")
            else:
                with anyio.move_on_after(0.01):
                    await client.post(f"/slow/{name}")
                outcomes["disconnect"] = outcomes.get("disconnect", 0) + 1
                threads_seen = max(threads_seen, threading.active_count())
                return
        outcomes[f"{kind}:{r.status_code}"] = outcomes.get(f"{kind}:{r.status_code}", 0) + 1
        if r.status_code == 201:
            acknowledged.add(name if kind != "duplicate" else "r0")
        threads_seen = max(threads_seen, threading.active_count())

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://soak") as client:
        assert (await client.post("/write/r0")).status_code == 201
        acknowledged.add("r0")
        async with anyio.create_task_group() as tg:
            for i in range(1, SOAK):
                tg.start_soon(one, client, i)

    with engine.connect() as conn:
        stored = set(conn.scalars(select(Item.name)))
    assert stored == acknowledged, outcomes
    assert outcomes.get("duplicate:201", 0) == 0 and outcomes.get("duplicate:500", 0) > 0, outcomes
    assert outcomes.get("error:500", 0) > 0, outcomes
    assert all(
        k.endswith(":200") or k.endswith(":201")
        for k in outcomes
        if k.split(":")[0] in ("read", "write", "nodb")
    ), outcomes
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert threads_seen < 80, f"{threads_seen} threads"
    engine.dispose()
