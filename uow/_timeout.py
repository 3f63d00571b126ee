"""A unit's time budget (``timeout=``), and how each database enforces it.

- PostgreSQL: ``statement_timeout`` and ``lock_timeout`` set with
  ``set_config(..., true)`` (``SET LOCAL``) when the transaction begins, to the
  budget that is left, so the server cancels a statement or a lock wait that
  runs past it and the settings end with the transaction;
- SQLite: a progress handler on the connection interrupts a statement that
  runs past the deadline, removed when the transaction ends.

On both, a statement that starts once the budget is spent is refused before
it is sent, and PostgreSQL's limits shrink as the budget does (re-set at most
once per tenth of the budget). PostgreSQL does not apply them to COMMIT, so
a unit with a budget runs its deferred checks and triggers just before it
(``SET CONSTRAINTS ALL IMMEDIATE``). Nothing here runs for a unit without a
budget.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable
from time import monotonic
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Connection

from .exceptions import TimeoutUnsupported, UnitTimeout, causes

__all__ = ["SUPPORTED_DIALECTS", "Clock", "arm", "database_timeout", "start_clock"]

SUPPORTED_DIALECTS = frozenset({"postgresql", "sqlite"})

#: PostgreSQL's query_canceled (statement_timeout) and lock_not_available (lock_timeout)
_PG_TIMEOUT_SQLSTATES = {"57014": "statement_timeout", "55P03": "lock_timeout"}
_SQLITE_INTERRUPT = 9
#: SQLite virtual-machine steps between two looks at the clock
_PROGRESS_STEPS = 1000
#: statements that end a transaction or savepoint: never refused, never preceded by a re-set
_ENDING = ("ROLLBACK", "RELEASE", "SAVEPOINT", "COMMIT")

_SET_PG_LITERAL = (
    "SELECT set_config('statement_timeout', '{ms}', true), set_config('lock_timeout', '{ms}', true)"
)
_SET_PG = text("SELECT set_config('statement_timeout', :ms, true), set_config('lock_timeout', :ms, true)")


class Clock:
    """The budget of one transaction: its length, its deadline, and the limit in force at the database."""

    __slots__ = ("budget", "cap", "deadline", "started")

    def __init__(self, budget: float) -> None:
        self.budget = budget
        self.started = monotonic()
        self.deadline = self.started + budget
        #: the per-statement limit last set at the database, in seconds
        self.cap = budget

    def remaining(self) -> float:
        """Return the seconds left (0 or less once the budget is spent)."""
        return self.deadline - monotonic()

    def expired(self, where: str) -> UnitTimeout:
        """Return the error for a unit found past its deadline *where* (e.g. "at commit")."""
        return UnitTimeout(
            f"this unit ran past its timeout={self.budget:g} s budget "
            f"({monotonic() - self.started:.3f} s since it began), found {where}; "
            "it was rolled back. Make the work faster, give the outermost unit a "
            "longer timeout, or split the work into smaller units"
        )

    def translated(self, cause: str) -> UnitTimeout:
        """Return the error for a statement the database stopped at the budget (*cause* says how)."""
        return UnitTimeout(
            f"the database stopped this unit's statement at its timeout={self.budget:g} s "
            f"budget ({cause}, {monotonic() - self.started:.3f} s since the unit began); "
            "the unit was rolled back. Make the work faster, give the outermost unit "
            "a longer timeout, or split the work into smaller units"
        )


def start_clock(timeout: float, dialect_name: str | None) -> Clock:
    """Start the budget of a unit that begins now; raise if its database cannot be bounded."""
    if dialect_name not in SUPPORTED_DIALECTS:
        where = f"a {dialect_name} database" if dialect_name else "a session factory with no bind"
        raise TimeoutUnsupported(
            f"timeout={timeout:g} was asked for on {where}, where uow cannot enforce "
            "it (PostgreSQL and SQLite only); drop timeout= there, and bound the work "
            "with the driver's or server's own settings"
        )
    return Clock(timeout)


def arm(clock: Clock, connection: Connection, dialect_name: str | None) -> None:
    """Enforce *clock* on the transaction just begun on *connection* (once per transaction)."""
    if clock.remaining() <= 0:
        raise clock.expired("when it took a connection")
    if dialect_name == "postgresql":
        ms = _milliseconds(clock.remaining())
        connection.execute(_SET_PG, {"ms": str(ms)})
        clock.cap = ms / 1000
        event.listen(connection, "before_cursor_execute", _postgresql_guard(clock))
        event.listen(connection, "commit", _postgresql_before_commit(clock))
    else:
        dbapi_connection = connection.connection.dbapi_connection
        deadline = clock.deadline

        def past_deadline() -> int:
            return 1 if monotonic() >= deadline else 0

        def disarm(_connection: Connection) -> None:
            _set_progress_handler(dbapi_connection, None)

        _set_progress_handler(dbapi_connection, past_deadline)
        event.listen(connection, "before_cursor_execute", _guard(clock))
        # the Connection object ends with the transaction; its listeners go with it
        event.listen(connection, "commit", disarm)
        event.listen(connection, "rollback", disarm)


def database_timeout(exc: BaseException) -> str | None:
    """Return how the database stopped a statement for its time limit, or None if *exc* is not that."""
    for e in causes(exc):
        code = getattr(e, "sqlstate", None) or getattr(e, "pgcode", None)
        if isinstance(code, str) and code in _PG_TIMEOUT_SQLSTATES:
            return f"PostgreSQL's {_PG_TIMEOUT_SQLSTATES[code]}"
        if isinstance(e, sqlite3.OperationalError) and (
            getattr(e, "sqlite_errorcode", None) == _SQLITE_INTERRUPT or str(e) == "interrupted"
        ):
            return "SQLite interrupted it"
    return None


def _milliseconds(seconds: float) -> int:
    # at least 1: 0 would mean "no limit" to PostgreSQL
    return max(1, math.ceil(seconds * 1000))


def _guard(clock: Clock) -> Callable[..., None]:
    def before_statement(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if clock.remaining() <= 0 and not statement.lstrip().upper().startswith(_ENDING):
            raise clock.expired("before a statement")

    return before_statement


def _postgresql_guard(clock: Clock) -> Callable[..., None]:
    step = clock.budget / 10

    def before_statement(conn: Connection, cursor: Any, statement: str, *_: Any) -> None:
        remaining = clock.remaining()
        if remaining > 0 and clock.cap - remaining <= step:
            return  # the limit in force is close enough to what is left
        if statement.lstrip().upper().startswith(_ENDING):
            return
        if remaining <= 0:
            raise clock.expired("before a statement")
        # the limit in force would let this statement outlast the budget: lower it
        _run(conn, _SET_PG_LITERAL.format(ms=_milliseconds(remaining)))
        clock.cap = remaining

    return before_statement


def _postgresql_before_commit(clock: Clock) -> Callable[[Connection], None]:
    def before_commit(conn: Connection) -> None:
        # PostgreSQL does not bound COMMIT by the transaction's statement_timeout: run the
        # deferred constraint checks and triggers now, under the budget, instead of in it
        try:
            conn.exec_driver_sql("SET CONSTRAINTS ALL IMMEDIATE")  # the guard lowers the limit first
        except BaseException:
            # SQLAlchemy counts a failed commit as the transaction's end and will not roll
            # it back: do it here, so the connection goes back to the pool clean
            conn.connection.dbapi_connection.rollback()  # type: ignore[union-attr]
            raise

    return before_commit


def _run(conn: Connection, sql: str) -> None:
    """Run *sql* on the DB-API connection under *conn* (not through SQLAlchemy's events)."""
    dbapi_cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        dbapi_cursor.execute(sql)
    finally:
        dbapi_cursor.close()


def _set_progress_handler(dbapi_connection: Any, handler: Callable[[], int] | None) -> None:
    if isinstance(dbapi_connection, sqlite3.Connection):
        dbapi_connection.set_progress_handler(handler, _PROGRESS_STEPS)
    else:  # aiosqlite, through SQLAlchemy's adapted connection
        dbapi_connection.run_async(lambda driver: driver.set_progress_handler(handler, _PROGRESS_STEPS))
