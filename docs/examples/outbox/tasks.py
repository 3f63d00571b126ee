"""The outbox with Celery: a sign-up writes its user and its welcome task in one transaction.

Run it:  python tasks.py                      (writes outbox.db; Redis at REDIS_URL,
                                               default redis://localhost:6379/0)
Worker:  celery -A tasks worker
Relay:   python -m uow.outbox relay tasks:outbox
"""

import os

from celery import Celery
from sqlalchemy import String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import uow
from uow.outbox import Outbox, handled_table, outbox_table
from uow.outbox.celery import CeleryPublisher, idempotent


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)


class Welcome(Base):  # what the task does: here, a row in the consumer's database
    __tablename__ = "welcomes"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int]


# --8<-- [start:setup]
celery_app = Celery("tasks", broker=os.environ.get("REDIS_URL", "redis://localhost:6379/0"))
uow.configure(create_engine("sqlite:///outbox.db"))

# the outbox table joins your models' metadata: create_all and Alembic see it
outbox = Outbox(publisher=CeleryPublisher(celery_app), table=outbox_table(Base.metadata))
# --8<-- [end:setup]


# --8<-- [start:enqueue]
@uow.transactional
def sign_up(email: str) -> int:
    user = User(email=email)
    uow.session.add(user)
    uow.session.flush()
    # a row of the outbox table, in this transaction: sent after COMMIT, or never
    outbox.enqueue("tasks.send_welcome", user.id)
    return user.id


# --8<-- [end:enqueue]


# --8<-- [start:consumer]
handled = handled_table(Base.metadata)  # the ids this consumer has handled


@celery_app.task(bind=True, name="tasks.send_welcome")
@idempotent(handled)  # a unit of its own; a repeated task id is skipped
def send_welcome(self, user_id: int) -> None:
    uow.session.add(Welcome(user_id=user_id))  # commits with the id's record


# --8<-- [end:consumer]


if __name__ == "__main__":
    Base.metadata.create_all(uow.get_manager().engine)
    user_id = sign_up(f"user{os.getpid()}@example.com")
    print(f"user {user_id} signed up; a worker sends the welcome")
