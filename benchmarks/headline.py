"""The headline: each pattern served by a real uvicorn process on PostgreSQL, loaded by ``wrk``.

    python -m benchmarks.headline --url postgresql+psycopg://... [--seconds 5] [--rounds 5]

For each concurrency level (16 and 64 connections), every pattern serves the
same primary-key read; the patterns take turns round after round (a shared,
noisy machine), each round starting a fresh server. A pattern's figure is
the median of its requests per second over rounds, and its ratio the median
over rounds of (its rate / the hand-written floor's rate in the same round).
Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks import apps
from benchmarks.server import serving

ROOT = Path(__file__).resolve().parents[1]
FLOOR = "hand-written (floor)"
PATTERNS = (
    FLOOR,
    "tutorial request.state middleware",
    "BaseHTTPMiddleware commit after call_next",
    "FastAPI Depends(get_db)",
    "uow UnitOfWorkMiddleware (Starlette)",
    "uow @transactional (Starlette)",
    "uow middleware + provide_session (FastAPI)",
)
LEVELS = (16, 64)
_RATE = re.compile(r"Requests/sec:\s+([0-9.]+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def _wrk(base: str, connections: int, seconds: float) -> dict[str, float]:
    """Load *base* for whole *seconds* (at least one) with *connections*; return rate and failures."""
    out = subprocess.run(
        ["wrk", "-t", "2", "-c", str(connections), "-d", f"{max(1, round(seconds))}s", base + "/users/1"],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout
    rate = _RATE.search(out)
    if rate is None:
        raise RuntimeError(f"wrk printed no rate:\n{out}")
    bad = _NON_2XX.search(out)
    timeouts = _ERRORS.search(out)
    return {
        "rps": float(rate.group(1)),
        "non_2xx": float(bad.group(1)) if bad else 0.0,
        "timeouts": float(sum(int(n) for n in timeouts.groups())) if timeouts else 0.0,
    }


def run(url: str, seconds: float, rounds: int, patterns: tuple[str, ...] = PATTERNS) -> dict[str, Any]:
    apps.prepare(url).dispose()
    raw: dict[int, dict[str, list[dict[str, float]]]] = {lv: {p: [] for p in patterns} for lv in LEVELS}
    for level in LEVELS:
        for r in range(rounds):
            order = patterns if r % 2 == 0 else tuple(reversed(patterns))
            for pattern in order:
                with serving(pattern, url, pool=min(level, 20), ready_path="/users/1") as base:
                    _wrk(base, level, 1)  # warm up
                    raw[level][pattern].append(_wrk(base, level, seconds))
    table: dict[str, dict[str, dict[str, float]]] = {}
    for level, per_pattern in raw.items():
        floor = [m["rps"] for m in per_pattern[FLOOR]]
        table[str(level)] = {
            pattern: {
                "rps": statistics.median(m["rps"] for m in runs),
                "ratio": statistics.median(m["rps"] / f for m, f in zip(runs, floor, strict=True)),
                "failures": sum(m["non_2xx"] + m["timeouts"] for m in runs),
            }
            for pattern, runs in per_pattern.items()
        }
    return {"url": url.split("@")[-1], "seconds": seconds, "rounds": rounds, "levels": table}


def write_page(result: dict[str, Any], path: Path) -> None:
    """Write the headline page: one table per concurrency level, ratios to the hand-written floor."""
    lines = [
        "# Real server: uvicorn + PostgreSQL, loaded by wrk",
        "",
        "<!-- written by `python -m benchmarks.headline --page docs/headline.md`; do not edit -->",
        "",
        "Each pattern serves the same primary-key read (`GET /users/1`) from a fresh",
        "uvicorn process (one worker) on PostgreSQL, loaded by `wrk` on the same",
        f"machine for {result['seconds']:g} s per round at each concurrency, patterns taking turns over",
        f"{result['rounds']} rounds. *ratio* is the median over rounds of the pattern's requests",
        "per second over the hand-written floor's in the same round (higher is faster);",
        "*failures* counts non-2xx answers and socket errors (time-outs, resets) over all",
        "rounds; *stalled*: not one request answered in a round's time.",
        "",
    ]
    for level, table in result["levels"].items():
        lines += [f"## {level} connections", ""]
        lines += ["| pattern | requests/s | ratio | failures |", "|---|---|---|---|"]
        for pattern, row in sorted(table.items(), key=lambda kv: -kv[1]["ratio"]):
            ratio = f"{row['ratio']:.2f}x" if row["rps"] else "stalled"
            lines.append(f"| {pattern} | {row['rps']:.0f} | {ratio} | {row['failures']:.0f} |")
        lines.append("")
    lines += [
        "The command: `scripts/bench` (or",
        "`python -m benchmarks.headline --url URL --page docs/headline.md`).",
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--url", default=os.environ.get("UOW_BENCH_POSTGRES_URL") or os.environ.get("UOW_TEST_POSTGRES_URL")
    )
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--smoke", action="store_true", help="two patterns, one short round")
    parser.add_argument("--page", type=Path, help="also write the results as a Markdown page here")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    if not args.url:
        print("give --url (a PostgreSQL URL) or set UOW_TEST_POSTGRES_URL", file=sys.stderr)
        return 2
    if args.smoke:
        result = run(args.url, 1, 1, (FLOOR, "uow UnitOfWorkMiddleware (Starlette)"))
    else:
        result = run(args.url, args.seconds, args.rounds)
    json.dump(result, sys.stdout, indent=2)
    print()
    if args.page:
        write_page(result, args.page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
