"""From ``on_commit(lambda: task.delay(...))`` to the outbox: the same call site, durable.

Run it:  python migrating.py      (Redis at REDIS_URL, default redis://localhost:6379/0)
"""

import os

from celery import Celery
from sqlalchemy import create_engine

import uow
from uow.outbox import Outbox
from uow.outbox.celery import CeleryPublisher

celery_app = Celery("shop", broker=os.environ.get("REDIS_URL", "redis://localhost:6379/0"))
uow.configure(create_engine("sqlite:///shop.db"))
outbox = Outbox(publisher=CeleryPublisher(celery_app))
outbox.table.create(uow.get_manager().engine, checkfirst=True)


# --8<-- [start:before]
@uow.transactional
def place_order_before(order_id: int) -> None:
    ...  # write the order
    # lost if the process dies after COMMIT, or if Redis is down at that moment
    uow.on_commit(lambda: celery_app.send_task("shop.ship", args=[order_id]))


# --8<-- [end:before]


# --8<-- [start:after]
@uow.transactional
def place_order(order_id: int) -> str:
    ...  # write the order
    # a row in the same transaction; published after COMMIT, or by a relay later
    return outbox.enqueue("shop.ship", order_id)


# --8<-- [end:after]


if __name__ == "__main__":
    place_order_before(1)
    print("sent as task", place_order(2))
