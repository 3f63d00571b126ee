"""The async driver: the same decisions as the sync one, with I/O awaited.

An ``AsyncSession`` is awaited directly. A sync session is driven from a
worker thread, so the event loop never blocks; its end (commit, rollback,
close) runs on the finisher's own limiter, shielded from cancellation.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from contextvars import Token
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from sqlalchemy.orm import Session

from ._compat import AsyncSession
from ._core import Action, UnitOptions, check_joinable, decide, outcome
from ._sync import end_savepoint, end_session
from ._unit import (
    Hook,
    Transaction,
    Unit,
    conclude,
    hook_failure,
    hooks_after_end,
    live,
    log_end,
    settle,
    verdict,
)
from .concurrency import finish, in_finisher, serial_tx, session_thread, shielded
from .exceptions import HookError

if TYPE_CHECKING:
    from .manager import UnitOfWorkManager

__all__ = ["AsyncScope", "run_hooks_async"]


class AsyncScope:
    """Enter and leave one unit from async code."""

    __slots__ = ("action", "attempt", "manager", "options", "serial_token", "token", "unit")

    def __init__(self, manager: UnitOfWorkManager, options: UnitOptions, attempt: int = 0) -> None:
        self.manager = manager
        self.options = options
        #: how many times a retrying decorator ran the unit before (for the DEBUG record)
        self.attempt = attempt
        self.serial_token: Token[Transaction | None] | None = None

    async def __aenter__(self) -> Unit | None:
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
        if action is Action.BEGIN:
            tx = Transaction(manager, options, driven_async=True, outer=current.tx if current else None)
            unit = Unit(tx)
            unit.attempt = self.attempt
            start = tx.start_options()
            if start:
                await _start(tx, start)
            if not manager.is_async:
                self.serial_token = serial_tx.set(tx)
        else:
            assert current is not None
            check_joinable(options, current.tx.options)
            if action is Action.JOIN:
                self.unit = current
                return current
            tx = current.tx
            session = tx.get_session()
            tx.check_boundary(current)
            unit = Unit(tx, current)
            if isinstance(session, AsyncSession):
                unit.savepoint = await session.begin_nested()
            else:
                async with tx.async_lock():
                    tx.check_boundary(current)  # a sibling task may have begun one meanwhile
                    unit.savepoint = await session_thread(
                        functools.partial(tx.locked, session.begin_nested),
                        holds_connection=tx.holds_connection(),
                    )
            tx.innermost = unit
        self.unit = unit
        self.token = manager._current.set(unit)
        return unit

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
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
        if self.serial_token is not None:
            serial_tx.reset(self.serial_token)
        unit = self.unit
        assert unit is not None
        error = await end_unit(unit, self.options, exc, savepoint=action is Action.SAVEPOINT)
        if error is not None:
            raise error
        return None


async def end_unit(
    unit: Unit,
    options: UnitOptions,
    exc: BaseException | None,
    *,
    savepoint: bool = False,
    rollback: bool = False,
) -> BaseException | None:
    """End a root or savepoint unit whose body ended with *exc*; return what to raise.

    *rollback* forces a rollback without an exception (a request answered
    with an error status). ``None`` means: let *exc* (if any) propagate.

    The whole end is shielded from cancellation: the session I/O and then the
    hooks of the outcome (``on_rollback`` for a unit rolled back because it
    was cancelled, ``on_commit`` for one whose COMMIT had begun) run to the
    end, and a cancellation that arrived meanwhile is raised afterwards.
    """
    tx = unit.tx
    if not savepoint and tx.session is None and unit.is_bare():
        # no session, no hooks, nothing to refuse, nothing to log: the outcome is all there is
        tx.ended = tx.closed = True
        tx.committed = not rollback and outcome(options, exc) == "commit"
        return None
    if not savepoint and unit.is_bare() and isinstance(tx.session, Session) and tx.lock_is_free():
        return await _end_bare_sync(unit, options, exc, rollback)
    return await shielded(
        functools.partial(_end_unit, unit, options, exc, savepoint=savepoint, rollback=rollback)
    )


async def _end_unit(
    unit: Unit, options: UnitOptions, exc: BaseException | None, *, savepoint: bool, rollback: bool
) -> BaseException | None:
    planned = verdict(unit, options, "rollback" if rollback else outcome(options, exc))
    commit = planned.action == "commit"
    if savepoint:
        unit.tx.innermost = unit.parent
        io_error = await _end_savepoint(unit, commit)
    else:
        unit.tx.ended = True
        # a read-only unit that succeeded counts as committed, but never COMMITs
        io_error = await _end_session(unit.tx, commit and not options.read_only)
        unit.tx.closed = True
    committed, error = conclude(exc, planned, io_error)
    if unit.started:
        log_end(unit, committed, savepoint)
    if savepoint and committed:
        unit.merge_into_parent()
        return error
    if savepoint:
        hook_error = await run_hooks_async(unit.rollback_hooks, False)
    else:
        hook_error = await run_hooks_async(hooks_after_end(unit, committed), committed)
    return settle(exc, error, hook_error)


async def _end_bare_sync(
    unit: Unit, options: UnitOptions, exc: BaseException | None, rollback: bool
) -> BaseException | None:
    """End a root unit with a sync session and nothing else to run: :func:`_end_unit`'s fast path.

    Its only wait is the finisher's, which cancellation cannot stop, so no
    task of its own is needed to shield it (two loop cycles fewer per request).
    """
    tx = unit.tx
    session = tx.session
    assert isinstance(session, Session)
    planned = verdict(unit, options, "rollback" if rollback else outcome(options, exc))
    commit = planned.action == "commit" and not options.read_only
    tx.ended = True
    cancelled: BaseException | None = None
    if tx.needs_io_to_end():
        io_error, cancelled = await finish(functools.partial(tx.locked, end_session, session, commit))
    else:
        io_error = end_session(session, commit)
    tx.closed = True
    committed, error = conclude(exc, planned, io_error)
    tx.committed = committed
    if cancelled is not None:  # it came while the session ended: raise it now, with the error
        if error is not None:
            raise cancelled from error
        raise cancelled
    return settle(exc, error, None)


async def _start(tx: Transaction, options: dict[str, Any]) -> None:
    """Check out the first connection with *options* (isolation, read-only)."""
    session = tx.get_session()
    try:
        if isinstance(session, AsyncSession):
            await session.connection(execution_options=options)
        else:
            await session_thread(
                functools.partial(session.connection, execution_options=options),
                holds_connection=False,
            )
    except BaseException:
        await shielded(functools.partial(_end_session, tx, False))
        raise


async def _end_session(tx: Transaction, commit: bool) -> BaseException | None:
    """Commit or roll back, then close (callers shield it from cancellation)."""
    session = tx.session
    if session is None:
        return None
    if isinstance(session, AsyncSession):
        return await _end_async_session(session, commit)
    if tx.lock_is_free() and not tx.needs_io_to_end():
        return end_session(session, commit)
    return await _end_sync_session(tx, session, commit)


async def _end_sync_session(tx: Transaction, session: Session, commit: bool) -> BaseException | None:
    # A task the unit started (asyncio.gather's siblings of a failed child) may
    # still be running session work in a thread: wait for it before ending.
    async with tx.async_lock():
        return await in_finisher(functools.partial(tx.locked, end_session, session, commit))


async def _end_async_session(session: AsyncSession, commit: bool) -> BaseException | None:
    error: BaseException | None = None
    try:
        if commit:
            await session.commit()
        else:
            await session.rollback()
    except BaseException as e:
        error = e
    finally:
        try:
            await session.close()
        except Exception as e:
            error = error or e
    return error


async def _end_savepoint(unit: Unit, commit: bool) -> BaseException | None:
    """Release or roll back the savepoint (callers shield it from cancellation)."""
    if isinstance(unit.tx.session, Session):
        return await _end_sync_savepoint(unit, commit)
    return await _end_async_savepoint(unit, commit)


async def _end_sync_savepoint(unit: Unit, commit: bool) -> BaseException | None:
    async with unit.tx.async_lock():
        return await in_finisher(functools.partial(unit.tx.locked, end_savepoint, unit, commit))


async def _end_async_savepoint(unit: Unit, commit: bool) -> BaseException | None:
    savepoint = unit.savepoint
    try:
        if commit:
            await savepoint.commit()
        else:
            await savepoint.rollback()
    except BaseException as e:
        if commit and savepoint.is_active:
            with contextlib.suppress(Exception):
                await savepoint.rollback()
        return e
    return None


async def run_hooks_async(hooks: list[Hook], committed: bool) -> HookError | None:
    """Run hooks first in, first out: async ones awaited, sync ones in a worker thread."""
    first: HookError | None = None
    for hook in hooks:
        try:
            if hook.is_async:
                await hook.fn()
            else:
                result = await anyio.to_thread.run_sync(hook.fn)
                if inspect.isawaitable(result):  # e.g. a lambda that returns a coroutine
                    await result
        except Exception as e:
            failure = hook_failure(hook, e, committed)
            first = first or failure
    return first
