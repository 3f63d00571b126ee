"""The app's tests, before the port: they show what its helpers' commits do."""

import crud
from fastapi.testclient import TestClient
from main import engine, outbox
from models import User
from sqlmodel import Session, select


def stored(email: str) -> User | None:
    with Session(engine) as session:
        user: User | None = session.exec(select(User).where(User.email == email)).first()
        return user


def test_signup_login_and_items(client: TestClient) -> None:
    outbox.clear()
    assert client.post("/signup", json={"email": "ada@example.com", "password": "pw"}).status_code == 201
    assert outbox == ["ada@example.com: welcome"]
    assert client.post("/login", json={"email": "ada@example.com", "password": "pw"}).status_code == 200
    headers = {"X-User": "ada@example.com"}
    assert client.post("/items/", json={"title": "hat"}, headers=headers).status_code == 201
    assert client.get("/items/", headers=headers).json() == ["hat"]


def test_a_failed_signup_keeps_the_user_and_sends_the_mail(client: TestClient) -> None:
    outbox.clear()
    body = {"email": "bob@example.com", "password": "pw", "first_item": " "}
    assert client.post("/signup", json=body).status_code == 400
    assert stored("bob@example.com") is not None  # half a sign-up was committed
    assert outbox == ["bob@example.com: welcome"]  # and welcomed


def test_a_login_answered_400_upgrades_the_hash(client: TestClient) -> None:
    with Session(engine) as session:
        session.add(User(email="old@example.com", hashed_password=crud.legacy_hash("pw"), is_active=False))
        session.commit()
    assert client.post("/login", json={"email": "old@example.com", "password": "pw"}).status_code == 400
    user = stored("old@example.com")
    assert user is not None and user.hashed_password == crud.hash_password("pw")


def test_the_fixture_user_can_add_items(client: TestClient, normal_user: User) -> None:
    headers = {"X-User": normal_user.email}
    assert client.post("/items/", json={"title": "scarf"}, headers=headers).status_code == 201
    assert client.get("/items/", headers=headers).json() == ["scarf"]
