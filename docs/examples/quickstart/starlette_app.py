"""Quick start: a Starlette app with one unit of work per request, on SQLite.

Save it as starlette_app.py, then:

    uvicorn starlette_app:app
    curl -X POST 'http://127.0.0.1:8000/users?email=ada@example.com'
"""

from sqlalchemy import String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import uow
from uow.starlette import BackgroundTask, UnitOfWorkMiddleware, lifespan


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)
    welcomed: Mapped[bool] = mapped_column(default=False)


engine = create_engine("sqlite:///app.db")
Base.metadata.create_all(engine)
manager = uow.configure(engine)


def send_welcome(user_id: int) -> None:
    """A background task: runs after the response, in a unit of its own."""
    user = uow.session.get(User, user_id)
    assert user is not None  # committed by the request before the task runs
    user.welcomed = True  # committed when this function returns


def create_user(request: Request) -> JSONResponse:  # a def endpoint: runs in the threadpool
    user = User(email=request.query_params["email"])
    uow.session.add(user)
    uow.session.flush()
    return JSONResponse(
        {"id": user.id},
        status_code=201,  # 2xx: the unit commits before the response starts
        background=BackgroundTask(send_welcome, user.id),  # runs only if that commit succeeded
    )


app = Starlette(
    routes=[Route("/users", create_user, methods=["POST"])],
    middleware=[Middleware(UnitOfWorkMiddleware, commit_mode="autocommit")],
    lifespan=lifespan(manager),  # disposes the engine's pool at shutdown
)
