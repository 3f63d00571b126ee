"""The outbox's second publisher: Dramatiq, with a real ``dramatiq`` worker process on a real Redis."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import Engine

import uow
from tests.conftest import make_engine
from tests.outbox.common import received_rows, wait_received
from tests.outbox.conftest import ROOT, RedisServer, stop_process, subprocess_env
from tests.outbox.test_celery import fresh_table
from uow.outbox import Outbox
from uow.outbox.dramatiq import DramatiqPublisher


@pytest.fixture(scope="module")
def dramatiq_worker(
    redis_server: RedisServer, consumer_engine: Engine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[subprocess.Popen[bytes]]:
    program = shutil.which("dramatiq", path=str(Path(sys.executable).parent)) or "dramatiq"
    log = tmp_path_factory.mktemp("dramatiq") / "worker.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [program, "tests.outbox.dramatiq_worker", "--processes", "1", "--threads", "2"],
            cwd=ROOT,
            env=subprocess_env(redis_server),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        stop_process(process)


@pytest.fixture
def broker(redis_server: RedisServer) -> Iterator[RedisBroker]:
    broker = RedisBroker(url=redis_server.url)
    yield broker
    broker.close()


def test_a_committed_unit_is_delivered_to_a_dramatiq_worker(
    dramatiq_worker: subprocess.Popen[bytes],
    broker: RedisBroker,
    backend: str,
    tmp_path: Path,
    consumer_engine: Engine,
) -> None:
    engine = make_engine(backend, tmp_path)
    try:
        outbox = Outbox(
            uow.UnitOfWorkManager(engine), publisher=DramatiqPublisher(broker), table=fresh_table(engine)
        )
        with outbox.manager.unit_of_work():
            ids = [outbox.enqueue("outbox_record", n, "dramatiq", flag=n % 2 == 0) for n in range(3)]
        with pytest.raises(RuntimeError), outbox.manager.unit_of_work():
            lost = outbox.enqueue("outbox_record", "rolled back")
            raise RuntimeError("the unit fails")
        wait_received(consumer_engine, ids, timeout=60)
        rows = received_rows(consumer_engine, [*ids, lost])
        assert sorted(rows) == sorted(
            (i, "outbox_record", [n, "dramatiq"], {"flag": n % 2 == 0}) for n, i in enumerate(ids)
        )
    finally:
        engine.dispose()
