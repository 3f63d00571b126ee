"""Real parts for the outbox tests: a redis-server and a Celery worker process of their own.

Both start on a free port of 127.0.0.1 for each test module and are stopped at
its end, also when a test fails. The worker writes what it runs into
PostgreSQL (``tests/outbox/common.py``), so the tests need the suite's
PostgreSQL; without it they are skipped like the other PostgreSQL cases.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import Engine, create_engine

from tests.conftest import REQUIRE_PG, pg_url
from tests.outbox.common import consumer_metadata, wait_received
from tests.pgcluster import free_port

ROOT = Path(__file__).resolve().parents[2]
REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    """A redis-server process on a port of its own; it can be stopped and started again on that port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                REDIS,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def subprocess_env(redis: RedisServer) -> dict[str, str]:
    url = pg_url()
    assert url is not None
    return {
        **os.environ,
        "UOW_TEST_REDIS_URL": redis.url,
        "UOW_TEST_POSTGRES_URL": url,
        "PYTHONPATH": str(ROOT),
    }


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM the process (its group: it was started in a session of its own), then SIGKILL if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def consumer_engine() -> Iterator[Engine]:
    url = pg_url()
    if url is None:
        pytest.skip("the outbox tests' worker writes to PostgreSQL: install it or set UOW_TEST_POSTGRES_URL")
    engine = create_engine(url)
    consumer_metadata.drop_all(engine)
    consumer_metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if not os.path.exists(REDIS) and not REQUIRE_PG:
        pytest.skip("the outbox tests run redis-server: install it (scripts/install-system)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def celery_app(redis_server: RedisServer) -> Iterator[Celery]:
    """The app side's Celery: only sends (to the module's Redis)."""
    app = Celery("uow_outbox_app", broker=redis_server.url)
    app.conf.update(broker_connection_retry_on_startup=True, task_ignore_result=True)
    yield app
    app.close()


@pytest.fixture(scope="module")
def celery_worker(
    redis_server: RedisServer,
    consumer_engine: Engine,
    celery_app: Celery,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[subprocess.Popen[bytes]]:
    """``celery -A tests.outbox.worker worker``: a real worker process, ready when this yields."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tests.outbox.worker",
                "worker",
                "--pool",
                "threads",
                "--concurrency",
                "4",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel",
                "WARNING",
            ],
            cwd=ROOT,
            env=subprocess_env(redis_server),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        ready = str(uuid.uuid4())
        celery_app.send_task("outbox.record", args=["ready"], task_id=ready)
        try:
            wait_received(consumer_engine, [ready], timeout=60)
        except AssertionError:
            raise RuntimeError(f"the Celery worker did not start: {log.read_text()[-3000:]}") from None
        yield process
    finally:
        stop_process(process)
