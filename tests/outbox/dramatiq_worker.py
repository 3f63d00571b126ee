"""The Dramatiq actors of the outbox tests' second worker: each writes what it received to PostgreSQL.

Started by ``tests/outbox/test_dramatiq.py`` as ``dramatiq tests.outbox.dramatiq_worker``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage
from sqlalchemy import create_engine, insert

import uow
from tests.outbox.common import received

broker = RedisBroker(url=os.environ["UOW_TEST_REDIS_URL"])
broker.add_middleware(CurrentMessage())
dramatiq.set_broker(broker)
manager = uow.UnitOfWorkManager(create_engine(os.environ["UOW_TEST_POSTGRES_URL"]))


@dramatiq.actor(actor_name="outbox_record", max_retries=0)
def record(*args: Any, **kwargs: Any) -> None:
    message = CurrentMessage.get_current_message()
    assert message is not None
    with manager.unit_of_work() as session:
        session.execute(
            insert(received).values(
                task_id=message.message_id,
                task=message.actor_name,
                args=json.dumps(args),
                kwargs=json.dumps(kwargs),
            )
        )
