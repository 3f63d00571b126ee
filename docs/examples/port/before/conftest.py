"""The app's test fixtures: one session for the whole run, a client per module."""

from collections.abc import Iterator

import crud
import pytest
from fastapi.testclient import TestClient
from main import app, engine, init_db
from models import Item, User
from sqlmodel import Session, delete


# --8<-- [start:fixtures]
@pytest.fixture(scope="session", autouse=True)
def db() -> Iterator[Session]:
    with Session(engine) as session:
        init_db(session)
        yield session
        session.exec(delete(Item))
        session.exec(delete(User))
        session.commit()


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def normal_user(db: Session) -> User:
    user = crud.get_user_by_email(session=db, email="user@example.com")
    return user or crud.create_user(session=db, email="user@example.com", password="secret")


# --8<-- [end:fixtures]
