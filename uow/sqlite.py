"""SQLite helpers: real SAVEPOINTs with the ``sqlite3`` and ``aiosqlite`` drivers."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from ._compat import AsyncEngine

__all__ = ["enable_savepoints"]


def _driver_leaves_transactions_alone(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None


def _emit_begin(connection: Connection) -> None:
    # Setting a non-AUTOCOMMIT isolation level hands control back to the
    # driver (isolation_level = ""); take it back before every BEGIN.
    dbapi_connection = connection.connection.dbapi_connection
    if dbapi_connection is not None and dbapi_connection.isolation_level is not None:
        dbapi_connection.isolation_level = None
    connection.exec_driver_sql("BEGIN")


def _end_what_sqlite_left_open(dbapi_connection: Any, _record: Any, _state: Any) -> None:
    # A COMMIT that fails (a deferred foreign key) leaves SQLite's transaction open,
    # while SQLAlchemy counts it as ended and skips the pool's rollback: end it here.
    if getattr(dbapi_connection, "in_transaction", False):
        dbapi_connection.rollback()


def enable_savepoints(engine: Engine | AsyncEngine) -> None:
    """Make SQLAlchemy, not the driver, begin SQLite transactions, so SAVEPOINT works.

    This is SQLAlchemy's documented recipe for pysqlite and aiosqlite: the
    driver's own transaction control is switched off on connect and ``BEGIN``
    is emitted when SQLAlchemy begins. Without it a SAVEPOINT may run outside
    the transaction and a rollback would not undo it. Calling it twice is
    harmless. ``UnitOfWorkManager`` calls it for SQLite engines it is given.
    """
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    if sync_engine.dialect.name != "sqlite":
        return
    if event.contains(sync_engine, "begin", _emit_begin):
        return
    event.listen(sync_engine, "connect", _driver_leaves_transactions_alone)
    event.listen(sync_engine, "begin", _emit_begin)
    event.listen(sync_engine.pool, "reset", _end_what_sqlite_left_open)
