"""Every decision a unit makes, as plain functions without I/O, in the order they apply.

1. :func:`entering` — what entering a unit does (begin, join, savepoint, suspend, none);
2. :func:`body_outcome` — whether its body's ending asks to commit or roll back;
3. :func:`end_plan` — what ending the boundary does: commit or roll back, and the
   error that goes with it (rollback-only, a read-only unit with writes, a spent budget);
   :func:`session_end` — how the root's session ends: COMMIT, ROLLBACK or only close;
4. :func:`end_result` — once the session's I/O is done: committed or not, and the error;
5. :func:`hooks_to_run` — which hooks run now (none are run here);
6. :func:`to_raise` — what the end raises: its own error, a hook's, or the body's own.

The drivers (sync, async, the request middleware) only perform the I/O these
ask for, and :func:`is_transient` / :func:`backoff_delay` decide retries.
"""

from __future__ import annotations

import enum
import logging
import random
import sqlite3
from collections.abc import Callable
from typing import Literal, NamedTuple

from ._observe import RollbackCause
from ._options import Propagation, UnitOptions
from ._timeout import Clock, database_timeout
from ._transaction import Boundary, Hook, Transaction, has_pending_writes
from .exceptions import (
    HookError,
    PropagationError,
    ReadOnlyViolation,
    UnexpectedRollback,
    UnitTimeout,
    causes,
)

__all__ = [
    "Action",
    "EndPlan",
    "EndResult",
    "SessionEnd",
    "backoff_delay",
    "body_outcome",
    "end_plan",
    "end_result",
    "entering",
    "hook_failure",
    "hooks_to_run",
    "is_transient",
    "rollback_cause",
    "session_end",
    "to_raise",
]

logger = logging.getLogger("uow")


class Action(enum.Enum):
    """What entering a unit does, given its propagation and the caller's state."""

    BEGIN = "begin"  # a new outermost transaction (suspending any current one)
    JOIN = "join"  # share the current session and transaction
    SAVEPOINT = "savepoint"  # a SAVEPOINT inside the current transaction
    NONE = "none"  # run as is, no unit
    SUSPEND = "suspend"  # run with no unit visible, the current one suspended


# --- 1. entering ----------------------------------------------------------


def entering(options: UnitOptions, in_unit: bool) -> Action:
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

# --- 2. the body ended --------------------------------------------------------


def body_outcome(options: UnitOptions, exc: BaseException | None) -> Outcome:
    """Return whether a unit whose body ended with *exc* commits or rolls back."""
    if exc is None:
        return "commit"
    if options.no_rollback_on and isinstance(exc, options.no_rollback_on):
        return "commit"
    return "rollback"


# --- 3. the plan for the end ---------------------------------------------------


class EndPlan(NamedTuple):
    """What ending a boundary does: commit or roll back, and the error to raise for it."""

    commit: bool
    error: BaseException | None


def end_plan(
    boundary: Boundary, options: UnitOptions, body: Outcome, exc: BaseException | None = None
) -> EndPlan:
    """Decide how a boundary ends, given how its body ended (with *exc*, if it raised).

    In a transaction with a budget, a database error that stopped a statement
    for its time limit becomes :class:`UnitTimeout`, and a commit past the
    deadline rolls back with one.
    """
    clock = boundary.tx.clock
    if body == "rollback":
        if clock is not None and exc is not None and not isinstance(exc, UnitTimeout):
            cause = database_timeout(exc)
            if cause is not None:
                timeout = clock.translated(cause)
                timeout.__cause__ = exc
                return EndPlan(False, timeout)
        return EndPlan(False, None)
    if clock is not None and clock.remaining() <= 0:
        return EndPlan(False, clock.expired("at its end, before the commit"))
    if boundary.rollback_only:
        error = UnexpectedRollback(
            "nothing was committed: a unit joined into this one failed with "
            f"{boundary.rollback_cause!r}, which was caught before it reached here, "
            "so the transaction was marked rollback-only; let the error propagate, "
            "or run the inner work with propagation=NESTED (a savepoint) or "
            "REQUIRES_NEW if its failure must not undo the outer unit"
        )
        error.__cause__ = boundary.rollback_cause
        return EndPlan(False, error)
    if options.read_only and has_pending_writes(boundary.tx.session):
        return EndPlan(
            False,
            ReadOnlyViolation(
                "a read_only=True unit ended with pending changes in its session; "
                "they were discarded. Open a read-write unit to write, or expunge them"
            ),
        )
    return EndPlan(True, None)


# --- 3b. how the session ends --------------------------------------------------------

SessionEnd = Literal["commit", "rollback", "close"]


def session_end(plan: EndPlan, tx: Transaction) -> SessionEnd:
    """Return how the root's session ends, once the plan is known.

    A read-only unit that succeeded has nothing to commit, and ends the
    cheapest way its database allows: on PostgreSQL, where its transaction is
    READ ONLY at the database (nothing can have been written), with COMMIT,
    which costs less there than ROLLBACK; elsewhere its session is only closed
    (the pool rolls the connection back), which also skips SQLAlchemy's
    rollback of every object it loaded, and commits nothing it may have sent.
    """
    if not plan.commit:
        return "rollback"
    if not tx.options.read_only:
        return "commit"
    return "commit" if tx.read_only_at_database() else "close"


# --- 4. the result, after the I/O -----------------------------------------------------


class EndResult(NamedTuple):
    """How a boundary ended: committed (or released) or not, and the error to raise (None: the body's)."""

    committed: bool
    error: BaseException | None


def end_result(
    plan: EndPlan, body_exc: BaseException | None, io_error: BaseException | None, clock: Clock | None = None
) -> EndResult:
    """Return how the boundary ended once its session I/O is done.

    A failed rollback of a unit that already has an error to raise is only
    logged; a failed commit (or release) is the error, as :class:`UnitTimeout`
    if the database stopped it at the budget of *clock* (deferred work runs in
    a PostgreSQL COMMIT).
    """
    if io_error is not None:
        if not plan.commit and (body_exc is not None or plan.error is not None):
            logger.warning("uow: rollback failed", exc_info=io_error)
            return EndResult(False, plan.error)
        if clock is not None:
            cause = database_timeout(io_error)
            if cause is not None:
                timeout = clock.translated(cause)
                timeout.__cause__ = io_error
                return EndResult(False, timeout)
        return EndResult(False, io_error)
    return EndResult(plan.commit, plan.error)


def rollback_cause(
    body: Outcome, plan: EndPlan, result: EndResult, forced: bool = False
) -> RollbackCause | None:
    """Return why a boundary rolled back, for an observer (None: it committed).

    *forced* is a rollback the caller asked for without an exception (the
    request middleware's decision).
    """
    if result.committed:
        return None
    if body == "rollback":
        return "request" if forced else "exception"
    if isinstance(plan.error, UnexpectedRollback):
        return "rollback_only"
    if isinstance(plan.error, ReadOnlyViolation):
        return "read_only_violation"
    return "commit_failed"


# --- 5. the hooks --------------------------------------------------------------------


def hooks_to_run(boundary: Boundary, committed: bool, savepoint: bool) -> list[Hook]:
    """Return the hooks to run now that *boundary* ended.

    A released savepoint runs none: its hooks wait for the outer transaction
    (the caller hands them over). Under ``uow.testing`` commit hooks are
    captured for the test instead.
    """
    if savepoint:
        return [] if committed else boundary.rollback_hooks
    if not committed:
        return boundary.rollback_hooks
    sink = boundary.tx.binding.hook_sink
    if sink is None:
        return boundary.commit_hooks
    sink.extend(boundary.commit_hooks)
    return []


def hook_failure(hook: Hook, exc: BaseException, committed: bool) -> HookError | None:
    """Log a failed hook; return the error to raise for it (None if robust)."""
    kind = "on_commit" if committed else "on_rollback"
    if hook.robust:
        logger.exception("uow: robust %s hook %r failed", kind, hook.fn)
        return None
    outcome = "committed" if committed else "rolled back"
    error = HookError(
        f"the unit {outcome} (that stands), but its {kind} hook {hook.fn!r} "
        f"raised {exc!r}; the other hooks still ran. Pass robust=True to log "
        "such failures instead of raising"
    )
    error.__cause__ = exc
    return error


# --- 6. what the end raises -------------------------------------------------------------


def to_raise(
    body_exc: BaseException | None, error: BaseException | None, hook_error: HookError | None
) -> BaseException | None:
    """Return what ending a unit raises: its own error, else a hook's unless *body_exc* propagates.

    ``None`` means: let the body's own exception (if any) propagate.
    """
    if error is not None:
        return error
    if hook_error is not None and body_exc is not None:
        # the body's exception propagates (a cancel scope may swallow it): say it on the log too
        logger.error("uow: %s", hook_error, exc_info=hook_error)
        add = getattr(body_exc, "add_note", None)  # Python 3.11+
        if add is not None:
            add(f"uow: {hook_error}")
        return None
    return hook_error


# --- retry -------------------------------------------------------------------------

TransientPredicate = Callable[[BaseException], bool]

_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01"})
_MYSQL_DEADLOCK_CODES = frozenset({1213, 1205})
_SQLITE_BUSY_CODES = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED (primary codes)


def is_transient(exc: BaseException, extra: tuple[TransientPredicate, ...] = ()) -> bool:
    """Return True for errors a re-run may cure: serialization failure, deadlock, busy.

    A unit that ran out of its budget (:class:`UnitTimeout`) is not one of them.
    """
    if isinstance(exc, UnitTimeout):
        return False
    for e in causes(exc):
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
