"""The Starlette adapter: a lifespan that disposes of the pool at shutdown.

Run it:  uvicorn lifespan:app   (it writes lifespan.db in the current directory)
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from starlette.applications import Starlette
from starlette.middleware import Middleware

import uow
from uow.starlette import UnitOfWorkMiddleware, lifespan


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)


# --8<-- [start:lifespan]
manager = uow.configure(create_engine("sqlite:///lifespan.db"))


@asynccontextmanager
async def startup(app: Starlette) -> AsyncIterator[dict[str, str]]:
    async with uow.unit_of_work() as session:  # create the tables at start-up
        await uow.run_sync(lambda: Base.metadata.create_all(session.connection()))
    yield {"greeting": "hello"}  # the app's state, as with any lifespan


app = Starlette(
    middleware=[Middleware(UnitOfWorkMiddleware)],
    lifespan=lifespan(manager, app_lifespan=startup),  # yours runs first; then dispose
)
# --8<-- [end:lifespan]
