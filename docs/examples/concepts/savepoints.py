"""Concepts: savepoints, with propagation=NESTED.

Run it:  python savepoints.py   (it writes savepoints.db in the current directory)
"""

from sqlalchemy import String, create_engine, select
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


engine = create_engine("sqlite:///savepoints.db")
uow.configure(engine)  # on SQLite, uow turns on what SAVEPOINT needs


# --8<-- [start:nested]
@uow.transactional(propagation=Propagation.NESTED)
def try_register(email: str) -> None:
    uow.session.add(User(email=email))
    uow.session.flush()  # a duplicate fails here, inside the SAVEPOINT


@uow.transactional
def import_users(emails: list[str]) -> list[str]:
    rejected = []
    for email in emails:
        try:
            try_register(email)  # ROLLBACK TO SAVEPOINT if it fails
        except IntegrityError:
            rejected.append(email)  # the outer unit goes on
    return rejected  # the rows that did go in commit together, here


# --8<-- [end:nested]


def main() -> None:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    try:
        # --8<-- [start:use-nested]
        rejected = import_users(["ada@example.com", "bob@example.com", "ada@example.com"])
        assert rejected == ["ada@example.com"]
        with uow.unit_of_work(read_only=True) as session:
            assert session.scalars(select(User.email)).all() == ["ada@example.com", "bob@example.com"]
        # --8<-- [end:use-nested]

        # --8<-- [start:outer-fails]
        try:
            with uow.unit_of_work():
                try_register("cy@example.com")  # its savepoint is released...
                raise RuntimeError("the import was cancelled")
        except RuntimeError:
            pass  # ...but the outer unit rolled back, and cy with it
        with uow.unit_of_work(read_only=True) as session:
            assert session.scalar(select(User).where(User.email == "cy@example.com")) is None
        # --8<-- [end:outer-fails]
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
