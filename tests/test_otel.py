"""uow.otel: spans and metrics per unit, with the real OpenTelemetry SDK and its in-memory exporters.

Requests go through a real Starlette app behind opentelemetry-instrumentation-asgi's
middleware, and statements through opentelemetry-instrumentation-sqlalchemy on
the engine, on SQLite and PostgreSQL: the span tree is request → unit → statements.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from sqlalchemy import Engine, event, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

import uow
import uow.otel
import uow.replicas
from tests.conftest import Counter, Item, asyncio_and_trio, make_engine
from tests.examples import client
from uow.starlette import BackgroundTask, UnitOfWorkMiddleware


class Telemetry:
    """The SDK's providers with in-memory exporters, and what the tests read from them."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.tracer = self.tracer_provider.get_tracer("tests")

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if name is None or s.name == name]

    def one(self, name: str) -> ReadableSpan:
        (span,) = self.spans(name)
        return span

    def statements(self) -> list[ReadableSpan]:
        """The spans of opentelemetry-instrumentation-sqlalchemy (one per statement)."""
        return [s for s in self.spans() if s.attributes and "db.statement" in s.attributes]

    def statement(self, sql: str) -> ReadableSpan:
        """The one statement span whose SQL starts with *sql*."""
        (span,) = [s for s in self.statements() if str(_attr(s, "db.statement")).startswith(sql)]
        return span

    def inserts(self) -> list[ReadableSpan]:
        """The INSERT statement spans, in the order they ran."""
        found = [s for s in self.statements() if str(_attr(s, "db.statement")).startswith("INSERT")]
        return sorted(found, key=lambda s: s.start_time or 0)

    def points(self, name: str) -> dict[frozenset[tuple[str, Any]], float]:
        """The metric *name*: its value (a sum, or a histogram's count) per set of attributes."""
        found: dict[frozenset[tuple[str, Any]], float] = {}
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name != name or scope.scope.name != "uow":
                        continue
                    for point in metric.data.data_points:
                        key = frozenset((point.attributes or {}).items())
                        if isinstance(point, HistogramDataPoint):
                            found[key] = point.count
                        else:
                            assert isinstance(point, NumberDataPoint)
                            found[key] = point.value
        return found

    def total(self, name: str, **attributes: Any) -> float:
        """The sum of *name* over the points that have *attributes* (dots spelled as __)."""
        want = {k.replace("__", "."): v for k, v in attributes.items()}
        return sum(
            value for key, value in self.points(name).items() if all((k, v) in key for k, v in want.items())
        )


def _attr(span: ReadableSpan, key: str) -> Any:
    assert span.attributes is not None
    return span.attributes.get(key)


def _parent(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def _id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def _events(span: ReadableSpan, name: str) -> list[dict[str, Any]]:
    return [dict(e.attributes or {}) for e in span.events if e.name == name]


@pytest.fixture
def telemetry(caplog: pytest.LogCaptureFixture) -> Iterator[Telemetry]:
    telemetry = Telemetry()
    uow.otel.instrument(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider)
    try:
        yield telemetry
    finally:
        uow.otel.uninstrument()
        telemetry.meter_provider.shutdown()
        telemetry.tracer_provider.shutdown()
    # every context uow attached was detached where it was attached
    assert not [
        r for r in caplog.records if r.name.startswith("opentelemetry") and r.levelno >= logging.ERROR
    ]


def _instrument_engine(engine: Engine, telemetry: Telemetry) -> None:
    # the instrumentation declares SQLAlchemy < 2.1; its engine events are the same in 2.1
    SQLAlchemyInstrumentor().instrument(
        engine=engine, tracer_provider=telemetry.tracer_provider, skip_dep_check=True
    )


@pytest.fixture
def traced(engine: Engine, telemetry: Telemetry) -> Iterator[Engine]:
    """The suite's engine, its statements traced by opentelemetry-instrumentation-sqlalchemy."""
    _instrument_engine(engine, telemetry)
    yield engine
    SQLAlchemyInstrumentor().uninstrument()


def _app(telemetry: Telemetry, manager: uow.UnitOfWorkManager, *routes: Route) -> Starlette:
    return Starlette(
        routes=list(routes),
        middleware=[
            Middleware(
                OpenTelemetryMiddleware,
                tracer_provider=telemetry.tracer_provider,
                meter_provider=telemetry.meter_provider,
            ),
            Middleware(UnitOfWorkMiddleware, manager=manager),
        ],
    )


def _request_span(telemetry: Telemetry) -> ReadableSpan:
    (span,) = [s for s in telemetry.spans() if s.kind is SpanKind.SERVER]
    return span


# --- through a real app: request → unit → statements --------------------------------------


@pytest.mark.anyio
async def test_a_request_is_the_parent_of_its_unit_and_the_unit_of_its_statements(
    traced: Engine, telemetry: Telemetry, backend: str
) -> None:
    manager = uow.UnitOfWorkManager(traced)

    def create(request: Request) -> Response:  # a def endpoint: Starlette's threadpool
        item = Item(name="ada")
        manager.session.add(item)
        manager.session.flush()
        count = manager.session.scalar(select(func.count(Item.id)))
        return JSONResponse({"id": item.id, "count": count}, status_code=201)

    async with client(_app(telemetry, manager, Route("/items", create, methods=["POST"]))) as http:
        response = await http.post("/items")
    assert response.status_code == 201

    request = _request_span(telemetry)
    unit = telemetry.one("uow.unit")
    assert _parent(unit) == _id(request)
    assert unit.context is not None and request.context is not None
    assert unit.context.trace_id == request.context.trace_id
    insert, count = telemetry.statement("INSERT INTO items"), telemetry.statement("SELECT count")
    assert _parent(insert) == _parent(count) == _id(unit)
    assert all(_parent(s) == _id(unit) for s in telemetry.statements())
    # the response goes out after the unit ended: its send spans are the request's
    sends = [s for s in telemetry.spans() if s.name.endswith("http send")]
    assert sends and all(_parent(s) == _id(request) for s in sends)

    assert _attr(unit, "uow.outcome") == "commit"
    assert _attr(unit, "uow.propagation") == "REQUIRES_NEW"
    assert _attr(unit, "uow.read_only") is False
    assert _attr(unit, "uow.retries") == 0
    assert _attr(unit, "db.system") == backend
    assert unit.status.status_code is StatusCode.UNSET
    assert _attr(request, "uow.commit_mode") == "autocommit"
    assert _attr(request, "uow.response_status") == 201
    assert _attr(request, "uow.decision") == "commit"
    assert _attr(request, "uow.outcome") == "commit"


@pytest.mark.anyio  # an AsyncEngine: aiosqlite and asyncpg run on asyncio
async def test_an_async_endpoint_on_an_async_engine_has_the_same_tree(
    async_engine: AsyncEngine, telemetry: Telemetry, backend: str
) -> None:
    _instrument_engine(async_engine.sync_engine, telemetry)
    try:
        manager = uow.UnitOfWorkManager(async_engine)

        async def create(request: Request) -> Response:
            session = manager.current_session()
            session.add(Item(name="ada"))
            await session.flush()
            return PlainTextResponse("made", status_code=201)

        async with client(_app(telemetry, manager, Route("/items", create, methods=["POST"]))) as http:
            assert (await http.post("/items")).status_code == 201
    finally:
        SQLAlchemyInstrumentor().uninstrument()

    request = _request_span(telemetry)
    unit = telemetry.one("uow.unit")
    assert _parent(unit) == _id(request)
    (insert,) = telemetry.inserts()
    assert _parent(insert) == _id(unit)
    assert _attr(unit, "db.system") == backend
    assert _attr(unit, "uow.outcome") == _attr(request, "uow.outcome") == "commit"


@pytest.mark.anyio
async def test_a_unit_of_a_function_inside_a_request_nests_under_the_requests_unit(
    traced: Engine, telemetry: Telemetry
) -> None:
    manager = uow.UnitOfWorkManager(traced)

    @manager.transactional  # joins the request's unit: no span of its own
    def add(name: str) -> None:
        manager.session.add(Item(name=name))
        save_point(name + "!")

    @manager.transactional(propagation=uow.Propagation.NESTED)
    def save_point(name: str) -> None:
        manager.session.add(Item(name=name))
        manager.session.flush()

    def create(request: Request) -> Response:
        add("ada")
        return PlainTextResponse("made", status_code=201)

    async with client(_app(telemetry, manager, Route("/items", create, methods=["POST"]))) as http:
        assert (await http.post("/items")).status_code == 201

    unit = telemetry.one("uow.unit")
    savepoint = telemetry.one("uow.savepoint")
    assert _parent(unit) == _id(_request_span(telemetry))
    assert _parent(savepoint) == _id(unit)
    assert _attr(savepoint, "code.function.name") == f"{__name__}.{save_point.__qualname__}"
    assert _attr(savepoint, "uow.propagation") == "NESTED"
    assert _attr(savepoint, "uow.outcome") == "commit"
    # the savepoint's own work and its RELEASE are its children
    assert _parent(telemetry.statement("RELEASE SAVEPOINT")) == _id(savepoint)
    # SAVEPOINT first flushes what is pending (the joined unit's row), in the unit
    joined_row, savepoint_row = telemetry.inserts()
    assert _parent(joined_row) == _id(unit)
    assert _parent(savepoint_row) == _id(savepoint)


@pytest.mark.anyio
async def test_a_background_tasks_unit_is_a_child_of_the_request_not_of_its_ended_unit(
    traced: Engine, telemetry: Telemetry
) -> None:
    manager = uow.UnitOfWorkManager(traced)

    def welcome(name: str) -> None:
        manager.session.add(Item(name=name))

    def create(request: Request) -> Response:
        manager.session.add(Item(name="ada"))
        task = BackgroundTask(welcome, "welcome ada").using(manager)
        return PlainTextResponse("made", status_code=201, background=task)

    async with client(_app(telemetry, manager, Route("/items", create, methods=["POST"]))) as http:
        assert (await http.post("/items")).status_code == 201

    request = _request_span(telemetry)
    unit, background = sorted(telemetry.spans("uow.unit"), key=lambda s: s.start_time or 0)
    assert _parent(unit) == _parent(background) == _id(request)
    request_row, background_row = telemetry.inserts()
    assert _parent(request_row) == _id(unit)  # flushed by the COMMIT, on a finisher thread
    assert _parent(background_row) == _id(background)


@pytest.mark.anyio
async def test_a_failed_commit_is_an_error_on_the_unit_and_a_rollback_on_the_request(
    engine: Engine, telemetry: Telemetry, backend: str
) -> None:
    """A deferred foreign key fails at COMMIT itself: the client gets a 500, the unit's span says why."""
    engine.dispose()
    if backend == "sqlite":
        event.listen(engine, "connect", lambda conn, _: conn.execute("PRAGMA foreign_keys = ON"))
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS children"))
        conn.execute(text("DROP TABLE IF EXISTS parents"))
        conn.execute(text("CREATE TABLE parents (id INTEGER PRIMARY KEY)"))
        conn.execute(
            text(
                "CREATE TABLE children (id INTEGER PRIMARY KEY, parent_id INTEGER "
                "REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED)"
            )
        )
    _instrument_engine(engine, telemetry)
    try:
        manager = uow.UnitOfWorkManager(engine)

        def orphan(request: Request) -> Response:
            manager.session.execute(text("INSERT INTO children (id, parent_id) VALUES (1, 999)"))
            return PlainTextResponse("made", status_code=201)  # accepted until COMMIT checks

        app = _app(telemetry, manager, Route("/children", orphan, methods=["POST"]))
        async with client(app, raise_app_exceptions=False) as http:
            assert (await http.post("/children")).status_code == 500
    finally:
        SQLAlchemyInstrumentor().uninstrument()

    unit = telemetry.one("uow.unit")
    assert unit.status.status_code is StatusCode.ERROR
    assert "IntegrityError" in (unit.status.description or "")
    assert _attr(unit, "uow.outcome") == "rollback"
    assert _attr(unit, "uow.rollback_cause") == "commit_failed"
    (exception,) = _events(unit, "exception")
    assert "IntegrityError" in exception["exception.type"]
    request = _request_span(telemetry)
    assert _attr(request, "uow.decision") == "commit"  # the 201 asked for a commit...
    assert _attr(request, "uow.outcome") == "rollback"  # ...which failed
    assert _attr(request, "uow.response_status") == 201
    failed = telemetry.points("db.client.operation.duration")
    assert failed == {
        frozenset(
            {
                ("db.operation.name", "COMMIT"),
                ("db.system.name", backend),
                ("error.type", "sqlalchemy.exc.IntegrityError"),
            }
        ): 1
    }
    assert telemetry.total("uow.unit.rolled_back", uow__rollback_cause="commit_failed") == 1


@pytest.mark.anyio
async def test_a_status_that_does_not_commit_and_a_request_without_the_database(
    traced: Engine, telemetry: Telemetry
) -> None:
    manager = uow.UnitOfWorkManager(traced)

    def refuse(request: Request) -> Response:
        manager.session.add(Item(name="refused"))
        return PlainTextResponse("no", status_code=400)

    def plain(request: Request) -> Response:
        return PlainTextResponse("hello")

    app = _app(telemetry, manager, Route("/refuse", refuse, methods=["POST"]), Route("/plain", plain))
    async with client(app) as http:
        assert (await http.post("/refuse")).status_code == 400
        refused = telemetry.one("uow.unit")
        telemetry.exporter.clear()
        assert (await http.get("/plain")).status_code == 200
        plain_unit = telemetry.one("uow.unit")

    assert _attr(refused, "uow.outcome") == "rollback"
    assert _attr(refused, "uow.rollback_cause") == "request"
    assert refused.status.status_code is StatusCode.UNSET  # the app chose the status: no error of uow's
    assert _attr(plain_unit, "uow.outcome") == "commit"  # nothing to commit, nothing sent
    request = _request_span(telemetry)
    assert _attr(request, "uow.decision") == "commit"
    assert _attr(request, "uow.response_status") == 200
    assert telemetry.total("uow.unit.rolled_back", uow__rollback_cause="request") == 1


# --- retries, savepoints, joined units, hooks ---------------------------------------------


@pytest.fixture
def pg_traced(tmp_path: Path, telemetry: Telemetry) -> Iterator[Engine]:
    engine = make_engine("postgresql", tmp_path)
    with engine.begin() as conn:
        conn.execute(Counter.__table__.insert().values(id=1, value=0))  # type: ignore[attr-defined]
    _instrument_engine(engine, telemetry)
    yield engine
    SQLAlchemyInstrumentor().uninstrument()
    engine.dispose()


def test_a_retried_unit_shows_each_run_and_the_transient_error_between(
    pg_traced: Engine, telemetry: Telemetry
) -> None:
    """A real serialization failure (40001): a concurrent COMMIT lands between our snapshot and our UPDATE."""
    manager = uow.UnitOfWorkManager(pg_traced, retry_backoff=(0.001, 0.01))
    runs = 0

    @manager.transactional(isolation_level="REPEATABLE READ", retry=2)
    def increment() -> None:
        nonlocal runs
        runs += 1
        manager.session.scalar(select(Counter.value).where(Counter.id == 1))  # takes the snapshot
        if runs == 1:  # another connection commits an update of the row after our snapshot
            with pg_traced.begin() as conn:
                conn.execute(update(Counter).where(Counter.id == 1).values(value=Counter.value + 100))
        manager.session.execute(update(Counter).where(Counter.id == 1).values(value=Counter.value + 1))

    with telemetry.tracer.start_as_current_span("job") as job:
        increment()
    assert runs == 2

    first, second = sorted(telemetry.spans("uow.unit"), key=lambda s: s.start_time or 0)
    assert _parent(first) == _parent(second) == job.get_span_context().span_id
    assert _attr(first, "uow.retries") == 0
    assert _attr(first, "uow.outcome") == "rollback"
    assert first.status.status_code is StatusCode.ERROR
    assert "could not serialize" in _events(first, "exception")[0]["exception.message"]
    assert _attr(second, "uow.retries") == 1
    assert _attr(second, "uow.outcome") == "commit"
    assert _attr(second, "uow.isolation_level") == "REPEATABLE READ"
    assert second.status.status_code is StatusCode.UNSET
    (retry,) = _events(second, "uow.retry")
    assert retry["uow.attempt"] == 1
    assert retry["exception.type"] == "sqlalchemy.exc.OperationalError"
    assert "could not serialize" in retry["exception.message"]
    # each run's statements are its own
    for run in (first, second):
        mine = [s for s in telemetry.statements() if _parent(s) == _id(run)]
        assert any(str(_attr(s, "db.statement")).startswith("UPDATE counters") for s in mine)
    assert telemetry.total("uow.unit.retries") == 1
    assert telemetry.total("uow.unit.started", uow__kind="unit") == 2
    assert telemetry.total("uow.unit.committed", uow__kind="unit") == 1
    assert telemetry.total("uow.unit.rolled_back", uow__rollback_cause="exception") == 1


def test_nested_savepoints_nest_and_a_failed_one_is_an_error_of_its_own(
    traced: Engine, telemetry: Telemetry
) -> None:
    manager = uow.UnitOfWorkManager(traced)

    with manager.unit_of_work() as session:
        session.add(Item(name="outer"))
        with manager.unit_of_work(propagation=uow.Propagation.NESTED):
            with manager.unit_of_work(propagation=uow.Propagation.NESTED) as inner:
                inner.add(Item(name="inner"))
                inner.flush()
            with pytest.raises(ValueError), manager.unit_of_work(propagation=uow.Propagation.NESTED):
                manager.session.execute(select(Item.id))
                raise ValueError("undo this savepoint only")

    unit = telemetry.one("uow.unit")
    middle, inner_span, failed = sorted(telemetry.spans("uow.savepoint"), key=lambda s: s.start_time or 0)
    assert _parent(middle) == _id(unit)
    assert _parent(inner_span) == _parent(failed) == _id(middle)
    outer_row, inner_row = telemetry.inserts()
    assert _parent(outer_row) == _id(unit)  # flushed by the first SAVEPOINT, before it began
    assert _parent(inner_row) == _id(inner_span)
    assert _parent(telemetry.statement("SELECT items.id")) == _id(failed)
    assert _parent(telemetry.statement("ROLLBACK TO SAVEPOINT")) == _id(failed)
    assert failed.status.status_code is StatusCode.ERROR
    assert _attr(failed, "uow.outcome") == "rollback"
    assert _events(failed, "exception")[0]["exception.message"] == "undo this savepoint only"
    assert _attr(unit, "uow.outcome") == _attr(middle, "uow.outcome") == "commit"
    assert telemetry.total("uow.unit.started", uow__kind="savepoint") == 3
    assert telemetry.total("uow.unit.rolled_back", uow__kind="savepoint") == 1
    # the caller's context is back once the unit has ended
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_a_joined_unit_adds_no_span_and_its_caught_failure_is_an_unexpected_rollback(
    traced: Engine, telemetry: Telemetry
) -> None:
    manager = uow.UnitOfWorkManager(traced)

    @manager.transactional
    def joined() -> None:
        manager.session.execute(select(Item.id))
        raise LookupError("the joined unit failed")

    @manager.transactional
    def outer() -> None:
        with contextlib.suppress(LookupError):  # caught: the outer unit is rollback-only all the same
            joined()

    with pytest.raises(uow.UnexpectedRollback):
        outer()

    (unit,) = telemetry.spans("uow.unit")  # the joined unit has none of its own
    assert telemetry.spans("uow.savepoint") == []
    assert _attr(unit, "code.function.name") == f"{__name__}.{outer.__qualname__}"
    assert _attr(unit, "uow.outcome") == "rollback"
    assert _attr(unit, "uow.rollback_cause") == "rollback_only"
    assert unit.status.status_code is StatusCode.ERROR
    (unexpected,) = _events(unit, "uow.unexpected_rollback")
    assert unexpected["exception.type"] == "LookupError"
    assert unexpected["exception.message"] == "the joined unit failed"
    assert "UnexpectedRollback" in _events(unit, "exception")[0]["exception.type"]
    assert _parent(telemetry.statement("SELECT items.id")) == _id(unit)
    assert telemetry.total("uow.unit.rolled_back", uow__rollback_cause="rollback_only") == 1


def test_failed_hooks_are_events_and_counted(traced: Engine, telemetry: Telemetry) -> None:
    manager = uow.UnitOfWorkManager(traced)

    def broken() -> None:
        raise RuntimeError("the mail server is down")

    with manager.unit_of_work():
        manager.session.add(Item(name="robust"))
        manager.on_commit(broken, robust=True)  # logged, the unit stands
    with pytest.raises(uow.HookError), manager.unit_of_work():
        manager.session.add(Item(name="strict"))
        manager.on_commit(broken)

    robust, strict = sorted(telemetry.spans("uow.unit"), key=lambda s: s.start_time or 0)
    for span in (robust, strict):
        assert _attr(span, "uow.outcome") == "commit"
        (failed,) = _events(span, "uow.hook_failed")
        assert failed["uow.hook"] == "on_commit"
        assert failed["exception.message"] == "the mail server is down"
        assert failed["code.function.name"].endswith("broken")
    assert robust.status.status_code is StatusCode.UNSET
    assert strict.status.status_code is StatusCode.ERROR  # the call raised HookError
    assert telemetry.total("uow.hook.failures", uow__hook="on_commit") == 2


def test_metrics_count_units_by_outcome_and_time_them(
    traced: Engine, telemetry: Telemetry, backend: str
) -> None:
    manager = uow.UnitOfWorkManager(traced)
    for name in ("a", "b"):
        with manager.unit_of_work() as session:
            session.add(Item(name=name))
    with pytest.raises(KeyError), manager.unit_of_work():
        raise KeyError("no")
    with manager.unit_of_work(read_only=True) as session:
        session.scalar(select(func.count(Item.id)))  # a read-only unit sends no COMMIT

    unit = {("uow.kind", "unit"), ("db.system.name", backend)}
    assert telemetry.points("uow.unit.started") == {frozenset(unit): 4}
    assert telemetry.points("uow.unit.committed") == {frozenset(unit): 3}
    assert telemetry.points("uow.unit.rolled_back") == {
        frozenset(unit | {("uow.rollback_cause", "exception")}): 1
    }
    assert telemetry.points("uow.unit.duration") == {frozenset(unit): 4}
    commits = telemetry.points("db.client.operation.duration")
    expected_commits = 3 if backend == "postgresql" else 2  # PostgreSQL ends READ ONLY with COMMIT
    assert commits == {
        frozenset({("db.operation.name", "COMMIT"), ("db.system.name", backend)}): expected_commits
    }


# --- async units ---------------------------------------------------------------------------


@pytest.mark.anyio  # an AsyncEngine: aiosqlite and asyncpg run on asyncio
async def test_async_session_units_and_savepoints(
    async_engine: AsyncEngine, telemetry: Telemetry, backend: str
) -> None:
    uow.enable_sqlite_savepoints(async_engine)
    _instrument_engine(async_engine.sync_engine, telemetry)
    try:
        manager = uow.UnitOfWorkManager(async_engine)

        @manager.transactional
        async def write() -> None:
            session = manager.current_session()
            session.add(Item(name="async"))
            await session.flush()
            async with manager.unit_of_work(propagation=uow.Propagation.NESTED) as inner:
                await inner.execute(select(Item.id))

        with telemetry.tracer.start_as_current_span("task") as task:
            await write()
            assert trace.get_current_span() is task  # detached in the task that attached it
    finally:
        SQLAlchemyInstrumentor().uninstrument()

    unit = telemetry.one("uow.unit")
    savepoint = telemetry.one("uow.savepoint")
    assert _parent(unit) == task.get_span_context().span_id
    assert _parent(savepoint) == _id(unit)
    assert _parent(telemetry.statement("INSERT INTO items")) == _id(unit)
    assert _parent(telemetry.statement("SELECT items.id")) == _id(savepoint)
    assert _parent(telemetry.statement("RELEASE SAVEPOINT")) == _id(savepoint)
    assert _attr(unit, "db.system") == backend
    assert _attr(unit, "uow.outcome") == _attr(savepoint, "uow.outcome") == "commit"


@pytest.mark.anyio
@asyncio_and_trio
async def test_async_def_on_a_sync_engine_traces_its_worker_threads(
    traced: Engine, telemetry: Telemetry
) -> None:
    """The body's run_sync threads and the savepoint's end on a finisher thread see the unit's span."""
    manager = uow.UnitOfWorkManager(traced)

    def count() -> int:
        return int(manager.session.scalar(select(func.count(Item.id))) or 0)

    @manager.transactional
    async def work() -> int:
        async with manager.unit_of_work(propagation=uow.Propagation.NESTED):
            return await manager.run_sync(count)

    assert await work() == 0
    unit = telemetry.one("uow.unit")
    savepoint = telemetry.one("uow.savepoint")
    assert _parent(savepoint) == _id(unit)
    assert _parent(telemetry.statement("SELECT count")) == _id(savepoint)
    assert _parent(telemetry.statement("RELEASE SAVEPOINT")) == _id(savepoint)
    assert trace.get_current_span() is trace.INVALID_SPAN


# --- on and off ------------------------------------------------------------------------------


def test_uninstrument_stops_spans_and_metrics(traced: Engine, telemetry: Telemetry) -> None:
    manager = uow.UnitOfWorkManager(traced)
    with manager.unit_of_work() as session:
        session.add(Item(name="seen"))
    uow.otel.uninstrument()
    with manager.unit_of_work() as session:
        session.add(Item(name="unseen"))
        session.flush()

    (unit,) = telemetry.spans("uow.unit")
    seen, unseen = telemetry.inserts()
    assert _parent(seen) == _id(unit)
    assert _parent(unseen) is None  # traced by SQLAlchemy's instrumentation, with no unit above it
    assert telemetry.total("uow.unit.started") == 1


def test_instrument_without_providers_uses_the_global_ones() -> None:
    """The global providers can be set once per process: this runs in a process of its own."""
    code = (
        "from opentelemetry import trace\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from opentelemetry.sdk.trace.export import SimpleSpanProcessor\n"
        "from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter\n"
        "from sqlalchemy import create_engine\n"
        "import uow, uow.otel\n"
        "uow.otel.instrument()  # before the global provider is set: OpenTelemetry's proxy follows it\n"
        "exporter = InMemorySpanExporter()\n"
        "provider = TracerProvider()\n"
        "provider.add_span_processor(SimpleSpanProcessor(exporter))\n"
        "trace.set_tracer_provider(provider)\n"
        "with uow.UnitOfWorkManager(create_engine('sqlite://')).unit_of_work():\n"
        "    pass\n"
        "assert [s.name for s in exporter.get_finished_spans()] == ['uow.unit']\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


def test_import_uow_imports_no_opentelemetry() -> None:
    code = (
        "import sys, uow, uow.starlette, uow.testing\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'opentelemetry')\n"
        "assert not loaded, loaded\n"
        "import uow.otel\n"
        "assert 'opentelemetry.trace' in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


def test_a_unit_on_a_manager_with_replicas_names_the_database_that_served_it(
    tmp_path: Path, telemetry: Telemetry
) -> None:
    (tmp_path / "primary").mkdir()
    (tmp_path / "replica").mkdir()
    primary = make_engine("sqlite", tmp_path / "primary")
    replica = make_engine("sqlite", tmp_path / "replica")
    manager = uow.UnitOfWorkManager(
        primary, replicas=[replica], routing=uow.replicas.Routing(read_your_writes="off")
    )
    try:
        with manager.unit_of_work(read_only=True) as session:
            session.scalar(select(func.count()).select_from(Item))
        with manager.unit_of_work() as session:
            session.add(Item(name="on the primary"))
    finally:
        primary.dispose()
        replica.dispose()
    served = [_attr(span, "uow.served_by") for span in telemetry.spans("uow.unit")]
    assert served == [replica.url.render_as_string(hide_password=True), manager.name]
    assert served[0] != served[1]
