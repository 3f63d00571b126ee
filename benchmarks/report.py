"""Turn results into docs/benchmarks.md (tables, targets) and docs/benchmarks.png (the plot)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from benchmarks.overhead import summary

FLOOR = "hand-written (floor)"
KINDS = ("read_us", "write_us", "plain_us")
PASS_THROUGH = "pass-through ASGI middleware (reference)"
COMMIT_FLOOR = "hand-written, commits (reference)"
HOP_FLOOR = "hand-written, commits, + one thread hop (reference)"
TR = "uow @transactional (Starlette)"
MW = "uow UnitOfWorkMiddleware (Starlette)"
FA_TR = "uow @transactional (FastAPI)"
FA_PS = "uow middleware + provide_session (FastAPI)"
#: each level's duels against the floors: (pattern, reference)
FLOOR_DUELS = (
    (TR, FLOOR),
    (MW, FLOOR),
    (COMMIT_FLOOR, FLOOR),
    (HOP_FLOOR, FLOOR),
    (TR, COMMIT_FLOOR),
    (MW, HOP_FLOOR),
)


def med(values: list[float]) -> float:
    """The median of the values that were measured (NaN marks a level that was not run)."""
    measured = [v for v in values if not math.isnan(v)]
    return statistics.median(measured) if measured else math.nan


def _levels(result: dict[str, Any]) -> dict[int, list[dict[str, float]]]:
    return {int(k): v for k, v in result["levels"].items()}


def paired(faster: list[float], slower: list[float]) -> float:
    """The median over rounds of ``faster[i] / slower[i]``, each pair measured in the same round."""
    pairs = zip(faster, slower, strict=True)
    return statistics.median([f / s for f, s in pairs if not (math.isnan(f) or math.isnan(s))])


class Duels:
    """A run's duels: how many times as fast one app is as another (the median over the pairs)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.ratios: dict[tuple[str, str, str, int], list[float]] = {
            (d["pattern"], d["reference"], d["kind"], d["level"]): d["ratios"] for d in data["duels"]
        }

    def speed(self, name: str, than: str, level: int = 1, kind: str = "read") -> float:
        return statistics.median(self.ratios[name, than, kind, level])

    def extra(self, name: str, than: str) -> float:
        """The time *name* adds to a request that never touches the database, as a fraction."""
        return 1 / self.speed(name, than, kind="plain") - 1

    def levels(self) -> list[int]:
        return sorted({level for (*_, level) in self.ratios})

    def opponent(self, name: str, level: int) -> str:
        """The FastAPI alternative *name* dueled at *level* (the fastest one)."""
        return next(ref for (n, ref, _, lv) in self.ratios if n == name and lv == level)


def targets(data: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """The targets' rows: (what, measured, goal, met). Ratios come from the run's duels."""
    p = data["patterns"]
    duels = Duels(data)
    speed = duels.speed
    rows: list[tuple[str, str, str, bool]] = []

    def add(label: str, ratio: float, goal: float) -> None:
        rows.append((label, f"{ratio:.2f}x", f">= {goal:.2f}x", ratio >= goal))

    def at_most(label: str, extra: float, goal: float) -> None:  # extra: a fraction more time
        rows.append((label, f"{extra * 100:+.1f}%", f"<= +{goal * 100:.0f}%", extra <= goal))

    def reference(label: str, measured: str) -> None:
        rows.append((f"— for reference: {label}", measured, "(floor)", True))

    for level in duels.levels():
        where = " (read)" if level == 1 else f" at concurrency {level}"
        add(f"@transactional endpoint vs hand-written{where}", speed(TR, FLOOR, level), 0.95)
        add(f"UnitOfWorkMiddleware, sync endpoint vs hand-written{where}", speed(MW, FLOOR, level), 0.80)
        reference(
            f"hand-written that commits, vs hand-written{where}", f"{speed(COMMIT_FLOOR, FLOOR, level):.2f}x"
        )
        reference(
            f"hand-written that commits + one thread hop, vs hand-written{where}",
            f"{speed(HOP_FLOOR, FLOOR, level):.2f}x",
        )
        add(
            f"@transactional endpoint vs hand-written that commits{where}",
            speed(TR, COMMIT_FLOOR, level),
            0.95,
        )
        add(
            f"UnitOfWorkMiddleware vs hand-written that commits + one thread hop{where}",
            speed(MW, HOP_FLOOR, level),
            0.80,
        )
        if level == 1:
            no_db = duels.extra(MW, FLOOR)
            at_most("request that never touches the DB: UnitOfWorkMiddleware vs none", no_db, 0.03)
            floor_extra = duels.extra(PASS_THROUGH, FLOOR)
            reference("a middleware that only wraps send, vs none", f"{floor_extra * 100:+.1f}%")
        fastest = duels.opponent(FA_TR, level)
        add(
            f"FastAPI @transactional vs the fastest FastAPI alternative ({fastest}){where}",
            speed(FA_TR, fastest, level),
            1.2,
        )
        add(f"FastAPI + middleware + provide_session vs {fastest}{where}", speed(FA_PS, fastest, level), 1.0)
    over = data["overhead"]
    extra = paired(over["sync @transactional"], over["sync by hand"]) - 1
    at_most("@transactional overhead on a primary-key read (sync)", extra, 0.05)
    uow_failures = sum(r["failures"] for n, r in p.items() if n.startswith("uow"))
    rows.append(("failures of uow patterns, all levels", str(uow_failures), "0", uow_failures == 0))
    return rows


def floors(data: dict[str, Any]) -> list[str]:
    """What the reference rows say about the targets against hand-written code (for the page)."""
    duels = Duels(data)
    speed = duels.speed
    plain_us = med(data["patterns"][FLOOR]["plain_us"])
    mw_extra = duels.extra(MW, FLOOR)
    return [
        "",
        "What the floors say, at concurrency 1:",
        "",
        f"- The hand-written endpoint does not commit its read; committing it alone runs at "
        f"{speed(COMMIT_FLOOR, FLOOR):.2f}x. A unit of work commits (only it knows that nothing was "
        f"written), and `@transactional` runs at {speed(TR, COMMIT_FLOOR):.2f}x of that floor.",
        f"- A middleware that ends a sync session without blocking the event loop makes one trip to a "
        f"thread and back per request: the committing endpoint plus that trip runs at "
        f"{speed(HOP_FLOOR, FLOOR):.2f}x of hand-written, and `UnitOfWorkMiddleware` at "
        f"{speed(MW, HOP_FLOOR):.2f}x of that floor. On this machine the trip alone costs "
        f"{(speed(COMMIT_FLOOR, FLOOR) / speed(HOP_FLOOR, FLOOR) - 1) * 100:.0f}% of a read.",
        f"- A request that never touches the database takes {plain_us:.0f} µs here. A middleware that "
        f"only wraps `send` adds {duels.extra(PASS_THROUGH, FLOOR) * 100:.0f}%; "
        f"`UnitOfWorkMiddleware` adds {mw_extra * 100:.0f}% (about {mw_extra * plain_us:.1f} µs: its "
        "pending unit, one context variable and the check at the response's start; "
        "no session, no connection).",
    ]


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
        f"concurrency 1 and {meta['config']['rounds']} rounds of the concurrency levels; every figure in the "
        "tables is the median over rounds. The ratios in the targets come from duels: the two apps "
        f"compared alternate, {meta['config']['duel_times']} times, in blocks of "
        f"{meta['config']['duel_block']} requests (at concurrency 16, half as many times, 64 requests), "
        "a second apart or less, so a "
        "noisy moment slows both sides of a pair alike; a ratio is the median over the pairs. The machine "
        "is shared and noisy: compare ratios within this page, not with other runs.",
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
    lines += floors(data)
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
