"""Tests of the SQLModel app: each runs in a transaction rolled back afterwards (uow_test)."""

import httpx
import pytest
import sqlmodel
from app import Hero, HeroCreate, add_hero, outbox
from sqlmodel import select

import uow
from uow.testing import TestTransaction

pytestmark = pytest.mark.anyio


# --8<-- [start:crud]
async def test_create_read_update_delete(client: httpx.AsyncClient) -> None:
    async with client:
        created = await client.post("/heroes/", json={"name": "Deadpond", "age": 30})
        assert created.status_code == 201
        hero = created.json()
        assert hero == {"id": hero["id"], "name": "Deadpond", "age": 30}
        changed = await client.patch(f"/heroes/{hero['id']}", json={"age": 31})
        assert changed.json()["age"] == 31
        listed = await client.get("/heroes/")
        assert [h["name"] for h in listed.json()] == ["Deadpond"]
        assert (await client.delete(f"/heroes/{hero['id']}")).json() == {"ok": True}
        assert (await client.get(f"/heroes/{hero['id']}")).status_code == 404


async def test_each_test_starts_with_no_heroes(client: httpx.AsyncClient) -> None:
    async with client:
        assert (await client.get("/heroes/")).json() == []


# --8<-- [end:crud]


# --8<-- [start:mail]
async def test_the_welcome_mail_waits_for_the_commit(
    client: httpx.AsyncClient, uow_test: TestTransaction
) -> None:
    outbox.clear()
    async with client:
        assert (await client.post("/heroes/", json={"name": "Rusty-Man"})).status_code == 201
        assert (await client.post("/heroes/", json={"name": "Rusty-Man"})).status_code == 409
    assert outbox == []  # captured at commit, not run
    assert uow_test.run_on_commit() == 1  # the 409's mail went with its rollback
    assert outbox == ["welcome, Rusty-Man"]


# --8<-- [end:mail]


# --8<-- [start:helpers]
def test_helpers_run_in_a_unit_of_their_own(uow_test: TestTransaction) -> None:
    with uow.unit_of_work():
        hero = add_hero(HeroCreate(name="Spider-Boy"))
    with uow.unit_of_work():
        session = uow.current_session(sqlmodel.Session)  # the app's class: exec() works
        assert session.exec(select(Hero.name)).all() == ["Spider-Boy"]
    assert hero.id is not None and hero.name == "Spider-Boy"  # readable after its unit


# --8<-- [end:helpers]
