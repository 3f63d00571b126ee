"""What the field app and its tests share: tables, stack ids, the engine recipe.

Imported by the test process and by every server process; it has no side
effects (the app module builds the engine, from ``UOW_FIELD_DB_URL``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, ForeignKey, String, Text, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["DB_URL_ENV", "MISSING_PARENT", "STACKS", "FieldBase", "Parent", "Row", "make_engine"]

#: the environment variable the app process reads its database URL from
DB_URL_ENV = "UOW_FIELD_DB_URL"

#: the middleware stacks the app hosts, one Starlette sub-app each, under ``/<stack>/``
STACKS = ("plain", "basehttp-inside", "basehttp-outside", "gzip-outside", "replay-outside")

#: a parent id no row has: a row pointing at it fails only at COMMIT (the key is deferred)
MISSING_PARENT = 987_654_321


class FieldBase(DeclarativeBase):
    pass


class Parent(FieldBase):
    __tablename__ = "field_parents"
    id: Mapped[int] = mapped_column(primary_key=True)


class Row(FieldBase):
    __tablename__ = "field_rows"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    body: Mapped[str | None] = mapped_column(Text, default=None)
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("field_parents.id", deferrable=True, initially="DEFERRED"), default=None
    )


def _foreign_keys_on(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    """A small pool (2 connections, no overflow, 5 s to wait); SQLite enforces foreign keys."""
    sqlite = url.startswith("sqlite")
    engine = create_engine(
        url,
        pool_size=2,
        max_overflow=0,
        pool_timeout=5,
        connect_args={"timeout": 5} if sqlite else {},
    )
    if sqlite:
        event.listen(engine, "connect", _foreign_keys_on)
    return engine
