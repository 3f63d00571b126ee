"""Two outboxes on one table with a one-second lease: ``stuck`` hangs in its first publish (a relay
that will be killed mid-publish), ``outbox`` publishes to the tests' Celery worker."""

from __future__ import annotations

import os
import threading

from celery import Celery
from sqlalchemy import MetaData, create_engine

import uow
from uow.outbox import Outbox, OutboxMessage, outbox_table
from uow.outbox.celery import CeleryPublisher

LEASE = 1.0
manager = uow.UnitOfWorkManager(create_engine(os.environ["UOW_TEST_POSTGRES_URL"]))
table = outbox_table(MetaData(), "outbox_stuck")


class Hang:
    def publish(self, message: OutboxMessage) -> None:
        threading.Event().wait()  # until the process is killed


celery_app = Celery("uow_stuck_app", broker=os.environ["UOW_TEST_REDIS_URL"])
stuck = Outbox(manager, publisher=Hang(), table=table, lease=LEASE, publish_on_commit=False)
outbox = Outbox(
    manager, publisher=CeleryPublisher(celery_app), table=table, lease=LEASE, publish_on_commit=False
)
