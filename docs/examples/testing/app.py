"""The app that the testing page's tests exercise."""

from fastapi import FastAPI, HTTPException
from sqlalchemy import String, create_engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from starlette.middleware import Middleware

import uow
from uow.starlette import UnitOfWorkMiddleware


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)


uow.configure(create_engine("sqlite:///app.db"))  # the tests replace it
outbox: list[str] = []


def send_welcome(email: str) -> None:
    outbox.append(email)


@uow.transactional
def register(email: str) -> int:
    user = User(email=email)
    uow.session.add(user)
    try:
        uow.session.flush()
    except IntegrityError:
        raise HTTPException(409, "email taken") from None
    uow.on_commit(lambda: send_welcome(email))
    return user.id


app = FastAPI(middleware=[Middleware(UnitOfWorkMiddleware)])


@app.post("/users", status_code=201)
def create_user(email: str) -> dict[str, int]:
    return {"id": register(email)}
