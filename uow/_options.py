"""The options of a unit, validated once: propagation, read_only, isolation, retry..."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from .exceptions import InvalidOptionError, IsolationLevelConflict, TimeoutConflict

__all__ = ["Propagation", "UnitOptions", "check_joinable", "make_options"]

ISOLATION_LEVELS = frozenset({"SERIALIZABLE", "REPEATABLE READ", "READ COMMITTED", "READ UNCOMMITTED"})


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


@dataclass(frozen=True, slots=True)
class UnitOptions:
    """The validated options of one unit."""

    propagation: Propagation = Propagation.REQUIRED
    read_only: bool = False
    isolation_level: str | None = None
    retry: int = 0
    no_rollback_on: tuple[type[BaseException], ...] = ()
    durable: bool = False
    #: the budget of the outermost unit, in seconds (None: unbounded)
    timeout: float | None = None


def make_options(
    *,
    propagation: Propagation | str = Propagation.REQUIRED,
    read_only: bool = False,
    isolation_level: str | None = None,
    retry: int = 0,
    no_rollback_on: type[BaseException] | tuple[type[BaseException], ...] = (),
    durable: bool = False,
    timeout: float | None = None,
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
        raise InvalidOptionError(f"retry={retry!r} must be a whole number of extra attempts, 0 or more")
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
    if timeout is not None:
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise InvalidOptionError(
                f"timeout={timeout!r} must be a positive number of seconds, such as "
                "timeout=2.5, or None for no budget"
            )
        if propagation in (Propagation.NOT_SUPPORTED, Propagation.NEVER):
            raise InvalidOptionError(
                f"timeout={timeout!r} with propagation={propagation.name}: that unit "
                "has no transaction to bound"
            )
        timeout = float(timeout)
    return UnitOptions(propagation, read_only, isolation_level, retry, no_rollback_on, durable, timeout)


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise InvalidOptionError(f"{name}={value!r} must be True or False")


def check_joinable(options: UnitOptions, outer: UnitOptions) -> None:
    """Raise if a unit with *options* cannot share the transaction begun with *outer*.

    A joined unit's ``timeout`` is checked against the outer unit's budget,
    not enforced on its own: the shared transaction ends by the outer deadline.
    """
    level = options.isolation_level
    if level is not None and level != outer.isolation_level:
        have = outer.isolation_level or "the engine's default"
        raise IsolationLevelConflict(
            f"this unit asks for isolation_level={level!r}, but it joins a "
            f"transaction that runs at {have}, which cannot change once begun; set "
            f"isolation_level={level!r} on the outermost unit, or use "
            "propagation=REQUIRES_NEW for a transaction of its own"
        )
    timeout = options.timeout
    if timeout is not None and (outer.timeout is None or timeout > outer.timeout):
        have = "no timeout" if outer.timeout is None else f"timeout={outer.timeout:g}"
        raise TimeoutConflict(
            f"this unit asks for timeout={timeout:g}, but it shares the transaction of "
            f"an outer unit begun with {have}, and the transaction's budget cannot "
            "grow once begun; put the timeout on the outermost unit (or the request "
            "middleware), drop it here, or use propagation=REQUIRES_NEW for a "
            "transaction with a budget of its own"
        )
