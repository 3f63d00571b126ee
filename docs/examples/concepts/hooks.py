"""Concepts: on_commit and on_rollback hooks.

Run it:  python hooks.py   (it writes hooks.db in the current directory)
"""

import contextlib
import logging

from sqlalchemy import String, create_engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import uow
from uow import Propagation


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)


engine = create_engine("sqlite:///hooks.db")
uow.configure(engine)
outbox: list[str] = []  # stands for a mail server, a queue, a cache


# --8<-- [start:on-commit]
@uow.transactional
def register(email: str) -> int:
    user = User(email=email)
    uow.session.add(user)
    uow.on_commit(lambda: outbox.append(f"welcome {email}"))  # after COMMIT, or never
    uow.on_rollback(lambda: outbox.append(f"sign-up of {email} failed"))  # after ROLLBACK
    uow.session.flush()
    return user.id


# --8<-- [end:on-commit]


# --8<-- [start:savepoint]
@uow.transactional(propagation=Propagation.NESTED)
def try_register(email: str) -> None:
    register(email)  # joins the savepoint: its hooks belong to the savepoint


@uow.transactional
def import_users(emails: list[str]) -> None:
    for email in emails:
        with contextlib.suppress(IntegrityError):  # a duplicate: the savepoint rolls back,
            try_register(email)  # its on_rollback hooks run, its on_commit hooks are dropped


# --8<-- [end:savepoint]


def flaky_cache_update() -> None:
    raise ConnectionError("cache is down")


def main() -> None:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    try:
        # --8<-- [start:use-on-commit]
        register("ada@example.com")
        assert outbox == ["welcome ada@example.com"]

        outbox.clear()
        with contextlib.suppress(IntegrityError):
            register("ada@example.com")  # a duplicate: the flush fails, the unit rolls back
        assert outbox == ["sign-up of ada@example.com failed"]
        # --8<-- [end:use-on-commit]

        # --8<-- [start:use-savepoint]
        outbox.clear()
        import_users(["bob@example.com", "ada@example.com"])
        assert outbox == ["sign-up of ada@example.com failed", "welcome bob@example.com"]
        # --8<-- [end:use-savepoint]

        # --8<-- [start:failing-hook]
        try:
            with uow.unit_of_work() as session:
                session.add(User(email="cy@example.com"))
                uow.on_commit(flaky_cache_update)
        except uow.HookError as error:
            print(error)  # the unit committed (that stands); the hook failed
            assert isinstance(error.__cause__, ConnectionError)

        with uow.unit_of_work() as session:
            session.add(User(email="dee@example.com"))
            uow.on_commit(flaky_cache_update, robust=True)  # logged on the "uow" logger
        # --8<-- [end:failing-hook]

        # --8<-- [start:no-unit]
        uow.on_commit(lambda: outbox.append("now"), when_no_unit="run")  # no unit: runs at once
        uow.on_rollback(lambda: None, when_no_unit="ignore")  # no unit: nothing to do
        # --8<-- [end:no-unit]
    finally:
        engine.dispose()


if __name__ == "__main__":
    logging.basicConfig()
    main()
