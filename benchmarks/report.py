"""Turn results into docs/benchmarks.md (tables, targets) and docs/benchmarks.png (the plot)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from benchmarks.apps import FASTAPI_ALTERNATIVES
from benchmarks.overhead import summary

FLOOR = "hand-written (floor)"
KINDS = ("read_us", "write_us", "plain_us")
PASS_THROUGH = "pass-through ASGI middleware (reference)"
COMMIT_FLOOR = "hand-written, commits (reference)"
HOP_FLOOR = "hand-written, commits, + one thread hop (reference)"


def med(values: list[float]) -> float:
    """The median of the values that were measured (NaN marks a level that was not run)."""
    measured = [v for v in values if not math.isnan(v)]
    return statistics.median(measured) if measured else math.nan


def _levels(result: dict[str, Any]) -> dict[int, list[dict[str, float]]]:
    return {int(k): v for k, v in result["levels"].items()}


def paired(faster: list[float], slower: list[float]) -> float:
    """The median over rounds of ``faster[i] / slower[i]``, each pair measured in the same round.

    A noisy moment slows both sides of a pair alike, so the ratio of a pair
    is steadier than the ratio of two medians.
    """
    pairs = zip(faster, slower, strict=True)
    return statistics.median([f / s for f, s in pairs if not (math.isnan(f) or math.isnan(s))])


def targets(data: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    p = data["patterns"]
    read = {name: r["read_us"] for name, r in p.items() if r["read_us"]}
    rows: list[tuple[str, str, str, bool]] = []

    def speed(name: str, than: str) -> float:  # how many times as fast as *than* (reads, concurrency 1)
        return paired(read[than], read[name])

    def add(label: str, ratio: float, goal: float) -> None:
        rows.append((label, f"{ratio:.2f}x", f">= {goal:.2f}x", ratio >= goal))

    def at_most(label: str, extra: float, goal: float) -> None:  # extra: a fraction more time
        rows.append((label, f"{extra * 100:+.1f}%", f"<= +{goal * 100:.0f}%", extra <= goal))

    def reference(label: str, measured: str) -> None:
        rows.append((f"— for reference: {label}", measured, "(floor)", True))

    add(
        "@transactional endpoint vs hand-written (read)",
        speed("uow @transactional (Starlette)", FLOOR),
        0.95,
    )
    add(
        "UnitOfWorkMiddleware, sync endpoint vs hand-written (read)",
        speed("uow UnitOfWorkMiddleware (Starlette)", FLOOR),
        0.80,
    )
    if COMMIT_FLOOR in read and HOP_FLOOR in read:
        reference("hand-written that commits, vs hand-written", f"{speed(COMMIT_FLOOR, FLOOR):.2f}x")
        reference(
            "hand-written that commits + one thread hop, vs hand-written", f"{speed(HOP_FLOOR, FLOOR):.2f}x"
        )
        add(
            "@transactional endpoint vs hand-written that commits",
            speed("uow @transactional (Starlette)", COMMIT_FLOOR),
            0.95,
        )
        add(
            "UnitOfWorkMiddleware vs hand-written that commits + one thread hop",
            speed("uow UnitOfWorkMiddleware (Starlette)", HOP_FLOOR),
            0.80,
        )
    plain_ref = p[FLOOR]["plain_us"]  # the same app and routes, no middleware
    extra = paired(p["uow UnitOfWorkMiddleware (Starlette)"]["plain_us"], plain_ref) - 1
    at_most("request that never touches the DB: UnitOfWorkMiddleware vs none", extra, 0.03)
    if p.get(PASS_THROUGH, {}).get("plain_us"):
        floor_extra = paired(p[PASS_THROUGH]["plain_us"], plain_ref) - 1
        reference("a middleware that only wraps send, vs none", f"{floor_extra * 100:+.1f}%")
    alternatives = [a for a in FASTAPI_ALTERNATIVES if a in read]
    fastest = min(alternatives, key=lambda a: med(read[a]))
    add(
        f"FastAPI @transactional vs fastest FastAPI alternative ({fastest})",
        speed("uow @transactional (FastAPI)", fastest),
        1.2,
    )
    add(
        "FastAPI + middleware + provide_session vs the same",
        speed("uow middleware + provide_session (FastAPI)", fastest),
        1.0,
    )
    for level in (16,):
        levels = {n: _levels(r) for n, r in p.items() if r["levels"]}
        if level not in levels.get(FLOOR, {}):
            continue

        def tput(name: str, lv: int = level, levels: dict[str, Any] = levels) -> list[float]:
            return [r["throughput"] for r in levels[name][lv]]

        def faster(name: str, than: str) -> float:
            return paired(tput(name), tput(than))

        add(
            f"@transactional vs hand-written at concurrency {level}",
            faster("uow @transactional (Starlette)", FLOOR),
            0.95,
        )
        add(
            f"UnitOfWorkMiddleware vs hand-written at concurrency {level}",
            faster("uow UnitOfWorkMiddleware (Starlette)", FLOOR),
            0.80,
        )
        fastest_c = max((a for a in FASTAPI_ALTERNATIVES if a in levels), key=lambda a: med(tput(a)))
        add(
            f"FastAPI @transactional vs {fastest_c} at concurrency {level}",
            faster("uow @transactional (FastAPI)", fastest_c),
            1.2,
        )
        add(
            f"FastAPI + provide_session vs {fastest_c} at concurrency {level}",
            faster("uow middleware + provide_session (FastAPI)", fastest_c),
            1.0,
        )
    over = data["overhead"]
    extra = paired(over["sync @transactional"], over["sync by hand"]) - 1
    at_most("@transactional overhead on a primary-key read (sync)", extra, 0.05)
    uow_failures = sum(r["failures"] for n, r in p.items() if n.startswith("uow"))
    rows.append(("failures of uow patterns, all levels", str(uow_failures), "0", uow_failures == 0))
    return rows


def write_report(data: dict[str, Any], md_path: Path, png_path: Path) -> None:
    p = data["patterns"]
    meta = data["meta"]
    lines = [
        "# Benchmarks",
        "",
        "uow against the patterns it replaces, measured side by side in one process on one machine.",
        f"Run on {meta['date']}: Python {meta['python']}, {meta['platform']}, {meta['cpus']} CPUs, "
        f"{meta['seconds']} s in all. Reproduce with `scripts/bench` (the whole comparison) — "
        "`python -m benchmarks.run --smoke` is the quick check CI runs.",
        "",
        "Requests go straight to each ASGI app (no sockets), so a figure is the pattern's own cost. "
        "Each endpoint reads one user by primary key from a SQLite file of 1,000 rows, or inserts one. "
        f"Patterns are interleaved, in a new order each round, over {meta['config']['seq_rounds']} rounds at "
        f"concurrency 1 and {meta['config']['rounds']} rounds of the concurrency levels; every figure is the "
        "median over rounds, and every ratio in the targets is the median of the ratios within a round "
        "(a noisy moment slows both sides of such a pair alike). The machine is shared and noisy: compare "
        "ratios within this page, not with other runs.",
        "",
        "## Per request, concurrency 1 (µs, lower is better)",
        "",
        "The *(reference)* rows are not patterns anyone would pick: they show what a kind of pattern "
        "costs at least on this machine. A pure ASGI middleware that only wraps `send`; the hand-written "
        "endpoint committing its read, as every unit of work does; and that endpoint plus one trip to a "
        "thread and back before the response starts, which a middleware that ends a sync session without "
        "blocking the event loop cannot avoid.",
        "",
        "| pattern | read | write | no-DB request | failures |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in p.items():
        read, write, plain = (f"{med(r[k]):.0f}" if r[k] else "—" for k in KINDS)
        lines.append(f"| {name} | {read} | {write} | {plain} | {r['failures']} |")
    levels = sorted({int(k) for r in p.values() for k in r["levels"]})
    lines += [
        "",
        "## Concurrency (reads, pool of 5, `max_overflow=0`)",
        "",
        "Throughput in requests/s, then p50 / p99 latency in ms, then failures (pool time-outs, errors).",
        "A level has 30 s; a pattern that ran out of it (it checks connections out on the event loop,",
        "so a full pool stalls the whole loop for the 2 s pool timeout) is not run again at that level",
        "or higher: there every request counts as failed.",
        "",
        "| pattern | " + " | ".join(f"c={lv}" for lv in levels) + " |",
        "|---|" + "---:|" * len(levels),
    ]
    for name, r in p.items():
        if not r["levels"]:
            continue
        lv = _levels(r)
        cells = []
        for level in levels:
            runs = lv[level]
            if all(math.isnan(x["p50_ms"]) for x in runs):
                cells.append(f"not run: stalled below<br>{sum(x['failures'] for x in runs)} failed")
                continue
            cells.append(
                f"{med([x['throughput'] for x in runs]):.0f} rps<br>{med([x['p50_ms'] for x in runs]):.1f} / "
                f"{med([x['p99_ms'] for x in runs]):.1f} ms<br>{sum(x['failures'] for x in runs)} failed"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    over = summary(data["overhead"])
    lines += ["", "## Decorator overhead (µs per call)", "", "| variant | µs |", "|---|---:|"]
    lines += [f"| {name} | {value:.1f} |" for name, value in over.items()]
    if "server" in data:
        lines += [
            "",
            "## Real server",
            "",
            "uvicorn on 127.0.0.1, one worker; a load generator (httpx, 16 concurrent clients, 8 s) "
            "in a second process; primary-key reads.",
            "",
            "| database | pattern | rps | p50 ms | p99 ms | failures |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for db, runs in data["server"].items():
            for name, r in runs.items():
                lines.append(
                    f"| {db} | {name} | {r['throughput']:.0f} | {r['p50_ms']:.1f} | "
                    f"{r['p99_ms']:.1f} | {r['failures']} |"
                )
    lines += ["", "## Targets", "", "| target | measured | goal | met |", "|---|---:|---:|---|"]
    lines += [
        f"| {label} | {m} | {g} | {'' if g == '(floor)' else 'yes' if ok else '**no**'} |"
        for label, m, g, ok in targets(data)
    ]
    lines += ["", "![Throughput by concurrency](benchmarks.png)", ""]
    md_path.write_text("\n".join(lines))
    _plot(p, levels, png_path)


def _plot(p: dict[str, Any], levels: list[int], png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 6))
    names = [n for n, r in p.items() if r["read_us"]]
    values = [med(p[n]["read_us"]) for n in names]
    colors = ["tab:green" if n.startswith("uow") else "tab:gray" for n in names]
    left.barh(names, values, color=colors)
    left.invert_yaxis()
    left.set_xlabel("µs per read request, concurrency 1 (lower is better)")
    for name, r in p.items():
        if not r["levels"]:
            continue
        lv = _levels(r)
        right.plot(
            levels,
            [med([x["throughput"] for x in lv[level]]) for level in levels],
            marker="o",
            label=name,
            linewidth=2.5 if name.startswith("uow") else 1.2,
        )
    right.set_xscale("log", base=2)
    right.set_xlabel("concurrent requests (pool of 5)")
    right.set_ylabel("reads per second (higher is better)")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
