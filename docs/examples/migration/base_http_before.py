"""Before: a BaseHTTPMiddleware that commits after `call_next` returns.

The bug: an HTTPException raised by the endpoint is turned into a 4xx response
inside the app, so `call_next` returns normally and the middleware commits the
work the endpoint meant to abandon. (And commit() blocks the event loop.)
"""

from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from sqlalchemy import create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.responses import Response


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    balance: Mapped[int]


engine = create_engine("sqlite:///base_http.db")
Base.metadata.create_all(engine)
SessionLocal = sessionmaker(bind=engine)


# --8<-- [start:before]
class DBSessionMiddleware(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        request.state.db = SessionLocal()
        try:
            response = await call_next(request)
            request.state.db.commit()  # also after a 4xx: the exception was already handled
            return response
        except Exception:
            request.state.db.rollback()
            raise
        finally:
            request.state.db.close()


app = FastAPI()
app.add_middleware(DBSessionMiddleware)


def get_db(request: Request) -> Session:
    return request.state.db


@app.post("/accounts/{account_id}/withdraw")
def withdraw(account_id: int, amount: int, db: Annotated[Session, Depends(get_db)]) -> dict[str, int]:
    account = db.get(Account, account_id)
    if account is None:
        raise HTTPException(404)
    account.balance -= amount
    if account.balance < 0:
        raise HTTPException(409, "insufficient funds")  # a 409, and yet committed
    return {"balance": account.balance}


# --8<-- [end:before]
