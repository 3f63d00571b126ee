"""Concepts: isolation levels.

Run it:  python isolation.py   (it writes isolation.db in the current directory)
"""

from sqlalchemy import create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import uow


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    balance: Mapped[int]


engine = create_engine("sqlite:///isolation.db")
uow.configure(engine)


# --8<-- [start:isolation]
@uow.transactional(isolation_level="SERIALIZABLE")
def transfer(source: int, target: int, amount: int) -> None:
    accounts = {a.id: a for a in uow.session.scalars(select(Account))}
    accounts[source].balance -= amount
    accounts[target].balance += amount
    audit_balance()  # joins: same connection, same isolation level


@uow.transactional
def audit_balance() -> None:
    total = sum(uow.session.scalars(select(Account.balance)))
    assert total == 100


# --8<-- [end:isolation]


def main() -> None:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    try:
        with uow.unit_of_work() as session:
            session.add_all([Account(id=1, balance=70), Account(id=2, balance=30)])
        # --8<-- [start:use-isolation]
        transfer(1, 2, 20)  # the outermost unit: SERIALIZABLE

        try:
            with uow.unit_of_work():  # begun at the engine's default level...
                transfer(2, 1, 5)  # ...which a joined unit cannot change
        except uow.IsolationLevelConflict as error:
            print(error)

        with uow.unit_of_work(isolation_level="SERIALIZABLE"):
            transfer(2, 1, 5)  # joins at the level it asks for: fine
        # --8<-- [end:use-isolation]
        with uow.unit_of_work(read_only=True) as session:
            assert session.scalars(select(Account.balance).order_by(Account.id)).all() == [55, 45]
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
