"""The benchmark harness runs (smoke mode): every pattern answers, uow fails nothing. No timing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")


@pytest.mark.filterwarnings("ignore:The declarative_mixin decorator:DeprecationWarning")
def test_smoke_run(tmp_path: Path) -> None:
    from benchmarks import apps, run

    assert run.main(["--smoke", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    patterns = data["patterns"]
    for name in run.available_patterns():
        assert patterns[name]["read_us"] and patterns[name]["write_us"], name
        assert set(patterns[name]["levels"]) == {"1", "4"}, name
    assert {n for n in apps.PATTERNS if n.startswith("uow")} <= set(patterns)
    for name, result in patterns.items():
        if name.startswith("uow"):
            assert result["failures"] == 0, (name, result)
    assert {"sync @transactional", "sync by hand", "async @transactional"} <= set(data["overhead"])
    for name, (_, kinds) in apps.REFERENCES.items():
        assert all(patterns[name][f"{kind}_us"] for kind in kinds), name
    # the report's targets compute from a run's results (the figures of a smoke run mean nothing)
    from benchmarks.report import targets

    rows = targets(data)
    labels = [label for label, *_ in rows]
    assert "failures of uow patterns, all levels" in labels
    assert any(label.startswith("UnitOfWorkMiddleware vs hand-written that commits") for label in labels)


def test_unit_costs_smoke_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import units

    page = tmp_path / "unit-costs.md"
    assert units.main(["--smoke", "--page", str(page)]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    groups = result["median_us"]
    assert set(groups["unit kinds"]) == {
        "by hand (commits)",
        "read-write unit",
        "read-only unit",
        "read-write unit, async def",
        "read-only unit, async def",
    }
    assert set(groups["no-DB request"]) == {
        "no middleware",
        "send-wrapping middleware (floor)",
        units.LEAST,
        "UnitOfWorkMiddleware",
    }
    assert all(v > 0 for group in groups.values() for v in group.values())
    assert "## hand-off" in page.read_text()
    assert "send-wrapping floor's:" in page.read_text()


def test_headline_smoke_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two patterns on a real uvicorn, loaded by wrk for a second each (needs wrk and PostgreSQL)."""
    import shutil

    from benchmarks import headline
    from tests.conftest import _require_pg

    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (scripts/bench installs it)")
    page = tmp_path / "headline.md"
    assert headline.main(["--smoke", "--url", _require_pg(), "--page", str(page)]) == 0
    result = json.loads(capsys.readouterr().out)
    for level in ("16", "64"):
        rows = result["levels"][level]
        assert rows[headline.FLOOR]["ratio"] == 1.0
        assert rows["uow UnitOfWorkMiddleware (Starlette)"]["failures"] == 0
    assert "| uow UnitOfWorkMiddleware (Starlette) |" in page.read_text()


def test_otel_costs_smoke_run() -> None:
    """Each mode runs in a process of its own against this tree's uow; a baseline is another checkout."""
    from benchmarks import otel

    results = otel.run(baseline=otel.TREE, smoke=True)  # this tree as its own baseline: "off" runs there
    assert set(results) == {"baseline, off", *(f"this tree, {mode}" for mode in otel.MODES)}
    for variants in results.values():
        assert set(variants) == {"unit that does nothing", "unit that reads a row"}
        assert all(us > 0 for us in variants.values())
    assert "| unit that reads a row |" in otel.table(results)


def test_replicas_smoke_run(replica_pair: Any) -> None:
    """Primary only vs primary + replica on a real uvicorn under wrk, and routing's unit costs."""
    import shutil

    from benchmarks import replicas

    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (scripts/bench installs it)")
    result = replicas.run(replica_pair, 1, 1, 5)
    assert all(row["failures"] == 0 and row["rps"] > 0 for row in result["wrk"].values())
    assert len(result["unit costs (µs)"]) == 6
    assert all(v > 0 for v in result["unit costs (µs)"].values())
