"""The migration guides' before/after examples run.

Each "before" file is the pattern as it is commonly written, and its test
shows the bug the guide describes; each "after" file is the same app on uow,
and its test shows the fix: commit on 2xx, rollback otherwise, 500 when the
commit fails. Before-files that need a third-party package are skipped when
it is not installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from tests.examples import Load, client, example_loader, rows

load_example = example_loader("migration")
#: why a "before" test of a library uow is compared with is skipped
BENCH_EXTRA = "the libraries uow is compared with come with the bench extra: pip install -e '.[bench]'"


# --- request.state.db middleware, helpers that commit -----------------------------------

SIGN_UPS = [
    {"email": "ada@example.com", "first_item": "hat"},
    {"email": "bob@example.com", "first_item": "hat"},  # a duplicate item title
]


@pytest.mark.anyio
async def test_request_state_before_keeps_half_a_request(load_example: Load, tmp_path: Path) -> None:
    module = load_example("request_state_before.py")
    async with client(module.app, raise_app_exceptions=False) as http:
        assert (await http.post("/users", params=SIGN_UPS[0])).status_code == 201
        assert (await http.post("/users", params=SIGN_UPS[1])).status_code == 500
    users = rows(tmp_path / "request_state.db", "SELECT email FROM users ORDER BY id")
    assert users == [("ada@example.com",), ("bob@example.com",)]  # bob stayed, without his item
    assert rows(tmp_path / "request_state.db", "SELECT count(*) FROM items") == [(1,)]


@pytest.mark.anyio
async def test_request_state_after_is_all_or_nothing(load_example: Load, tmp_path: Path) -> None:
    module = load_example("request_state_after.py")
    async with client(module.app, raise_app_exceptions=False) as http:
        assert (await http.post("/users", params=SIGN_UPS[0])).status_code == 201
        assert (await http.post("/users", params=SIGN_UPS[1])).status_code == 500
    assert rows(tmp_path / "request_state.db", "SELECT email FROM users") == [("ada@example.com",)]
    assert rows(tmp_path / "request_state.db", "SELECT title FROM items") == [("hat",)]


# --- Depends(get_db) generator that commits after yield --------------------------------


@pytest.mark.anyio
async def test_get_db_before_answers_201_for_a_commit_that_failed(load_example: Load, tmp_path: Path) -> None:
    module = load_example("get_db_before.py")
    async with client(module.app, raise_app_exceptions=False) as http:
        assert (await http.post("/users", params={"email": "ada@example.com"})).status_code == 201
        lost = await http.post("/users", params={"email": "ada@example.com"})
        assert lost.status_code == 201  # the client was told it worked...
    assert rows(tmp_path / "get_db.db", "SELECT count(*) FROM users") == [(1,)]  # ...it did not


@pytest.mark.anyio
async def test_get_db_after_answers_500_when_the_commit_fails(load_example: Load, tmp_path: Path) -> None:
    module = load_example("get_db_after.py")
    async with client(module.app, raise_app_exceptions=False) as http:
        assert (await http.post("/users", params={"email": "ada@example.com"})).status_code == 201
        assert (await http.post("/users", params={"email": "ada@example.com"})).status_code == 500
        assert (await http.post("/users", params={"email": "bob@example.com"})).status_code == 201
    assert rows(tmp_path / "get_db.db", "SELECT email FROM users ORDER BY id") == [
        ("ada@example.com",),
        ("bob@example.com",),
    ]


# --- BaseHTTPMiddleware committing after call_next, and fastapi-sqlalchemy -------------


def seed_account(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO accounts (id, balance) VALUES (1, 100)")


async def withdraw(app: Any, amount: int) -> httpx.Response:
    async with client(app, raise_app_exceptions=False) as http:
        return await http.post("/accounts/1/withdraw", params={"amount": amount})


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["base_http_before.py", "fastapi_sqlalchemy_before.py"])
async def test_before_commits_the_work_of_a_409(load_example: Load, tmp_path: Path, name: str) -> None:
    if name.startswith("fastapi_sqlalchemy"):
        pytest.importorskip("fastapi_sqlalchemy", reason=BENCH_EXTRA)
    module = load_example(name)
    seed_account(module.engine)
    assert (await withdraw(module.app, 30)).json() == {"balance": 70}
    refused = await withdraw(module.app, 100)
    assert refused.status_code == 409
    database = tmp_path / name.replace("_before.py", ".db")
    assert rows(database, "SELECT balance FROM accounts") == [(-30,)]  # refused, and yet committed


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["base_http_after.py", "fastapi_sqlalchemy_after.py"])
async def test_after_rolls_back_a_409(load_example: Load, tmp_path: Path, name: str) -> None:
    module = load_example(name)
    seed_account(module.engine)
    assert (await withdraw(module.app, 30)).json() == {"balance": 70}
    refused = await withdraw(module.app, 100)
    assert refused.status_code == 409
    assert (await withdraw(module.app, 999)).status_code == 409
    database = tmp_path / name.replace("_after.py", ".db")
    assert rows(database, "SELECT balance FROM accounts") == [(70,)]


def test_fastapi_sqlalchemy_jobs_outside_requests(load_example: Load, tmp_path: Path) -> None:
    after = load_example("fastapi_sqlalchemy_after.py")
    seed_account(after.engine)
    after.add_interest()
    assert rows(tmp_path / "fastapi_sqlalchemy.db", "SELECT balance FROM accounts") == [(101,)]


def test_fastapi_sqlalchemy_before_job(load_example: Load, tmp_path: Path) -> None:
    pytest.importorskip("fastapi_sqlalchemy", reason=BENCH_EXTRA)
    before = load_example("fastapi_sqlalchemy_before.py")
    seed_account(before.engine)
    before.app.build_middleware_stack()  # DBSessionMiddleware sets its session factory when built
    before.add_interest()
    assert rows(tmp_path / "fastapi_sqlalchemy.db", "SELECT balance FROM accounts") == [(101,)]


# --- advanced-alchemy's Starlette plugin --------------------------------------------------


@pytest.mark.anyio
async def test_advanced_alchemy_before_answers_201_for_a_commit_that_failed(
    load_example: Load, tmp_path: Path
) -> None:
    pytest.importorskip("advanced_alchemy", reason=BENCH_EXTRA)
    module = load_example("advanced_alchemy_before.py")
    async with client(module.app, raise_app_exceptions=False) as http:
        assert (await http.post("/users", params={"email": "ada@example.com"})).status_code == 201
        lost = await http.post("/users", params={"email": "ada@example.com"})
        assert lost.status_code == 201  # the failed COMMIT was logged at DEBUG, and that was all
    assert rows(tmp_path / "advanced_alchemy.db", "SELECT count(*) FROM users") == [(1,)]


@pytest.mark.anyio
async def test_advanced_alchemy_after_answers_500(load_example: Load, tmp_path: Path) -> None:
    module = load_example("advanced_alchemy_after.py")
    async with client(module.app, raise_app_exceptions=False) as http:
        assert (await http.post("/users", params={"email": "ada@example.com"})).status_code == 201
        assert (await http.post("/users", params={"email": "ada@example.com"})).status_code == 500
    assert rows(tmp_path / "advanced_alchemy.db", "SELECT count(*) FROM users") == [(1,)]
