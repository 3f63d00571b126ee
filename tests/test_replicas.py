"""Read replicas on a real PostgreSQL primary and streaming replica (``pg_basebackup -R``).

The pair is this module's own (``tests/pgreplica.py``), never the suite's
shared cluster. Lag is real: replay is paused on the replica.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import anyio.to_thread
import httpx
import pytest
from sqlalchemy import Engine, create_engine, event, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import uow
from tests.conftest import Base, Item, async_pg_url, asyncio_and_trio
from tests.pgreplica import Pair
from uow.replicas import Routing, causal_token, served_by, use_token
from uow.starlette import UnitOfWorkMiddleware


@pytest.fixture
def pair(replica_pair: Pair) -> Pair:
    return replica_pair


@pytest.fixture(autouse=True)
def _fresh_causal_context() -> Iterator[None]:
    """Each test starts with no write to read (all managers here share the primary's name)."""
    with use_token(None):
        yield


@pytest.fixture
async def fresh_causal_context() -> AsyncIterator[None]:
    """The same for an async test, in the task that runs it."""
    with use_token(None):
        yield


@pytest.fixture
def primary(pair: Pair) -> Iterator[Engine]:
    engine = create_engine(pair.primary.url)
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM items"))
    pair.replica.catch_up()
    yield engine
    engine.dispose()


@pytest.fixture
def replica(pair: Pair) -> Iterator[Engine]:
    engine = create_engine(pair.replica.url, pool_pre_ping=True)
    yield engine
    engine.dispose()
    if not (pair.replica.datadir / "postmaster.pid").exists():
        pair.replica.start()
    pair.replica.resume_replay()


def in_recovery() -> bool:
    return bool(uow.session.scalar(text("SELECT pg_is_in_recovery()")))


def manager_of(primary: Engine, replica: Engine, **routing: object) -> uow.UnitOfWorkManager:
    return uow.configure(primary, replicas=[replica], routing=Routing(**routing))  # type: ignore[arg-type]


# --- routing --------------------------------------------------------------------------------


def test_read_only_units_run_on_the_replica_and_write_units_on_the_primary(
    primary: Engine, replica: Engine
) -> None:
    manager = manager_of(primary, replica)

    @uow.transactional(read_only=True)
    def read() -> tuple[bool, str]:
        return in_recovery(), served_by(manager)

    @uow.transactional
    def write() -> tuple[bool, str]:
        uow.session.add(Item(name="w"))
        uow.session.flush()
        return in_recovery(), served_by(manager)

    assert read() == (True, manager.router.replicas[0].name)  # type: ignore[union-attr]
    assert write() == (False, manager.name)
    with uow.unit_of_work():
        assert not in_recovery()
    with uow.unit_of_work(read_only=True):
        assert in_recovery()


def test_joined_units_follow_their_outer_unit_and_writes_on_a_replica_are_refused(
    primary: Engine, replica: Engine
) -> None:
    manager_of(primary, replica)
    statements: list[str] = []
    replica_listener = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(replica, "before_cursor_execute", replica_listener)
    try:
        with uow.unit_of_work(read_only=True):
            with uow.unit_of_work():  # REQUIRED: joins the replica unit
                assert in_recovery()
            with uow.unit_of_work(propagation="REQUIRES_NEW"):  # a unit of its own: the primary
                assert not in_recovery()
            with pytest.raises(uow.ReadOnlyViolation, match="read replica"):
                uow.session.execute(insert(Item).values(name="x"))
            with pytest.raises(uow.ReadOnlyViolation):
                uow.session.add(Item(name="y"))
                uow.session.flush()
            uow.session.expunge_all()
    finally:
        event.remove(replica, "before_cursor_execute", replica_listener)
    assert not any("INSERT" in s for s in statements)


@pytest.mark.anyio
@pytest.mark.usefixtures("fresh_causal_context")
async def test_async_units_are_routed_the_same_way(pair: Pair, primary: Engine) -> None:
    engines: list[AsyncEngine] = [
        create_async_engine(async_pg_url(pair.primary.url)),
        create_async_engine(async_pg_url(pair.replica.url), pool_pre_ping=True),
    ]
    try:
        manager = uow.configure(engines[0], replicas=[engines[1]])
        async with uow.unit_of_work() as session:
            session.add(Item(name="a"))
            await session.flush()
            assert not await session.scalar(text("SELECT pg_is_in_recovery()"))
        async with uow.unit_of_work(read_only=True) as session:
            assert await session.scalar(text("SELECT pg_is_in_recovery()"))
            # read-your-writes: the replica has replayed the write, or the primary serves the read
            assert await session.scalar(select(Item.name)) == "a"
            assert served_by(manager) in {manager.name, manager.router.replicas[0].name}  # type: ignore[union-attr]
    finally:
        for engine in engines:
            await engine.dispose()


def test_replicas_of_another_kind_or_database_are_refused(
    primary: Engine, pair: Pair, tmp_path: Path
) -> None:
    async_replica = create_async_engine(async_pg_url(pair.replica.url))
    with pytest.raises(uow.InvalidOptionError, match="async but the primary is sync"):
        uow.UnitOfWorkManager(primary, replicas=[async_replica])
    sqlite = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(uow.InvalidOptionError, match="not a postgresql database"):
        uow.UnitOfWorkManager(primary, replicas=[sqlite])
    with pytest.raises(uow.InvalidOptionError, match="without replicas"):
        uow.UnitOfWorkManager(primary, routing=Routing())
    with pytest.raises(uow.InvalidOptionError, match="max_wait"):
        Routing(max_wait=-1)
    sqlite.dispose()


# --- read-your-writes ----------------------------------------------------------------------------


def write_then_read(name: str) -> tuple[list[str], bool]:
    with uow.unit_of_work() as session:
        session.add(Item(name=name))
    with uow.unit_of_work(read_only=True) as session:
        return list(session.scalars(select(Item.name).where(Item.name == name))), in_recovery()


def test_without_read_your_writes_a_lagging_replica_serves_a_stale_read(
    pair: Pair, primary: Engine, replica: Engine
) -> None:
    manager_of(primary, replica, read_your_writes="off")
    pair.replica.pause_replay()
    assert write_then_read("stale") == ([], True)  # the write is not there: a stale read


def test_read_your_writes_with_replay_paused_falls_back_to_the_primary(
    pair: Pair, primary: Engine, replica: Engine
) -> None:
    manager_of(primary, replica, max_wait=0.05)
    pair.replica.pause_replay()
    assert write_then_read("mine") == (["mine"], False)  # not stale: the primary served it
    with uow.unit_of_work(read_only=True):
        assert not in_recovery()  # the replica is still behind this context's write
    # another context, with no write of its own: the replica is fine
    with use_token(None), uow.unit_of_work(read_only=True) as session:
        assert in_recovery()
        assert list(session.scalars(select(Item.name))) == []


def test_read_your_writes_waits_for_the_replica_to_replay(
    pair: Pair, primary: Engine, replica: Engine
) -> None:
    manager_of(primary, replica, max_wait=60.0)
    pair.replica.pause_replay()
    resume = threading.Timer(0.3, pair.replica.resume_replay)
    resume.start()
    try:
        assert write_then_read("waited") == (["waited"], True)  # the replica served it, once replayed
    finally:
        resume.join()


def test_the_causal_token_carries_the_position_to_another_context(
    pair: Pair, primary: Engine, replica: Engine
) -> None:
    manager_of(primary, replica, max_wait=0.05)
    pair.replica.pause_replay()
    with use_token(None):
        with uow.unit_of_work() as session:
            session.add(Item(name="carried"))
        token = causal_token()
    assert token is not None
    read = "SELECT count(*) FROM items WHERE name = 'carried'"
    with use_token(token), uow.unit_of_work(read_only=True) as session:
        assert (session.scalar(text(read)), in_recovery()) == (1, False)
    with use_token(None), uow.unit_of_work(read_only=True) as session:
        assert (session.scalar(text(read)), in_recovery()) == (0, True)  # no token: stale
    with use_token("garbage!"), uow.unit_of_work(read_only=True):
        assert in_recovery()  # an unreadable token carries nothing


def test_window_mode_reads_from_the_primary_for_a_while_after_a_write(
    pair: Pair, primary: Engine, replica: Engine
) -> None:
    manager_of(primary, replica, read_your_writes="window", window=0.5)
    pair.replica.pause_replay()
    assert write_then_read("windowed") == (["windowed"], False)
    time.sleep(0.6)
    with uow.unit_of_work(read_only=True):
        assert in_recovery()


# --- health ------------------------------------------------------------------------------------


def test_a_stopped_replica_is_skipped_and_used_again_once_back(
    pair: Pair, primary: Engine, replica: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    manager = manager_of(primary, replica, cooldown=0.2, check_interval=0.0)

    @uow.transactional(read_only=True)
    def read() -> bool:
        return in_recovery()

    assert read() is True
    pair.replica.stop_server()
    with caplog.at_level(logging.WARNING, logger="uow"):
        assert [read() for _ in range(5)] == [False] * 5  # every read succeeds, on the primary
    assert any("unreachable" in r.getMessage() for r in caplog.records)
    pair.replica.start()
    deadline = time.monotonic() + 60
    while not read():  # back after the cooldown
        assert time.monotonic() < deadline, "the replica was never used again"
        time.sleep(0.05)
    assert manager.router is not None and manager.router.replicas[0].down_until <= time.monotonic()


def test_a_replica_that_lags_too_far_is_skipped(pair: Pair, primary: Engine, replica: Engine) -> None:
    manager_of(primary, replica, read_your_writes="off", max_lag=0.2, check_interval=0.0)
    pair.replica.pause_replay()
    with primary.begin() as conn:  # WAL the replica receives but does not replay
        conn.execute(insert(Item).values(name="lag"))
    deadline = time.monotonic() + 60
    while True:
        with uow.unit_of_work(read_only=True):
            if not in_recovery():
                break  # the primary: the replica's lag went past max_lag
        assert time.monotonic() < deadline, "the lagging replica was never skipped"
        time.sleep(0.05)
    pair.replica.resume_replay()
    pair.replica.catch_up()
    with uow.unit_of_work(read_only=True):
        assert in_recovery()


def test_the_debug_record_names_the_database_that_served_the_unit(
    primary: Engine, replica: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    manager = manager_of(primary, replica)
    with caplog.at_level(logging.DEBUG, logger="uow"):
        with uow.unit_of_work(read_only=True):
            in_recovery()
        with uow.unit_of_work():
            in_recovery()
    records = [r for r in caplog.records if r.name == "uow" and hasattr(r, "uow_served_by")]
    assert manager.router is not None
    replica_name = manager.router.replicas[0].name
    assert [r.uow_served_by for r in records] == [replica_name, manager.name]
    assert f"served_by={replica_name}" in records[0].getMessage()


def test_a_read_that_falls_back_to_the_primary_is_read_only_there(
    pair: Pair, primary: Engine, replica: Engine
) -> None:
    manager_of(primary, replica, cooldown=60.0)
    pair.replica.stop_server()
    with uow.unit_of_work(read_only=True) as session:
        assert not in_recovery()
        assert session.scalar(text("SHOW transaction_read_only")) == "on"


# --- through the middleware -------------------------------------------------------------------


def replica_app(manager: uow.UnitOfWorkManager, causal_cookie: str | None = None) -> Starlette:
    async def create(request: Request) -> Response:
        session = manager.current_session()
        item = Item(name=request.path_params["name"])
        session.add(item)
        await session.flush()
        return JSONResponse({"id": item.id}, status_code=201)

    async def show(request: Request) -> Response:
        session = manager.current_session()
        found = await session.scalar(select(Item.id).where(Item.name == request.path_params["name"]))
        replica = await session.scalar(text("SELECT pg_is_in_recovery()"))
        return JSONResponse({"replica": replica}, status_code=404 if found is None else 200)

    return Starlette(
        routes=[
            Route("/items/{name}", create, methods=["POST"]),
            Route("/items/{name}", show, methods=["GET"]),
        ],
        middleware=[
            Middleware(
                UnitOfWorkMiddleware,
                manager=manager,
                read_only_methods={"GET", "HEAD"},
                causal_cookie=causal_cookie,
            )
        ],
    )


@pytest.fixture
async def async_manager(pair: Pair, primary: Engine) -> AsyncIterator[uow.UnitOfWorkManager]:
    manager = uow.UnitOfWorkManager(
        create_async_engine(async_pg_url(pair.primary.url), pool_size=10),
        replicas=[create_async_engine(async_pg_url(pair.replica.url), pool_pre_ping=True, pool_size=10)],
        routing=Routing(max_wait=0.05),
    )
    yield manager
    await manager.dispose()
    pair.replica.resume_replay()


def http(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


@pytest.mark.anyio
@pytest.mark.usefixtures("fresh_causal_context")
async def test_without_the_cookie_a_later_request_reads_stale(
    pair: Pair, async_manager: uow.UnitOfWorkManager
) -> None:
    app = replica_app(async_manager)  # read-only GETs, but no causal cookie
    await anyio.to_thread.run_sync(pair.replica.pause_replay)
    async with http(app) as client:
        assert (await client.post("/items/lost")).status_code == 201
        response = await client.get("/items/lost")
    assert (response.status_code, response.json()) == (404, {"replica": True})  # stale


@pytest.mark.anyio
@pytest.mark.usefixtures("fresh_causal_context")
async def test_two_thousand_requests_with_lag_read_their_own_writes(
    pair: Pair, async_manager: uow.UnitOfWorkManager
) -> None:
    app = replica_app(async_manager, causal_cookie="uow_causal")
    clients, rounds = 8, 125  # 8 clients x 125 x (POST + GET) = 2,000 requests
    done = 0
    statuses: dict[int, int] = {}
    served = {True: 0, False: 0}

    async def lag() -> None:
        """Pause replay for the next 100 requests, let it run for the 100 after, and again."""
        while True:
            for action in (pair.replica.pause_replay, pair.replica.resume_replay):
                await anyio.to_thread.run_sync(action)
                target = done + 100
                while done < target:
                    await anyio.sleep(0.005)

    async def run_client(n: int) -> None:
        nonlocal done
        async with http(app) as client:
            for i in range(rounds):
                name = f"c{n}-{i}"
                for response in (await client.post(f"/items/{name}"), await client.get(f"/items/{name}")):
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                    if response.request.method == "GET" and response.status_code == 200:
                        served[response.json()["replica"]] += 1
                    done += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(lag)
        async with anyio.create_task_group() as load:
            for n in range(clients):
                load.start_soon(run_client, n)
        tg.cancel_scope.cancel()
    assert done == 2000
    assert statuses == {201: 1000, 200: 1000}  # no stale read (404), no failure
    # both paths were taken: the replica when it had replayed, the primary when it lagged
    assert served[True] > 0 and served[False] > 0, served


@pytest.mark.anyio
@pytest.mark.usefixtures("fresh_causal_context")
@pytest.mark.parametrize("pre_ping", [True, False])
async def test_a_request_whose_replica_went_away_is_served_by_the_primary(
    pair: Pair,
    primary: Engine,
    replica: Engine,  # replica: its teardown restarts a stopped server
    pre_ping: bool,
) -> None:
    """With pool_pre_ping no request fails; without, the one that meets the dead connection does."""
    manager = uow.UnitOfWorkManager(
        create_async_engine(async_pg_url(pair.primary.url)),
        replicas=[create_async_engine(async_pg_url(pair.replica.url), pool_pre_ping=pre_ping)],
        routing=Routing(check_interval=3600.0, cooldown=0.2),  # no probe notices it: a request does
    )
    app = replica_app(manager)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/items/none")).json() == {"replica": True}
            await anyio.to_thread.run_sync(pair.replica.stop_server)
            if not pre_ping:  # the pooled connection looks fine until its first query
                assert (await client.get("/items/none")).status_code == 500
            for _ in range(3):  # the replica is out of the turn: the primary answers
                assert (await client.get("/items/none")).json() == {"replica": False}
            await anyio.to_thread.run_sync(pair.replica.start)
            deadline = time.monotonic() + 60
            while (await client.get("/items/none")).json() != {"replica": True}:
                assert time.monotonic() < deadline, "the replica was never used again"
                await anyio.sleep(0.05)
    finally:
        await manager.dispose()


@pytest.mark.anyio
@pytest.mark.usefixtures("fresh_causal_context")
async def test_an_async_unit_falls_back_when_the_replica_refuses(
    pair: Pair,
    primary: Engine,
    replica: Engine,  # replica: its teardown restarts a stopped server
) -> None:
    """asyncpg lets the socket's ConnectionRefusedError through: it counts as a refusal too."""
    manager = uow.configure(
        create_async_engine(async_pg_url(pair.primary.url)),
        replicas=[create_async_engine(async_pg_url(pair.replica.url), pool_pre_ping=True)],
        routing=Routing(check_interval=3600.0),
    )
    try:
        async with uow.unit_of_work(read_only=True) as session:
            assert await session.scalar(text("SELECT pg_is_in_recovery()"))
        await anyio.to_thread.run_sync(pair.replica.stop_server)
        async with uow.unit_of_work(read_only=True) as session:
            assert not await session.scalar(text("SELECT pg_is_in_recovery()"))
    finally:
        await manager.dispose()


@pytest.mark.anyio
@asyncio_and_trio
@pytest.mark.usefixtures("fresh_causal_context")
async def test_async_code_on_sync_engines_reads_its_writes(
    pair: Pair, primary: Engine, replica: Engine
) -> None:
    """Probes and the WAL position go through worker threads; the context still carries the write."""
    manager_of(primary, replica, max_wait=0.05)
    await anyio.to_thread.run_sync(pair.replica.pause_replay)
    async with uow.unit_of_work():
        await uow.run_sync(lambda: uow.session.add(Item(name="threaded")))
    async with uow.unit_of_work(read_only=True):
        found = await uow.run_sync(lambda: uow.session.scalar(select(Item.name)))
        assert (found, await uow.run_sync(in_recovery)) == ("threaded", False)
    with use_token(None):
        async with uow.unit_of_work(read_only=True):
            assert await uow.run_sync(in_recovery)


@pytest.mark.anyio
@pytest.mark.usefixtures("fresh_causal_context")
async def test_a_unit_cancelled_while_its_wal_position_is_read_still_runs_its_hooks(
    primary: Engine, replica: Engine
) -> None:
    """Task.cancel() during the read after COMMIT: the read finishes, the hooks run, then the cancel."""
    manager_of(primary, replica)
    reading, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def slow_checkout(*args: object) -> None:
        reading.set()
        release.wait(60)

    async def unit() -> None:
        async with uow.unit_of_work():
            await uow.run_sync(lambda: uow.session.add(Item(name="cancelled")))
            await uow.run_sync(lambda: uow.session.flush())  # the unit holds its connection now
            uow.on_commit(lambda: ran.append("hook"))
            event.listen(primary, "checkout", slow_checkout)  # the next one: the WAL position's read

    try:
        task = asyncio.ensure_future(unit())
        await anyio.to_thread.run_sync(reading.wait, 60)
        task.cancel()
        await asyncio.sleep(0.1)
        assert not task.done()  # the read is waited for
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert ran == ["hook"]  # the commit's hooks ran before the cancellation was raised
        assert causal_token() is not None  # noted, in the position its child task shares
    finally:
        release.set()
        if event.contains(primary, "checkout", slow_checkout):
            event.remove(primary, "checkout", slow_checkout)
