"""The outbox on Celery, end to end: a real Redis, a real worker process, SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import Engine, MetaData, Table, select
from sqlalchemy.ext.asyncio import create_async_engine

import uow
from tests.conftest import async_pg_url, make_engine
from tests.outbox.common import count_received, received_rows, wait_received
from uow.outbox import Outbox, OutboxError, outbox_table
from uow.outbox.celery import CeleryPublisher

pytestmark = pytest.mark.usefixtures("celery_worker")


@pytest.fixture
def app_engine(backend: str, tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(backend, tmp_path)
    yield engine
    engine.dispose()


@pytest.fixture
def outbox(app_engine: Engine, celery_app: Celery) -> Iterator[Outbox]:
    table = fresh_table(app_engine)
    yield Outbox(uow.UnitOfWorkManager(app_engine), publisher=CeleryPublisher(celery_app), table=table)


def fresh_table(engine: Engine) -> Table:
    table = outbox_table(MetaData())
    table.drop(engine, checkfirst=True)
    table.create(engine)
    return table


def unpublished(outbox: Outbox, engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.scalars(outbox.store.pending()))


def test_a_committed_unit_is_received_exactly_as_enqueued(
    outbox: Outbox, app_engine: Engine, consumer_engine: Engine
) -> None:
    calls: list[tuple[list[Any], dict[str, Any]]] = [
        ([1, "two", [3.5, None], {"four": True}], {}),
        ([], {"user_id": 7, "tags": ["a", "é"]}),
        (["x"], {"nested": {"deep": [1, {"k": "v"}]}}),
    ]
    with outbox.manager.unit_of_work():
        ids = [outbox.enqueue("outbox.record", *args, **kwargs) for args, kwargs in calls]
    wait_received(consumer_engine, ids)
    rows = received_rows(consumer_engine, ids)
    assert sorted(rows) == sorted((i, "outbox.record", a, k) for i, (a, k) in zip(ids, calls, strict=True))
    assert unpublished(outbox, app_engine) == set()


@pytest.fixture
async def async_outbox(backend: str, tmp_path: Path, celery_app: Celery) -> AsyncIterator[Outbox]:
    sync = make_engine(backend, tmp_path)
    table = fresh_table(sync)
    sync.dispose()
    url = (
        f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
        if backend == "sqlite"
        else async_pg_url(str(sync.url.render_as_string(hide_password=False)))
    )
    engine = create_async_engine(url)
    yield Outbox(uow.UnitOfWorkManager(engine), publisher=CeleryPublisher(celery_app), table=table)
    await engine.dispose()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_async_unit_on_an_async_session_publishes_after_commit(
    async_outbox: Outbox, consumer_engine: Engine
) -> None:
    async with async_outbox.manager.unit_of_work():
        first = async_outbox.enqueue("outbox.record", "async", n=1)
        second = async_outbox.enqueue("outbox.record", "async", n=2)
    wait_received(consumer_engine, [first, second])
    assert sorted(r[3]["n"] for r in received_rows(consumer_engine, [first, second])) == [1, 2]


def test_rolled_back_units_and_savepoints_publish_nothing_ever(
    outbox: Outbox, app_engine: Engine, consumer_engine: Engine
) -> None:
    manager = outbox.manager
    lost: list[str] = []
    with pytest.raises(RuntimeError), manager.unit_of_work():
        lost.append(outbox.enqueue("outbox.record", "rolled back"))
        raise RuntimeError("the unit fails")
    with manager.unit_of_work():
        kept = [outbox.enqueue("outbox.record", "before the savepoint")]
        with pytest.raises(RuntimeError), manager.unit_of_work(propagation="NESTED"):
            lost.append(outbox.enqueue("outbox.record", "in a savepoint that rolls back"))
            raise RuntimeError("the savepoint fails")
        with pytest.raises(RuntimeError), manager.unit_of_work(propagation="NESTED"):
            lost.append(outbox.enqueue("outbox.record", "flushed in a savepoint that rolls back"))
            manager.session.flush()  # its INSERT ran, under the claim of the unit's publishing hook
            raise RuntimeError("the savepoint fails")
        with manager.unit_of_work(propagation="NESTED"):
            kept.append(outbox.enqueue("outbox.record", "in a savepoint that is released"))
        kept.append(outbox.enqueue("outbox.record", "after the savepoints"))
    wait_received(consumer_engine, kept)
    # whatever a relay could still find is published too; then a last message marks the end of the queue
    assert outbox.relay(once=True) == 0
    with manager.unit_of_work():
        last = outbox.enqueue("outbox.record", "last")
    wait_received(consumer_engine, [last])
    time.sleep(0.5)  # the worker runs 4 tasks at once: let any straggler land
    assert count_received(consumer_engine, lost) == 0
    assert count_received(consumer_engine, kept) == len(kept)
    with app_engine.connect() as conn:
        assert set(conn.scalars(select(outbox.table.c.id))) == {*kept, last}


def test_enqueue_refuses_what_it_cannot_serialize_and_works_only_in_a_unit(outbox: Outbox) -> None:
    with pytest.raises(uow.NoActiveUnitOfWork):
        outbox.enqueue("outbox.record", 1)
    with outbox.manager.unit_of_work():
        with pytest.raises(uow.outbox.UnserializableArguments, match="cannot be serialized"):
            outbox.enqueue("outbox.record", object())
        with pytest.raises(uow.outbox.UnserializableArguments):
            outbox.enqueue("outbox.record", when=float("nan"))
    assert isinstance(uuid.UUID(str(uuid.uuid4())), uuid.UUID)


def _runs_in_the_worker(*args: Any) -> None:
    raise AssertionError("runs in the worker, never here")


def test_enqueue_takes_a_celery_task_and_refuses_a_read_only_unit(
    outbox: Outbox, celery_app: Celery, consumer_engine: Engine
) -> None:
    # the app's own declaration of the worker's task (once per app)
    record = celery_app.tasks.get("outbox.record") or celery_app.task(name="outbox.record", shared=False)(
        _runs_in_the_worker
    )
    with outbox.manager.unit_of_work():
        sent = outbox.enqueue(record, "by task object")
    wait_received(consumer_engine, [sent])
    with outbox.manager.unit_of_work(read_only=True), pytest.raises(OutboxError, match="read_only"):
        outbox.enqueue(record, "never")


def test_a_relay_publishes_what_units_left_on_sqlite_and_postgresql(
    outbox: Outbox, app_engine: Engine, consumer_engine: Engine
) -> None:
    quiet = Outbox(outbox.manager, publisher=outbox.publisher, table=outbox.table, publish_on_commit=False)
    with quiet.manager.unit_of_work():
        ids = [quiet.enqueue("outbox.record", n) for n in range(7)]
    assert unpublished(outbox, app_engine) == set(ids)
    assert quiet.relay(once=True, batch=3) == 7  # three passes: 3, 3, 1
    wait_received(consumer_engine, ids)
    assert unpublished(outbox, app_engine) == set()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_async_relay_publishes_what_async_units_left(
    async_outbox: Outbox, consumer_engine: Engine
) -> None:
    quiet = Outbox(
        async_outbox.manager,
        publisher=async_outbox.publisher,
        table=async_outbox.table,
        publish_on_commit=False,
    )
    async with quiet.manager.unit_of_work():
        ids = [quiet.enqueue("outbox.record", "async relay", n) for n in range(3)]
    assert await quiet.relay_async(once=True) == 3
    wait_received(consumer_engine, ids)


class _ISODates:
    """A serializer of the app's own: dates travel as ISO strings; sets are refused."""

    def dumps(self, value: Any) -> str:
        def default(obj: Any) -> str:
            if isinstance(obj, date):
                return obj.isoformat()
            raise LookupError(f"no encoding for {obj!r}")

        return json.dumps(value, default=default)

    def loads(self, text: str) -> Any:
        return json.loads(text)


def test_a_serializer_of_ones_own_is_used_and_its_refusals_surface_at_enqueue(
    outbox: Outbox, consumer_engine: Engine
) -> None:
    dated = Outbox(outbox.manager, publisher=outbox.publisher, table=outbox.table, serializer=_ISODates())
    with dated.manager.unit_of_work():
        sent = dated.enqueue("outbox.record", date(2026, 12, 5), at=date(2027, 1, 1))
        with pytest.raises(uow.outbox.UnserializableArguments, match="no encoding"):
            dated.enqueue("outbox.record", {1, 2})
    wait_received(consumer_engine, [sent])
    assert received_rows(consumer_engine, [sent])[0][2:] == (["2026-12-05"], {"at": "2027-01-01"})
