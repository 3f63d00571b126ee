"""Concepts: read-only units.

Run it:  python read_only.py   (it writes read_only.db in the current directory)
"""

from sqlalchemy import String, create_engine, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import uow


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)


engine = create_engine("sqlite:///read_only.db")
uow.configure(engine)


# --8<-- [start:read-only]
@uow.transactional(read_only=True)
def count_users() -> int:
    return uow.session.scalar(select(func.count(User.id))) or 0  # reads only


@uow.transactional(read_only=True)
def sneaky_write() -> None:
    uow.session.add(User(email="eve@example.com"))
    uow.session.flush()  # raises ReadOnlyViolation


# --8<-- [end:read-only]


def main() -> None:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    try:
        # --8<-- [start:use-read-only]
        assert count_users() == 0
        try:
            sneaky_write()
        except uow.ReadOnlyViolation as error:
            print(error)
        try:
            with uow.unit_of_work(read_only=True) as session:
                session.add(User(email="eve@example.com"))  # never flushed...
        except uow.ReadOnlyViolation as error:
            print(error)  # ...but not lost silently either
        assert count_users() == 0
        # --8<-- [end:use-read-only]
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
