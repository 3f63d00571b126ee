"""A full-stack-style FastAPI app before the port: a session per request from Depends(get_db)."""

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated

import crud
from fastapi import Depends, FastAPI, Header, HTTPException
from models import Item, ItemCreate, Login, SignUp, User
from sqlmodel import Session, SQLModel, create_engine, select

engine = create_engine(os.environ.get("DATABASE_URL", "sqlite:///app.db"))
FIRST_SUPERUSER = "admin@example.com"


# --8<-- [start:init-db]
def init_db(session: Session) -> None:
    SQLModel.metadata.create_all(engine)
    if crud.get_user_by_email(session=session, email=FIRST_SUPERUSER) is None:
        crud.create_user(session=session, email=FIRST_SUPERUSER, password="changethis")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    with Session(engine) as session:
        init_db(session)
    yield


# --8<-- [end:init-db]


# --8<-- [start:deps]
def get_db() -> Iterator[Session]:
    with Session(engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_db)]


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


app = FastAPI(lifespan=lifespan)


# --8<-- [start:signup]
@app.post("/signup", status_code=201)
def signup(body: SignUp, session: SessionDep) -> dict[str, int]:
    if crud.get_user_by_email(session=session, email=body.email) is not None:
        raise HTTPException(400, "this email is registered")
    user = crud.create_user(session=session, email=body.email, password=body.password)
    send_email(user.email, "welcome")
    assert user.id is not None
    if body.first_item is not None:
        if not body.first_item.strip():
            raise HTTPException(400, "an item needs a title")
        crud.create_item(session=session, title=body.first_item, owner_id=user.id)
    return {"id": user.id}


# --8<-- [end:signup]


# --8<-- [start:login]
@app.post("/login")
def login(body: Login, session: SessionDep) -> dict[str, str]:
    user = crud.authenticate(session=session, email=body.email, password=body.password)
    if user is None:
        raise HTTPException(400, "incorrect email or password")
    if not user.is_active:
        raise HTTPException(400, "inactive user")
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
