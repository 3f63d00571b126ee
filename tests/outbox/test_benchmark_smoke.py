"""The outbox benchmark runs (smoke sizes, SQLite, a redis-server of its own). No timing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import outbox


def test_outbox_benchmark_smoke_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert outbox.main(["--url", f"sqlite:///{tmp_path / 'bench.db'}", "--smoke"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["unit_us_median"]) == {
        "unit, no task",
        "direct task.delay() in the unit",
        "on_commit(lambda: task.delay())",
        "outbox.enqueue (INSERT only, relay publishes)",
        "outbox.enqueue + publish after commit",
    }
    assert set(result["relay_messages_per_s_median"]) == {"1 relay(s)"}  # one at a time on SQLite
