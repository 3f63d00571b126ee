"""Concepts: the unit of work, as a decorator and as a block.

Run it:  python unit.py   (it writes unit.db in the current directory)
"""

from sqlalchemy import Engine, String, create_engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import uow


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)


class Profile(Base):
    __tablename__ = "profiles"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int]
    name: Mapped[str] = mapped_column(String(200))


class Payment(Base):
    __tablename__ = "payments"
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(20))


class AuditBase(DeclarativeBase):
    pass


class Event(AuditBase):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(200))


# --8<-- [start:configure]
engine = create_engine("sqlite:///unit.db")
uow.configure(engine)  # the default manager: uow.transactional, uow.session, ...
# --8<-- [end:configure]

# --8<-- [start:managers]
audit = uow.UnitOfWorkManager(create_engine("sqlite:///audit.db"))  # a second database


@audit.transactional
def record(text: str) -> None:
    audit.session.add(Event(text=text))  # audit's own unit and session


# --8<-- [end:managers]


# --8<-- [start:decorator]
@uow.transactional
def register(email: str) -> User:
    user = User(email=email)
    uow.session.add(user)  # the current unit's session
    return user  # committed when the function returns


# --8<-- [end:decorator]


# --8<-- [start:joined]
@uow.transactional
def create_profile(user_id: int, name: str) -> None:
    uow.session.add(Profile(user_id=user_id, name=name))


@uow.transactional
def sign_up(email: str, name: str) -> int:
    user = register(email)  # joins this unit: same session, same transaction
    uow.session.flush()  # sends the INSERT, so user.id is known
    create_profile(user.id, name)  # joins too
    return user.id  # one COMMIT for all of it, here


# --8<-- [end:joined]


# --8<-- [start:no-rollback-on]
class PaymentDeclined(Exception):
    pass


@uow.transactional(no_rollback_on=PaymentDeclined)
def pay(amount: int) -> None:
    declined = amount > 100
    uow.session.add(Payment(status="declined" if declined else "paid"))
    if declined:
        raise PaymentDeclined(amount)  # the unit commits (the record is kept), then this propagates


# --8<-- [end:no-rollback-on]


def emails(engine: Engine) -> list[str]:
    """What is committed, read on a connection of its own."""
    with engine.connect() as connection:
        return list(connection.scalars(select(User.email).order_by(User.id)))


def main() -> None:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    audit_engine = audit.engine
    assert audit_engine is not None
    AuditBase.metadata.drop_all(audit_engine)
    AuditBase.metadata.create_all(audit_engine)
    try:
        # --8<-- [start:use-decorator]
        user = register("ada@example.com")
        assert user.email == "ada@example.com"  # still readable: expire_on_commit=False
        assert emails(engine) == ["ada@example.com"]  # committed: read on another connection
        # --8<-- [end:use-decorator]

        # --8<-- [start:block]
        with uow.unit_of_work() as session:  # commits when the block ends normally
            session.add(User(email="bob@example.com"))

        try:
            with uow.unit_of_work() as session:  # rolls back when it raises
                session.add(User(email="cy@example.com"))
                session.flush()
                raise RuntimeError("payment failed")
        except RuntimeError:
            pass
        assert emails(engine) == ["ada@example.com", "bob@example.com"]
        # --8<-- [end:block]

        # --8<-- [start:use-joined]
        try:
            sign_up("ada@example.com", "Ada")  # a duplicate email: the INSERT fails
        except IntegrityError:
            print("sign-up failed, and nothing of it was kept")
        sign_up("dee@example.com", "Dee")
        assert emails(engine) == ["ada@example.com", "bob@example.com", "dee@example.com"]
        # --8<-- [end:use-joined]

        # --8<-- [start:use-no-rollback-on]
        pay(50)
        try:
            pay(500)
        except PaymentDeclined:
            print("declined, and the declined payment is on record")
        with uow.unit_of_work(read_only=True) as session:
            assert session.scalars(select(Payment.status)).all() == ["paid", "declined"]
        # --8<-- [end:use-no-rollback-on]

        # --8<-- [start:use-managers]
        with uow.unit_of_work():
            uow.session.add(User(email="fay@example.com"))
            record("fay signed up")  # not joined: audit.db commits on its own, first
        with audit.unit_of_work(read_only=True) as session:
            assert session.scalars(select(Event.text)).all() == ["fay signed up"]
        # --8<-- [end:use-managers]

        # --8<-- [start:no-unit]
        try:
            uow.session.add(User(email="eve@example.com"))  # outside any unit
        except uow.NoActiveUnitOfWork as error:
            print(error)  # says how to open one
        # --8<-- [end:no-unit]
    finally:
        engine.dispose()
        audit_engine.dispose()


if __name__ == "__main__":
    main()
