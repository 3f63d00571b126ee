"""uow in one screen, on a SQLite file: commit, rollback, a savepoint, a hook.

Run it with ``scripts/demo`` (or ``python docs/examples/demo.py [path.db]``).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from sqlalchemy import String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import uow


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)


@uow.transactional
def register(email: str) -> int:
    user = User(email=email)
    uow.session.add(user)
    uow.session.flush()
    uow.on_commit(lambda: print(f"  on_commit: welcome mail to {email} (id {user.id})"))
    return user.id


@uow.transactional(propagation=uow.Propagation.NESTED)
def try_register(email: str) -> int:
    """A savepoint: if it fails, only its own work is undone."""
    return register(email)


def emails() -> list[str]:
    with uow.unit_of_work(read_only=True) as session:
        return list(session.scalars(select(User.email).order_by(User.id)))


def main(path: Path) -> list[str]:
    engine = create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    uow.configure(engine)

    print("1. commit: register() returns, the unit commits, then the hook runs")
    register("ada@example.com")

    print("2. rollback: the unit raises, nothing is kept, the hook is dropped")
    try:
        with uow.unit_of_work() as session:
            session.add(User(email="bob@example.com"))
            uow.on_commit(lambda: print("  never printed"))
            raise RuntimeError("payment failed")
    except RuntimeError as e:
        print(f"  rolled back: {e}")

    print("3. savepoint: a duplicate fails inside NESTED, the outer unit goes on")
    with uow.unit_of_work():
        register("cy@example.com")
        try:
            try_register("ada@example.com")  # unique violation, savepoint rolled back
        except Exception as e:
            print(f"  savepoint rolled back: {type(e).__name__}")
        register("dee@example.com")

    result = emails()
    print(f"4. in the database: {result}")
    engine.dispose()
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp) / "demo.db")
