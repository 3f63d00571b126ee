"""The Starlette adapter: background tasks in units of their own (FastAPI).

Run it:  uvicorn background:app   (it writes background.db in the current directory)
"""

from fastapi import BackgroundTasks, FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from starlette.middleware import Middleware

import uow
from uow.starlette import BackgroundTask, UnitOfWorkMiddleware


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)
    welcomed: Mapped[bool] = mapped_column(default=False)


engine = create_engine("sqlite:///background.db")
Base.metadata.create_all(engine)
uow.configure(engine)
app = FastAPI(middleware=[Middleware(UnitOfWorkMiddleware)])
alerts: list[str] = []


# --8<-- [start:tasks]
def send_welcome(user_id: int) -> None:
    user = uow.session.get(User, user_id)  # a new unit: it sees what the request committed
    assert user is not None
    user.welcomed = True  # committed when send_welcome returns


async def alert(email: str) -> None:
    alerts.append(f"sign-up of {email} was rolled back")


@app.post("/users", status_code=201, response_model=None)
def create_user(email: str, tasks: BackgroundTasks) -> dict[str, int] | JSONResponse:
    user = User(email=email)
    uow.session.add(user)
    uow.session.flush()
    tasks.add_task(BackgroundTask(send_welcome, user.id))  # runs only if the request commits
    tasks.add_task(BackgroundTask(alert, email).when("rolled_back"))  # only if it rolls back
    if email.endswith("@example.org"):
        return JSONResponse({"detail": "domain not allowed"}, status_code=422)  # rolls back
    return {"id": user.id}


# --8<-- [end:tasks]
