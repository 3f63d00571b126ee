"""After: the same commit mode, and a COMMIT that fails is answered 500."""

from sqlalchemy import String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import uow
from uow.starlette import UnitOfWorkMiddleware, lifespan


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)


engine = create_engine("sqlite:///advanced_alchemy.db")
Base.metadata.create_all(engine)


# --8<-- [start:after]
def create_user(request: Request) -> JSONResponse:
    uow.session.add(User(email=request.query_params["email"]))  # instead of get_sync_session
    return JSONResponse({"email": request.query_params["email"]}, status_code=201)


manager = uow.configure(engine)
app = Starlette(
    routes=[Route("/users", create_user, methods=["POST"])],
    middleware=[Middleware(UnitOfWorkMiddleware, commit_mode="autocommit")],  # the same mode
    lifespan=lifespan(manager),  # disposes the pool at shutdown, as the plugin did
)
# --8<-- [end:after]
