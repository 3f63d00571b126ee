"""Concepts: retry on transient errors.

Run it:  python retry.py   (it writes retry.db in the current directory)
"""

from sqlalchemy import String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import uow


class Base(DeclarativeBase):
    pass


class Seat(Base):
    __tablename__ = "seats"
    id: Mapped[int] = mapped_column(primary_key=True)
    guest: Mapped[str | None] = mapped_column(String(200))


class SeatChanged(Exception):
    """Our own "someone else changed it meanwhile" error, worth another try."""


# --8<-- [start:configure]
engine = create_engine("sqlite:///retry.db")
uow.configure(
    engine,
    retry_on=lambda error: isinstance(error, SeatChanged),  # besides 40001, 40P01, busy...
    retry_backoff=(0.01, 0.5),  # full jitter: sleep up to min(0.5, 0.01 * 2**attempt) s
)
# --8<-- [end:configure]

attempts: list[str] = []
confirmations: list[str] = []


# --8<-- [start:retry]
@uow.transactional(retry=3)  # up to 3 more runs, only on transient errors
def book(seat_id: int, guest: str) -> None:
    attempts.append(guest)
    seat = uow.session.get(Seat, seat_id)
    assert seat is not None
    seat.guest = guest
    uow.on_commit(lambda: confirmations.append(guest))  # side effects: only once, after COMMIT
    if len(attempts) == 1:
        raise SeatChanged("stands for a serialization failure on the first run")


# --8<-- [end:retry]


def main() -> None:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    try:
        with uow.unit_of_work() as session:
            session.add(Seat(id=1))
        # --8<-- [start:use-retry]
        book(1, "ada")
        assert attempts == ["ada", "ada"]  # the body ran twice
        assert confirmations == ["ada"]  # the failed run's hook was dropped
        with uow.unit_of_work(read_only=True) as session:
            assert session.scalar(select(Seat.guest)) == "ada"
        # --8<-- [end:use-retry]
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
