"""What a unit costs, side by side, in one process: read-only vs read-write, a request that
never touches the database, and the thread hand-off that ends a session.

    python -m benchmarks.units [--smoke] [--url URL]   # prints JSON; scripts/bench writes it to the page

Variants alternate in short blocks over many rounds, every other round in reverse order (a
shared, noisy machine: no variant always runs first or last); every figure is a median over
rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import sessionmaker
from starlette.types import ASGIApp, Message

import uow
from benchmarks import apps
from benchmarks.overhead import per_call_us, per_call_us_async
from uow._threads import finish, shielded
from uow.starlette import UnitOfWorkMiddleware

HAND_READ_ONLY = "by hand, READ ONLY (commits)"
LEAST = "per-request object in a context variable, receive and send wrapped"


def _by_hand_read_only(engine: Engine) -> Callable[[int], Any] | None:
    """On PostgreSQL through psycopg: the by-hand read in a READ ONLY transaction (what READ ONLY costs)."""
    if engine.dialect.name != "postgresql" or engine.dialect.driver != "psycopg":
        return None

    @event.listens_for(engine, "checkin")
    def read_write_again(dbapi_connection: Any, record: Any) -> None:
        if dbapi_connection is not None:
            dbapi_connection.read_only = False

    factory = sessionmaker(engine, expire_on_commit=False)

    def by_hand_read_only(i: int) -> Any:
        with factory.begin() as session:
            # psycopg sends BEGIN READ ONLY with the first statement
            session.connection().connection.dbapi_connection.read_only = True  # type: ignore[union-attr]
            return session.get(apps.User, i % apps.ROWS + 1)

    return by_hand_read_only


def unit_kinds(url: str, calls: int, rounds: int) -> dict[str, list[float]]:
    """µs per primary-key read: by hand, in a read-write unit, in a read-only unit (sync and async def)."""
    engine = create_engine(url)
    factory = sessionmaker(engine, expire_on_commit=False)
    manager = uow.UnitOfWorkManager(engine)

    def by_hand(i: int) -> Any:
        with factory.begin() as session:
            return session.get(apps.User, i % apps.ROWS + 1)

    def read(i: int) -> Any:
        return manager.session.get(apps.User, i % apps.ROWS + 1)

    read_write = manager.transactional(read)
    read_only = manager.transactional(read_only=True)(read)
    read_only_engine = create_engine(url)  # a pool of its own: its connections go back read-write
    hand_read_only = _by_hand_read_only(read_only_engine)

    # async def units on the same sync engine: the read goes to a worker thread
    @manager.transactional
    async def read_write_async(i: int) -> Any:
        return await manager.run_sync(read, i)

    @manager.transactional(read_only=True)
    async def read_only_async(i: int) -> Any:
        return await manager.run_sync(read, i)

    variants: dict[str, Callable[[int], Any]] = {
        "by hand (commits)": by_hand,
        "read-write unit": read_write,
        "read-only unit": read_only,
    }
    if hand_read_only is not None:
        variants[HAND_READ_ONLY] = hand_read_only
    async_variants = {
        "read-write unit, async def": read_write_async,
        "read-only unit, async def": read_only_async,
    }
    out: dict[str, list[float]] = {name: [] for name in [*variants, *async_variants]}

    async def run_async(record: bool, order: int = 1) -> None:
        for name, fn in list(async_variants.items())[::order]:
            us = await per_call_us_async(fn, max(calls // 4, 10))
            if record:
                out[name].append(us)

    for fn in variants.values():
        per_call_us(fn, calls)  # warm up
    asyncio.run(run_async(record=False))
    for i in range(rounds):
        order = -1 if i % 2 else 1  # every other round backwards: no variant keeps one place
        for name, fn in list(variants.items())[::order]:
            out[name].append(per_call_us(fn, calls))
        asyncio.run(run_async(record=True, order=order))
    engine.dispose()
    read_only_engine.dispose()
    return out


async def _asgi(app: ASGIApp, calls: int) -> float:
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/plain",
        "raw_path": b"/plain",
        "root_path": "",
        "headers": [],
        "query_string": b"",
        "http_version": "1.1",
        "scheme": "http",
        "server": ("bench", 80),
        "client": ("bench", 1),
        "asgi": {"version": "3.0"},
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass

    start = time.perf_counter()
    for _ in range(calls):
        await app(scope, receive, send)
    return (time.perf_counter() - start) / calls * 1e6


async def no_db_request(url: str, calls: int, rounds: int) -> dict[str, list[float]]:
    """µs per request that never touches the database: no middleware, a send wrapper, uow's."""
    engine = create_engine(url)
    manager = uow.UnitOfWorkManager(engine)

    async def endpoint(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    variants: dict[str, ASGIApp] = {
        "no middleware": endpoint,
        "send-wrapping middleware (floor)": apps.PassThrough(endpoint),
        LEAST: apps.LeastRequestUnit(endpoint),
        "UnitOfWorkMiddleware": UnitOfWorkMiddleware(endpoint, manager=manager),
    }
    out: dict[str, list[float]] = {name: [] for name in variants}
    for app in variants.values():
        await _asgi(app, calls)
    for i in range(rounds):
        for name, app in list(variants.items())[:: -1 if i % 2 else 1]:
            out[name].append(await _asgi(app, calls))
    engine.dispose()
    return out


def _nothing() -> None:
    return None


async def hand_off(calls: int, rounds: int) -> dict[str, list[float]]:
    """µs per trip to a thread and back that survives cancellation: uow's finisher vs the plain idiom."""
    limiter = anyio.CapacityLimiter(32)

    async def finisher(_: int) -> None:
        await finish(_nothing)

    async def anyio_in_a_shielding_task(_: int) -> None:
        await shielded(functools.partial(anyio.to_thread.run_sync, _nothing, limiter=limiter))

    variants = {"uow finisher": finisher, "anyio.to_thread in a shielding task": anyio_in_a_shielding_task}
    out: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():
        await per_call_us_async(fn, calls)
    for i in range(rounds):
        for name, fn in list(variants.items())[:: -1 if i % 2 else 1]:
            out[name].append(await per_call_us_async(fn, calls))
    return out


def summary(results: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    return {
        group: {name: statistics.median(v) for name, v in rows.items()} for group, rows in results.items()
    }


def run(url: str, smoke: bool) -> dict[str, Any]:
    calls, rounds = (50, 2) if smoke else (1000, 25)
    results = {
        "unit kinds": unit_kinds(url, calls, rounds),
        "no-DB request": asyncio.run(no_db_request(url, calls * 4, rounds)),
        "hand-off": asyncio.run(hand_off(calls, rounds)),
    }
    return {"url": url.split("@")[-1], "calls": calls, "rounds": rounds, "median_us": summary(results)}


NOTES = {
    "unit kinds": "a primary-key read per unit: a read-only unit never flushes, never checks for "
    "changes beyond its end, and ends the cheapest way its database allows; on PostgreSQL its "
    "transaction is also READ ONLY, whose own cost the READ ONLY row by hand shows",
    "no-DB request": "a request that never touches the database, straight to the ASGI app (no sockets)",
    "hand-off": "one trip to a worker thread and back that survives cancellation (how a sync session ends "
    "off the event loop): uow's finisher threads against anyio's threads in a shielding task",
}


def _floor_ratio(rows: dict[str, float], variant: str = "UnitOfWorkMiddleware") -> float:
    """A middleware's cost over the app alone, in units of the send-wrapping floor's."""
    bare = rows["no middleware"]
    return (rows[variant] - bare) / (rows["send-wrapping middleware (floor)"] - bare)


def _cell(us: float | None) -> str:
    return "—" if us is None else f"{us:.1f}"


def write_page(results: list[dict[str, Any]], path: Path) -> None:
    """Write the unit-costs page: one table per group, one column per database."""
    lines = [
        "# What a unit costs",
        "",
        "<!-- written by `python -m benchmarks.units --page docs/unit-costs.md`; do not edit -->",
        "",
        "Side by side in one process, variants alternating over rounds; every figure is",
        "the median of the per-round means, in microseconds (lower is faster).",
        "",
    ]
    for group in results[0]["median_us"]:
        lines += [f"## {group}", "", NOTES[group][0].upper() + NOTES[group][1:] + ".", ""]
        dbs = [r["url"].split(":")[0] for r in results]
        lines.append("| variant | " + " | ".join(f"{db} (µs)" for db in dbs) + " |")
        lines.append("|---" * (len(dbs) + 1) + "|")
        variants = dict.fromkeys(v for r in results for v in r["median_us"][group])
        for variant in variants:
            cells = " | ".join(_cell(r["median_us"][group].get(variant)) for r in results)
            lines.append(f"| {variant} | {cells} |")
        lines.append("")
        if group == "no-DB request":
            ratios = ", ".join(
                f"{_floor_ratio(r['median_us'][group]):.1f} times ({r['url'].split(':')[0]})" for r in results
            )
            least = ", ".join(
                f"{_floor_ratio(r['median_us'][group], LEAST):.1f} times ({r['url'].split(':')[0]})"
                for r in results
            )
            lines += [
                "UnitOfWorkMiddleware's own cost (its figure less the app's alone) against the",
                f"send-wrapping floor's: {ratios}. The least any middleware that keeps a unit per",
                f"request does (the row above it) costs {least} the floor's.",
                "",
            ]
    lines += [
        "The command: `scripts/bench` (or",
        "`python -m benchmarks.units --url URL --page docs/unit-costs.md`).",
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--url", action="append", default=[], help="a sync SQLAlchemy URL (repeatable)")
    parser.add_argument("--page", type=Path, help="also write the results as a Markdown page here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        results = []
        for url in [f"sqlite:///{Path(tmp) / 'units.db'}", *args.url]:
            apps.prepare(url).dispose()
            results.append(run(url, args.smoke))
    json.dump(results, sys.stdout, indent=2)
    print()
    if args.page:
        write_page(results, args.page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
