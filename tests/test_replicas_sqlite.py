"""Replicas on SQLite (and any database without WAL positions): accepted, with the time window only."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, create_engine, insert, select
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import uow
from tests.conftest import Base, Item
from uow.replicas import Routing, served_by
from uow.starlette import UnitOfWorkMiddleware


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[tuple[Engine, Engine]]:
    """A primary file and a "replica" file that holds a row of its own, to tell them apart."""
    made = []
    for name in ("primary", "replica"):
        engine = create_engine(f"sqlite:///{tmp_path / name}.db")
        Base.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(insert(Item).values(name=f"on {name}"))
        made.append(engine)
    yield made[0], made[1]
    for engine in made:
        engine.dispose()


def where() -> str:
    return str(uow.session.scalar(select(Item.name).where(Item.name.like("on %"))))


def test_read_only_units_run_on_the_replica(engines: tuple[Engine, Engine]) -> None:
    manager = uow.configure(engines[0], replicas=[engines[1]], routing=Routing(read_your_writes="off"))
    with uow.unit_of_work(read_only=True):
        assert where() == "on replica"
        assert served_by(manager).endswith("replica.db")
    with uow.unit_of_work():
        assert where() == "on primary"
    with uow.unit_of_work(read_only=True), pytest.raises(uow.ReadOnlyViolation):
        uow.session.execute(insert(Item).values(name="no"))


def test_the_time_window_is_the_default_and_the_only_mode(engines: tuple[Engine, Engine]) -> None:
    manager = uow.configure(engines[0], replicas=[engines[1]], routing=Routing(window=0.3))
    assert manager.router is not None and manager.router.mode == "window"
    with uow.unit_of_work() as session:
        session.add(Item(name="mine"))
    with uow.unit_of_work(read_only=True) as session:  # within the window: the primary
        assert session.scalar(select(Item.name).where(Item.name == "mine")) == "mine"
    time.sleep(0.35)
    with uow.unit_of_work(read_only=True):
        assert where() == "on replica"
    with pytest.raises(uow.InvalidOptionError, match="needs PostgreSQL"):
        uow.UnitOfWorkManager(engines[0], replicas=[engines[1]], routing=Routing(read_your_writes="lsn"))


def test_a_manager_without_replicas_has_no_router(engines: tuple[Engine, Engine]) -> None:
    assert uow.UnitOfWorkManager(engines[0]).router is None


@pytest.mark.anyio
async def test_async_replicas_of_an_async_primary(engines: tuple[Engine, Engine]) -> None:
    urls = [str(e.url).replace("sqlite://", "sqlite+aiosqlite://") for e in engines]
    primary, replica = (create_async_engine(url) for url in urls)
    try:
        uow.configure(primary, replicas=[replica], routing=Routing(window=60.0))
        async with uow.unit_of_work(read_only=True) as session:
            assert await session.scalar(select(Item.name).where(Item.name.like("on %"))) == "on replica"
        async with uow.unit_of_work() as session:
            session.add(Item(name="mine"))
        async with uow.unit_of_work(read_only=True) as session:  # the window: the primary
            assert await session.scalar(select(Item.name).where(Item.name.like("on %"))) == "on primary"
    finally:
        await primary.dispose()
        await replica.dispose()


@pytest.mark.anyio
async def test_read_only_methods_without_replicas_refuse_writes(engines: tuple[Engine, Engine]) -> None:
    manager = uow.UnitOfWorkManager(engines[0])

    def write(request: Request) -> JSONResponse:
        manager.session.add(Item(name=request.method))
        manager.session.flush()
        return JSONResponse({}, status_code=200)

    app = Starlette(
        routes=[Route("/", write, methods=["GET", "POST"])],
        middleware=[Middleware(UnitOfWorkMiddleware, manager=manager, read_only_methods={"GET"})],
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/")).status_code == 500  # ReadOnlyViolation
        assert (await client.post("/")).status_code == 200
    with engines[0].connect() as conn:
        assert sorted(conn.scalars(select(Item.name))) == ["POST", "on primary"]


def test_middleware_options_are_checked() -> None:
    with pytest.raises(uow.InvalidOptionError, match="collection of methods"):
        UnitOfWorkMiddleware(Starlette(), read_only_methods="GET")
    with pytest.raises(uow.InvalidOptionError, match="cookie name"):
        UnitOfWorkMiddleware(Starlette(), causal_cookie="no good")


def test_replicas_take_turns_or_the_least_lagging_goes_first(tmp_path: Path) -> None:
    """The order is a decision on what the probes found (set here by hand: SQLite has no lag)."""
    engines = [create_engine(f"sqlite:///{tmp_path / name}.db") for name in ("p", "a", "b", "c")]
    try:
        for prefer, expected in (
            ("round-robin", [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]),
            ("least-lag", [["b", "c", "a"], ["c", "b", "a"], ["b", "c", "a"], ["c", "b", "a"]]),
        ):
            routing = Routing(prefer=prefer)  # type: ignore[arg-type]
            router = uow.UnitOfWorkManager(engines[0], replicas=engines[1:], routing=routing).router
            assert router is not None
            router.replicas[0].lag = 3.0  # a lags; b and c are level and take turns
            orders = [[Path(r.name).stem for r in router.in_turn(time.monotonic())] for _ in range(4)]
            assert orders == expected, prefer
        assert router is not None  # least-lag's
        router.replicas[1].down_until = time.monotonic() + 60  # b cools down: skipped
        assert [Path(r.name).stem for r in router.in_turn(time.monotonic())] == ["c", "a"]
        assert [Path(r.name).stem for r in router.in_turn(time.monotonic())] == ["c", "a"]
    finally:
        for engine in engines:
            engine.dispose()
