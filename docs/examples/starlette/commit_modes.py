"""The Starlette adapter: commit modes, one app per mode.

Run one:  uvicorn commit_modes:autocommit_app   (it writes commit_modes.db in the current directory)
"""

from sqlalchemy import String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

import uow
from uow.starlette import UnitOfWorkMiddleware


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))


engine = create_engine("sqlite:///commit_modes.db")
Base.metadata.create_all(engine)
uow.configure(engine)


def add(name: str) -> None:
    uow.session.add(Item(name=name))


# --8<-- [start:endpoints]
def created(request: Request) -> Response:
    add("created")
    return JSONResponse({}, status_code=201)


def redirected(request: Request) -> Response:
    add("redirected")
    return RedirectResponse("/", status_code=303)


def conflict(request: Request) -> Response:
    add("conflict")
    return JSONResponse({"detail": "conflict"}, status_code=409)


def committed_by_hand(request: Request) -> Response:
    add("by hand")
    uow.session.commit()  # "manual" mode: only what you commit is kept
    add("after the commit")
    return JSONResponse({}, status_code=200)


# --8<-- [end:endpoints]


routes = [
    Route("/created", created, methods=["POST"]),
    Route("/redirected", redirected, methods=["POST"]),
    Route("/conflict", conflict, methods=["POST"]),
    Route("/by-hand", committed_by_hand, methods=["POST"]),
]

# --8<-- [start:modes]
autocommit_app = Starlette(
    routes=routes,
    middleware=[
        Middleware(UnitOfWorkMiddleware),  # commit_mode="autocommit": commit on 2xx
    ],
)
redirect_app = Starlette(
    routes=routes,
    middleware=[
        Middleware(UnitOfWorkMiddleware, commit_mode="autocommit_include_redirect"),  # 2xx, 3xx
    ],
)
manual_app = Starlette(
    routes=routes,
    middleware=[
        Middleware(UnitOfWorkMiddleware, commit_mode="manual"),  # never: roll back the rest
    ],
)
tuned_app = Starlette(
    routes=routes,
    middleware=[
        Middleware(UnitOfWorkMiddleware, extra_commit_statuses={409}, extra_rollback_statuses={201}),
    ],
)
# --8<-- [end:modes]
