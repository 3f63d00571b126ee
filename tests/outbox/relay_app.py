"""The outbox that ``python -m uow.outbox relay tests.outbox.relay_app:outbox`` relays in the tests."""

from __future__ import annotations

import os

from celery import Celery
from sqlalchemy import MetaData, create_engine

import uow
from uow.outbox import Outbox, outbox_table
from uow.outbox.celery import CeleryPublisher

celery_app = Celery("uow_relay_app", broker=os.environ["UOW_TEST_REDIS_URL"])
manager = uow.UnitOfWorkManager(create_engine(os.environ["UOW_TEST_POSTGRES_URL"]))
#: only relays publish these rows
outbox = Outbox(
    manager,
    publisher=CeleryPublisher(celery_app),
    table=outbox_table(MetaData(), "outbox_relays"),
    publish_on_commit=False,
)
