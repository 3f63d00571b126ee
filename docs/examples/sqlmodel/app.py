"""A FastAPI + SQLModel app on uow: heroes, a few CRUD routes, a welcome mail after commit.

Run it with `uvicorn app:app` (DATABASE_URL picks the database; SQLite by default).
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import sqlmodel
from fastapi import Depends, FastAPI, HTTPException
from sqlmodel import Field, SQLModel, col, create_engine, select
from starlette.middleware import Middleware

import uow
from uow.starlette import UnitOfWorkMiddleware, lifespan, provide_session


# --8<-- [start:models]
class HeroBase(SQLModel):
    name: str = Field(unique=True, max_length=100)
    age: int | None = None


class Hero(HeroBase, table=True):
    id: int | None = Field(default=None, primary_key=True)


class HeroCreate(HeroBase):
    pass


class HeroUpdate(SQLModel):
    name: str | None = None
    age: int | None = None


class HeroPublic(HeroBase):
    id: int


# --8<-- [end:models]


# --8<-- [start:setup]
engine = create_engine(os.environ.get("DATABASE_URL", "sqlite:///heroes.db"))
uow.configure(engine, class_=sqlmodel.Session)  # every unit's session is a sqlmodel.Session

#: the request's session, for endpoints: `db: DB` (typed, so `db.exec(...)` type-checks)
DB = Annotated[sqlmodel.Session, Depends(provide_session)]


@asynccontextmanager
async def create_tables(app: FastAPI) -> AsyncIterator[None]:
    SQLModel.metadata.create_all(engine)
    yield


app = FastAPI(
    middleware=[Middleware(UnitOfWorkMiddleware)],  # one unit per request, committed on 2xx
    lifespan=lifespan(app_lifespan=create_tables),  # and the pool closed at shutdown
)
# --8<-- [end:setup]

# --8<-- [start:mail]
#: the mails sent (a real app would hand them to its mailer)
outbox: list[str] = []


def send_welcome(name: str) -> None:
    outbox.append(f"welcome, {name}")


def add_hero(data: HeroCreate) -> Hero:
    """Add a hero in the current unit, and send the welcome mail once it is committed."""
    db = uow.current_session(sqlmodel.Session)  # typed: the helper needs no session parameter
    if db.exec(select(Hero).where(Hero.name == data.name)).first() is not None:
        raise HTTPException(409, "a hero of that name exists")  # a 4xx: nothing is kept, no mail
    hero = Hero.model_validate(data)
    db.add(hero)
    db.flush()  # the INSERT: hero.id is known
    uow.on_commit(lambda: send_welcome(hero.name))  # only after COMMIT
    return hero


# --8<-- [end:mail]


# --8<-- [start:routes]
@app.post("/heroes/", status_code=201, response_model=HeroPublic)
def create_hero(hero: HeroCreate) -> Hero:
    return add_hero(hero)


@app.get("/heroes/", response_model=list[HeroPublic])
def read_heroes(db: DB, offset: int = 0, limit: int = 100) -> list[Hero]:
    return list(db.exec(select(Hero).order_by(col(Hero.id)).offset(offset).limit(limit)).all())


@app.get("/heroes/{hero_id}", response_model=HeroPublic)
def read_hero(hero_id: int, db: DB) -> Hero:
    hero = db.get(Hero, hero_id)
    if hero is None:
        raise HTTPException(404, "hero not found")
    return hero


@app.patch("/heroes/{hero_id}", response_model=HeroPublic)
def update_hero(hero_id: int, changes: HeroUpdate, db: DB) -> Hero:
    hero = read_hero(hero_id, db)
    hero.sqlmodel_update(changes.model_dump(exclude_unset=True))
    db.flush()  # no commit(): the request's unit commits before the 200 goes out
    return hero


@app.delete("/heroes/{hero_id}")
def delete_hero(hero_id: int, db: DB) -> dict[str, bool]:
    db.delete(read_hero(hero_id, db))
    return {"ok": True}


# --8<-- [end:routes]
