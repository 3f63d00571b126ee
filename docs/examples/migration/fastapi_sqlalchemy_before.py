"""Before: fastapi-sqlalchemy's DBSessionMiddleware and its global `db.session`.

The bug: with commit_on_exit=True the session commits whenever no exception
escapes the middleware, and an HTTPException never does (the app turns it
into a 4xx response first), so a 409 keeps the work it meant to abandon.
"""

from fastapi import FastAPI, HTTPException
from fastapi_sqlalchemy import DBSessionMiddleware, db
from sqlalchemy import create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    balance: Mapped[int]


engine = create_engine("sqlite:///fastapi_sqlalchemy.db")
Base.metadata.create_all(engine)


# --8<-- [start:before]
app = FastAPI()
app.add_middleware(DBSessionMiddleware, custom_engine=engine, commit_on_exit=True)


@app.post("/accounts/{account_id}/withdraw")
def withdraw(account_id: int, amount: int) -> dict[str, int]:
    account = db.session.get(Account, account_id)
    if account is None:
        raise HTTPException(404)
    account.balance -= amount
    if account.balance < 0:
        raise HTTPException(409, "insufficient funds")  # a 409, and yet committed
    return {"balance": account.balance}


def add_interest() -> None:  # a job outside any request
    with db():
        for account in db.session.query(Account):
            account.balance += 1
        db.session.commit()


# --8<-- [end:before]
