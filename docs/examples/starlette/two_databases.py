"""Two databases in one request: the one most likely to fail at COMMIT goes innermost.

Run it:  uvicorn two_databases:app   (it writes orders.db and audit.db in the current directory)
"""

from sqlalchemy import String, create_engine
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


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    reference: Mapped[str] = mapped_column(String(40), unique=True)


class AuditLine(Base):
    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(primary_key=True)
    line: Mapped[str] = mapped_column(String(200))


orders = uow.UnitOfWorkManager(create_engine("sqlite:///orders.db"), name="orders")
audit = uow.UnitOfWorkManager(create_engine("sqlite:///audit.db"), name="audit")
Base.metadata.create_all(orders.engine, tables=[Order.__table__])  # type: ignore[list-item]
Base.metadata.create_all(audit.engine, tables=[AuditLine.__table__])  # type: ignore[list-item]


def place_order(request: Request) -> JSONResponse:
    reference = request.query_params["reference"]
    orders.session.add(Order(reference=reference))  # a duplicate fails at COMMIT
    audit.session.add(AuditLine(line=f"order {reference} placed"))
    return JSONResponse({"reference": reference}, status_code=201)


# --8<-- [start:stack]
app = Starlette(
    routes=[Route("/orders", place_order, methods=["POST"])],
    middleware=[
        Middleware(UnitOfWorkMiddleware, manager=audit),  # outer: commits second
        Middleware(UnitOfWorkMiddleware, manager=orders),  # inner: commits first; may fail
    ],
)
# --8<-- [end:stack]
