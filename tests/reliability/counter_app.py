"""An app for the two-process contention test: SERIALIZABLE increments with retry.

Served by uvicorn in separate processes; reads the database URL from
``UOW_COUNTER_DB_URL``.
"""

from __future__ import annotations

import os

from sqlalchemy import create_engine, select
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import uow
from tests.conftest import Counter
from uow.starlette import UnitOfWorkMiddleware, lifespan

engine = create_engine(os.environ["UOW_COUNTER_DB_URL"], pool_size=4, max_overflow=0)
manager = uow.configure(engine)
attempts = {"n": 0}


@uow.transactional(propagation=uow.Propagation.REQUIRES_NEW, isolation_level="SERIALIZABLE", retry=200)
def increment() -> int:
    attempts["n"] += 1
    counter = uow.session.scalars(select(Counter).where(Counter.id == 1)).one()
    counter.value += 1
    uow.session.flush()
    return counter.value


def inc(request: Request) -> JSONResponse:
    return JSONResponse({"value": increment(), "attempts": attempts["n"]})


app = Starlette(
    routes=[Route("/inc", inc, methods=["POST"])],
    middleware=[Middleware(UnitOfWorkMiddleware)],
    lifespan=lifespan(manager),
)
