"""What OpenTelemetry costs per unit: instrumentation off (against a baseline checkout), and on.

    python benchmarks/otel.py [--smoke] [--baseline PATH]   # prints JSON and a Markdown table

Each measurement runs in a fresh process whose ``uow`` comes from a checkout
(``PYTHONPATH``): this tree's, and with ``--baseline`` another one's (a checkout
without ``uow.otel``, to show that the code path when off costs what it did).
Processes alternate round by round; every figure is the fastest round, in
microseconds per call: on a shared machine the other load only ever adds time,
so the minimum is the figure least disturbed by it (as ``timeit`` advises).

Variants: a unit that does nothing (``@transactional`` around a bare function:
the most sensitive to any added cost) and a unit that reads a row by primary
key on SQLite; each with instrumentation off, on with the API's no-op
providers (nothing installed to record), and on with the SDK (spans to an
exporter that drops them, metrics to an in-memory reader).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from sqlalchemy import String, create_engine, insert
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import uow

try:
    from uow import otel
except ImportError:  # a baseline checkout from before uow.otel: only "off" runs there
    otel = None  # type: ignore[assignment]

HERE = Path(__file__).resolve()
TREE = HERE.parent.parent
MODES = ("off", "on, no-op providers", "on, SDK")
ROWS = 100


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "otel_bench_users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200))


def _per_call_us(fn: Callable[[int], Any], calls: int) -> float:
    start = time.perf_counter()
    for i in range(calls):
        fn(i)
    return (time.perf_counter() - start) / calls * 1e6


class _Drop(SpanExporter):
    """An exporter that drops what it gets: the cost of spans up to the export, not of a backend."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _instrument(mode: str) -> None:
    """Turn on uow.otel as *mode* says."""
    if mode == "off":
        return
    assert otel is not None, "this checkout has no uow.otel"
    if mode == "on, no-op providers":
        otel.instrument()
        return
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(_Drop()))
    otel.instrument(
        tracer_provider=tracer_provider, meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()])
    )


def child(mode: str, url: str, calls: int) -> dict[str, float]:
    """Measure the variants of one mode in this process; return µs per call."""
    _instrument(mode)
    engine = create_engine(url)
    manager = uow.UnitOfWorkManager(engine)

    @manager.transactional
    def bare(i: int) -> int:
        return i

    @manager.transactional
    def read(i: int) -> Any:
        return manager.current_session().get(User, i % ROWS + 1)

    out = {}
    for name, fn in (("unit that does nothing", bare), ("unit that reads a row", read)):
        _per_call_us(fn, calls)  # warm up
        out[name] = min(_per_call_us(fn, calls) for _ in range(3))
    engine.dispose()
    return out


def _run_child(checkout: Path, mode: str, url: str, calls: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    done = subprocess.run(
        [sys.executable, str(HERE), "--child", mode, "--url", url, "--calls", str(calls)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    result: dict[str, float] = json.loads(done.stdout)
    return result


def run(baseline: Path | None, smoke: bool) -> dict[str, dict[str, float]]:
    """Return the fastest round's µs per call of each (checkout, mode) column, per variant."""
    calls, rounds = (50, 1) if smoke else (2000, 9)
    columns: list[tuple[str, Path, str]] = [("this tree, " + mode, TREE, mode) for mode in MODES]
    if baseline is not None:
        columns.insert(0, ("baseline, off", baseline, "off"))
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'otel.db'}"
        engine = create_engine(url)
        Base.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(insert(User), [{"email": f"u{i}@example.com"} for i in range(ROWS)])
        engine.dispose()
        samples: dict[str, dict[str, list[float]]] = {label: {} for label, _, _ in columns}
        for _ in range(rounds):
            for label, checkout, mode in columns:
                for variant, us in _run_child(checkout, mode, url, calls).items():
                    samples[label].setdefault(variant, []).append(us)
    return {
        label: {variant: min(values) for variant, values in variants.items()}
        for label, variants in samples.items()
    }


def table(results: dict[str, dict[str, float]]) -> str:
    labels = list(results)
    variants = list(results[labels[0]])
    lines = ["| variant | " + " | ".join(f"{label} (µs)" for label in labels) + " |"]
    lines.append("|---" * (len(labels) + 1) + "|")
    for variant in variants:
        lines.append(
            f"| {variant} | " + " | ".join(f"{results[label][variant]:.1f}" for label in labels) + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--baseline", type=Path, help="a checkout of uow to compare the 'off' figures with")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        json.dump(child(args.child, args.url, args.calls), sys.stdout)
        return 0
    results = run(args.baseline, args.smoke)
    json.dump(results, sys.stdout, indent=2)
    print()
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
