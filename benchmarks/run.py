"""Run the comparison: uow against the patterns it replaces, side by side, in one process.

    python -m benchmarks.run --full     # the whole comparison (< 10 min); writes docs/benchmarks.md + .png
    python -m benchmarks.run --smoke    # a few hundred requests, to keep the harness working

Patterns are interleaved in rounds (a shared, noisy machine) and every figure
is a median over rounds. Requests go straight to the ASGI app (no sockets),
so a figure is the pattern's own cost; ``--server`` adds uvicorn runs with a
load generator in a second process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from math import nan
from pathlib import Path
from typing import Any

import anyio.to_thread
from starlette.types import ASGIApp, Message

import uow
from benchmarks import apps
from benchmarks.overhead import decorator_overhead
from benchmarks.report import FA_PS, FA_TR, FLOOR, FLOOR_DUELS, MW, PASS_THROUGH

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Config:
    requests: int  # per pattern, per kind of request and per round, at concurrency 1
    #: rounds at concurrency 1: many short ones, so that a noisy moment hits every pattern alike
    seq_rounds: int
    rounds: int  # of the concurrency levels
    levels: tuple[int, ...]
    level_requests: int  # per pattern and level
    overhead_calls: int  # per variant and round
    overhead_rounds: int
    duel_times: int  # alternations of a duel (see duel())
    duel_block: int  # requests per block of a duel, reads at concurrency 1
    server: bool


SMOKE = Config(
    requests=10,
    seq_rounds=1,
    rounds=1,
    levels=(1, 4),
    level_requests=16,
    overhead_calls=100,
    overhead_rounds=1,
    duel_times=2,
    duel_block=4,
    server=False,
)
FULL = Config(
    requests=40,
    seq_rounds=25,
    rounds=4,
    levels=(1, 8, 16, 64, 256),
    level_requests=192,
    overhead_calls=200,
    overhead_rounds=60,
    duel_times=60,
    duel_block=10,
    server=True,
)
#: a (pattern, level) run that takes longer than this is stopped; what did not finish failed
LEVEL_BUDGET = 30.0
#: a pool checkout waits at most this long; a pattern that checks out on the event loop
#: stalls the whole loop for it, so it bounds how long such a stall can last
POOL_TIMEOUT = 2


@dataclass
class LevelResult:
    throughput: float  # requests per second
    p50_ms: float
    p99_ms: float
    failures: int
    #: the level ran out of its budget (LEVEL_BUDGET)
    stalled: bool = False


@dataclass
class PatternResult:
    read_us: list[float] = field(default_factory=list)  # per round, µs per request at concurrency 1
    write_us: list[float] = field(default_factory=list)
    plain_us: list[float] = field(default_factory=list)
    levels: dict[int, list[LevelResult]] = field(default_factory=dict)
    failures: int = 0


async def call(app: ASGIApp, method: str, path: str) -> int:
    """Send one request straight to the ASGI app; return the status."""
    status = 0
    sent = False
    never = asyncio.Event()

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await never.wait()  # like a server: nothing more until the client goes
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 1),
        "server": ("bench", 80),
    }
    await app(scope, receive, send)
    return status


Request = Callable[[ASGIApp, int], Awaitable[int]]


def read(app: ASGIApp, i: int) -> Awaitable[int]:
    return call(app, "GET", f"/users/{i % apps.ROWS + 1}")


def write(app: ASGIApp, i: int) -> Awaitable[int]:
    return call(app, "POST", "/users")


def plain(app: ASGIApp, i: int) -> Awaitable[int]:
    return call(app, "GET", "/plain")


REQUESTS: dict[str, Request] = {"plain": plain, "read": read, "write": write}
#: a request that never touches the database takes some 20 µs: run more of them per round
PLAIN_FACTOR = 10


async def sequential(app: ASGIApp, request: Request, n: int) -> tuple[float, int]:
    """Run n requests one after another; return (µs per request, failures)."""
    failures = 0
    start = time.perf_counter()
    for i in range(n):
        try:
            if not 200 <= await request(app, i) < 300:
                failures += 1
        except Exception:
            failures += 1
    return (time.perf_counter() - start) / n * 1e6, failures


async def concurrent(app: ASGIApp, request: Request, n: int, level: int) -> LevelResult:
    """Run n requests from *level* concurrent clients; return throughput and latencies."""
    latencies: list[float] = []
    failures = 0
    stalled = False
    counter = iter(range(n))

    async def client() -> None:
        nonlocal failures
        for i in counter:
            t0 = time.perf_counter()
            try:
                ok = 200 <= await request(app, i) < 300
            except Exception:
                ok = False
            latencies.append(time.perf_counter() - t0)
            failures += not ok

    start = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(*(client() for _ in range(level))), LEVEL_BUDGET)
    except asyncio.TimeoutError:
        failures += n - len(latencies)  # never finished: the pattern stalled
        stalled = True
    elapsed = time.perf_counter() - start
    latencies.sort()
    if not latencies:
        latencies = [elapsed]
    return LevelResult(
        throughput=n / elapsed,
        p50_ms=latencies[len(latencies) // 2] * 1000,
        p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        failures=failures,
        stalled=stalled,
    )


def build(names: list[str], url: str, pool: dict[str, Any]) -> tuple[dict[str, ASGIApp], list[Any]]:
    engine = apps.prepare(url, **pool)
    async_engine = apps.async_engine_for(url, **pool)
    built = {name: builder(engine) for name, (builder, _) in apps.REFERENCES.items()}
    for name in names:
        builder, kind = apps.PATTERNS[name]
        built[name] = builder(async_engine if kind == "async" else engine)
    return built, [engine, async_engine]


def available_patterns() -> list[str]:
    names = []
    for name in apps.PATTERNS:
        if name == "fastapi-sqlalchemy":
            try:
                import fastapi_sqlalchemy  # noqa: F401
            except ImportError:
                continue
        if name.startswith("advanced-alchemy"):
            try:
                import advanced_alchemy  # noqa: F401
            except ImportError:
                continue
        names.append(name)
    return names


async def measure(config: Config, workdir: Path) -> dict[str, Any]:
    anyio.to_thread.current_default_thread_limiter().total_tokens = 40
    names = available_patterns()
    url = f"sqlite:///{workdir / 'bench.db'}"
    built, engines = build(names, url, {"pool_size": 5, "max_overflow": 0, "pool_timeout": POOL_TIMEOUT})
    results = {name: PatternResult() for name in built}
    rng = random.Random(7)
    for _ in range(config.seq_rounds):
        order = list(built)
        rng.shuffle(order)
        for name in order:
            app, res = built[name], results[name]
            kinds = apps.REFERENCES[name][1] if name in apps.REFERENCES else ("plain", "read", "write")
            for kind in kinds:
                n = config.requests * PLAIN_FACTOR if kind == "plain" else config.requests
                us, failed = await sequential(app, REQUESTS[kind], n)
                getattr(res, f"{kind}_us").append(us)
                res.failures += failed
    patterns = [name for name in built if name not in apps.REFERENCES]
    #: pattern -> the lowest level at which it ran out of LEVEL_BUDGET: it blocks the event
    #: loop, and running it there or higher again would only stall as long once more
    stalled: dict[str, int] = {}
    for _ in range(config.rounds):
        order = list(patterns)
        rng.shuffle(order)
        for level in config.levels:
            for name in order:
                if level >= stalled.get(name, level + 1):
                    outcome = LevelResult(0.0, nan, nan, failures=config.level_requests)
                else:
                    outcome = await concurrent(built[name], read, config.level_requests, level)
                    if outcome.stalled:
                        stalled[name] = level
                results[name].levels.setdefault(level, []).append(outcome)
                results[name].failures += outcome.failures
    data_duels = []
    for pattern, reference, kind, level in duel_plan(results, config):
        ratios, failures = await duel(built[pattern], built[reference], kind, level, config)
        results[pattern].failures += failures[0]
        results[reference].failures += failures[1]
        data_duels.append(
            {"pattern": pattern, "reference": reference, "kind": kind, "level": level, "ratios": ratios}
        )
    for engine in engines:
        if hasattr(engine, "sync_engine"):
            await engine.dispose()
        else:
            engine.dispose()
    uow.reset_defaults()
    return {"patterns": {name: asdict(res) for name, res in results.items()}, "duels": data_duels}


def duel_plan(results: dict[str, PatternResult], config: Config) -> list[tuple[str, str, str, int]]:
    """The comparisons the targets make: (pattern, reference, kind of request, concurrency).

    At concurrency 1 and 16 (when measured): uow and the floors against each
    other, and the FastAPI patterns against the fastest FastAPI alternative
    at that level; at concurrency 1, requests that never touch the database.
    """
    alternatives = [a for a in apps.FASTAPI_ALTERNATIVES if a in results]

    def read_speed(name: str) -> float:
        return -median(results[name].read_us)

    def speed_at_16(name: str) -> float:
        return median([r.throughput for r in results[name].levels[16] if r.throughput])

    plan = [(MW, FLOOR, "plain", 1), (PASS_THROUGH, FLOOR, "plain", 1)]
    for level, speed in ((1, read_speed), (16, speed_at_16)):
        if level not in config.levels:
            continue
        fastest = max(alternatives, key=speed)
        plan += [(name, ref, "read", level) for name, ref in FLOOR_DUELS]
        plan += [(FA_TR, fastest, "read", level), (FA_PS, fastest, "read", level)]
    return plan


async def duel(
    a: ASGIApp, b: ASGIApp, kind: str, level: int, config: Config
) -> tuple[list[float], tuple[int, int]]:
    """Run *a* and *b* in alternating blocks of requests; return a's speed over b's for each pair of blocks.

    The two sides of a pair run a second apart or less, so a noisy moment of
    the machine slows both alike; their order alternates. At concurrency 1 a
    block is ``duel_block`` requests (ten times as many for requests that
    never touch the database); at higher levels, four per client, half as
    many times.
    """
    request = REQUESTS[kind]
    ratios: list[float] = []
    failures = [0, 0]
    for i in range(config.duel_times if level == 1 else max(config.duel_times // 2, 2)):
        speed = [0.0, 0.0]
        for side in (0, 1) if i % 2 == 0 else (1, 0):
            app = (a, b)[side]
            if level == 1:
                n = config.duel_block * (PLAIN_FACTOR if kind == "plain" else 1)
                us, failed = await sequential(app, request, n)
                speed[side] = 1e6 / us
            else:
                outcome = await concurrent(app, request, 4 * level, level)
                speed[side], failed = outcome.throughput, outcome.failures
            failures[side] += failed
        ratios.append(speed[0] / speed[1])
    return ratios, (failures[0], failures[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--smoke", action="store_true", help="a few hundred requests")
    mode.add_argument("--full", action="store_true", help="the whole comparison")
    parser.add_argument("--out", type=Path, help="directory for results.json (and the report in --full)")
    parser.add_argument("--no-server", action="store_true", help="skip the uvicorn runs")
    args = parser.parse_args(argv)
    config = FULL if args.full else SMOKE
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        data = asyncio.run(measure(config, Path(tmp)))
        data["overhead"] = decorator_overhead(
            f"sqlite:///{Path(tmp) / 'bench.db'}", config.overhead_calls, config.overhead_rounds
        )
        if config.server and not args.no_server:
            from benchmarks.server import run_servers

            data["server"] = run_servers(Path(tmp))
    data["meta"] = {
        "mode": "full" if args.full else "smoke",
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "uow": uow.__version__,
        "seconds": round(time.time() - started, 1),
        "date": time.strftime("%Y-%m-%d"),
        "config": asdict(config),
    }
    out = args.out or (ROOT / "benchmarks" / "results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(data, indent=1))
    if args.full:
        from benchmarks.report import write_report

        write_report(data, ROOT / "docs" / "benchmarks.md", ROOT / "docs" / "benchmarks.png")
    print(f"done in {data['meta']['seconds']} s; results in {out / 'results.json'}")
    failures = {n: r["failures"] for n, r in data["patterns"].items() if r["failures"]}
    print(f"failures: {failures or 'none'}")
    return 0


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


if __name__ == "__main__":
    raise SystemExit(main())
