"""An app process that dies (SIGKILL) right after its unit's COMMIT, before the outbox publishes.

``python tests/outbox/killed_app.py N`` prints the N message ids it enqueues,
commits, and is killed by its first commit hook, which runs before the
outbox's. Its rows were written claimed by that publishing hook, for a lease
of one second; once it ran out, ``python -m uow.outbox relay
tests.outbox.killed_app:outbox`` finds them.
"""

from __future__ import annotations

import os
import signal
import sys

from celery import Celery
from sqlalchemy import MetaData, create_engine

import uow
from uow.outbox import Outbox, outbox_table
from uow.outbox.celery import CeleryPublisher

celery_app = Celery("uow_killed_app", broker=os.environ["UOW_TEST_REDIS_URL"])
manager = uow.UnitOfWorkManager(create_engine(os.environ["UOW_TEST_POSTGRES_URL"]))
outbox = Outbox(
    manager, publisher=CeleryPublisher(celery_app), table=outbox_table(MetaData(), "outbox_killed"), lease=1.0
)


def main(count: int) -> None:
    with manager.unit_of_work():
        # hooks run first in, first out: this one runs before the outbox's publishing hook
        manager.on_commit(lambda: os.kill(os.getpid(), signal.SIGKILL))
        for n in range(count):
            print(outbox.enqueue("outbox.record", "killed", n), flush=True)
    raise SystemExit("not reached: the process was to be killed after COMMIT")


if __name__ == "__main__":
    main(int(sys.argv[1]))
