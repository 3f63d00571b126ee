"""Data access after the port: helpers flush, the unit they run in commits."""

import hashlib

import sqlmodel
from models import Item, User
from sqlmodel import Session, select

import uow


def hash_password(password: str) -> str:
    return "sha256$" + hashlib.sha256(password.encode()).hexdigest()


def legacy_hash(password: str) -> str:
    """The scheme of older accounts: upgraded at their next login."""
    return "md5$" + hashlib.md5(password.encode()).hexdigest()


def verify_password(password: str, hashed: str) -> bool:
    return hashed in (hash_password(password), legacy_hash(password))


def get_user_by_email(*, session: Session, email: str) -> User | None:
    user: User | None = session.exec(select(User).where(User.email == email)).first()
    return user


# --8<-- [start:create-user]
def create_user(*, session: Session, email: str, password: str) -> User:
    user = User(email=email, hashed_password=hash_password(password))
    session.add(user)
    session.flush()  # the INSERT now (user.id is known), the COMMIT with the unit
    return user


# --8<-- [end:create-user]


# --8<-- [start:authenticate]
@uow.transactional(propagation=uow.Propagation.REQUIRES_NEW)
def authenticate(*, email: str, password: str) -> User | None:
    """Its own unit, committed when it returns, whatever the request then answers."""
    session = uow.current_session(sqlmodel.Session)
    user = get_user_by_email(session=session, email=email)
    if user is None or not verify_password(password, user.hashed_password):
        return None
    if user.hashed_password.startswith("md5$"):  # upgrade an old hash while we know the password
        user.hashed_password = hash_password(password)
    return user


# --8<-- [end:authenticate]


def create_item(*, session: Session, title: str, owner_id: int) -> Item:
    item = Item(title=title, owner_id=owner_id)
    session.add(item)
    session.flush()
    return item
