"""Quick start: a FastAPI app with one unit of work per request, on SQLite.

Save it as fastapi_app.py, then run it and add a user:

    uvicorn fastapi_app:app
    curl -X POST 'http://127.0.0.1:8000/users?email=ada@example.com'
    curl http://127.0.0.1:8000/users
"""

from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import String, create_engine, select
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


engine = create_engine("sqlite:///app.db")
Base.metadata.create_all(engine)  # creates app.db and the table if they are missing
uow.configure(engine)

#: the request's session, for endpoints: `db: DB`
DB = Annotated[Session, Depends(provide_session)]

app = FastAPI(
    middleware=[Middleware(UnitOfWorkMiddleware)],  # one unit per request, committed on 2xx
    lifespan=lifespan(),  # closes the engine's connections at shutdown
)


@app.post("/users", status_code=201)
def create_user(email: str, db: DB) -> dict[str, int]:
    if db.scalar(select(User.id).where(User.email == email)) is not None:
        raise HTTPException(409, "email taken")  # a 4xx: the request's unit rolls back
    user = User(email=email)
    db.add(user)
    db.flush()  # sends the INSERT, so user.id is known; COMMIT comes before the 201 is sent
    return {"id": user.id}


@app.get("/users")
def list_users(db: DB) -> list[dict[str, object]]:
    users = db.scalars(select(User).order_by(User.id))
    return [{"id": user.id, "email": user.email} for user in users]
