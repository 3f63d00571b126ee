"""A soak through UnitOfWorkMiddleware on a real uvicorn: errors, 4xx and kills; delivered == committed.

``UOW_OUTBOX_SOAK`` sets the number of requests. The default, 1,000, keeps the suite's run short
on two shared cores (each request commits three times: its unit, the claim, the mark); the issue's
10,000 runs with ``UOW_OUTBOX_SOAK=10000``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest
from sqlalchemy import Engine, MetaData, create_engine, select

from tests.conftest import pg_url
from tests.outbox.common import received_rows, wait_received
from tests.outbox.conftest import ROOT, RedisServer, free_port, stop_process, subprocess_env
from uow.outbox import outbox_table

pytestmark = pytest.mark.usefixtures("celery_worker")

REQUESTS = int(os.environ.get("UOW_OUTBOX_SOAK", "1000"))
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
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert self.process.poll() is None, "uvicorn exited at start"
                assert time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.05)

    def revive(self) -> None:
        """After a failed request: if the server was killed, start it again (once, whoever sees it first)."""
        with self.lock:
            assert self.process is not None
            try:
                self.process.wait(5)
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


@pytest.mark.timeout(120 + REQUESTS // 15)  # the 10,000 runs longer than the suite's 120 s
def test_a_soak_delivers_exactly_what_was_committed(
    server: Server, consumer_engine: Engine, redis_server: RedisServer
) -> None:
    answered: dict[int, int] = {}  # request number -> status (absent: no answer, the server was killed)
    numbers = iter(range(REQUESTS))
    take = threading.Lock()

    def client() -> None:
        while True:
            with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=30) as http:
                try:
                    while True:
                        with take:
                            i = next(numbers, None)
                        if i is None:
                            return
                        answered[i] = http.post(f"/{kind(i)}/{i}").status_code
                except httpx.TransportError:
                    pass
            server.revive()  # then a new connection

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert server.kills == sum(kind(i) == "kill" for i in range(REQUESTS))

    # a relay publishes what the killed processes committed and never published
    relay = subprocess.run(
        [sys.executable, "-m", "uow.outbox", "relay", "tests.outbox.soak_app:outbox", "--once"],
        cwd=ROOT,
        env=server.env,
        capture_output=True,
        timeout=120,
    )
    assert relay.returncode == 0, relay.stderr.decode()

    url = pg_url()
    assert url is not None
    engine = create_engine(url)
    table = outbox_table(MetaData(), "outbox_soak")
    with engine.connect() as conn:
        committed = {r.id: json.loads(r.args)[0] for r in conn.execute(select(table.c.id, table.c.args))}
        assert conn.scalar(select(table.c.id).where(table.c.published_at.is_(None)).limit(1)) is None
    engine.dispose()
    numbers_committed = set(committed.values())
    assert {i for i, status in answered.items() if status == 201} <= numbers_committed
    assert not {i for i, status in answered.items() if status != 201} & numbers_committed
    assert {i for i, status in answered.items() if status != 201} == {
        i for i in range(REQUESTS) if kind(i) in ("bad", "fail")
    }
    assert set(answered.values()) == {201, 400, 500}

    wait_received(consumer_engine, committed, timeout=180)
    delivered = received_rows(consumer_engine, committed)
    assert {r[0] for r in delivered} == set(committed)  # delivered ids == committed ids
    assert len(delivered) == len(committed)  # and none twice
    assert {r[0]: r[2][0] for r in delivered} == committed
