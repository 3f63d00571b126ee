"""GET and HEAD requests read from a replica; a client's later reads see its own writes (a cookie).

Run it:  uvicorn starlette_app:app   (SQLite files stand in for the servers)
"""

import shutil

from sqlalchemy import String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import uow
from uow.starlette import UnitOfWorkMiddleware


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(200))


primary = create_engine("sqlite:///web.db")
Base.metadata.create_all(primary)
shutil.copy("web.db", "web-replica.db")  # a copy that never catches up: a replica far behind
manager = uow.UnitOfWorkManager(primary, replicas=[create_engine("sqlite:///web-replica.db")])


def add(request: Request) -> JSONResponse:
    manager.session.add(Note(text=request.path_params["text"]))
    return JSONResponse({}, status_code=201)


def list_notes(request: Request) -> JSONResponse:
    return JSONResponse(list(manager.session.scalars(select(Note.text))))


# --8<-- [start:app]
app = Starlette(
    routes=[Route("/notes/{text}", add, methods=["POST"]), Route("/notes", list_notes)],
    middleware=[
        Middleware(
            UnitOfWorkMiddleware,
            manager=manager,
            read_only_methods={"GET", "HEAD"},  # their units are read-only: a replica serves them
            causal_cookie="uow_causal",  # a client that wrote reads its writes on its next requests
        )
    ],
)
# --8<-- [end:app]
