"""The replicas page's examples run (on SQLite; the PostgreSQL one runs in tests/test_replicas.py)."""

from __future__ import annotations

import pytest

from tests.examples import Load, client, example_loader

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
