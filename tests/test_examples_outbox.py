"""The outbox page's examples run: Celery setup, enqueue and an idempotent consumer with a real
worker on a real Redis; the Alembic migration matches ``outbox_table``; the migration from on_commit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import redis
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import Engine, MetaData

from tests.conftest import make_engine
from tests.examples import EXAMPLES, Load, example_loader, rows
from tests.outbox import conftest as outbox_setup
from uow.outbox import handled_table, outbox_table

redis_server = outbox_setup.redis_server
load_example = example_loader("outbox")
OUTBOX = EXAMPLES / "outbox"


def run(args: list[str], cwd: Path, url: str) -> str:
    done = subprocess.run(
        [sys.executable, "-W", "error", *args],
        cwd=cwd,
        env={**os.environ, "REDIS_URL": url, "PYTHONPATH": str(outbox_setup.ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return str(done.stdout) + str(done.stderr)


def test_tasks_example_sends_after_commit_to_an_idempotent_worker(
    tmp_path: Path, redis_server: outbox_setup.RedisServer
) -> None:
    shutil.copy(OUTBOX / "tasks.py", tmp_path / "tasks.py")
    assert "signed up" in run(["tasks.py"], tmp_path, redis_server.url)  # creates the tables, one sign-up
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tasks",
            "worker",
            "--pool",
            "threads",
            "--concurrency",
            "2",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel",
            "WARNING",
        ],
        cwd=tmp_path,
        env={**os.environ, "REDIS_URL": redis_server.url, "PYTHONPATH": str(outbox_setup.ROOT)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        run(["tasks.py"], tmp_path, redis_server.url)  # a second sign-up, the worker running
        db = tmp_path / "outbox.db"
        deadline = time.monotonic() + 60
        while len(rows(db, "SELECT user_id FROM welcomes")) < 2:
            assert time.monotonic() < deadline and worker.poll() is None, (
                tmp_path / "worker.log"
            ).read_text()
            time.sleep(0.1)
        assert sorted(rows(db, "SELECT user_id FROM welcomes")) == [(1,), (2,)]
        assert rows(db, "SELECT count(*) FROM uow_outbox WHERE published_at IS NULL") == [(0,)]
        assert sorted(rows(db, "SELECT id FROM uow_handled")) == sorted(rows(db, "SELECT id FROM uow_outbox"))
        # the relay finds nothing left to send
        assert "0 message(s) published" in run(
            ["-m", "uow.outbox", "relay", "tasks:outbox", "--once"], tmp_path, redis_server.url
        )
    finally:
        outbox_setup.stop_process(worker)
        log.close()


def test_migration_example_creates_what_outbox_table_describes(
    backend: str, tmp_path: Path, load_example: Load
) -> None:
    migration = load_example("migration.py")
    engine: Engine = make_engine(backend, tmp_path)
    expected = MetaData()
    outbox_table(expected)
    handled_table(expected)
    try:
        expected.drop_all(engine)
        with engine.begin() as conn:
            # compare only the migration's tables (the suite's own are in this database too)
            mine = {"include_name": lambda name, kind, _parent: kind != "table" or name in expected.tables}
            context = MigrationContext.configure(conn, opts=mine)
            with Operations.context(context):
                migration.upgrade()
            assert compare_metadata(context, expected) == []  # autogenerate would write nothing more
            with Operations.context(context):
                migration.downgrade()
    finally:
        engine.dispose()


def test_migrating_example_sends_from_on_commit_and_from_the_outbox(
    tmp_path: Path, redis_server: outbox_setup.RedisServer
) -> None:
    shutil.copy(OUTBOX / "migrating.py", tmp_path / "migrating.py")
    queue = redis.Redis.from_url(redis_server.url)
    try:
        queue.delete("celery")
        output = run(["migrating.py"], tmp_path, redis_server.url)
        task_id = output.split("sent as task")[1].split()[0]
        sent = [json.loads(m) for m in queue.lrange("celery", 0, -1)]
        assert sorted(m["headers"]["task"] for m in sent) == ["shop.ship", "shop.ship"]
        assert task_id in {m["headers"]["id"] for m in sent}
    finally:
        queue.close()
