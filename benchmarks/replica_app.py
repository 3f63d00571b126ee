"""The app uvicorn serves in the replica runs: reads in read-only request units.

``BENCH_URL`` is the primary; ``BENCH_REPLICA_URL``, if set, a replica of it.
"""

from __future__ import annotations

import os

from sqlalchemy import create_engine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import uow
from benchmarks import apps
from uow.starlette import UnitOfWorkMiddleware

_pool = {"pool_size": int(os.environ.get("BENCH_POOL", "5")), "max_overflow": 0, "pool_timeout": 10}
_replica = os.environ.get("BENCH_REPLICA_URL")
manager = uow.UnitOfWorkManager(
    create_engine(os.environ["BENCH_URL"], **_pool),
    replicas=[create_engine(_replica, pool_pre_ping=True, **_pool)] if _replica else (),
)


def read(request: Request) -> Response:
    return apps.as_json(manager.session.get(apps.User, int(request.path_params["id"])))


app = Starlette(
    routes=[Route("/users/{id:int}", read), Route("/plain", apps.plain)],
    middleware=[Middleware(UnitOfWorkMiddleware, manager=manager, read_only_methods={"GET", "HEAD"})],
)
