"""The Starlette adapter page's examples run: commit modes, commit failures, streaming,
background tasks, websockets, lifespan."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

import uow
from tests.examples import Load, client, example_loader, rows

TABLES = "SELECT name FROM sqlite_master WHERE type = 'table'"
load_example = example_loader("starlette")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("app_name", "kept"),
    [
        ("autocommit_app", ["created", "by hand", "after the commit"]),  # 2xx: the 200 too
        ("redirect_app", ["created", "redirected", "by hand", "after the commit"]),
        ("manual_app", ["by hand"]),  # only what the endpoint committed itself
        ("tuned_app", ["conflict", "by hand", "after the commit"]),  # 409 in, 201 out
    ],
)
async def test_commit_modes(load_example: Load, tmp_path: Path, app_name: str, kept: list[str]) -> None:
    module = load_example("commit_modes.py")
    async with client(getattr(module, app_name)) as http:
        assert (await http.post("/created")).status_code == 201
        assert (await http.post("/redirected", follow_redirects=False)).status_code == 303
        assert (await http.post("/conflict")).status_code == 409
        if app_name == "manual_app":
            assert (await http.post("/by-hand")).status_code == 200
        else:  # a commit() in a unit the middleware ends: kept, and warned about
            with pytest.warns(uow.UnitOfWorkWarning, match="atomicity"):
                assert (await http.post("/by-hand")).status_code == 200
    names = [name for (name,) in rows(tmp_path / "commit_modes.db", "SELECT name FROM items ORDER BY id")]
    assert names == kept


@pytest.mark.anyio
async def test_a_failed_commit_is_answered_500_never_201(load_example: Load, tmp_path: Path) -> None:
    module = load_example("commit_failure.py")
    async with client(module.app, raise_app_exceptions=False) as http:
        assert (await http.post("/late", params={"email": "ada@example.com"})).status_code == 201
        duplicate = await http.post("/late", params={"email": "ada@example.com"})
        assert duplicate.status_code == 500
        assert (await http.post("/early", params={"email": "bob@example.com"})).status_code == 201
        taken = await http.post("/early", params={"email": "bob@example.com"})
        assert taken.status_code == 409
        assert taken.json() == {"detail": "email taken"}
    assert rows(tmp_path / "commit_failure.db", "SELECT email FROM users ORDER BY id") == [
        ("ada@example.com",),
        ("bob@example.com",),
    ]


@pytest.mark.anyio
async def test_streaming_body_reads_in_a_unit_of_its_own(load_example: Load) -> None:
    module = load_example("streaming.py")
    async with client(module.app) as http:
        first = await http.get("/export", params={"also": "ada@example.com"})
        assert first.status_code == 200
        assert first.text == "ada@example.com\n"  # committed before the body was read
        second = await http.get("/export", params={"also": "bob@example.com"})
        assert second.text == "ada@example.com\nbob@example.com\n"


@pytest.mark.anyio
async def test_background_tasks_follow_the_request_outcome(load_example: Load, tmp_path: Path) -> None:
    module = load_example("background.py")
    async with client(module.app) as http:
        assert (await http.post("/users", params={"email": "ada@example.com"})).status_code == 201
        failed = await http.post("/users", params={"email": "bob@example.org"})
        assert failed.status_code == 422
    assert rows(tmp_path / "background.db", "SELECT email, welcomed FROM users") == [("ada@example.com", 1)]
    assert module.alerts == ["sign-up of bob@example.org was rolled back"]


@pytest.fixture
def test_client_class() -> Any:
    """Starlette's TestClient (the only websocket client at hand), imported without its
    deprecation warning about httpx, which this suite would turn into an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    return TestClient


def test_websocket_one_unit_per_message(load_example: Load, tmp_path: Path, test_client_class: Any) -> None:
    module = load_example("websocket.py")
    with test_client_class(module.app) as http, http.websocket_connect("/chat") as websocket:
        for text in ("hello", "world"):
            websocket.send_text(text)
            assert websocket.receive_text() == "saved"
            assert (text,) in rows(tmp_path / "websocket.db", "SELECT text FROM messages")


@pytest.mark.anyio
async def test_lifespan_runs_the_apps_and_disposes_the_pool(load_example: Load, tmp_path: Path) -> None:
    module = load_example("lifespan.py")
    engine = module.manager.engine
    async with module.lifespan(module.manager, app_lifespan=module.startup)(module.app) as state:
        assert state == {"greeting": "hello"}
        assert rows(tmp_path / "lifespan.db", TABLES) == [("users",)]
        async with uow.unit_of_work() as session:
            await uow.run_sync(session.add, module.User(email="ada@example.com"))
        assert engine.pool.checkedin() == 1  # pooled, not closed
    assert engine.pool.checkedin() == 0  # disposed at shutdown


@pytest.mark.anyio
async def test_lifespan_app_through_asgi(load_example: Load, tmp_path: Path) -> None:
    """The app's lifespan, driven over ASGI as a server drives it."""
    module = load_example("lifespan.py")
    sent: list[dict[str, Any]] = []
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await module.app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert rows(tmp_path / "lifespan.db", TABLES) == [("users",)]


@pytest.mark.anyio
async def test_idempotency_key_makes_a_retried_write_safe(load_example: Load, tmp_path: Path) -> None:
    module = load_example("disconnects.py")
    async with client(module.app) as http:
        first = await http.post("/payments", params={"amount": 5}, headers={"Idempotency-Key": "k1"})
        retry = await http.post("/payments", params={"amount": 5}, headers={"Idempotency-Key": "k1"})
        assert (first.status_code, retry.status_code) == (201, 200)
        assert first.json() == retry.json()
        assert (await http.post("/slow-report")).status_code == 201  # the client stayed
    assert rows(tmp_path / "disconnects.db", "SELECT idempotency_key FROM payments ORDER BY id") == [
        ("k1",),
        ("report",),
    ]


@pytest.mark.anyio
async def test_two_databases_the_inner_failure_rolls_back_both(load_example: Load, tmp_path: Path) -> None:
    module = load_example("two_databases.py")
    async with client(module.app, raise_app_exceptions=False) as http:
        assert (await http.post("/orders", params={"reference": "A-1"})).status_code == 201
        assert (await http.post("/orders", params={"reference": "A-1"})).status_code == 500
    assert rows(tmp_path / "orders.db", "SELECT reference FROM orders") == [("A-1",)]
    # the failed COMMIT came first (innermost): the audit line of the duplicate was not kept
    assert rows(tmp_path / "audit.db", "SELECT line FROM audit") == [("order A-1 placed",)]
