"""The Celery app of the outbox tests' worker process: each task writes what it received to PostgreSQL.

Started by ``tests/outbox/conftest.py`` as ``celery -A tests.outbox.worker worker``; it reads
``UOW_TEST_REDIS_URL`` and ``UOW_TEST_POSTGRES_URL``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from celery import Celery, signals
from sqlalchemy import create_engine, insert

import uow
from tests.outbox.common import effects, handled, received
from uow.outbox.celery import idempotent

app = Celery("uow_outbox_tests", broker=os.environ["UOW_TEST_REDIS_URL"])
app.conf.update(
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    broker_transport_options={"visibility_timeout": 3600},
)
manager = uow.UnitOfWorkManager(create_engine(os.environ["UOW_TEST_POSTGRES_URL"], pool_size=8))


@app.task(bind=True, name="outbox.record")
def record(self: Any, *args: Any, **kwargs: Any) -> None:
    with manager.unit_of_work() as session:
        session.execute(
            insert(received).values(
                task_id=self.request.id, task=self.name, args=json.dumps(args), kwargs=json.dumps(kwargs)
            )
        )


@signals.task_prerun.connect
def every_delivery(task_id: str, task: Any, args: Any, kwargs: Any, **_: Any) -> None:
    """Record every delivery of the idempotent task, before it decides whether to run."""
    if task.name == "outbox.record_once":
        with manager.unit_of_work() as session:
            session.execute(
                insert(received).values(
                    task_id=task_id, task=task.name, args=json.dumps(list(args)), kwargs=json.dumps(kwargs)
                )
            )


@app.task(bind=True, name="outbox.record_once")
@idempotent(handled, manager=manager)
def record_once(self: Any, *args: Any, **kwargs: Any) -> None:
    """Write one effect per task id, however often the id is delivered."""
    manager.session.execute(insert(effects).values(task_id=self.request.id, args=json.dumps(args)))
