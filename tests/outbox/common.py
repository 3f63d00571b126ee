"""What the outbox tests and their worker processes share: the consumer's tables, waiting for rows."""

from __future__ import annotations

import json
import time
from collections.abc import Collection
from typing import Any

from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, Text, func, select

from uow.outbox import handled_table

consumer_metadata = MetaData()
#: every task the worker ran, one row per run (duplicates show as two rows)
received = Table(
    "outbox_received",
    consumer_metadata,
    Column("n", Integer, primary_key=True, autoincrement=True),
    Column("task_id", String(64), nullable=False, index=True),
    Column("task", String(255), nullable=False),
    Column("args", Text, nullable=False),
    Column("kwargs", Text, nullable=False),
)
#: the effects of the idempotent task: one row per id it really handled
effects = Table(
    "outbox_effects",
    consumer_metadata,
    Column("n", Integer, primary_key=True, autoincrement=True),
    Column("task_id", String(64), nullable=False),
    Column("args", Text, nullable=False),
)
handled = handled_table(consumer_metadata, "outbox_handled")


def received_rows(engine: Engine, ids: Collection[str]) -> list[tuple[str, str, list[Any], dict[str, Any]]]:
    """(task_id, task, args, kwargs) of each run of *ids*, in arrival order."""
    rows: list[tuple[str, str, list[Any], dict[str, Any]]] = []
    ids = list(ids)
    with engine.connect() as conn:
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            for r in conn.execute(
                select(received).where(received.c.task_id.in_(chunk)).order_by(received.c.n)
            ):
                rows.append((r.task_id, r.task, json.loads(r.args), json.loads(r.kwargs)))
    return rows


def count_received(engine: Engine, ids: Collection[str]) -> int:
    total = 0
    ids = list(ids)
    with engine.connect() as conn:
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            total += conn.scalar(select(func.count()).where(received.c.task_id.in_(chunk))) or 0
    return total


def wait_received(engine: Engine, ids: Collection[str], timeout: float = 30.0) -> None:
    """Wait until every id in *ids* was run at least once (raise with what is missing)."""
    deadline = time.monotonic() + timeout
    want = set(ids)
    while True:
        got = {r[0] for r in received_rows(engine, want)}
        if got >= want:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{len(want - got)} of {len(want)} messages never arrived, e.g. {sorted(want - got)[:3]}"
            )
        time.sleep(0.1)
