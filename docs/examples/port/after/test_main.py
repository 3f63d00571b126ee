"""The app's tests after the port: atomic requests, mail after commit, a write that survives a 400."""

import crud
from fastapi.testclient import TestClient
from main import outbox
from models import User
from sqlmodel import select

import uow
from uow.testing import TestTransaction


def stored(email: str) -> User | None:
    with uow.unit_of_work() as session:
        user: User | None = session.exec(select(User).where(User.email == email)).first()
        return user


def test_signup_login_and_items(client: TestClient) -> None:
    outbox.clear()
    assert client.post("/signup", json={"email": "ada@example.com", "password": "pw"}).status_code == 201
    assert outbox == ["ada@example.com: welcome"]  # sent once the sign-up was committed
    assert client.post("/login", json={"email": "ada@example.com", "password": "pw"}).status_code == 200
    headers = {"X-User": "ada@example.com"}
    assert client.post("/items/", json={"title": "hat"}, headers=headers).status_code == 201
    assert client.get("/items/", headers=headers).json() == ["hat"]


# --8<-- [start:atomic]
def test_a_failed_signup_keeps_nothing_and_sends_no_mail(client: TestClient) -> None:
    outbox.clear()
    body = {"email": "bob@example.com", "password": "pw", "first_item": " "}
    assert client.post("/signup", json=body).status_code == 400
    assert stored("bob@example.com") is None  # the whole request was rolled back
    assert outbox == []  # and nobody was welcomed


def test_a_login_answered_400_still_upgrades_the_hash(client: TestClient) -> None:
    with uow.unit_of_work() as session:
        session.add(User(email="old@example.com", hashed_password=crud.legacy_hash("pw"), is_active=False))
    assert client.post("/login", json={"email": "old@example.com", "password": "pw"}).status_code == 400
    user = stored("old@example.com")
    assert user is not None and user.hashed_password == crud.hash_password("pw")  # REQUIRES_NEW kept it


# --8<-- [end:atomic]


def test_the_fixture_user_can_add_items(client: TestClient, normal_user: User) -> None:
    headers = {"X-User": normal_user.email}
    assert client.post("/items/", json={"title": "scarf"}, headers=headers).status_code == 201
    assert client.get("/items/", headers=headers).json() == ["scarf"]


# --8<-- [start:customer]
def test_a_customer_written_in_the_tests_unit(
    client: TestClient, customer: User, uow_test: TestTransaction
) -> None:
    taken = client.post("/signup", json={"email": customer.email, "password": "pw"})
    assert taken.status_code == 400  # the request sees the fixture's user, and does not wait on it
    assert client.post("/login", json={"email": customer.email, "password": "pw"}).status_code == 200


def test_the_customer_was_rolled_back() -> None:
    assert stored("customer@example.com") is None


# --8<-- [end:customer]
