"""After: the unit commits on 2xx only, so the 409 rolls back."""

from fastapi import FastAPI, HTTPException
from sqlalchemy import create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from starlette.middleware import Middleware

import uow
from uow.starlette import UnitOfWorkMiddleware, lifespan


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    balance: Mapped[int]


engine = create_engine("sqlite:///base_http.db")
Base.metadata.create_all(engine)


# --8<-- [start:after]
uow.configure(engine)
app = FastAPI(middleware=[Middleware(UnitOfWorkMiddleware)], lifespan=lifespan())


@app.post("/accounts/{account_id}/withdraw")
def withdraw(account_id: int, amount: int) -> dict[str, int]:
    account = uow.session.get(Account, account_id)  # instead of request.state.db
    if account is None:
        raise HTTPException(404)
    account.balance -= amount
    if account.balance < 0:
        raise HTTPException(409, "insufficient funds")  # a 409: the unit rolls back
    return {"balance": account.balance}


# --8<-- [end:after]
