"""Decisions without I/O: options, propagation, outcome, retry policy.

The sync and async drivers differ only in how they perform I/O; everything
they decide comes from here.
"""

from __future__ import annotations

import enum
import random
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from .exceptions import InvalidOptionError, PropagationError

__all__ = [
    "Action",
    "Propagation",
    "UnitOptions",
    "backoff_delay",
    "decide",
    "is_transient",
    "make_options",
]

ISOLATION_LEVELS = frozenset(
    {"SERIALIZABLE", "REPEATABLE READ", "READ COMMITTED", "READ UNCOMMITTED"}
)


class Propagation(enum.Enum):
    """How a unit relates to the unit already open in the caller (Spring's meanings)."""

    #: Join the current unit; begin one if there is none. The default.
    REQUIRED = "REQUIRED"
    #: Suspend the current unit and run on a fresh session and transaction.
    REQUIRES_NEW = "REQUIRES_NEW"
    #: Run in a SAVEPOINT of the current unit; begin one if there is none.
    NESTED = "NESTED"
    #: Join the current unit; raise :class:`PropagationError` if there is none.
    MANDATORY = "MANDATORY"
    #: Join the current unit if there is one; otherwise run without a unit.
    SUPPORTS = "SUPPORTS"
    #: Suspend the current unit and run without one.
    NOT_SUPPORTED = "NOT_SUPPORTED"
    #: Run without a unit; raise :class:`PropagationError` inside one.
    NEVER = "NEVER"


class Action(enum.Enum):
    """What entering a unit does, given its propagation and the caller's state."""

    BEGIN = "begin"  # a new outermost transaction (suspending any current one)
    JOIN = "join"  # share the current session and transaction
    SAVEPOINT = "savepoint"  # a SAVEPOINT inside the current transaction
    NONE = "none"  # run as is, no unit
    SUSPEND = "suspend"  # run with no unit visible, the current one suspended


@dataclass(frozen=True, slots=True)
class UnitOptions:
    """The validated options of one unit."""

    propagation: Propagation = Propagation.REQUIRED
    read_only: bool = False
    isolation_level: str | None = None
    retry: int = 0
    no_rollback_on: tuple[type[BaseException], ...] = ()
    durable: bool = False


DEFAULT_OPTIONS = UnitOptions()


def make_options(
    *,
    propagation: Propagation | str = Propagation.REQUIRED,
    read_only: bool = False,
    isolation_level: str | None = None,
    retry: int = 0,
    no_rollback_on: type[BaseException] | tuple[type[BaseException], ...] = (),
    durable: bool = False,
) -> UnitOptions:
    """Validate option values and return them frozen; raise :class:`InvalidOptionError`."""
    if isinstance(propagation, str) and not isinstance(propagation, Propagation):
        try:
            propagation = Propagation[propagation.upper()]
        except KeyError:
            raise InvalidOptionError(
                f"propagation={propagation!r} is not a propagation kind; "
                f"use one of {', '.join('Propagation.' + p.name for p in Propagation)}"
            ) from None
    if not isinstance(propagation, Propagation):
        raise InvalidOptionError(
            f"propagation={propagation!r} is not a uow.Propagation member; "
            "pass e.g. propagation=uow.Propagation.REQUIRES_NEW"
        )
    _check_bool("read_only", read_only)
    _check_bool("durable", durable)
    if isolation_level is not None:
        if not isinstance(isolation_level, str):
            raise InvalidOptionError(
                f"isolation_level={isolation_level!r} must be a string such as "
                "'SERIALIZABLE', or None for the engine's default"
            )
        normalized = isolation_level.upper().replace("_", " ")
        if normalized not in ISOLATION_LEVELS:
            raise InvalidOptionError(
                f"isolation_level={isolation_level!r} is not one of "
                f"{sorted(ISOLATION_LEVELS)}; a unit is a transaction, so "
                "'AUTOCOMMIT' is not allowed either"
            )
        isolation_level = normalized
    if isinstance(retry, bool) or not isinstance(retry, int) or retry < 0:
        raise InvalidOptionError(
            f"retry={retry!r} must be a whole number of extra attempts, 0 or more"
        )
    if retry and propagation not in (
        Propagation.REQUIRED,
        Propagation.REQUIRES_NEW,
        Propagation.NESTED,
    ):
        raise InvalidOptionError(
            f"retry={retry} with propagation={propagation.name}: a retried unit "
            "must begin its own transaction; use REQUIRED or REQUIRES_NEW"
        )
    if isinstance(no_rollback_on, type):
        no_rollback_on = (no_rollback_on,)
    if not isinstance(no_rollback_on, tuple) or not all(
        isinstance(t, type) and issubclass(t, Exception) for t in no_rollback_on
    ):
        raise InvalidOptionError(
            f"no_rollback_on={no_rollback_on!r} must be an Exception subclass or "
            "a tuple of them (cancellation and other BaseExceptions always roll back)"
        )
    if read_only and propagation in (Propagation.NOT_SUPPORTED, Propagation.NEVER):
        raise InvalidOptionError(
            f"read_only=True with propagation={propagation.name}: that unit has "
            "no transaction to make read-only"
        )
    return UnitOptions(
        propagation, read_only, isolation_level, retry, no_rollback_on, durable
    )


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise InvalidOptionError(f"{name}={value!r} must be True or False")


def decide(options: UnitOptions, in_unit: bool) -> Action:
    """Return what entering a unit with *options* does; raise if it cannot run here."""
    p = options.propagation
    if options.durable and in_unit:
        raise PropagationError(
            "durable=True: this unit must be the outermost one, but it was "
            "entered inside another unit; call it outside any unit, or drop durable"
        )
    if p is Propagation.REQUIRED:
        action = Action.JOIN if in_unit else Action.BEGIN
    elif p is Propagation.REQUIRES_NEW:
        action = Action.BEGIN
    elif p is Propagation.NESTED:
        action = Action.SAVEPOINT if in_unit else Action.BEGIN
    elif p is Propagation.MANDATORY:
        if not in_unit:
            raise PropagationError(
                "propagation=MANDATORY needs an open unit, and there is none; "
                "call this from inside @transactional or `with unit_of_work()`"
            )
        action = Action.JOIN
    elif p is Propagation.SUPPORTS:
        action = Action.JOIN if in_unit else Action.NONE
    elif p is Propagation.NOT_SUPPORTED:
        action = Action.SUSPEND if in_unit else Action.NONE
    else:  # NEVER
        if in_unit:
            raise PropagationError(
                "propagation=NEVER forbids an open unit, and one is open; "
                "call this outside any unit, or use NOT_SUPPORTED to suspend it"
            )
        action = Action.NONE
    if options.retry and action is not Action.BEGIN:
        raise PropagationError(
            f"retry={options.retry} on a unit that would {action.value} the open "
            "unit: only an outermost unit can be re-run; put retry on the "
            "outermost @transactional, or use propagation=REQUIRES_NEW"
        )
    return action


Outcome = Literal["commit", "rollback"]


def outcome(options: UnitOptions, exc: BaseException | None) -> Outcome:
    """Return whether a unit whose body ended with *exc* commits or rolls back."""
    if exc is None:
        return "commit"
    if options.no_rollback_on and isinstance(exc, options.no_rollback_on):
        return "commit"
    return "rollback"


# --- retry -----------------------------------------------------------------

TransientPredicate = Callable[[BaseException], bool]

_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01"})
_MYSQL_DEADLOCK_CODES = frozenset({1213, 1205})
_SQLITE_BUSY_CODES = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED (primary codes)


def _causes(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo.extend((getattr(e, "orig", None), e.__cause__, e.__context__))
    return seen


def is_transient(
    exc: BaseException, extra: tuple[TransientPredicate, ...] = ()
) -> bool:
    """Return True for errors a re-run may cure: serialization failure, deadlock, busy."""
    for e in _causes(exc):
        code = getattr(e, "sqlstate", None) or getattr(e, "pgcode", None)
        if isinstance(code, str) and code in _TRANSIENT_SQLSTATES:
            return True
        if isinstance(e, sqlite3.OperationalError):
            errcode = getattr(e, "sqlite_errorcode", None)
            if isinstance(errcode, int) and errcode & 0xFF in _SQLITE_BUSY_CODES:
                return True
            message = str(e)
            if "database is locked" in message or "database table is locked" in message:
                return True
        if type(e).__module__.split(".")[0] in ("pymysql", "MySQLdb", "mysql"):
            args = getattr(e, "args", ())
            if args and args[0] in _MYSQL_DEADLOCK_CODES:
                return True
        if any(pred(e) for pred in extra):
            return True
    return False


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Return a full-jitter delay for *attempt* (0 for the first retry)."""
    return random.uniform(0, min(cap, base * (2**attempt)))


def check_joinable(options: UnitOptions, outer: UnitOptions) -> None:
    """Raise if a unit with *options* cannot share the transaction begun with *outer*."""
    level = options.isolation_level
    if level is not None and level != outer.isolation_level:
        from .exceptions import IsolationLevelConflict

        have = outer.isolation_level or "the engine's default"
        raise IsolationLevelConflict(
            f"this unit asks for isolation_level={level!r}, but it joins a "
            f"transaction that runs at {have}, which cannot change once begun; set "
            f"isolation_level={level!r} on the outermost unit, or use "
            "propagation=REQUIRES_NEW for a transaction of its own"
        )
