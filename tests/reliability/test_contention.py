"""Contention across processes and inside one request."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import httpx
import pytest
from sqlalchemy import Engine, Table, select
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import uow
from tests.conftest import Counter, Item, make_engine, names
from uow.starlette import UnitOfWorkMiddleware

pytestmark = pytest.mark.reliability
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def two_servers(tmp_path: Path) -> Iterator[tuple[Engine, list[str]]]:
    engine = make_engine("postgresql", tmp_path)
    with engine.begin() as conn:
        conn.execute(cast(Table, Counter.__table__).insert().values(id=1, value=0))
    ports = [_free_port(), _free_port()]
    env = {**os.environ, "UOW_COUNTER_DB_URL": str(engine.url.render_as_string(hide_password=False))}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "tests.reliability.counter_app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
        )
        for port in ports
    ]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        deadline = time.monotonic() + 30
        for url in urls:
            while True:
                try:
                    httpx.get(url + "/", timeout=1)
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        yield engine, urls
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        engine.dispose()


@pytest.mark.anyio
async def test_serializable_increments_from_two_server_processes(
    two_servers: tuple[Engine, list[str]],
) -> None:
    engine, urls = two_servers
    per_server = 60
    async with httpx.AsyncClient(timeout=60) as client:
        semaphore = asyncio.Semaphore(16)

        attempts: dict[str, int] = {}

        async def hit(url: str) -> int:
            async with semaphore:
                r = await client.post(url + "/inc")
                if r.status_code == 200:
                    attempts[url] = max(attempts.get(url, 0), r.json()["attempts"])
                return r.status_code

        statuses = await asyncio.gather(*(hit(url) for url in urls for _ in range(per_server)))
    assert statuses == [200] * (2 * per_server)
    # the processes really conflicted: serialization failures were retried
    assert sum(attempts.values()) > 2 * per_server, attempts
    with engine.connect() as conn:
        assert conn.scalar(select(Counter.value).where(Counter.id == 1)) == 2 * per_server


@pytest.mark.anyio
@pytest.mark.parametrize("backend_name", ["sqlite", "postgresql"])
async def test_gather_of_run_sync_in_one_request_is_serialized(backend_name: str, tmp_path: Path) -> None:
    engine = make_engine(backend_name, tmp_path)
    uow.configure(engine)
    active: list[int] = []
    overlaps: list[int] = []
    lock = threading.Lock()

    def add(name: str) -> None:
        with lock:
            active.append(1)
            if len(active) > 1:
                overlaps.append(len(active))
        try:
            uow.session.add(Item(name=name))
            uow.session.flush()
            time.sleep(0.005)
        finally:
            with lock:
                active.pop()

    async def many(request: Request) -> JSONResponse:
        await asyncio.gather(*(uow.run_sync(add, f"g{i}") for i in range(20)))
        return JSONResponse({}, status_code=201)

    app = Starlette(
        routes=[Route("/many", many, methods=["POST"])], middleware=[Middleware(UnitOfWorkMiddleware)]
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert (await client.post("/many")).status_code == 201
    assert overlaps == []
    assert names(engine) == sorted(f"g{i}" for i in range(20))
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    engine.dispose()
