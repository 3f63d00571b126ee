"""Before: a session on request.state, from an HTTP middleware; each helper commits.

The bug: a request that fails half-way keeps the half that was committed.
"""

from typing import Annotated

from fastapi import Depends, FastAPI, Request, Response
from sqlalchemy import ForeignKey, String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from starlette.middleware.base import RequestResponseEndpoint


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
SessionLocal = sessionmaker(autoflush=False, bind=engine)
app = FastAPI()


# --8<-- [start:before]
@app.middleware("http")
async def db_session_middleware(request: Request, call_next: RequestResponseEndpoint) -> Response:
    response = Response("Internal server error", status_code=500)
    try:
        request.state.db = SessionLocal()
        response = await call_next(request)
    finally:
        request.state.db.close()
    return response


def get_db(request: Request) -> Session:
    return request.state.db


def create_user(db: Session, email: str) -> User:
    user = User(email=email)
    db.add(user)
    db.commit()  # committed here, whatever happens next
    db.refresh(user)
    return user


def create_item(db: Session, owner_id: int, title: str) -> Item:
    item = Item(title=title, owner_id=owner_id)
    db.add(item)
    db.commit()  # a duplicate title fails here...
    db.refresh(item)
    return item


@app.post("/users", status_code=201)
def sign_up(email: str, first_item: str, db: Annotated[Session, Depends(get_db)]) -> dict[str, int]:
    user = create_user(db, email)
    create_item(db, user.id, first_item)  # ...and the user above stays, without the item
    return {"id": user.id}


# --8<-- [end:before]
