"""What the outbox costs: ``enqueue`` in a unit against publishing from ``on_commit`` or at once,
and how fast relays move waiting rows from the database to Redis.

    python -m benchmarks.outbox --url postgresql+psycopg://... [--smoke]   # prints JSON

It starts a redis-server of its own on a free port (and stops it). Variants
alternate in short blocks over many rounds; every figure is a median.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, insert

import uow
from uow.outbox import Outbox, outbox_table
from uow.outbox.celery import CeleryPublisher

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A redis-server on a free port of 127.0.0.1, stopped on exit; yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as workdir:
        process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                workdir,
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            for _ in range(200):
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(10)


def enqueue_costs(url: str, redis_url: str, calls: int, rounds: int) -> dict[str, list[float]]:
    """Microseconds per unit that writes one row and sends one task, five ways."""
    engine = create_engine(url)
    metadata = MetaData()
    rows = Table("bench_rows", metadata, Column("id", Integer, primary_key=True), Column("name", String(50)))
    table = outbox_table(metadata, "bench_outbox")
    metadata.drop_all(engine)
    metadata.create_all(engine)
    app = Celery("uow_bench", broker=redis_url)
    manager = uow.UnitOfWorkManager(engine)
    prompt = Outbox(manager, publisher=CeleryPublisher(app), table=table)
    quiet = Outbox(manager, publisher=CeleryPublisher(app), table=table, publish_on_commit=False)

    def write() -> None:
        manager.session.execute(insert(rows).values(name="x"))

    def variant(body: Callable[[], object]) -> Callable[[], None]:
        def unit() -> None:
            with manager.unit_of_work():
                write()
                body()

        return unit

    variants = {
        "unit, no task": variant(lambda: None),
        "direct task.delay() in the unit": variant(lambda: app.send_task("bench.task", args=[1])),
        "on_commit(lambda: task.delay())": variant(
            lambda: manager.on_commit(lambda: app.send_task("bench.task", args=[1]))
        ),
        "outbox.enqueue (INSERT only, relay publishes)": variant(lambda: quiet.enqueue("bench.task", 1)),
        "outbox.enqueue + publish after commit": variant(lambda: prompt.enqueue("bench.task", 1)),
    }
    results: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():  # warm up: connections, Celery's producer pool
        for _ in range(20):
            fn()
    for _ in range(rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            results[name].append((time.perf_counter() - start) / calls * 1e6)
    app.close()
    engine.dispose()
    return results


def relay_throughput(url: str, redis_url: str, rows: int, relays: int) -> float:
    """Messages per second that *relays* relay processes move from the outbox table to Redis."""
    engine = create_engine(url)
    table = outbox_table(MetaData(), "bench_outbox")
    table.drop(engine, checkfirst=True)
    table.create(engine)
    app = Celery("uow_bench", broker=redis_url)
    outbox = Outbox(
        uow.UnitOfWorkManager(engine), publisher=CeleryPublisher(app), table=table, publish_on_commit=False
    )
    for start in range(0, rows, 1000):
        with outbox.manager.unit_of_work():
            for n in range(start, min(rows, start + 1000)):
                outbox.enqueue("bench.task", n)
    env = {**os.environ, "UOW_BENCH_URL": url, "UOW_BENCH_REDIS_URL": redis_url, "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable,
        "-m",
        "uow.outbox",
        "relay",
        "benchmarks.outbox_app:outbox",
        "--once",
        "--batch",
        "200",
        "--log-level",
        "WARNING",
    ]
    began = time.perf_counter()
    processes = [subprocess.Popen(command, cwd=ROOT, env=env) for _ in range(relays)]
    for p in processes:
        assert p.wait(600) == 0
    elapsed = time.perf_counter() - began
    with engine.connect() as conn:
        assert conn.scalar(outbox.store.pending().limit(1)) is None
    app.close()
    engine.dispose()
    return rows / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="a sync SQLAlchemy URL (PostgreSQL for several relays)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check that it runs")
    args = parser.parse_args(argv)
    calls, rounds, rows = (5, 2, 300) if args.smoke else (200, 15, 10000)
    with redis_server() as redis_url:
        costs = enqueue_costs(args.url, redis_url, calls, rounds)
        # several relays need PostgreSQL (SKIP LOCKED); on SQLite only one runs at a time
        counts = (1,) if args.url.startswith("sqlite") else (1, 3)
        repeats = 1 if args.smoke else 3
        relay = {
            f"{n} relay(s)": [relay_throughput(args.url, redis_url, rows, n) for _ in range(repeats)]
            for n in counts
        }
    result: dict[str, Any] = {
        "url": args.url.split("@")[-1],
        "calls": calls,
        "rounds": rounds,
        "unit_us_median": {k: round(statistics.median(v), 1) for k, v in costs.items()},
        "relay_rows": rows,
        "relay_messages_per_s_median": {k: round(statistics.median(v)) for k, v in relay.items()},
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
