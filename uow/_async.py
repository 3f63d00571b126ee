"""The async driver: the same decisions as the sync one, with the I/O awaited.

An ``AsyncSession`` is awaited directly. A sync session is driven from a
worker thread, so the event loop never blocks; its end (commit, rollback,
close) runs on the finisher's threads and is waited for even under
cancellation, which is raised once the unit has ended.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
from collections.abc import Callable
from contextvars import Token
from typing import Any

import anyio.to_thread

from . import _observe
from ._compat import AsyncSession
from ._decisions import (
    Action,
    SessionEnd,
    body_outcome,
    end_plan,
    end_result,
    entering,
    hook_failure,
    hooks_to_run,
    rollback_cause,
    session_end,
    to_raise,
)
from ._observe import Observation
from ._options import UnitOptions, check_joinable
from ._replicas import choose_async, is_disconnect, record_async
from ._sync import end_savepoint, end_session
from ._threads import finish, raise_after, session_thread, shielded
from ._transaction import (
    SUSPENDED,
    Binding,
    Boundary,
    Current,
    Hook,
    Transaction,
    live,
    log_end,
    serial_tx,
)
from .exceptions import HookError

__all__ = ["AsyncBlock", "end_async", "run_hooks_async", "start_async"]


class AsyncBlock:
    """Enter and leave one unit from async code."""

    __slots__ = (
        "action",
        "attempt",
        "binding",
        "boundary",
        "function",
        "options",
        "retried",
        "serial_token",
        "token",
    )

    def __init__(
        self,
        binding: Binding,
        options: UnitOptions,
        attempt: int = 0,
        *,
        function: Any = None,
        retried: BaseException | None = None,
    ) -> None:
        self.binding = binding
        self.options = options
        #: how many times a retrying decorator ran the unit before (for the DEBUG record)
        self.attempt = attempt
        #: the decorated function, and the transient error that made this run a retry (for observers)
        self.function = function
        self.retried = retried
        self.boundary: Boundary | None = None
        self.token: Token[Current] | None = None
        self.serial_token: Token[Transaction | None] | None = None

    async def __aenter__(self) -> Boundary | None:
        binding = self.binding
        options = self.options
        current = live(binding.innermost())
        action = self.action = entering(options, current is not None)
        if action is Action.NONE:
            return None
        if action is Action.SUSPEND:
            self.token = binding.current.set(SUSPENDED)
            return None
        if action is Action.BEGIN:
            tx = Transaction(binding, options, driven_async=True, outer=current.tx if current else None)
            router = binding.router
            if router is not None and options.read_only and not binding.external_transaction:
                tx.replica = await choose_async(router, binding.name)
            boundary = Boundary(tx)
            boundary.attempt = self.attempt
            start = tx.start_options()
            if start or tx.replica is not None:  # a replica is tried at once, to fall back now
                await start_async(tx, start)
            if not binding.is_async:
                self.serial_token = serial_tx.set(tx)
        else:
            assert current is not None
            check_joinable(options, current.tx.options)
            if action is Action.JOIN:
                self.boundary = current
                return current
            tx = current.tx
            session = tx.get_session()
            tx.check_boundary(current)
            boundary = Boundary(tx, current)
            if isinstance(session, AsyncSession):
                boundary.open_savepoint(await session.begin_nested())
            else:
                async with tx.async_lock():
                    tx.check_boundary(current)  # a sibling task may have begun one meanwhile
                    boundary.open_savepoint(
                        await session_thread(
                            functools.partial(tx.locked, session.begin_nested),
                            holds_connection=tx.connected,
                        )
                    )
        observer = _observe.observer
        if observer is not None:
            boundary.observation = observer.start(
                options=options,
                savepoint=action is Action.SAVEPOINT,
                db_system=binding.dialect_name,
                function=self.function,
                attempt=self.attempt,
                retried=self.retried,
            )
        self.boundary = boundary
        self.token = binding.current.set(boundary)
        return boundary

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        action = self.action
        if action is Action.JOIN:
            if exc is not None and body_outcome(self.options, exc) == "rollback":
                assert self.boundary is not None
                self.boundary.mark_rollback_only(exc)
            return None
        if action is Action.NONE:
            return None
        assert self.token is not None
        self.binding.current.reset(self.token)
        if action is Action.SUSPEND:
            return None
        if self.serial_token is not None:
            serial_tx.reset(self.serial_token)
        boundary = self.boundary
        assert boundary is not None
        try:
            error = await end_async(boundary, self.options, exc, savepoint=action is Action.SAVEPOINT)
        finally:
            if boundary.observation is not None:
                boundary.observation.leave()
        if error is not None:
            raise error
        return None


async def end_async(
    boundary: Boundary,
    options: UnitOptions,
    exc: BaseException | None,
    *,
    savepoint: bool = False,
    rollback: bool = False,
) -> BaseException | None:
    """End a root or savepoint boundary whose body ended with *exc*; return what to raise.

    *rollback* forces a rollback without an exception (a request answered
    with a status that does not commit). ``None`` means: let *exc* (if any)
    propagate. The session's I/O and then the hooks of the outcome run to
    their end even if the task is cancelled meanwhile; the cancellation is
    raised afterwards, chained to the end's own error if there is one.
    """
    tx = boundary.tx
    body = "rollback" if rollback else body_outcome(options, exc)
    plan = end_plan(boundary, options, body, exc)
    observation = boundary.observation
    if savepoint:
        boundary.close_savepoint()
        io_error, cancelled = await _end_savepoint(boundary, plan.commit)
    else:
        tx.begin_end()
        how = session_end(plan, tx)
        timed = observation if how == "commit" else None
        if timed is not None:
            timed.commit_started()
        io_error, cancelled = await _end_session(tx, how, traced=observation is not None)
        if timed is not None:
            timed.commit_ended(io_error)
    result = end_result(plan, exc, io_error, tx.clock)
    if not savepoint:
        tx.finish(result.committed)
        router = tx.binding.router
        if router is not None and result.committed and tx.connected and not tx.options.read_only:
            cancelled = cancelled or await record_async(router, tx.binding.name)
    if boundary.started:
        log_end(boundary, result.committed, savepoint)
    if savepoint and result.committed:
        boundary.merge_into_parent()
    hooks = hooks_to_run(boundary, result.committed, savepoint)
    hook_error = None
    if hooks:
        hook_error, late = await shielded(
            functools.partial(run_hooks_async, hooks, result.committed, observation)
        )
        cancelled = cancelled or late
    error = to_raise(exc, result.error, hook_error)
    if observation is not None:
        observation.end(
            result.committed,
            rollback_cause(body, plan, result, forced=rollback),
            error if error is not None or result.committed else exc,
            tx.served_by if tx.binding.router is not None else None,
        )
    raise_after(cancelled, error)
    return error


async def start_async(tx: Transaction, options: dict[str, Any]) -> None:
    """Check out the first connection with *options* (isolation, read-only).

    A replica that refuses the connection is skipped for a while, and the primary serves the unit.
    """
    session = tx.get_session()
    try:
        if isinstance(session, AsyncSession):
            await session.connection(execution_options=options)
        else:
            await session_thread(
                functools.partial(session.connection, execution_options=options), holds_connection=False
            )
    except BaseException as exc:
        replica = tx.replica
        router = tx.binding.router
        if replica is not None and router is not None and is_disconnect(exc):
            await _end_session(tx, "rollback")
            router.mark_down(replica, exc)
            tx.use_primary()
            await start_async(tx, tx.start_options())  # READ ONLY on the primary
            return
        tx.begin_end()
        await _end_session(tx, "rollback")
        tx.finish(False)
        raise


async def _end_session(
    tx: Transaction, how: SessionEnd, traced: bool = False
) -> tuple[BaseException | None, BaseException | None]:
    """Commit, roll back or close; return the error and a cancellation that came meanwhile.

    *traced*: the finisher thread runs in the caller's context (the flush before
    the COMMIT belongs to the unit's span).
    """
    session = tx.session
    if session is None:
        return None, None
    if isinstance(session, AsyncSession):
        return await shielded(functools.partial(_end_async_session, session, how))
    if tx.lock_is_free() and not tx.needs_io_to_end():
        return end_session(session, how), None  # nothing to send: no thread needed
    # tx.locked waits for a thread still working on the session (a task of the unit's)
    end = functools.partial(tx.locked, end_session, session, how)
    if traced:
        end = functools.partial(contextvars.copy_context().run, end)
    return await finish(end)


async def _end_async_session(session: AsyncSession, how: SessionEnd) -> BaseException | None:
    error: BaseException | None = None
    try:
        if how == "commit":
            await session.commit()
        elif how == "rollback":
            await session.rollback()
    except BaseException as e:
        error = e
    finally:
        try:
            await session.close()
        except Exception as e:
            error = error or e
    return error


async def _end_savepoint(
    boundary: Boundary, commit: bool
) -> tuple[BaseException | None, BaseException | None]:
    """Release or roll back the savepoint; return the error and a cancellation that came meanwhile."""
    tx = boundary.tx
    if not tx.binding.is_async:  # (a sync session: its transaction may have ended, and let go of it)
        end = functools.partial(tx.locked, end_savepoint, boundary.savepoint, commit)
        if boundary.observation is not None:
            # the RELEASE (or ROLLBACK TO) statement belongs to the savepoint's span
            end = functools.partial(contextvars.copy_context().run, end)
        return await finish(end)
    return await shielded(functools.partial(_end_async_savepoint, boundary.savepoint, commit))


async def _end_async_savepoint(savepoint: Any, commit: bool) -> BaseException | None:
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


def _boxed(fn: Callable[[], Any]) -> tuple[Any]:
    return (fn(),)


async def run_hooks_async(
    hooks: list[Hook], committed: bool, observation: Observation | None = None
) -> HookError | None:
    """Run hooks first in, first out: async ones awaited, sync ones in a worker thread."""
    first: HookError | None = None
    for hook in hooks:
        try:
            if hook.is_async:
                await hook.fn()
            else:
                # boxed: trio's threads refuse a function whose result is a coroutine
                (result,) = await anyio.to_thread.run_sync(_boxed, hook.fn)
                if inspect.isawaitable(result):  # e.g. a lambda that returns a coroutine
                    await result
        except Exception as e:
            if observation is not None:
                observation.hook_failed(hook.fn, e, committed)
            failure = hook_failure(hook, e, committed)
            first = first or failure
    return first
