"""Disconnects: an idempotency key makes a retried write safe, whatever the client saw.

Run it:  uvicorn disconnects:app   (it writes disconnects.db in the current directory)
"""

from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse
from sqlalchemy import String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from starlette.middleware import Middleware

import uow
from uow.starlette import UnitOfWorkMiddleware


class Base(DeclarativeBase):
    pass


class Payment(Base):
    __tablename__ = "payments"
    id: Mapped[int] = mapped_column(primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)
    amount: Mapped[int]


engine = create_engine("sqlite:///disconnects.db")
Base.metadata.create_all(engine)
uow.configure(engine)
app = FastAPI(middleware=[Middleware(UnitOfWorkMiddleware)])


# --8<-- [start:idempotency]
@app.post("/payments", status_code=201)
def pay(amount: int, idempotency_key: str = Header()) -> JSONResponse:
    done = uow.session.scalar(select(Payment).where(Payment.idempotency_key == idempotency_key))
    if done is not None:  # a retry of a write that committed: answer it again, write nothing
        return JSONResponse({"id": done.id, "amount": done.amount}, status_code=200)
    payment = Payment(idempotency_key=idempotency_key, amount=amount)
    uow.session.add(payment)
    uow.session.flush()  # two concurrent retries: the unique key lets only one commit
    return JSONResponse({"id": payment.id, "amount": amount}, status_code=201)


@app.post("/slow-report", status_code=201)
async def slow_report(request: Request) -> JSONResponse:
    await request.body()
    # ... long work ...
    if await request.is_disconnected():  # the client left: uow sees it too, and rolls back
        return JSONResponse({}, status_code=499)
    await uow.run_sync(lambda: uow.session.add(Payment(idempotency_key="report", amount=0)))
    return JSONResponse({}, status_code=201)


# --8<-- [end:idempotency]
