"""The outbox's API in one process: options, the broker cooldown, async managers, the CLI's entry,
idempotent consumers run by Celery's own ``apply``. Brokers are real: a redis-server, or a port
where nothing listens (a refused connection)."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, create_engine, func, insert, select
from sqlalchemy.ext.asyncio import create_async_engine

import uow
from tests.conftest import make_engine, pg_url
from tests.outbox.conftest import RedisServer
from tests.outbox.test_celery import fresh_table
from tests.pgcluster import free_port
from uow.outbox import Outbox, OutboxError, OutboxMessage, first_delivery, handled_table, outbox_table
from uow.outbox.__main__ import main
from uow.outbox.celery import CeleryPublisher, idempotent


@pytest.fixture
def refused() -> Iterator[Celery]:
    app = Celery("uow_refused", broker=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    yield app
    app.close()


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine("sqlite", tmp_path)
    yield engine
    engine.dispose()


def count_unpublished(outbox: Outbox, engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(outbox.store.pending().subquery())) or 0)


def test_options_and_task_names_are_checked(sqlite_engine: Engine, refused: Celery) -> None:
    manager = uow.UnitOfWorkManager(sqlite_engine)
    with pytest.raises(uow.InvalidOptionError, match="publish"):
        Outbox(manager)
    with pytest.raises(uow.InvalidOptionError, match="lease"):
        Outbox(manager, publisher=CeleryPublisher(refused), lease=0)
    outbox = Outbox(manager, publisher=CeleryPublisher(refused))  # a table on a MetaData of its own
    outbox.metadata.create_all(sqlite_engine)
    assert outbox.table.name == "uow_outbox" and outbox.table.metadata is outbox.metadata
    with manager.unit_of_work(), pytest.raises(uow.InvalidOptionError, match="task name"):
        outbox.enqueue(42)


def test_after_a_refused_publish_units_leave_their_messages_to_relays_for_the_cooldown(
    sqlite_engine: Engine, refused: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    manager = uow.UnitOfWorkManager(sqlite_engine)
    outbox = Outbox(
        manager, publisher=CeleryPublisher(refused), table=fresh_table(sqlite_engine), broker_cooldown=60
    )
    with caplog.at_level(logging.WARNING, "uow.outbox"), manager.unit_of_work():
        outbox.enqueue("outbox.record", 1)
    assert "publishing after commit failed" in caplog.text  # the unit committed all the same
    started = time.monotonic()
    with manager.unit_of_work():
        outbox.enqueue("outbox.record", 2)
    assert time.monotonic() - started < 0.5  # no second wait for the broker
    assert count_unpublished(outbox, sqlite_engine) == 2


class Recording:
    """A publisher that keeps the ids it was given."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def publish(self, message: OutboxMessage) -> None:
        self.sent.append(message.id)


def test_rows_are_written_claimed_and_a_unit_that_outlasts_half_the_lease_gives_them_back(
    sqlite_engine: Engine,
) -> None:
    manager = uow.UnitOfWorkManager(sqlite_engine)
    publisher = Recording()
    outbox = Outbox(manager, publisher=publisher, table=fresh_table(sqlite_engine), lease=0.4)
    c = outbox.table.c
    with manager.unit_of_work():
        prompt = outbox.enqueue("outbox.record", 1)
        # written claimed for the lease: no relay may take it before the unit's hook publishes it
        manager.session.flush()  # (SQLAlchemy 2.0 does not autoflush before a Core select)
        assert manager.session.execute(select(c.claimed_by)).scalar_one() is not None
    assert publisher.sent == [prompt]  # published after commit, without a claim of its own
    with manager.unit_of_work():
        late = outbox.enqueue("outbox.record", 2)
        time.sleep(0.25)
    assert publisher.sent == [prompt]  # too little of the lease left: a relay takes it instead
    with sqlite_engine.connect() as conn:  # given back at once, not left for the lease to run out
        rows = conn.execute(select(c.id, c.claimed_until, c.published_at.is_not(None), c.attempts)).all()
    assert sorted(rows) == sorted([(prompt, None, True, 1), (late, None, False, 1)])
    assert outbox.relay(once=True) == 1
    assert publisher.sent == [prompt, late]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_async_manager_publishes_after_commit_and_relays_and_backs_off(
    tmp_path: Path, redis_server: RedisServer, refused: Celery
) -> None:
    sync = make_engine("sqlite", tmp_path)
    table = fresh_table(sync)
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'test.db'}")
    app = Celery("uow_async_api", broker=redis_server.url)
    queue = redis.Redis.from_url(redis_server.url)
    try:
        queue.delete("celery")
        manager = uow.UnitOfWorkManager(engine)
        down = Outbox(manager, publisher=CeleryPublisher(refused), table=table)
        async with manager.unit_of_work():
            down.enqueue("outbox.record", "waits")
        assert count_unpublished(down, sync) == 1  # the failure was logged, the row waits
        with pytest.raises(OutboxError, match="publish_pending_async"):
            down.publish_pending()
        stop = threading.Event()
        threading.Timer(0.5, stop.set).start()
        assert await down.relay_async(stop=stop, interval=0.1) == 0  # backs off until stopped
        up = Outbox(manager, publisher=CeleryPublisher(app), table=table)
        assert await up.publish_pending_async() == 1
        assert queue.llen("celery") == 1
    finally:
        queue.close()
        app.close()
        await engine.dispose()
        sync.dispose()


def test_relay_on_an_async_manager_runs_its_own_event_loop(tmp_path: Path, redis_server: RedisServer) -> None:
    sync = make_engine("sqlite", tmp_path)
    table = fresh_table(sync)
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'test.db'}")
    app = Celery("uow_async_relay", broker=redis_server.url)
    try:
        writer = Outbox(
            uow.UnitOfWorkManager(sync), publisher=CeleryPublisher(app), table=table, publish_on_commit=False
        )
        with writer.manager.unit_of_work():
            writer.enqueue("outbox.record", 1)
            writer.enqueue("outbox.record", 2)
        relay = Outbox(uow.UnitOfWorkManager(engine), publisher=CeleryPublisher(app), table=table)
        assert relay.relay(once=True) == 2
        assert count_unpublished(relay, sync) == 0
    finally:
        app.close()
        sync.dispose()


@pytest.fixture
def restored_signals() -> Iterator[None]:
    """The CLI installs SIGTERM and SIGINT handlers; give pytest its own back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def test_the_cli_relays_an_outbox_it_imports_and_refuses_other_targets(
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    restored_signals: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = pg_url()
    if url is None:
        pytest.skip("tests/outbox/relay_app.py relays on PostgreSQL")
    monkeypatch.setenv("UOW_TEST_REDIS_URL", redis_server.url)
    monkeypatch.setenv("UOW_TEST_POSTGRES_URL", url)
    engine = create_engine(url)
    try:
        table = outbox_table(MetaData(), "outbox_relays")
        table.drop(engine, checkfirst=True)
        table.create(engine)
        writer = Outbox(
            uow.UnitOfWorkManager(engine),
            publisher=CeleryPublisher(Celery()),
            table=table,
            publish_on_commit=False,
        )
        with writer.manager.unit_of_work():
            writer.enqueue("outbox.record", "from the CLI")
        with caplog.at_level(logging.INFO, "uow.outbox"):
            assert main(["relay", "tests.outbox.relay_app:outbox", "--once", "--retention", "0"]) == 0
        assert "1 message(s) published" in caplog.text
        with pytest.raises(SystemExit, match="module:attribute"):
            main(["relay", "tests.outbox.relay_app"])
        with pytest.raises(SystemExit, match=r"not a uow\.outbox\.Outbox"):
            main(["relay", "tests.outbox.relay_app:manager"])
    finally:
        engine.dispose()
        from tests.outbox import relay_app

        relay_app.manager.engine.dispose()  # type: ignore[union-attr]
        relay_app.celery_app.close()


@pytest.fixture
def consumer(backend: str, tmp_path: Path) -> Iterator[tuple[uow.UnitOfWorkManager, Table, Table]]:
    engine = make_engine(backend, tmp_path)
    metadata = MetaData()
    handled = handled_table(metadata, "api_handled")
    done = Table("api_done", metadata, Column("n", Integer, primary_key=True), Column("task_id", String(64)))
    metadata.drop_all(engine)
    metadata.create_all(engine)
    yield uow.UnitOfWorkManager(engine), handled, done
    engine.dispose()


def test_an_idempotent_task_runs_once_per_task_id(
    consumer: tuple[uow.UnitOfWorkManager, Table, Table],
) -> None:
    manager, handled, done = consumer
    app = Celery("uow_consumer")

    @app.task(bind=True, name="api.work", shared=False)
    @idempotent(handled, manager=manager)
    def work(self: Any, n: int) -> str:
        manager.session.execute(insert(done).values(task_id=self.request.id))
        return f"did {n}"

    assert work.apply(args=[1], task_id="m-1").get() == "did 1"
    assert work.apply(args=[1], task_id="m-1").get() is None  # the same id again: skipped
    assert work.apply(args=[2], task_id="m-2").get() == "did 2"
    with manager.engine.connect() as conn:  # type: ignore[union-attr]
        assert sorted(conn.scalars(select(done.c.task_id))) == ["m-1", "m-2"]
    app.close()


def test_a_failed_attempt_does_not_count_as_handled(
    consumer: tuple[uow.UnitOfWorkManager, Table, Table],
) -> None:
    manager, handled, _ = consumer
    with pytest.raises(RuntimeError), manager.unit_of_work():
        assert first_delivery(handled, "m-9", manager=manager)
        raise RuntimeError("the work fails: its record rolls back with it")
    with manager.unit_of_work():
        assert first_delivery(handled, "m-9", manager=manager)
    with manager.unit_of_work():
        assert not first_delivery(handled, "m-9", manager=manager)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_first_delivery_asks_for_a_sync_session(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
    manager = uow.UnitOfWorkManager(engine)
    try:
        async with manager.unit_of_work():
            with pytest.raises(OutboxError, match="sync Session"):
                first_delivery(handled_table(MetaData()), "m-1", manager=manager)
    finally:
        await engine.dispose()
