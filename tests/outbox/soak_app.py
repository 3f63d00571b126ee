"""The app of the soak test, served by a real uvicorn process: every request enqueues one message.

``/ok/{i}`` answers 201; ``/bad/{i}`` 400 and ``/fail/{i}`` an exception (500), both rolled back;
``/kill/{i}`` commits and the process is killed (SIGKILL) before its message is published.
"""

from __future__ import annotations

import os
import signal

from celery import Celery
from sqlalchemy import MetaData, create_engine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import uow
from uow.outbox import Outbox, outbox_table
from uow.outbox.celery import CeleryPublisher
from uow.starlette import UnitOfWorkMiddleware

celery_app = Celery("uow_soak_app", broker=os.environ["UOW_TEST_REDIS_URL"])
manager = uow.UnitOfWorkManager(create_engine(os.environ["UOW_TEST_POSTGRES_URL"], pool_size=10))
# a short lease: what a killed process claimed is taken over by the test's relay two seconds later
outbox = Outbox(
    manager, publisher=CeleryPublisher(celery_app), table=outbox_table(MetaData(), "outbox_soak"), lease=2.0
)


def ok(request: Request) -> JSONResponse:
    return JSONResponse({"id": outbox.enqueue("outbox.record", int(request.path_params["i"]))}, 201)


def bad(request: Request) -> JSONResponse:
    return JSONResponse({"id": outbox.enqueue("outbox.record", int(request.path_params["i"]))}, 400)


def fail(request: Request) -> JSONResponse:
    outbox.enqueue("outbox.record", int(request.path_params["i"]))
    raise RuntimeError("the endpoint fails after enqueueing")


def kill(request: Request) -> JSONResponse:
    manager.on_commit(lambda: os.kill(os.getpid(), signal.SIGKILL))  # runs before the outbox's hook
    return JSONResponse({"id": outbox.enqueue("outbox.record", int(request.path_params["i"]))}, 201)


app = Starlette(
    routes=[
        Route(f"/{name}/{{i}}", fn, methods=["POST"])
        for name, fn in [("ok", ok), ("bad", bad), ("fail", fail), ("kill", kill)]
    ],
    middleware=[Middleware(UnitOfWorkMiddleware, manager=manager)],
)
