"""Observability: a unit's time budget (``timeout=``), in a function and through the request middleware.

Run it:  python timeouts.py   (it writes timeouts.db in the current directory)
"""

import asyncio
import time

import httpx
from sqlalchemy import String, create_engine, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import uow
from uow.starlette import UnitOfWorkMiddleware


class Base(DeclarativeBase):
    pass


class Report(Base):
    __tablename__ = "reports"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))


engine = create_engine("sqlite:///timeouts.db")
uow.configure(engine)

#: a query that runs for minutes: a stand-in for the report nobody expected to be slow
SLOW_QUERY = text(
    "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n WHERE x < 1e9"
)


# --8<-- [start:timeout]
@uow.transactional(timeout=1.0)  # the whole unit: one second from its start
def monthly_report() -> int:
    uow.session.add(Report(title="monthly"))
    uow.session.flush()
    return int(uow.session.scalar(SLOW_QUERY) or 0)  # stopped by the database at the budget


# --8<-- [end:timeout]


# --8<-- [start:middleware]
def report(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(monthly_report_in_request()), status_code=201)


def monthly_report_in_request() -> int:  # joins the request's unit and its budget
    uow.session.add(Report(title="from a request"))
    uow.session.flush()
    return int(uow.session.scalar(SLOW_QUERY) or 0)


app = Starlette(
    routes=[Route("/report", report, methods=["POST"])],
    middleware=[Middleware(UnitOfWorkMiddleware, timeout=1.0)],  # each request's unit: 1 s
)
# --8<-- [end:middleware]


async def call_the_app() -> int:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # the server logs the error
    async with httpx.AsyncClient(transport=transport, base_url="http://example") as client:
        response = await client.post("/report")
    return response.status_code


def main() -> None:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    try:
        # --8<-- [start:use-timeout]
        started = time.monotonic()
        try:
            monthly_report()
        except uow.UnitTimeout as e:  # rolled back; the database's own error is the cause
            assert time.monotonic() - started >= 1.0  # never before the budget
            print(f"timed out: {type(e.__cause__).__name__}")
        # --8<-- [end:use-timeout]
        print(f"request answered {asyncio.run(call_the_app())}")
        with uow.unit_of_work(read_only=True) as session:
            print(f"reports kept: {session.scalars(select(Report.title)).all()}")
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
