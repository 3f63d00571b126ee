"""OpenTelemetry traces and metrics for every unit of work: :func:`instrument`, :func:`uninstrument`.

Needs ``opentelemetry-api`` only (``pip install uow[otel]``); the SDK, exporters
and other instrumentations are the application's choice. Once instrumented,
every manager's outermost units and savepoints get a span (``uow.unit``,
``uow.savepoint``) that is current while the unit runs, so the statement spans
of ``opentelemetry-instrumentation-sqlalchemy`` are its children, and is itself
a child of whatever span was current (the request span of
``opentelemetry-instrumentation-asgi``). A unit that joins another adds nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from time import perf_counter
from typing import Any

from opentelemetry import context, metrics, trace
from opentelemetry.trace import SpanKind, StatusCode

from . import __version__, _observe
from ._observe import RollbackCause
from ._options import UnitOptions
from .exceptions import UnexpectedRollback

__all__ = ["instrument", "uninstrument"]

#: bucket boundaries in seconds, as the semantic conventions advise for database operations
_DURATION_BUCKETS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0]


def instrument(
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> None:
    """Trace and measure the units of every manager from now on.

    Without providers, OpenTelemetry's global ones are used. Calling it again
    replaces the providers; units already running keep the ones they began with.
    """
    tracer = trace.get_tracer("uow", __version__, tracer_provider=tracer_provider)
    meter = metrics.get_meter("uow", __version__, meter_provider=meter_provider)
    _observe.observer = _Observer(tracer, meter)


def uninstrument() -> None:
    """Stop tracing and measuring units (those already running end as they began)."""
    _observe.observer = None


class _Observer:
    """Makes a :class:`_Unit` for each unit that begins; holds the tracer and the instruments."""

    def __init__(self, tracer: trace.Tracer, meter: metrics.Meter) -> None:
        self.tracer = tracer
        self.started = meter.create_counter(
            "uow.unit.started", unit="{unit}", description="Units of work and savepoints begun"
        )
        self.committed = meter.create_counter(
            "uow.unit.committed", unit="{unit}", description="Units committed and savepoints released"
        )
        self.rolled_back = meter.create_counter(
            "uow.unit.rolled_back",
            unit="{unit}",
            description="Units and savepoints rolled back, by uow.rollback_cause",
        )
        self.retries = meter.create_counter(
            "uow.unit.retries", unit="{retry}", description="Runs of a unit again after a transient error"
        )
        self.hook_failures = meter.create_counter(
            "uow.hook.failures", unit="{failure}", description="on_commit and on_rollback hooks that raised"
        )
        self.duration = meter.create_histogram(
            "uow.unit.duration",
            unit="s",
            description="From a unit's start to the end of its COMMIT or ROLLBACK and its hooks",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.commit_duration = meter.create_histogram(
            "db.client.operation.duration",
            unit="s",
            description="Duration of the COMMIT of a unit (and the close of its session)",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )

    def start(
        self,
        *,
        options: UnitOptions,
        savepoint: bool,
        db_system: str | None,
        function: Any,
        attempt: int,
        retried: BaseException | None,
    ) -> _Unit:
        return _Unit(self, options, savepoint, db_system, function, attempt, retried)


class _Unit:
    """One unit's span, current from its start until the block that entered it leaves."""

    __slots__ = ("caller", "commit_start", "labels", "observer", "span", "start", "system", "token")

    def __init__(
        self,
        observer: _Observer,
        options: UnitOptions,
        savepoint: bool,
        db_system: str | None,
        function: Any,
        attempt: int,
        retried: BaseException | None,
    ) -> None:
        self.observer = observer
        self.system = db_system
        self.start = perf_counter()
        self.commit_start = 0.0
        #: the context the unit began in: its span's parent (a request's span, the caller's)
        self.caller = context.get_current()
        attributes: dict[str, Any] = {
            "uow.propagation": "NESTED" if savepoint else options.propagation.name,
            "uow.read_only": options.read_only,
            "uow.retries": attempt,
        }
        if options.isolation_level is not None:
            attributes["uow.isolation_level"] = options.isolation_level
        name = _qualified_name(function)
        if name is not None:
            attributes["code.function.name"] = name
        if db_system is not None:
            attributes["db.system"] = db_system
        self.span = observer.tracer.start_span(
            "uow.savepoint" if savepoint else "uow.unit",
            context=self.caller,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
        )
        self.labels: dict[str, Any] = {"uow.kind": "savepoint" if savepoint else "unit"}
        if db_system is not None:
            self.labels["db.system.name"] = db_system
        observer.started.add(1, self.labels)
        if retried is not None:
            observer.retries.add(1, self.labels)
            self.span.add_event("uow.retry", {"uow.attempt": attempt, **_exception_attributes(retried)})
        self.token = context.attach(trace.set_span_in_context(self.span, self.caller))

    def commit_started(self) -> None:
        self.commit_start = perf_counter()

    def commit_ended(self, error: BaseException | None) -> None:
        attributes: dict[str, Any] = {"db.operation.name": "COMMIT"}
        if self.system is not None:
            attributes["db.system.name"] = self.system
        if error is not None:
            attributes["error.type"] = _type_name(error)
        self.observer.commit_duration.record(perf_counter() - self.commit_start, attributes)

    def hook_failed(self, fn: Callable[[], Any], error: BaseException, committed: bool) -> None:
        kind = "on_commit" if committed else "on_rollback"
        self.observer.hook_failures.add(1, {**self.labels, "uow.hook": kind})
        hook: dict[str, Any] = {"uow.hook": kind, **_exception_attributes(error)}
        name = _qualified_name(fn)
        if name is not None:
            hook["code.function.name"] = name
        self.span.add_event("uow.hook_failed", hook)

    def end(
        self,
        committed: bool,
        cause: RollbackCause | None,
        error: BaseException | None,
        served_by: str | None = None,
    ) -> None:
        span = self.span
        observer = self.observer
        if served_by is not None:
            span.set_attribute("uow.served_by", served_by)
        observer.duration.record(perf_counter() - self.start, self.labels)
        if committed:
            observer.committed.add(1, self.labels)
            span.set_attribute("uow.outcome", "commit")
        else:
            observer.rolled_back.add(1, {**self.labels, "uow.rollback_cause": cause or "exception"})
            span.set_attribute("uow.outcome", "rollback")
            span.set_attribute("uow.rollback_cause", cause or "exception")
        if isinstance(error, UnexpectedRollback):
            cause_of = error.__cause__
            span.add_event(
                "uow.unexpected_rollback", _exception_attributes(cause_of) if cause_of is not None else None
            )
        if error is not None:
            span.record_exception(error)
            span.set_status(StatusCode.ERROR, _type_name(error))
        span.end()

    def decided(self, commit_mode: str, status: int | None, commit: bool, committed: bool) -> None:
        request = trace.get_current_span(self.caller)
        attributes: dict[str, Any] = {
            "uow.commit_mode": commit_mode,
            "uow.decision": "commit" if commit else "rollback",
            "uow.outcome": "commit" if committed else "rollback",
        }
        if status is not None:
            attributes["uow.response_status"] = status
        request.set_attributes(attributes)

    @contextlib.contextmanager
    def outside(self) -> Iterator[None]:
        token = context.attach(self.caller)
        try:
            yield
        finally:
            context.detach(token)

    def leave(self) -> None:
        context.detach(self.token)


def _qualified_name(fn: Any) -> str | None:
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(qualname, str):
        return None
    module = getattr(fn, "__module__", None)
    return f"{module}.{qualname}" if isinstance(module, str) else qualname


def _type_name(error: BaseException) -> str:
    kind = type(error)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _exception_attributes(error: BaseException) -> dict[str, str]:
    return {"exception.type": _type_name(error), "exception.message": str(error)}
