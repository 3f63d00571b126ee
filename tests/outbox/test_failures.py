"""Failures provoked for real: an app killed after COMMIT, Redis stopped while requests commit."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from celery import Celery
from sqlalchemy import Engine, MetaData, create_engine, func, select
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import uow
from tests.conftest import pg_url
from tests.outbox.common import count_received, received_rows, wait_received
from tests.outbox.conftest import ROOT, RedisServer, subprocess_env
from uow.outbox import Outbox, outbox_table
from uow.outbox.celery import CeleryPublisher
from uow.starlette import UnitOfWorkMiddleware

pytestmark = pytest.mark.usefixtures("celery_worker")


@pytest.fixture
def pg_engine(consumer_engine: Engine) -> Iterator[Engine]:
    url = pg_url()
    assert url is not None
    engine = create_engine(url)
    yield engine
    engine.dispose()


def test_an_app_killed_after_commit_before_publishing_is_delivered_by_a_relay(
    pg_engine: Engine, consumer_engine: Engine, redis_server: RedisServer
) -> None:
    table = outbox_table(MetaData(), "outbox_killed")  # killed_app.py's
    table.drop(pg_engine, checkfirst=True)
    table.create(pg_engine)
    env = subprocess_env(redis_server)
    app = subprocess.run(
        [sys.executable, "tests/outbox/killed_app.py", "20"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert app.returncode == -9, app.stderr.decode()
    ids = app.stdout.decode().split()
    assert len(ids) == 20
    with pg_engine.connect() as conn:  # committed, and never published
        assert set(conn.scalars(select(table.c.id).where(table.c.published_at.is_(None)))) == set(ids)
    time.sleep(1.5)  # the dead process's claim (killed_app's one-second lease) runs out
    assert count_received(consumer_engine, ids) == 0

    relay = subprocess.run(
        [sys.executable, "-m", "uow.outbox", "relay", "tests.outbox.killed_app:outbox", "--once"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert relay.returncode == 0, relay.stderr.decode()
    assert "20 message(s) published" in relay.stderr.decode()
    wait_received(consumer_engine, ids)
    rows = received_rows(consumer_engine, ids)
    assert sorted(r[0] for r in rows) == sorted(ids)  # each exactly once
    assert sorted(r[2][1] for r in rows) == list(range(20))
    with pg_engine.connect() as conn:
        assert conn.scalar(select(func.count()).where(table.c.published_at.is_(None))) == 0


def test_requests_commit_while_redis_is_down_and_their_messages_follow_when_it_is_back(
    pg_engine: Engine, consumer_engine: Engine, redis_server: RedisServer, celery_app: Celery
) -> None:
    table = outbox_table(MetaData(), "outbox_redis_down")
    table.drop(pg_engine, checkfirst=True)
    table.create(pg_engine)
    manager = uow.UnitOfWorkManager(pg_engine)
    outbox = Outbox(manager, publisher=CeleryPublisher(celery_app), table=table)

    def create(request: Request) -> JSONResponse:
        return JSONResponse({"id": outbox.enqueue("outbox.record", int(request.path_params["n"]))}, 201)

    app = Starlette(
        routes=[Route("/items/{n}", create, methods=["POST"])],
        middleware=[Middleware(UnitOfWorkMiddleware, manager=manager)],
    )
    committed: list[str] = []
    stop = threading.Event()
    relay = threading.Thread(target=outbox.relay, kwargs={"stop": stop, "interval": 0.2, "max_backoff": 1.0})
    with TestClient(app) as client:
        before = client.post("/items/0")  # Redis is up: published at once
        assert before.status_code == 201
        committed.append(before.json()["id"])
        wait_received(consumer_engine, committed)

        redis_server.stop()
        relay.start()
        try:
            started = time.monotonic()
            for n in range(1, 11):
                response = client.post(f"/items/{n}")
                assert response.status_code == 201
                committed.append(response.json()["id"])
            # the first publish fails after Celery's retries (about a second), the rest skip the broker
            assert time.monotonic() - started < 5
            with pg_engine.connect() as conn:  # the messages wait in the table
                waiting = set(conn.scalars(select(table.c.id).where(table.c.published_at.is_(None))))
            assert waiting == set(committed[1:])
        finally:
            redis_server.start()
        try:
            wait_received(consumer_engine, committed, timeout=60)
        finally:
            stop.set()
            relay.join(30)
    assert not relay.is_alive()
    assert sorted(r[0] for r in received_rows(consumer_engine, committed)) == sorted(committed)
