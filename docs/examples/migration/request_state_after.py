"""After: one unit per request; the helpers flush, the middleware commits once."""

from typing import Annotated

from fastapi import Depends, FastAPI
from sqlalchemy import ForeignKey, String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from starlette.middleware import Middleware

import uow
from uow.starlette import UnitOfWorkMiddleware, lifespan, provide_session


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200), unique=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"))


engine = create_engine("sqlite:///request_state.db")
Base.metadata.create_all(engine)


# --8<-- [start:after]
uow.configure(engine)  # instead of SessionLocal = sessionmaker(...)
app = FastAPI(middleware=[Middleware(UnitOfWorkMiddleware)], lifespan=lifespan())
DB = Annotated[Session, Depends(provide_session)]  # instead of Depends(get_db)


def create_user(db: Session, email: str) -> User:
    user = User(email=email)
    db.add(user)
    db.flush()  # instead of commit() and refresh(): user.id is known now
    return user


def create_item(db: Session, owner_id: int, title: str) -> Item:
    item = Item(title=title, owner_id=owner_id)
    db.add(item)
    db.flush()  # a duplicate title fails here: the whole request rolls back
    return item


@app.post("/users", status_code=201)
def sign_up(email: str, first_item: str, db: DB) -> dict[str, int]:
    user = create_user(db, email)
    create_item(db, user.id, first_item)
    return {"id": user.id}  # one COMMIT for both rows, before the 201 is sent


# --8<-- [end:after]
