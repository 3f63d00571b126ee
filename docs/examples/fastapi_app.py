"""A FastAPI app with uow: one unit per request, committed before the response.

Run it:  .venv/bin/uvicorn docs.examples.fastapi_app:app   (from the repository root)
Then:    curl -X POST 'localhost:8000/users?email=ada@example.com'
"""

from __future__ import annotations

import os
from typing import Annotated

from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException
from sqlalchemy import String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from starlette.middleware import Middleware

import uow
from uow.starlette import BackgroundTask, UnitOfWorkMiddleware, lifespan, provide_session


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)


engine = create_engine(os.environ.get("DATABASE_URL", "sqlite:///fastapi_app.db"))
Base.metadata.create_all(engine)
manager = uow.configure(engine)

app = FastAPI(
    middleware=[Middleware(UnitOfWorkMiddleware, commit_mode="autocommit")],
    lifespan=lifespan(manager),
)
sent: list[int] = []


def send_welcome(user_id: int) -> None:
    """Runs after the response, in a unit of its own, only if the request committed."""
    user = uow.session.get(User, user_id)
    assert user is not None
    sent.append(user.id)


@app.post("/users", status_code=201)
def create_user(
    email: str, tasks: BackgroundTasks, db: Annotated[Session, Depends(provide_session)]
) -> dict[str, int]:
    if db.scalar(select(User.id).where(User.email == email)) is not None:
        raise HTTPException(409, "email taken")  # 4xx: the unit rolls back
    user = User(email=email)
    db.add(user)
    db.flush()
    tasks.add_task(BackgroundTask(send_welcome, user.id))
    return {"id": user.id}


@app.get("/users/{user_id}")
def read_user(user_id: int) -> dict[str, object]:
    user = uow.session.get(User, user_id)  # the same request session
    if user is None:
        raise HTTPException(404)
    return {"id": user.id, "email": user.email}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}  # never touches the session: no connection checked out
