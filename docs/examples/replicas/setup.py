"""A primary and its read replicas: read-only units read from a replica, the rest from the primary.

Run it:  python setup.py   (SQLite files stand in for the servers: app.db and replica.db)
"""

import shutil

from sqlalchemy import String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import uow
from uow.replicas import Routing, served_by


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(200))


primary_engine = create_engine("sqlite:///app.db")
Base.metadata.create_all(primary_engine)
shutil.copy("app.db", "replica.db")  # here a copy; in production the database's replication
replica_engine = create_engine("sqlite:///replica.db")

# --8<-- [start:configure]
manager = uow.configure(
    primary_engine,  # the primary: every unit that may write
    replicas=[replica_engine],  # read-only outermost units
    routing=Routing(window=2.0),  # SQLite: reads follow a write to the primary for 2 s
)


@uow.transactional
def add_note(text: str) -> None:
    uow.session.add(Note(text=text))  # on the primary


@uow.transactional(read_only=True)
def notes() -> tuple[list[str], str]:
    found = list(uow.session.scalars(select(Note.text)))
    return found, served_by(manager)  # which database answered


# --8<-- [end:configure]


if __name__ == "__main__":
    print(notes())  # ([], 'sqlite:///replica.db')
    add_note("hello")
    print(notes())  # (['hello'], 'sqlite:///app.db'): the primary, right after this context's write
