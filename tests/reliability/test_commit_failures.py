"""Commit failures provoked for real: the caller sees an error, nothing partial is kept,
the pool recovers and the next unit works."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, SAWarning
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import uow
from tests.conftest import Item, make_engine, names
from uow.starlette import UnitOfWorkMiddleware

pytestmark = pytest.mark.reliability


@pytest.fixture
def pg_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine("postgresql", tmp_path, pool_pre_ping=True)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS deferred_items"))
        conn.execute(
            text(
                "CREATE TABLE deferred_items (id serial PRIMARY KEY, code text, "
                "CONSTRAINT deferred_code UNIQUE (code) DEFERRABLE INITIALLY DEFERRED)"
            )
        )
    yield engine
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    engine.dispose()


def _terminate(engine: Engine, pid: int) -> None:
    """Kill a backend from a connection of its own (a second, independent engine)."""
    killer = create_engine(engine.url, poolclass=None)
    with killer.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    killer.dispose()


def test_backend_terminated_mid_transaction(pg_engine: Engine) -> None:
    manager = uow.configure(pg_engine)

    @uow.transactional
    def write_then_lose_the_connection() -> None:
        uow.session.add(Item(name="lost"))
        uow.session.flush()
        pid = uow.session.scalar(text("SELECT pg_backend_pid()"))
        _terminate(pg_engine, int(pid))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SAWarning)  # the dead connection is invalidated
        with pytest.raises(DBAPIError):
            write_then_lose_the_connection()
    assert names(pg_engine) == []
    assert pg_engine.pool.checkedout() == 0  # type: ignore[attr-defined]

    @manager.transactional
    def next_unit() -> None:
        uow.session.add(Item(name="next"))

    next_unit()  # pool_pre_ping replaced the dead connection
    assert names(pg_engine) == ["next"]


def test_deferred_constraint_fails_at_commit(pg_engine: Engine) -> None:
    uow.configure(pg_engine)

    @uow.transactional
    def duplicate_codes() -> None:
        uow.session.execute(text("INSERT INTO deferred_items (code) VALUES ('x'), ('x')"))
        uow.session.add(Item(name="with-it"))

    with pytest.raises(IntegrityError):
        duplicate_codes()  # the statements succeed; COMMIT raises
    assert names(pg_engine) == []
    with pg_engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM deferred_items")) == 0


def _app(engine: Engine) -> Starlette:
    def deferred(request: Request) -> JSONResponse:
        uow.session.execute(text("INSERT INTO deferred_items (code) VALUES ('y'), ('y')"))
        uow.session.add(Item(name="deferred"))
        return JSONResponse({"ok": True}, status_code=201)

    def terminated(request: Request) -> JSONResponse:
        uow.session.add(Item(name="terminated"))
        uow.session.flush()
        _terminate(engine, int(uow.session.scalar(text("SELECT pg_backend_pid()"))))
        return JSONResponse({"ok": True}, status_code=201)

    def ok(request: Request) -> JSONResponse:
        uow.session.add(Item(name=request.path_params["name"]))
        return JSONResponse({"ok": True}, status_code=201)

    return Starlette(
        routes=[
            Route("/deferred", deferred, methods=["POST"]),
            Route("/terminated", terminated, methods=["POST"]),
            Route("/ok/{name}", ok, methods=["POST"]),
        ],
        middleware=[Middleware(UnitOfWorkMiddleware)],
    )


@pytest.mark.anyio
async def test_commit_failures_through_the_middleware_answer_500(pg_engine: Engine) -> None:
    uow.configure(pg_engine)
    transport = httpx.ASGITransport(app=_app(pg_engine), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.post("/deferred")).status_code == 500
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SAWarning)
            assert (await client.post("/terminated")).status_code == 500
        assert (await client.post("/ok/after")).status_code == 201
    assert names(pg_engine) == ["after"]
    with pg_engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM deferred_items")) == 0
        assert conn.scalar(select(Item.id).where(Item.name == "after")) is not None
