"""The errors uow raises. Every one derives from :class:`UnitOfWorkError`."""

from __future__ import annotations

__all__ = [
    "BlockingSessionUse",
    "DirectEndError",
    "HookError",
    "InvalidOptionError",
    "IsolationLevelConflict",
    "NoActiveUnitOfWork",
    "NotConfiguredError",
    "NotDecoratableError",
    "PartialCommit",
    "PropagationError",
    "ReadOnlyViolation",
    "SavepointConflict",
    "SessionEnded",
    "SessionKindError",
    "TimeoutConflict",
    "TimeoutUnsupported",
    "UnexpectedRollback",
    "UnitOfWorkError",
    "UnitOfWorkWarning",
    "UnitTimeout",
]


class UnitOfWorkError(Exception):
    """Base of every error uow raises; catch it to catch them all."""


class UnitOfWorkWarning(UserWarning):
    """Warned when code bypasses its unit: a direct ``commit()`` or ``rollback()`` on its session."""


class DirectEndError(UnitOfWorkError, RuntimeError):
    """Raised, with ``UnitOfWorkManager(strict=True)``, for a direct ``commit()``/``rollback()`` in a unit."""


class NotConfiguredError(UnitOfWorkError, RuntimeError):
    """Raised when a module-level function is used before ``uow.configure()``."""


class NoActiveUnitOfWork(UnitOfWorkError, LookupError):
    """Raised when code asks for the current session outside any unit."""


class SessionEnded(NoActiveUnitOfWork):
    """Raised when a unit's session is used after the unit ended.

    Through ``uow.session``, a session from ``provide_session``, or a
    reference kept elsewhere: the session is closed and holds no connection,
    and work on it would run in a transaction nobody commits.
    """


class InvalidOptionError(UnitOfWorkError, ValueError):
    """Raised when a unit is given an option value it cannot honour."""


class NotDecoratableError(UnitOfWorkError, TypeError):
    """Raised when ``@transactional`` is put on something it cannot wrap.

    That is anything not callable, and generator functions, whose body runs
    after the call returns and so outside the unit.
    """


class PropagationError(UnitOfWorkError, RuntimeError):
    """Raised when a unit's propagation (or ``durable``/``retry``) cannot hold here.

    ``MANDATORY`` with no unit open, ``NEVER`` inside one, ``durable=True``
    inside another unit, ``retry`` on a unit that would join another.
    """


class IsolationLevelConflict(UnitOfWorkError):
    """Raised when a joined unit asks for an isolation level its outer unit lacks."""


class TimeoutConflict(UnitOfWorkError):
    """Raised when a unit that shares its outer unit's transaction asks for more time than it has.

    A joined unit (``REQUIRED`` inside a unit) or a savepoint (``NESTED``)
    runs under the outer unit's budget: asking for a longer ``timeout`` than
    the outer one, or for any when the outer unit has none, cannot be honoured.
    """


class TimeoutUnsupported(UnitOfWorkError):
    """Raised when a unit with ``timeout`` begins on a database uow cannot bound.

    Timeouts are enforced on PostgreSQL and SQLite; elsewhere the unit refuses
    to start rather than run unbounded.
    """


class UnitTimeout(UnitOfWorkError, TimeoutError):
    """Raised when a unit runs out of its ``timeout`` budget; the unit was rolled back.

    The database's own error (a cancelled statement or lock wait on
    PostgreSQL, an interrupted statement on SQLite) is the ``__cause__`` when
    there is one. A timed-out unit is not retried by ``retry=``.
    """


class UnexpectedRollback(UnitOfWorkError):
    """Raised when a unit that finished normally had to roll back.

    A unit joined into it failed (its exception was caught in between), so
    the shared transaction was marked rollback-only and nothing was committed.
    """


class ReadOnlyViolation(UnitOfWorkError):
    """Raised when a ``read_only`` unit would write: a flush, or pending changes at its end."""


class SessionKindError(UnitOfWorkError, TypeError):
    """Raised when sync and async are mixed in a way that cannot work.

    A sync unit on a manager that makes ``AsyncSession`` objects, an async
    hook registered in a unit that is finished synchronously, or
    ``uow.current_session(cls)`` when the session is not a *cls*.
    """


class BlockingSessionUse(UnitOfWorkError, RuntimeError):
    """Raised when a sync session would do I/O on the event loop thread."""


class SavepointConflict(UnitOfWorkError, RuntimeError):
    """Raised when concurrent tasks of one transaction would interleave SAVEPOINTs.

    Rolling one back would silently discard the other's writes; run them one
    after another, or give each a transaction of its own (``REQUIRES_NEW``).
    """


class PartialCommit(UnitOfWorkError):
    """Raised when one database committed its part of the work and another then failed.

    Two managers (two databases) cannot commit atomically: the message names
    the databases that kept their writes and the one that failed (the
    ``__cause__``). Reconcile with idempotent retries, or an outbox.
    """

    def __init__(self, message: str, kept: tuple[str, ...], failed: str) -> None:
        super().__init__(message)
        #: the names of the databases that committed
        self.kept = kept
        #: the name of the database whose COMMIT failed
        self.failed = failed


class HookError(UnitOfWorkError):
    """Raised when an ``on_commit``/``on_rollback`` hook fails (not ``robust``).

    The unit's outcome stands: a commit is not undone. The hook's exception is
    the ``__cause__``; the other hooks still ran.
    """


def causes(exc: BaseException) -> list[BaseException]:
    """Return *exc* and what lies under it: the DBAPI error (``.orig``), its causes and contexts."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo.extend((getattr(e, "orig", None), e.__cause__, e.__context__))
    return seen
