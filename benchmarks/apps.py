"""One app per pattern, each written the way its users write it.

Every app serves ``GET /users/{id}`` (a primary-key read) and ``POST /users``
(an insert) from the same database; ``GET /plain`` never touches it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

from fastapi import Depends, FastAPI
from fastapi import Request as FastAPIRequest
from sqlalchemy import Engine, String, create_engine, insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import uow
from uow._threads import finish
from uow.starlette import UnitOfWorkMiddleware, provide_session


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "bench_users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200))


ROWS = 1000
_emails = itertools.count()


def prepare(url: str, **engine_kw: Any) -> Engine:
    """Create the table with ROWS users; return a sync engine."""
    engine = create_engine(url, **engine_kw)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(User), [{"email": f"user{i}@example.com"} for i in range(ROWS)])
    return engine


def email() -> str:
    return f"new{next(_emails)}@example.com"


def as_json(user: User | None) -> Response:
    if user is None:
        return JSONResponse({"detail": "not found"}, status_code=404)
    return JSONResponse({"id": user.id, "email": user.email})


async def plain(request: Request) -> Response:
    return PlainTextResponse("ok")


# --- the floor: a sync Starlette endpoint that opens and closes its own session -----------


def handwritten(engine: Engine) -> ASGIApp:
    factory = sessionmaker(engine, expire_on_commit=False)

    def read(request: Request) -> Response:
        with factory() as session:
            return as_json(session.get(User, int(request.path_params["id"])))

    def write(request: Request) -> Response:
        with factory.begin() as session:
            user = User(email=email())
            session.add(user)
            session.flush()
            return JSONResponse({"id": user.id}, status_code=201)

    return Starlette(routes=_routes(read, write))


def _routes(read: Callable[..., Any], write: Callable[..., Any]) -> list[Route]:
    return [
        Route("/users/{id:int}", read),
        Route("/users", write, methods=["POST"]),
        Route("/plain", plain),
    ]


# --- references: what any pattern of a kind costs at least -------------------------------------


class PassThrough:
    """A pure ASGI middleware that only wraps ``send``: the least a request middleware costs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def wrapped(message: Message) -> None:
            await send(message)

        await self.app(scope, receive, wrapped)


#: where LeastRequestUnit puts its request (as UnitOfWorkMiddleware puts its own for ``uow.session``)
_least_request: ContextVar[_LeastRequest | None] = ContextVar("least_request", default=None)


class LeastRequestUnit:
    """The least a middleware that keeps a unit per request does, and nothing else.

    A per-request object in a context variable (so that code in the request
    can find it), with ``receive`` and ``send`` wrapped through it (to see a
    client leave, and the response start). No decision, no manager: the
    floor under UnitOfWorkMiddleware itself.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = _LeastRequest(receive, send)
        token = _least_request.set(request)
        try:
            await self.app(scope, request.receive, request.send)
        finally:
            _least_request.reset(token)


class _LeastRequest:
    __slots__ = ("_receive", "_send")

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send

    async def receive(self) -> Message:
        return await self._receive()

    async def send(self, message: Message) -> None:
        await self._send(message)


class OneThreadHop:
    """Before the response starts, one trip to a thread and back (uow's own finisher hand-off)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                await finish(_nothing)
            await send(message)

        await self.app(scope, receive, wrapped)


def _nothing() -> None:
    return None


def pass_through(engine: Engine) -> ASGIApp:
    """The hand-written app (the same routes as every pattern) behind :class:`PassThrough`."""
    return PassThrough(handwritten(engine))


def handwritten_commit(engine: Engine) -> ASGIApp:
    """The floor for a unit of work: the hand-written endpoint, committing its read."""
    factory = sessionmaker(engine, expire_on_commit=False)

    def read(request: Request) -> Response:
        with factory.begin() as session:
            return as_json(session.get(User, int(request.path_params["id"])))

    return Starlette(routes=[Route("/users/{id:int}", read)])


def handwritten_commit_hop(engine: Engine) -> ASGIApp:
    """The floor for a request middleware that ends the session off the loop: the above + one hop."""
    return OneThreadHop(handwritten_commit(engine))


# --- what tutorials teach ----------------------------------------------------------------


def tutorial_middleware(engine: Engine) -> ASGIApp:
    """FastAPI's ``@app.middleware("http")`` with the session on ``request.state``."""
    factory = sessionmaker(engine, expire_on_commit=False)
    app = FastAPI()

    @app.middleware("http")
    async def db_session_middleware(request: FastAPIRequest, call_next: Any) -> Response:
        request.state.db = factory()
        try:
            response: Response = await call_next(request)
        finally:
            request.state.db.close()
        return response

    @app.get("/users/{user_id}")
    def read(user_id: int, request: FastAPIRequest) -> Response:
        return as_json(request.state.db.get(User, user_id))

    @app.post("/users", status_code=201)
    def write(request: FastAPIRequest) -> dict[str, int]:
        db = request.state.db
        user = User(email=email())
        db.add(user)
        db.commit()
        return {"id": user.id}

    app.add_api_route("/plain", plain)
    return app


class CommitAfterCallNext(BaseHTTPMiddleware):
    """Commits after ``call_next``, rolls back on exception, closes in ``finally``."""

    def __init__(self, app: ASGIApp, factory: sessionmaker[Session]) -> None:
        super().__init__(app)
        self.factory = factory

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        session = request.state.db = self.factory()
        try:
            response = await call_next(request)
            session.commit()
            return response
        except Exception:
            session.rollback()
            raise
        finally:
            session.close()


def base_http_middleware(engine: Engine) -> ASGIApp:
    factory = sessionmaker(engine, expire_on_commit=False)

    async def read(request: Request) -> Response:  # an async endpoint, as users write it
        return as_json(request.state.db.get(User, int(request.path_params["id"])))

    async def write(request: Request) -> Response:
        user = User(email=email())
        request.state.db.add(user)
        request.state.db.flush()
        return JSONResponse({"id": user.id}, status_code=201)

    return Starlette(
        routes=_routes(read, write), middleware=[Middleware(CommitAfterCallNext, factory=factory)]
    )


def depends_get_db(engine: Engine) -> ASGIApp:
    """FastAPI's ``Depends(get_db)`` generator dependency."""
    factory = sessionmaker(engine, expire_on_commit=False)

    def get_db() -> Iterator[Session]:
        db = factory()
        try:
            yield db
        finally:
            db.close()

    app = FastAPI()

    @app.get("/users/{user_id}")
    def read(user_id: int, db: Session = Depends(get_db)) -> Response:
        return as_json(db.get(User, user_id))

    @app.post("/users", status_code=201)
    def write(db: Session = Depends(get_db)) -> dict[str, int]:
        user = User(email=email())
        db.add(user)
        db.commit()
        return {"id": user.id}

    app.add_api_route("/plain", plain)
    return app


# --- libraries from PyPI --------------------------------------------------------------------


def fastapi_sqlalchemy(engine: Engine) -> ASGIApp:
    from fastapi_sqlalchemy import DBSessionMiddleware, db

    app = FastAPI()
    app.add_middleware(DBSessionMiddleware, custom_engine=engine, session_args={"expire_on_commit": False})

    @app.get("/users/{user_id}")
    def read(user_id: int) -> Response:
        return as_json(db.session.get(User, user_id))

    @app.post("/users", status_code=201)
    def write() -> dict[str, int]:
        user = User(email=email())
        db.session.add(user)
        db.session.commit()
        return {"id": user.id}

    app.add_api_route("/plain", plain)
    return app


def advanced_alchemy(engine: Engine) -> ASGIApp:
    from advanced_alchemy.extensions.fastapi import AdvancedAlchemy, SQLAlchemySyncConfig

    app = FastAPI()
    alchemy = AdvancedAlchemy(
        config=SQLAlchemySyncConfig(engine_instance=engine, commit_mode="autocommit"), app=app
    )
    session_dep = alchemy.provide_session()

    @app.get("/users/{user_id}")
    def read(user_id: int, db: Session = Depends(session_dep)) -> Response:
        return as_json(db.get(User, user_id))

    @app.post("/users", status_code=201)
    def write(db: Session = Depends(session_dep)) -> dict[str, int]:
        user = User(email=email())
        db.add(user)
        db.flush()
        return {"id": user.id}

    app.add_api_route("/plain", plain)
    return app


# --- uow ---------------------------------------------------------------------------------------


def uow_transactional(engine: Engine) -> ASGIApp:
    """``@transactional`` on a sync Starlette endpoint, no middleware."""
    manager = uow.UnitOfWorkManager(engine)

    @manager.transactional(read_only=False)
    def read(request: Request) -> Response:
        return as_json(manager.session.get(User, int(request.path_params["id"])))

    @manager.transactional
    def write(request: Request) -> Response:
        user = User(email=email())
        manager.session.add(user)
        manager.session.flush()
        return JSONResponse({"id": user.id}, status_code=201)

    return Starlette(routes=_routes(read, write))


def uow_middleware(engine: Engine) -> ASGIApp:
    """``UnitOfWorkMiddleware`` on Starlette, sync endpoints using ``manager.session``."""
    manager = uow.UnitOfWorkManager(engine)

    def read(request: Request) -> Response:
        return as_json(manager.session.get(User, int(request.path_params["id"])))

    def write(request: Request) -> Response:
        user = User(email=email())
        manager.session.add(user)
        manager.session.flush()
        return JSONResponse({"id": user.id}, status_code=201)

    return Starlette(
        routes=_routes(read, write), middleware=[Middleware(UnitOfWorkMiddleware, manager=manager)]
    )


def uow_fastapi_transactional(engine: Engine) -> ASGIApp:
    """FastAPI, ``@transactional`` on the endpoint, no middleware, no dependency."""
    manager = uow.UnitOfWorkManager(engine)
    app = FastAPI()

    @app.get("/users/{user_id}")
    @manager.transactional
    def read(user_id: int) -> Response:
        return as_json(manager.session.get(User, user_id))

    @app.post("/users", status_code=201)
    @manager.transactional
    def write() -> dict[str, int]:
        user = User(email=email())
        manager.session.add(user)
        manager.session.flush()
        return {"id": user.id}

    app.add_api_route("/plain", plain)
    return app


def uow_fastapi_provide_session(engine: Engine) -> ASGIApp:
    """FastAPI + ``UnitOfWorkMiddleware`` + ``Depends(provide_session)``."""
    manager = uow.configure(engine)
    app = FastAPI(middleware=[Middleware(UnitOfWorkMiddleware, manager=manager)])

    @app.get("/users/{user_id}")
    def read(user_id: int, db: Session = Depends(provide_session)) -> Response:
        return as_json(db.get(User, user_id))

    @app.post("/users", status_code=201)
    def write(db: Session = Depends(provide_session)) -> dict[str, int]:
        user = User(email=email())
        db.add(user)
        db.flush()
        return {"id": user.id}

    app.add_api_route("/plain", plain)
    return app


def uow_async(async_engine: AsyncEngine) -> ASGIApp:
    """``UnitOfWorkMiddleware`` with an ``AsyncEngine``: async endpoints await the session."""
    manager = uow.UnitOfWorkManager(async_engine)

    async def read(request: Request) -> Response:
        session: AsyncSession = manager.current_session()
        return as_json(await session.get(User, int(request.path_params["id"])))

    async def write(request: Request) -> Response:
        session: AsyncSession = manager.current_session()
        user = User(email=email())
        session.add(user)
        await session.flush()
        return JSONResponse({"id": user.id}, status_code=201)

    return Starlette(
        routes=_routes(read, write), middleware=[Middleware(UnitOfWorkMiddleware, manager=manager)]
    )


def async_handwritten(async_engine: AsyncEngine) -> ASGIApp:
    """The async floor: an async endpoint with its own ``AsyncSession``."""
    factory = async_sessionmaker(async_engine, expire_on_commit=False)

    async def read(request: Request) -> Response:
        async with factory() as session:
            return as_json(await session.get(User, int(request.path_params["id"])))

    async def write(request: Request) -> Response:
        async with factory.begin() as session:
            user = User(email=email())
            session.add(user)
            await session.flush()
            return JSONResponse({"id": user.id}, status_code=201)

    return Starlette(routes=_routes(read, write))


#: name -> (builder, kind, needs): kind "sync" builders take an Engine, "async" an AsyncEngine
PATTERNS: dict[str, tuple[Callable[[Any], ASGIApp], str]] = {
    "hand-written (floor)": (handwritten, "sync"),
    "tutorial request.state middleware": (tutorial_middleware, "sync"),
    "BaseHTTPMiddleware commit after call_next": (base_http_middleware, "sync"),
    "FastAPI Depends(get_db)": (depends_get_db, "sync"),
    "fastapi-sqlalchemy": (fastapi_sqlalchemy, "sync"),
    "advanced-alchemy (FastAPI, autocommit)": (advanced_alchemy, "sync"),
    "uow @transactional (Starlette)": (uow_transactional, "sync"),
    "uow UnitOfWorkMiddleware (Starlette)": (uow_middleware, "sync"),
    "uow @transactional (FastAPI)": (uow_fastapi_transactional, "sync"),
    "uow middleware + provide_session (FastAPI)": (uow_fastapi_provide_session, "sync"),
    "hand-written AsyncSession (async floor)": (async_handwritten, "async"),
    "uow middleware + AsyncSession": (uow_async, "async"),
}
#: name -> (builder, the requests it answers): measured at concurrency 1 only, beside the patterns
REFERENCES: dict[str, tuple[Callable[[Engine], ASGIApp], tuple[str, ...]]] = {
    "pass-through ASGI middleware (reference)": (pass_through, ("plain",)),
    "hand-written, commits (reference)": (handwritten_commit, ("read",)),
    "hand-written, commits, + one thread hop (reference)": (handwritten_commit_hop, ("read",)),
}
FASTAPI_ALTERNATIVES = (
    "tutorial request.state middleware",
    "FastAPI Depends(get_db)",
    "fastapi-sqlalchemy",
    "advanced-alchemy (FastAPI, autocommit)",
)


def async_engine_for(url: str, **kw: Any) -> AsyncEngine:
    return create_async_engine(url.replace("sqlite://", "sqlite+aiosqlite://", 1), **kw)
