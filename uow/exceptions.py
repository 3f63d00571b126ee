"""The errors uow raises. Every one derives from :class:`UnitOfWorkError`."""

from __future__ import annotations

__all__ = [
    "BlockingSessionUse",
    "HookError",
    "InvalidOptionError",
    "IsolationLevelConflict",
    "NoActiveUnitOfWork",
    "NotConfiguredError",
    "NotDecoratableError",
    "PropagationError",
    "ReadOnlyViolation",
    "SessionKindError",
    "UnexpectedRollback",
    "UnitOfWorkError",
]


class UnitOfWorkError(Exception):
    """Base of every error uow raises; catch it to catch them all."""


class NotConfiguredError(UnitOfWorkError, RuntimeError):
    """Raised when a module-level function is used before ``uow.configure()``."""


class NoActiveUnitOfWork(UnitOfWorkError, LookupError):
    """Raised when code asks for the current session outside any unit."""


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


class UnexpectedRollback(UnitOfWorkError):
    """Raised when a unit that finished normally had to roll back.

    A unit joined into it failed (its exception was caught in between), so
    the shared transaction was marked rollback-only and nothing was committed.
    """


class ReadOnlyViolation(UnitOfWorkError):
    """Raised when a ``read_only`` unit would write: a flush, or pending changes at its end."""


class SessionKindError(UnitOfWorkError, TypeError):
    """Raised when sync and async are mixed in a way that cannot work.

    A sync unit on a manager that makes ``AsyncSession`` objects, or an async
    hook registered in a unit that is finished synchronously.
    """


class BlockingSessionUse(UnitOfWorkError, RuntimeError):
    """Raised when a sync session would do I/O on the event loop thread."""


class HookError(UnitOfWorkError):
    """Raised when an ``on_commit``/``on_rollback`` hook fails (not ``robust``).

    The unit's outcome stands: a commit is not undone. The hook's exception is
    the ``__cause__``; the other hooks still ran.
    """
