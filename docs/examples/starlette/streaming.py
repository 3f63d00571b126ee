"""The Starlette adapter: streaming responses read in a unit of their own.

Run it:  uvicorn streaming:app   (it writes streaming.db in the current directory)
"""

from collections.abc import Iterator

from sqlalchemy import String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

import uow
from uow.starlette import UnitOfWorkMiddleware


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)


engine = create_engine("sqlite:///streaming.db")
Base.metadata.create_all(engine)
uow.configure(engine)


# --8<-- [start:streaming]
def export_users(request: Request) -> StreamingResponse:
    uow.session.add(User(email=request.query_params["also"]))  # the request's unit

    def lines() -> Iterator[str]:
        # runs after the response started: the request's unit has committed and
        # closed its session, so this opens a unit of its own
        with uow.unit_of_work(read_only=True) as session:
            emails = session.scalars(select(User.email).order_by(User.id)).all()
        for email in emails:
            yield f"{email}\n"

    return StreamingResponse(lines(), media_type="text/plain")


# --8<-- [end:streaming]


app = Starlette(
    routes=[Route("/export", export_users)],
    middleware=[Middleware(UnitOfWorkMiddleware)],
)
