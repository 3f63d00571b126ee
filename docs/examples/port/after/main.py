"""The same app after the port to uow: one unit of work per request."""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import crud
import sqlmodel
from fastapi import Depends, FastAPI, Header, HTTPException
from models import Item, ItemCreate, Login, SignUp, User
from sqlmodel import Session, SQLModel, create_engine, select
from starlette.middleware import Middleware

import uow
from uow.starlette import UnitOfWorkMiddleware, provide_session
from uow.starlette import lifespan as uow_lifespan

# --8<-- [start:setup]
engine = create_engine(os.environ.get("DATABASE_URL", "sqlite:///app.db"))
uow.configure(engine, class_=sqlmodel.Session)  # sessions with exec(), expire_on_commit=False
# --8<-- [end:setup]
FIRST_SUPERUSER = "admin@example.com"


# --8<-- [start:init-db]
def init_db() -> None:
    SQLModel.metadata.create_all(engine)
    with uow.unit_of_work() as session:  # its own unit: committed when the block ends
        if crud.get_user_by_email(session=session, email=FIRST_SUPERUSER) is None:
            crud.create_user(session=session, email=FIRST_SUPERUSER, password="changethis")


@asynccontextmanager
async def create_first_user(app: FastAPI) -> AsyncIterator[None]:
    init_db()
    yield


# --8<-- [end:init-db]


# --8<-- [start:deps]
SessionDep = Annotated[Session, Depends(provide_session)]


def get_current_user(session: SessionDep, x_user: Annotated[str, Header()]) -> User:
    """A sync dependency (FastAPI runs it in its threadpool); a token would stand here."""
    user = crud.get_user_by_email(session=session, email=x_user)
    if user is None or not user.is_active:
        raise HTTPException(401, "not authenticated")
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]
# --8<-- [end:deps]

#: the mails sent (a real app hands them to its mailer)
outbox: list[str] = []


def send_email(to: str, subject: str) -> None:
    outbox.append(f"{to}: {subject}")


# --8<-- [start:app]
app = FastAPI(
    middleware=[Middleware(UnitOfWorkMiddleware)],  # one unit per request, committed on 2xx
    lifespan=uow_lifespan(app_lifespan=create_first_user),  # and the pool closed at shutdown
)
# --8<-- [end:app]


# --8<-- [start:signup]
@app.post("/signup", status_code=201)
def signup(body: SignUp, session: SessionDep) -> dict[str, int]:
    if crud.get_user_by_email(session=session, email=body.email) is not None:
        raise HTTPException(400, "this email is registered")
    user = crud.create_user(session=session, email=body.email, password=body.password)
    uow.on_commit(lambda: send_email(user.email, "welcome"))  # only once the sign-up is committed
    assert user.id is not None
    if body.first_item is not None:
        if not body.first_item.strip():
            raise HTTPException(400, "an item needs a title")  # rolls the user back too
        crud.create_item(session=session, title=body.first_item, owner_id=user.id)
    return {"id": user.id}


# --8<-- [end:signup]


# --8<-- [start:login]
@app.post("/login")
def login(body: Login) -> dict[str, str]:
    user = crud.authenticate(email=body.email, password=body.password)  # committed already
    if user is None:
        raise HTTPException(400, "incorrect email or password")
    if not user.is_active:
        raise HTTPException(400, "inactive user")  # the request's unit rolls back; the upgrade stays
    return {"access_token": user.email}


# --8<-- [end:login]


@app.post("/items/", status_code=201)
def create_item(body: ItemCreate, session: SessionDep, user: CurrentUser) -> dict[str, int]:
    assert user.id is not None
    item = crud.create_item(session=session, title=body.title, owner_id=user.id)
    assert item.id is not None
    return {"id": item.id}


@app.get("/items/")
def read_items(session: SessionDep, user: CurrentUser) -> list[str]:
    return list(session.exec(select(Item.title).where(Item.owner_id == user.id)).all())
