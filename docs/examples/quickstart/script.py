"""Quick start: uow in a script, on a SQLite file.

Run it:  python script.py       (it writes app.db in the current directory)
"""

from sqlalchemy import String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import uow


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200))


def send_welcome(user_id: int) -> None:
    print(f"welcome mail sent to user {user_id}")


uow.configure(create_engine("sqlite:///app.db"))


@uow.transactional
def register(email: str) -> int:
    user = User(email=email)
    uow.session.add(user)
    uow.session.flush()
    uow.on_commit(lambda: send_welcome(user.id))  # runs only after COMMIT
    return user.id


def main() -> None:
    with uow.unit_of_work() as session:  # the same unit, as a block
        Base.metadata.create_all(session.connection())

    user_id = register("ada@example.com")  # committed when it returns

    try:
        with uow.unit_of_work() as session:
            session.add(User(email="bob@example.com"))
            raise RuntimeError("payment failed")  # rolled back: bob is not kept
    except RuntimeError:
        pass

    with uow.unit_of_work(read_only=True) as session:
        emails = session.scalars(select(User.email).order_by(User.id)).all()
    print(f"registered user {user_id}; in the database: {emails}")


if __name__ == "__main__":
    main()
