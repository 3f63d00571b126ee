"""Concepts: propagation, how a unit relates to the one already open.

Run it:  python propagation.py   (it writes propagation.db in the current directory)
"""

import contextlib

from sqlalchemy import Engine, String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import uow
from uow import Propagation


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    item: Mapped[str] = mapped_column(String(200))


class AuditLog(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    message: Mapped[str] = mapped_column(String(200))


engine = create_engine("sqlite:///propagation.db")
uow.configure(engine)


# --8<-- [start:requires-new]
@uow.transactional(propagation=Propagation.REQUIRES_NEW)
def audit(message: str) -> None:
    uow.session.add(AuditLog(message=message))  # a session and a transaction of its own


@uow.transactional
def place_order(item: str) -> None:
    audit(f"order attempt: {item}")  # committed when audit() returns
    uow.session.add(Order(item=item))
    if item == "unicorn":
        raise ValueError("out of stock")  # rolls back the order, not the audit line


# --8<-- [end:requires-new]


# --8<-- [start:mandatory]
@uow.transactional(propagation=Propagation.MANDATORY)
def charge(order_id: int) -> None:
    """Must run inside the caller's unit: it is one step of a larger transaction."""
    order = uow.session.get(Order, order_id)
    assert order is not None


# --8<-- [end:mandatory]


# --8<-- [start:rollback-only]
@uow.transactional
def reserve(item: str) -> None:
    uow.session.add(Order(item=item))
    if item == "unicorn":
        raise ValueError(f"{item} is out of stock")  # escapes a joined unit


@uow.transactional
def order_all(items: list[str]) -> None:
    for item in items:
        try:
            reserve(item)
        except ValueError as error:  # caught, but the transaction is marked rollback-only
            print(f"skipped: {error}")


# --8<-- [end:rollback-only]


def committed(engine: Engine, model: type[Order] | type[AuditLog]) -> int:
    with engine.connect() as connection:
        return len(connection.execute(select(model.id)).all())


def main() -> None:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    try:
        # --8<-- [start:use-requires-new]
        place_order("book")
        with contextlib.suppress(ValueError):
            place_order("unicorn")
        assert committed(engine, Order) == 1  # the book
        assert committed(engine, AuditLog) == 2  # both attempts
        # --8<-- [end:use-requires-new]

        # --8<-- [start:use-mandatory]
        with uow.unit_of_work():
            charge(1)  # joins the block's unit
        try:
            charge(1)  # no unit open
        except uow.PropagationError as error:
            print(error)
        # --8<-- [end:use-mandatory]

        # --8<-- [start:use-rollback-only]
        try:
            order_all(["pen", "unicorn"])
        except uow.UnexpectedRollback as error:
            print(error)  # nothing was committed: the pen is not kept either
            assert isinstance(error.__cause__, ValueError)
        assert committed(engine, Order) == 1
        # --8<-- [end:use-rollback-only]
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
