"""Relays: several at once share the rows without publishing one twice; consumers deduplicate; SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from celery import Celery
from sqlalchemy import Engine, MetaData, create_engine, func, select, update

import uow
from tests.conftest import pg_url
from tests.outbox.common import count_received, effects, wait_received
from tests.outbox.conftest import ROOT, RedisServer, subprocess_env
from tests.pgcluster import free_port
from uow.outbox import Outbox, OutboxMessage, PublishError, outbox_table
from uow.outbox._message import utcnow
from uow.outbox.celery import CeleryPublisher

pytestmark = pytest.mark.usefixtures("celery_worker")

#: rows the concurrent relays share (lower it on a slow machine)
ROWS = int(os.environ.get("UOW_OUTBOX_RELAY_ROWS", "5000"))


@pytest.fixture
def relay_outbox(consumer_engine: Engine) -> Iterator[Outbox]:
    """tests/outbox/relay_app.py's outbox, on a fresh table (only relays publish it)."""
    url = pg_url()
    assert url is not None
    engine = create_engine(url)
    table = outbox_table(MetaData(), "outbox_relays")
    table.drop(engine, checkfirst=True)
    table.create(engine)
    # the same table and no publishing after commit, as relay_app.py; the publisher is never used here
    yield Outbox(uow.UnitOfWorkManager(engine), publisher=_Refuse(), table=table, publish_on_commit=False)
    engine.dispose()


class _Refuse:
    def publish(self, message: OutboxMessage) -> None:
        raise AssertionError("only the relay processes publish in these tests")


def enqueue_many(outbox: Outbox, count: int, task: str = "outbox.record") -> list[str]:
    ids: list[str] = []
    for start in range(0, count, 1000):
        with outbox.manager.unit_of_work():
            ids += [outbox.enqueue(task, n) for n in range(start, min(count, start + 1000))]
    return ids


def relay_process(redis: RedisServer, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "uow.outbox", "relay", "tests.outbox.relay_app:outbox", *args],
        cwd=ROOT,
        env=subprocess_env(redis),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def published_count(stderr: str) -> int:
    found = re.search(r"stopped, (\d+) message\(s\) published", stderr)
    assert found, stderr
    return int(found.group(1))


def test_three_relays_at_once_publish_every_row_and_none_twice(
    relay_outbox: Outbox, consumer_engine: Engine, redis_server: RedisServer
) -> None:
    ids = enqueue_many(relay_outbox, ROWS)
    relays = [relay_process(redis_server, "--once", "--batch", "50") for _ in range(3)]
    counts = []
    for relay in relays:
        try:
            _, err = relay.communicate(timeout=120)
        finally:
            if relay.poll() is None:
                os.killpg(relay.pid, signal.SIGKILL)
                relay.wait()
        assert relay.returncode == 0, err.decode()
        counts.append(published_count(err.decode()))
    assert sum(counts) == ROWS  # what the relays published adds up: no row went out twice
    table = relay_outbox.table
    with relay_outbox.manager.engine.connect() as conn:  # type: ignore[union-attr]
        assert conn.scalar(select(func.count()).where(table.c.published_at.is_(None))) == 0
        assert set(conn.scalars(select(table.c.attempts).distinct())) == {1}  # each row claimed once
    wait_received(consumer_engine, ids, timeout=120)
    time.sleep(0.5)
    assert count_received(consumer_engine, ids) == ROWS  # and the worker ran each once


def test_a_duplicate_publish_reaches_the_consumer_and_is_handled_once(
    relay_outbox: Outbox, consumer_engine: Engine, celery_app: Celery
) -> None:
    publisher = CeleryPublisher(celery_app)
    twice = OutboxMessage(id="dup-" + os.urandom(8).hex(), task="outbox.record_once", args=[1], kwargs={})
    once = OutboxMessage(id="one-" + os.urandom(8).hex(), task="outbox.record_once", args=[2], kwargs={})
    publisher.publish(twice)
    publisher.publish(twice)  # at-least-once: the same id, delivered again
    publisher.publish(once)
    deadline = time.monotonic() + 30
    while count_received(consumer_engine, [twice.id, once.id]) < 3:
        assert time.monotonic() < deadline, "the deliveries never arrived"
        time.sleep(0.1)
    time.sleep(0.3)
    assert count_received(consumer_engine, [twice.id]) == 2  # delivered twice
    with consumer_engine.connect() as conn:  # handled once
        handled = conn.execute(
            select(effects.c.task_id, effects.c.args).where(effects.c.task_id.in_([twice.id, once.id]))
        )
        assert sorted(handled) == sorted([(twice.id, "[1]"), (once.id, "[2]")])


def test_a_relay_stops_cleanly_on_sigterm(
    relay_outbox: Outbox, consumer_engine: Engine, redis_server: RedisServer
) -> None:
    relay = relay_process(redis_server, "--interval", "0.1")
    try:
        ids = enqueue_many(relay_outbox, 10)
        wait_received(consumer_engine, ids)  # the running relay found them
        relay.send_signal(signal.SIGTERM)
        _, err = relay.communicate(timeout=30)
    finally:
        if relay.poll() is None:
            os.killpg(relay.pid, signal.SIGKILL)
            relay.wait()
    assert relay.returncode == 0, err.decode()
    assert "SIGTERM received" in err.decode()
    assert published_count(err.decode()) == 10


def test_rows_of_a_relay_killed_mid_publish_are_taken_over_after_the_lease(
    consumer_engine: Engine, redis_server: RedisServer
) -> None:
    url = pg_url()
    assert url is not None
    engine = create_engine(url)
    table = outbox_table(MetaData(), "outbox_stuck")  # tests/outbox/stuck_app.py's, lease 1 s
    table.drop(engine, checkfirst=True)
    table.create(engine)
    writer = Outbox(uow.UnitOfWorkManager(engine), publisher=_Refuse(), table=table, publish_on_commit=False)
    ids = enqueue_many(writer, 5)
    env = subprocess_env(redis_server)
    command = [sys.executable, "-m", "uow.outbox", "relay"]
    stuck = subprocess.Popen(
        [*command, "tests.outbox.stuck_app:stuck"], cwd=ROOT, env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 30
        with engine.connect() as conn:  # the hanging relay claimed the rows
            while (conn.scalar(select(func.count()).where(table.c.claimed_by.is_not(None))) or 0) < 5:
                assert time.monotonic() < deadline
                time.sleep(0.05)
                conn.rollback()
        os.killpg(stuck.pid, signal.SIGKILL)  # dies mid-publish, its claim still on the rows
        stuck.wait()
        # a relay takes the rows over once the lease has run out (before that, it finds none free)
        deadline = time.monotonic() + 30
        while count_received(consumer_engine, ids) < 5:
            relay = subprocess.run(
                [*command, "tests.outbox.stuck_app:outbox", "--once"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                timeout=60,
            )
            assert relay.returncode == 0 and time.monotonic() < deadline, relay.stderr.decode()
            time.sleep(0.2)
        with engine.connect() as conn:
            assert set(conn.scalars(select(table.c.attempts))) == {2}  # claimed by the dead relay, then again
            assert conn.scalar(select(func.count()).where(table.c.published_at.is_(None))) == 0
    finally:
        if stuck.poll() is None:
            os.killpg(stuck.pid, signal.SIGKILL)
            stuck.wait()
        engine.dispose()


def test_a_refused_publish_gives_the_rows_back_and_a_once_relay_raises(relay_outbox: Outbox) -> None:
    closed = Celery("uow_no_broker", broker=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    try:
        outbox = Outbox(relay_outbox.manager, publisher=CeleryPublisher(closed), table=relay_outbox.table)
        ids = enqueue_many(relay_outbox, 3)
        with pytest.raises(PublishError, match="0 of 3 went out"):
            outbox.relay(once=True)
        with pytest.raises(PublishError):
            outbox.publish_pending()
        table = relay_outbox.table
        with relay_outbox.manager.engine.connect() as conn:  # type: ignore[union-attr]
            rows = conn.execute(select(table.c.id, table.c.claimed_by, table.c.published_at)).all()
        assert sorted(rows) == sorted((i, None, None) for i in ids)  # unclaimed, waiting
    finally:
        closed.close()


def test_prune_deletes_only_rows_published_before_the_retention(relay_outbox: Outbox) -> None:
    ids = enqueue_many(relay_outbox, 4)
    table = relay_outbox.table
    now = utcnow()
    engine = relay_outbox.manager.engine
    assert engine is not None
    with engine.begin() as conn:
        conn.execute(
            update(table).where(table.c.id.in_(ids[:2])).values(published_at=now - timedelta(days=8))
        )
        conn.execute(update(table).where(table.c.id == ids[2]).values(published_at=now - timedelta(days=6)))
    assert relay_outbox.prune(7 * 24 * 3600) == 2
    with engine.connect() as conn:
        assert set(conn.scalars(select(table.c.id))) == set(
            ids[2:]
        )  # the recent one, and the unpublished one
