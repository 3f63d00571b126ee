"""The replicas page's examples run: on SQLite, and on a real PostgreSQL primary and replica."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from tests.examples import Load, client, example_loader
from tests.pgreplica import Pair

load_example = example_loader("replicas")


def test_setup(load_example: Load) -> None:
    module = load_example("setup.py")
    assert module.notes() == ([], "sqlite:///replica.db")
    module.add_note("hello")
    assert module.notes() == (["hello"], "sqlite:///app.db")  # the window after this context's write


@pytest.mark.anyio
async def test_the_cookie_carries_a_clients_writes_to_its_next_reads(load_example: Load) -> None:
    module = load_example("starlette_app.py")
    async with client(module.app) as writer, client(module.app) as other:
        assert (await writer.post("/notes/mine")).status_code == 201
        assert "uow_causal" in writer.cookies
        assert (await writer.get("/notes")).json() == ["mine"]  # its own write: the primary
        assert (await other.get("/notes")).json() == []  # no write of its own: the (stale) replica


def test_the_postgres_example_reads_its_write_through_the_token(
    replica_pair: Pair, load_example: Load, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a real primary and streaming replica, replay paused: the token's read is not stale."""
    monkeypatch.setenv("PRIMARY_URL", replica_pair.primary.url)
    monkeypatch.setenv("REPLICA_URL", replica_pair.replica.url)
    module = load_example("postgres.py")
    replica_pair.replica.pause_replay()
    try:
        token = module.write()
        assert token is not None
        assert module.read_later(token) == 1  # the replica lags: the primary answered
    finally:
        replica_pair.replica.resume_replay()
        with module.manager.engine.begin() as conn:
            conn.execute(text("DROP TABLE notes"))
