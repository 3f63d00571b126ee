"""The app's test fixtures after the port: what they write is committed, or lives in the test's unit."""

from collections.abc import Iterator

import crud
import pytest
from fastapi.testclient import TestClient
from main import app, engine, init_db
from models import Item, User
from sqlalchemy import Engine
from sqlmodel import delete

import uow
from uow.testing import TestTransaction


# --8<-- [start:fixtures]
@pytest.fixture(scope="session", autouse=True)
def db() -> Iterator[None]:
    init_db()  # its own unit, committed: as at startup
    yield
    with uow.unit_of_work() as session:
        session.exec(delete(Item))
        session.exec(delete(User))


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def normal_user() -> User:
    with uow.unit_of_work() as session:  # committed when the block ends: requests see the user
        user = crud.get_user_by_email(session=session, email="user@example.com")
        return user or crud.create_user(session=session, email="user@example.com", password="secret")


# --8<-- [end:fixtures]


# --8<-- [start:test-unit]
@pytest.fixture
def uow_engine() -> Engine:
    return engine  # the database uow_test runs each test's transaction on


@pytest.fixture
def customer(uow_test: TestTransaction) -> User:
    """Written in the test's transaction: requests of the test see it, and it is rolled back after."""
    with uow.unit_of_work() as session:
        return crud.create_user(session=session, email="customer@example.com", password="pw")


# --8<-- [end:test-unit]
