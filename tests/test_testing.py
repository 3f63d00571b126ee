"""uow.testing: tests run in a transaction rolled back afterwards; units commit to savepoints."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import uow
from tests.conftest import Item, asyncio_and_trio, names
from uow.starlette import UnitOfWorkMiddleware
from uow.testing import TestTransaction, async_rollback_after, rollback_after


@pytest.fixture
def uow_engine(engine: Engine) -> Engine:
    return engine


@uow.transactional
def add(name: str) -> int:
    item = Item(name=name)
    uow.session.add(item)
    uow.session.flush()
    uow.on_commit(lambda: None)
    return item.id


def test_units_commit_inside_and_nothing_outlives_the_block(engine: Engine) -> None:
    with rollback_after(engine) as test:
        add("a")
        with pytest.raises(ValueError), uow.unit_of_work() as session:
            session.add(Item(name="b"))
            session.flush()
            raise ValueError
        with uow.unit_of_work(read_only=True) as session:
            assert list(session.scalars(select(Item.name))) == ["a"]  # committed, b rolled back
        assert len(test.on_commit_callbacks) == 1
    assert names(engine) == []  # the outer transaction was rolled back


def test_on_commit_hooks_are_captured_then_run_on_demand(engine: Engine) -> None:
    ran: list[str] = []
    with rollback_after(engine) as test:
        with uow.unit_of_work():
            uow.on_commit(lambda: ran.append("first"))
            uow.on_commit(lambda: ran.append("second"))
        assert ran == []
        assert test.run_on_commit() == 2
        assert ran == ["first", "second"]
        assert test.on_commit_callbacks == []


def test_capture_off_runs_hooks_as_in_production(engine: Engine) -> None:
    ran: list[int] = []
    with rollback_after(engine, capture_on_commit=False):
        with uow.unit_of_work():
            uow.on_commit(lambda: ran.append(1))
        assert ran == [1]


def test_the_default_manager_is_restored(engine: Engine) -> None:
    before = uow.configure(engine)
    with rollback_after(engine) as test:
        assert uow.get_manager() is test.manager
    assert uow.get_manager() is before


def test_fixture_from_the_plugin(uow_test: TestTransaction, engine: Engine) -> None:
    add("from-fixture")
    with uow.unit_of_work() as session:
        assert session.scalar(select(Item.name)) == "from-fixture"
    assert names(engine) == []  # not committed for real: only to a savepoint


def test_savepoint_units_and_isolation_options_inside_the_test(
    uow_test: TestTransaction, engine: Engine
) -> None:
    with uow.unit_of_work():
        add("kept")
        with pytest.raises(ValueError), uow.unit_of_work(propagation=uow.Propagation.NESTED):
            add("undone")
            raise ValueError
    with uow.unit_of_work(isolation_level="SERIALIZABLE", read_only=True) as session:
        assert list(session.scalars(select(Item.name))) == ["kept"]


@pytest.mark.anyio
@asyncio_and_trio
async def test_middleware_requests_in_the_test_transaction(engine: Engine) -> None:
    def create(request: Request) -> JSONResponse:
        return JSONResponse({"id": add(request.path_params["name"])}, status_code=201)

    def fail(request: Request) -> JSONResponse:
        add("rolled-back")
        return JSONResponse({}, status_code=400)

    app = Starlette(
        routes=[Route("/items/{name}", create, methods=["POST"]), Route("/fail", fail, methods=["POST"])],
        middleware=[Middleware(UnitOfWorkMiddleware)],
    )
    with rollback_after(engine):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.post("/items/x")).status_code == 201
            assert (await client.post("/fail")).status_code == 400
            assert (await client.post("/items/y")).status_code == 201
        with uow.unit_of_work() as session:
            assert sorted(session.scalars(select(Item.name))) == ["x", "y"]
    assert names(engine) == []


@pytest.mark.anyio  # asyncio only: AsyncEngine (aiosqlite, asyncpg)
async def test_async_engine(async_engine: AsyncEngine, engine: Engine) -> None:
    async with async_rollback_after(async_engine) as test:

        @uow.transactional
        async def add_async(name: str) -> None:
            uow.current_session().add(Item(name=name))
            uow.on_commit(lambda: None)

        await add_async("async")
        async with uow.unit_of_work() as session:
            assert list(await session.scalars(select(Item.name))) == ["async"]
        assert await test.run_on_commit_async() == 1
    assert names(engine) == []
