"""Read replicas: read throughput on a real server, and what routing costs per unit.

    python -m benchmarks.replicas [--seconds 3] [--rounds 2] [--smoke]

Starts a throwaway PostgreSQL primary and a streaming replica of it
(``tests/pgreplica.py``), removed afterwards, and prints JSON:

- *wrk*: ``GET /users/1`` in read-only request units (``read_only_methods``)
  on a uvicorn process, primary only against primary + one replica, taking
  turns over rounds (median requests per second);
- *unit costs*: µs per read-only unit in one process: no replicas; a replica
  without read-your-writes; a replica whose known position already covers
  the context's last write (no I/O); a replica read once more for each unit
  (the LSN check when the cached position is behind: one more query on a
  pooled connection); and a write unit without and with replicas (the WAL
  position read after its COMMIT).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from typing import Any

from sqlalchemy import create_engine

import uow
from benchmarks import apps
from benchmarks.headline import _wrk
from benchmarks.overhead import per_call_us
from benchmarks.server import serving
from tests.pgreplica import Pair
from uow.replicas import Routing, use_token


def throughput(pair: Pair, seconds: float, rounds: int, connections: int = 16) -> dict[str, Any]:
    variants = {"primary only": {}, "primary + 1 replica": {"BENCH_REPLICA_URL": pair.replica.url}}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    failures = dict.fromkeys(variants, 0.0)
    for r in range(rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            with serving(
                name, pair.primary.url, pool=10, app="benchmarks.replica_app:app", **variants[name]
            ) as base:
                _wrk(base, connections, 1)  # warm up
                result = _wrk(base, connections, seconds)
            rates[name].append(result["rps"])
            failures[name] += result["non_2xx"] + result["timeouts"]
    return {
        name: {"rps": statistics.median(v), "failures": failures[name], "rounds": v}
        for name, v in rates.items()
    }


def unit_costs(pair: Pair, calls: int, rounds: int) -> dict[str, float]:
    primary = create_engine(pair.primary.url)
    replica = create_engine(pair.replica.url)
    plain = uow.UnitOfWorkManager(primary)
    off = uow.UnitOfWorkManager(primary, replicas=[replica], routing=Routing(read_your_writes="off"))
    lsn = uow.UnitOfWorkManager(primary, replicas=[replica])
    probing = uow.UnitOfWorkManager(primary, replicas=[replica], routing=Routing(check_interval=0.0))

    def reader(manager: uow.UnitOfWorkManager) -> Any:
        @manager.transactional(read_only=True)
        def read(i: int) -> Any:
            return manager.session.get(apps.User, i % apps.ROWS + 1)

        return read

    def writer(manager: uow.UnitOfWorkManager) -> Any:
        @manager.transactional
        def write(i: int) -> Any:
            user = manager.session.get(apps.User, i % apps.ROWS + 1)
            assert user is not None
            user.email = apps.email()

        def in_a_context_of_its_own(i: int) -> Any:
            with use_token(None):  # so that the readers' context never waits for these writes
                return write(i)

        return in_a_context_of_its_own

    with use_token(None):
        writer(lsn)(0)  # this context's last write: a position the replica soon covers
        pair.replica.catch_up()
        variants = {
            "read-only unit, no replicas": reader(plain),
            "read-only unit on a replica, read-your-writes off": reader(off),
            "read-only unit on a replica, LSN known to be replayed (no I/O)": reader(lsn),
            "read-only unit on a replica, LSN read for the unit": reader(probing),
            "write unit, no replicas": writer(plain),
            "write unit with replicas (WAL position read after COMMIT)": writer(lsn),
        }
        out: dict[str, list[float]] = {name: [] for name in variants}
        for fn in variants.values():
            per_call_us(fn, calls)
        for _ in range(rounds):
            for name, fn in variants.items():
                out[name].append(per_call_us(fn, calls))
    for engine in (primary, replica):
        engine.dispose()
    return {name: statistics.median(v) for name, v in out.items()}


def run(pair: Pair, seconds: float, rounds: int, calls: int) -> dict[str, Any]:
    """Run both parts on a started *pair*; return the results."""
    apps.prepare(pair.primary.url).dispose()
    pair.replica.catch_up()
    return {
        "wrk": throughput(pair, seconds, rounds),
        "unit costs (µs)": unit_costs(pair, calls, max(3, rounds * 3)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="one short round, few calls")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    seconds, rounds, calls = (1.0, 1, 20) if args.smoke else (args.seconds, args.rounds, 300)
    pair = Pair().start()
    try:
        result = run(pair, seconds, rounds, calls)
    finally:
        pair.stop()
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
