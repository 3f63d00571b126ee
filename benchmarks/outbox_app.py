"""The outbox that the relay-throughput benchmark relays (its URLs come from the environment)."""

from __future__ import annotations

import os

from celery import Celery
from sqlalchemy import MetaData, create_engine

import uow
from uow.outbox import Outbox, outbox_table
from uow.outbox.celery import CeleryPublisher

celery_app = Celery("uow_bench", broker=os.environ["UOW_BENCH_REDIS_URL"])
manager = uow.UnitOfWorkManager(create_engine(os.environ["UOW_BENCH_URL"]))
table = outbox_table(MetaData(), "bench_outbox")
outbox = Outbox(manager, publisher=CeleryPublisher(celery_app), table=table, publish_on_commit=False)
