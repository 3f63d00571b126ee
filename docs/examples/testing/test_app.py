"""Tests of app.py, each in a transaction that is rolled back afterwards."""

import httpx
import pytest
from app import User, app, outbox, register
from sqlalchemy import Engine, func, select

import uow
from uow.testing import TestTransaction, rollback_after


# --8<-- [start:basic]
def test_register(uow_test: TestTransaction) -> None:
    user_id = register("ada@example.com")  # its unit commits, to a SAVEPOINT
    with uow.unit_of_work() as session:
        user = session.get(User, user_id)
        assert user is not None and user.email == "ada@example.com"


def test_each_test_starts_clean(uow_test: TestTransaction) -> None:
    with uow.unit_of_work() as session:  # ada was rolled back with the last test
        assert session.scalar(select(func.count(User.id))) == 0


# --8<-- [end:basic]


# --8<-- [start:hooks]
def test_welcome_mail_is_sent_after_commit(uow_test: TestTransaction) -> None:
    outbox.clear()
    register("ada@example.com")
    assert outbox == []  # captured, not run
    assert len(uow_test.on_commit_callbacks) == 1
    assert uow_test.run_on_commit() == 1  # run them now
    assert outbox == ["ada@example.com"]


def test_no_mail_when_the_unit_rolls_back(uow_test: TestTransaction) -> None:
    with pytest.raises(RuntimeError), uow.unit_of_work():
        register("bob@example.com")
        raise RuntimeError("payment failed")
    assert uow_test.on_commit_callbacks == []  # dropped with the rollback


# --8<-- [end:hooks]


# --8<-- [start:http]
@pytest.mark.anyio
async def test_http_requests(uow_test: TestTransaction) -> None:
    transport = httpx.ASGITransport(app=app)  # the middleware uses the test's manager
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.post("/users", params={"email": "cy@example.com"})).status_code == 201
        assert (await client.post("/users", params={"email": "cy@example.com"})).status_code == 409
    async with uow.unit_of_work() as session:
        emails = await uow.run_sync(lambda: session.scalars(select(User.email)).all())
    assert emails == ["cy@example.com"]


# --8<-- [end:http]


# --8<-- [start:rollback-after]
def test_hooks_run_as_in_production(uow_engine: Engine) -> None:
    outbox.clear()
    with rollback_after(uow_engine, capture_on_commit=False):
        register("dee@example.com")
        assert outbox == ["dee@example.com"]  # ran at commit


# --8<-- [end:rollback-after]


# --8<-- [start:async-test]
@pytest.mark.anyio
async def test_async(uow_async: TestTransaction) -> None:
    async with uow.unit_of_work() as session:
        session.add(User(email="eve@example.com"))
    async with uow.unit_of_work() as session:
        assert await session.scalar(select(User.email)) == "eve@example.com"


# --8<-- [end:async-test]
