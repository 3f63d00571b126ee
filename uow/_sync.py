"""The sync driver: enter and end units with direct calls."""

from __future__ import annotations

import inspect
import threading
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from ._core import Action, UnitOptions, check_joinable, decide, outcome
from ._unit import (
    Hook,
    Transaction,
    Unit,
    conclude,
    hook_failure,
    hooks_after_end,
    live,
    log_end,
    logger,
    settle,
    verdict,
)
from .exceptions import BlockingSessionUse, HookError, SessionKindError

if TYPE_CHECKING:
    from .manager import UnitOfWorkManager

__all__ = ["SyncScope", "end_savepoint", "end_session", "run_hooks"]


class SyncScope:
    """Enter and leave one unit from sync code."""

    __slots__ = ("action", "attempt", "manager", "options", "token", "unit")

    def __init__(self, manager: UnitOfWorkManager, options: UnitOptions, attempt: int = 0) -> None:
        self.manager = manager
        self.options = options
        #: how many times a retrying decorator ran the unit before (for the DEBUG record)
        self.attempt = attempt

    def __enter__(self) -> Unit | None:
        manager = self.manager
        options = self.options
        current = live(manager._current.get())
        action = self.action = decide(options, current is not None)
        if action is Action.NONE:
            self.unit = None
            return None
        if action is Action.SUSPEND:
            self.unit = None
            self.token = manager._current.set(None)
            return None
        if manager.is_async:
            raise SessionKindError(
                "this manager makes AsyncSession objects, which sync code cannot "
                "drive; use `async with unit_of_work()` or @transactional on an "
                "async def, or configure uow with a sync engine"
            )
        if action is Action.BEGIN:
            tx = Transaction(manager, options, driven_async=False, outer=current.tx if current else None)
            unit = Unit(tx)
            unit.attempt = self.attempt
            start = tx.start_options()
            if start:
                session = tx.get_session()
                assert isinstance(session, Session)
                try:
                    session.connection(execution_options=start)
                except BaseException:
                    session.close()
                    raise
        else:
            assert current is not None
            check_joinable(options, current.tx.options)
            if current.tx.loop_thread == threading.get_ident() and not manager.is_async:
                raise BlockingSessionUse(
                    "a sync unit was entered on the event loop thread inside an "
                    "async unit whose session is sync: its queries would block the "
                    "loop. Call the sync function with `await uow.run_sync(fn, ...)`"
                )
            if action is Action.JOIN:
                self.unit = current
                return current
            tx = current.tx
            session = tx.get_session()
            assert isinstance(session, Session)
            tx.check_boundary(current)
            unit = Unit(tx, current)
            unit.savepoint = session.begin_nested()
            tx.innermost = unit
        self.unit = unit
        self.token = manager._current.set(unit)
        return unit

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        action = self.action
        if action is Action.JOIN:
            if exc is not None and outcome(self.options, exc) == "rollback":
                assert self.unit is not None
                self.unit.mark_rollback_only(exc)
            return None
        if action is Action.NONE:
            return None
        self.manager._current.reset(self.token)
        if action is Action.SUSPEND:
            return None
        unit = self.unit
        assert unit is not None
        error = end_unit(unit, self.options, exc, savepoint=action is Action.SAVEPOINT)
        if error is not None:
            raise error
        return None


def end_unit(
    unit: Unit, options: UnitOptions, exc: BaseException | None, *, savepoint: bool = False
) -> BaseException | None:
    """End a root or savepoint unit whose body ended with *exc*; return what to raise."""
    planned = verdict(unit, options, outcome(options, exc))
    commit = planned.action == "commit"
    if savepoint:
        unit.tx.innermost = unit.parent
        io_error = end_savepoint(unit, commit)
    else:
        unit.tx.ended = True
        # a read-only unit that succeeded counts as committed, but never COMMITs
        io_error = end_session(unit.tx.session, commit and not options.read_only)  # type: ignore[arg-type]
        unit.tx.closed = True
    committed, error = conclude(exc, planned, io_error)
    if unit.started:
        log_end(unit, committed, savepoint)
    if savepoint and committed:
        unit.merge_into_parent()
        return error
    if savepoint:
        hook_error = run_hooks(unit.rollback_hooks, False)
    else:
        hook_error = run_hooks(hooks_after_end(unit, committed), committed)
    return settle(exc, error, hook_error)


def end_session(session: Session | None, commit: bool) -> BaseException | None:
    """Commit or roll back, then close; return the error instead of raising it."""
    if session is None:
        return None
    error: BaseException | None = None
    try:
        if commit:
            session.commit()
        else:
            session.rollback()
    except BaseException as e:
        error = e
    finally:
        try:
            session.close()
        except Exception as e:
            logger.warning("uow: closing the session failed", exc_info=True)
            error = error or e
    return error


def end_savepoint(unit: Unit, commit: bool) -> BaseException | None:
    """Release or roll back a unit's SAVEPOINT; return the error instead of raising it."""
    savepoint = unit.savepoint
    try:
        if commit:
            savepoint.commit()
        else:
            savepoint.rollback()
    except BaseException as e:
        if commit and savepoint.is_active:
            try:
                savepoint.rollback()
            except Exception:
                logger.warning("uow: rolling back a savepoint failed", exc_info=True)
        return e
    return None


def run_hooks(hooks: list[Hook], committed: bool) -> HookError | None:
    """Run hooks first in, first out; return the first failure of a non-robust one."""
    first: HookError | None = None
    for hook in hooks:
        try:
            if hook.is_async:
                import anyio.from_thread

                try:
                    anyio.from_thread.run(hook.fn)
                except RuntimeError as e:
                    raise SessionKindError(
                        "an async hook cannot run when a sync unit ends outside "
                        "a worker thread; register a sync callable"
                    ) from e
            else:
                result = hook.fn()
                if inspect.isawaitable(result):
                    close = getattr(result, "close", None)
                    if close is not None:
                        close()
                    raise SessionKindError(
                        f"hook {hook.fn!r} returned an awaitable in a sync unit; "
                        "register a sync callable, or end the unit with async code"
                    )
        except Exception as e:
            failure = hook_failure(hook, e, committed)
            first = first or failure
    return first
