"""A soak through UnitOfWorkMiddleware on a real uvicorn: errors, 4xx and kills; delivered == committed.

``UOW_OUTBOX_SOAK`` sets the number of requests (default 10,000: under a minute on two cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest
from sqlalchemy import Engine, MetaData, create_engine, select

from tests.conftest import pg_url
from tests.outbox.common import received_rows, wait_received
from tests.outbox.conftest import ROOT, RedisServer, stop_process, subprocess_env
from tests.pgcluster import free_port
from uow.outbox import outbox_table

pytestmark = pytest.mark.usefixtures("celery_worker")

REQUESTS = int(os.environ.get("UOW_OUTBOX_SOAK", "10000"))
CLIENTS = 4


def kind(i: int) -> str:
    if i % 2500 == 234:
        return "kill"
    if i % 50 == 7:
        return "fail"
    if i % 50 == 13:
        return "bad"
    return "ok"


class Server:
    """uvicorn serving tests/outbox/soak_app.py; restarted after each kill."""

    def __init__(self, redis: RedisServer, log: IO[bytes]) -> None:
        self.log = log
        self.port = free_port()
        self.env = subprocess_env(redis)
        self.process: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()
        self.kills = 0

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "tests.outbox.soak_app:app",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while True:  # ready when it answers HTTP (a 404 here)
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/", timeout=5)
                return
            except httpx.TransportError:
                assert self.process.poll() is None, "uvicorn exited at start"
                assert time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.05)

    def revive(self, seen: int) -> None:
        """After a request to server number *seen* failed: if it was killed, start the next one (once)."""
        with self.lock:
            assert self.process is not None
            if seen != self.kills:
                return  # another client restarted it already
            try:
                self.process.wait(2)
            except subprocess.TimeoutExpired:
                return  # still up: the failure was something else, the caller retries
            assert self.process.returncode == -9, self.process.returncode
            self.kills += 1
            self.start()

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


@pytest.fixture
def server(redis_server: RedisServer, consumer_engine: Engine, tmp_path: Path) -> Iterator[Server]:
    url = pg_url()
    assert url is not None
    engine = create_engine(url)
    table = outbox_table(MetaData(), "outbox_soak")
    table.drop(engine, checkfirst=True)
    table.create(engine)
    engine.dispose()
    log = (tmp_path / "uvicorn.log").open("wb")
    server = Server(redis_server, log)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        log.close()


@pytest.mark.timeout(120 + REQUESTS // 15)  # 10,000 requests run longer than the suite's 120 s
def test_a_soak_delivers_exactly_what_was_committed(
    server: Server, consumer_engine: Engine, redis_server: RedisServer
) -> None:
    answered: dict[int, int] = {}  # request number -> status (absent: no answer, the server was killed)
    numbers = iter(range(REQUESTS))
    take = threading.Lock()

    def client() -> None:
        while True:
            seen = server.kills
            with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=30) as http:
                try:
                    while True:
                        with take:
                            i = next(numbers, None)
                        if i is None:
                            return
                        status = answered[i] = http.post(f"/{kind(i)}/{i}").status_code
                        if status == 500:
                            break  # uvicorn closes the connection of a request whose app raised
                except httpx.TransportError:  # the server was killed (the request's fate is unknown)
                    server.revive(seen)

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert server.kills == sum(kind(i) == "kill" for i in range(REQUESTS))

    # a relay publishes what the killed processes committed and never published, and what they
    # claimed and may have sent (their claims lapse after soak_app's 2-second lease)
    url = pg_url()
    assert url is not None
    engine = create_engine(url)
    table = outbox_table(MetaData(), "outbox_soak")
    relay = subprocess.Popen(
        [sys.executable, "-m", "uow.outbox", "relay", "tests.outbox.soak_app:outbox", "--interval", "0.2"],
        cwd=ROOT,
        env=server.env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        with engine.connect() as conn:
            while conn.scalar(select(table.c.id).where(table.c.published_at.is_(None)).limit(1)) is not None:
                assert time.monotonic() < deadline and relay.poll() is None, "rows were left unpublished"
                conn.rollback()
                time.sleep(0.2)
            committed = {r.id: json.loads(r.args)[0] for r in conn.execute(select(table.c.id, table.c.args))}
            retried = set(conn.scalars(select(table.c.id).where(table.c.attempts > 1)))
    finally:
        stop_process(relay)
        engine.dispose()
    numbers_committed = set(committed.values())
    assert {i for i, status in answered.items() if status == 201} <= numbers_committed
    assert not {i for i, status in answered.items() if status != 201} & numbers_committed
    expected = {"ok": 201, "bad": 400, "fail": 500}
    assert all(status == expected[kind(i)] for i, status in answered.items())
    assert len(answered) >= REQUESTS - CLIENTS * server.kills  # only requests in flight at a kill are lost
    assert set(answered.values()) == {201, 400, 500}

    wait_received(consumer_engine, committed, timeout=180)
    delivered = received_rows(consumer_engine, committed)
    assert {r[0] for r in delivered} == set(committed)  # delivered ids == committed ids
    # a message goes out twice only where its publisher was killed between sending and marking it,
    # and a relay took it over: claimed twice (at least once, as documented)
    twice = {message_id for message_id, runs in Counter(r[0] for r in delivered).items() if runs > 1}
    assert twice <= retried
    assert len(delivered) == len(committed) + len(twice)
    assert {r[0]: r[2][0] for r in delivered} == committed
