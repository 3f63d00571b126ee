"""Observability: the `uow` logger's record per unit, and SQLAlchemy's own events.

Run it:  python logging_and_events.py   (it writes observe.db in the current directory)
"""

import logging

from sqlalchemy import String, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import uow


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)


engine = create_engine("sqlite:///observe.db")
Base.metadata.drop_all(engine)
Base.metadata.create_all(engine)
manager = uow.configure(engine)


# --8<-- [start:logger]
class UnitMetrics(logging.Handler):
    """Collect what each unit's DEBUG record carries (a metrics client would go here)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.units: list[tuple[str, str, bool, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "uow_outcome"):  # one record per unit that ended
            self.units.append(
                (record.uow_outcome, record.uow_propagation, record.uow_savepoint, record.uow_retries)
            )
            assert record.uow_duration >= 0  # seconds, from the unit's start to its end


metrics = UnitMetrics()
logging.getLogger("uow").addHandler(metrics)
logging.getLogger("uow").setLevel(logging.DEBUG)  # off (the default): no record, no timing
# --8<-- [end:logger]


# --8<-- [start:events]
statements: list[str] = []


@event.listens_for(engine, "commit")  # the connection sent COMMIT
def on_commit(connection: object) -> None:
    statements.append("COMMIT")


@event.listens_for(engine, "rollback")  # the connection rolled back
def on_rollback(connection: object) -> None:
    statements.append("ROLLBACK")


@event.listens_for(manager.session_factory, "after_begin")  # each session uow makes
def on_session_begin(session: Session, transaction: object, connection: object) -> None:
    statements.append("session began")


# --8<-- [end:events]


@uow.transactional
def register(email: str) -> None:
    uow.session.add(User(email=email))
    with uow.unit_of_work(propagation=uow.Propagation.NESTED):  # a savepoint: a record of its own
        uow.session.flush()


def main() -> None:
    register("ada@example.com")
    try:
        with uow.unit_of_work():
            uow.session.add(User(email="ada@example.com"))  # a duplicate: fails at COMMIT
    except Exception as e:
        print(f"second sign-up failed: {type(e).__name__}")
    for outcome, propagation, savepoint, retries in metrics.units:
        kind = "savepoint" if savepoint else "unit"
        print(f"{kind} {outcome} propagation={propagation} retries={retries}")
    print(" / ".join(statements))


if __name__ == "__main__":
    main()
