"""Observability: OpenTelemetry spans per unit, between the request's span and the statements' spans.

Run it:  python tracing.py   (it writes traced.db in the current directory, and prints the trace)
"""

import io
import json
from typing import Any

from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from sqlalchemy import String, create_engine, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import uow
import uow.otel
from uow.starlette import UnitOfWorkMiddleware


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)


class Credit(Base):
    __tablename__ = "credits"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int]


engine = create_engine("sqlite:///traced.db")
uow.enable_sqlite_savepoints(engine)
Base.metadata.drop_all(engine)
Base.metadata.create_all(engine)

# --8<-- [start:setup]
console = io.StringIO()  # ConsoleSpanExporter() alone writes to stdout; here one JSON span a line
provider = TracerProvider()
provider.add_span_processor(
    SimpleSpanProcessor(ConsoleSpanExporter(out=console, formatter=lambda span: span.to_json(None) + "\n"))
)

uow.otel.instrument(tracer_provider=provider)  # every manager's units, from now on
SQLAlchemyInstrumentor().instrument(  # the statements (it declares SQLAlchemy < 2.1: skip that check)
    engine=engine, tracer_provider=provider, skip_dep_check=True
)
uow.configure(engine)


@uow.transactional(propagation=uow.Propagation.NESTED)  # a savepoint: a span of its own
def grant_welcome_credit(user_id: int) -> None:
    uow.session.add(Credit(user_id=user_id))
    uow.session.flush()


def sign_up(request: Request) -> JSONResponse:
    user = User(email=request.query_params["email"])
    uow.session.add(user)
    uow.session.flush()
    grant_welcome_credit(user.id)
    users = uow.session.scalar(select(func.count(User.id)))
    return JSONResponse({"id": user.id, "users": users}, status_code=201)


app = Starlette(
    routes=[Route("/users", sign_up, methods=["POST"])],
    middleware=[
        Middleware(OpenTelemetryMiddleware, tracer_provider=provider),  # the request's span, outermost
        Middleware(UnitOfWorkMiddleware),
    ],
)
# --8<-- [end:setup]

SHOWN = ("uow.", "code.function.name", "db.statement", "http.status_code")


def print_tree(lines: list[str]) -> None:
    """Draw the spans the console exporter wrote as a tree, by their parent ids."""
    spans = [json.loads(line) for line in lines]
    children: dict[str | None, list[dict[str, Any]]] = {}
    for span in sorted(spans, key=lambda s: s["start_time"]):
        children.setdefault(span["parent_id"], []).append(span)

    def draw(parent: str | None, indent: str) -> None:
        for span in children.get(parent, []):
            attributes = {k: v for k, v in span["attributes"].items() if k.startswith(SHOWN)}
            status = " ERROR" if span["status"]["status_code"] == "ERROR" else ""
            shown = " ".join(f"{k}={' '.join(str(v).split())}" for k, v in attributes.items())
            print(f"{indent}{span['name']}{status}  {shown}".rstrip())
            draw(span["context"]["span_id"], indent + "    ")

    draw(None, "")


def main() -> None:
    with TestClient(app) as client:
        response = client.post("/users", params={"email": "ada@example.com"})
    print(response.status_code, response.json())
    print_tree(console.getvalue().splitlines())


if __name__ == "__main__":
    main()
