"""The sync driver: enter and end units with direct calls.

Every decision comes from :mod:`uow._decisions`; this module only performs
the I/O they ask for.
"""

from __future__ import annotations

import inspect
import threading
from contextvars import Token
from typing import Any

import anyio.from_thread
from sqlalchemy.orm import Session

from . import _observe
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
from ._replicas import choose_sync, is_disconnect, record_sync
from ._transaction import (
    SUSPENDED,
    Binding,
    Boundary,
    Current,
    Hook,
    Transaction,
    live,
    log_end,
    logger,
)
from .exceptions import BlockingSessionUse, HookError, SessionKindError

__all__ = ["SyncBlock", "end_savepoint", "end_session", "end_sync", "run_hooks"]


class SyncBlock:
    """Enter and leave one unit from sync code."""

    __slots__ = ("action", "attempt", "binding", "boundary", "function", "options", "retried", "token")

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

    def __enter__(self) -> Boundary | None:
        binding = self.binding
        options = self.options
        current = live(binding.innermost())
        action = self.action = entering(options, current is not None)
        if action is Action.NONE:
            return None
        if action is Action.SUSPEND:
            self.token = binding.current.set(SUSPENDED)
            return None
        if binding.is_async:
            raise SessionKindError(
                "this manager makes AsyncSession objects, which sync code cannot "
                "drive; use `async with unit_of_work()` or @transactional on an "
                "async def, or configure uow with a sync engine"
            )
        if action is Action.BEGIN:
            tx = Transaction(binding, options, driven_async=False, outer=current.tx if current else None)
            router = binding.router
            if router is not None and options.read_only and not binding.external_transaction:
                tx.replica = choose_sync(router, binding.name)
            boundary = Boundary(tx)
            boundary.attempt = self.attempt
            start = tx.start_options()
            if start or tx.replica is not None:  # a replica is tried at once, to fall back now
                start_sync(tx, start)
        else:
            assert current is not None
            check_joinable(options, current.tx.options)
            if current.tx.loop_thread == threading.get_ident():
                raise BlockingSessionUse(
                    "a sync unit was entered on the event loop thread inside an "
                    "async unit whose session is sync: its queries would block the "
                    "loop. Call the sync function with `await uow.run_sync(fn, ...)`"
                )
            if action is Action.JOIN:
                self.boundary = current
                return current
            tx = current.tx
            session = tx.get_session()
            assert isinstance(session, Session)
            tx.check_boundary(current)
            boundary = Boundary(tx, current)
            boundary.open_savepoint(session.begin_nested())
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

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
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
        boundary = self.boundary
        assert boundary is not None
        try:
            error = end_sync(boundary, self.options, exc, savepoint=action is Action.SAVEPOINT)
        finally:
            if boundary.observation is not None:
                boundary.observation.leave()
        if error is not None:
            raise error
        return None


def start_sync(tx: Transaction, start: dict[str, Any]) -> None:
    """Check out the first connection with *start* options.

    A replica that refuses the connection is skipped for a while, and the primary serves the unit.
    """
    session = tx.get_session()
    assert isinstance(session, Session)
    try:
        session.connection(execution_options=start)
    except BaseException as exc:
        end_session(session, "rollback")
        replica = tx.replica
        if replica is not None and tx.binding.router is not None and is_disconnect(exc):
            tx.binding.router.mark_down(replica, exc)
            tx.use_primary()
            start_sync(tx, tx.start_options())  # READ ONLY on the primary
            return
        tx.begin_end()
        tx.finish(False)
        raise


def end_sync(
    boundary: Boundary, options: UnitOptions, exc: BaseException | None, *, savepoint: bool
) -> BaseException | None:
    """End a root or savepoint boundary whose body ended with *exc*; return what to raise."""
    tx = boundary.tx
    body = body_outcome(options, exc)
    plan = end_plan(boundary, options, body, exc)
    observation = boundary.observation
    if savepoint:
        boundary.close_savepoint()
        io_error = end_savepoint(boundary.savepoint, plan.commit)
    else:
        tx.begin_end()
        how = session_end(plan, tx)
        timed = observation if how == "commit" else None
        if timed is not None:
            timed.commit_started()
        io_error = end_session(tx.session, how)  # type: ignore[arg-type]
        if timed is not None:
            timed.commit_ended(io_error)
    result = end_result(plan, exc, io_error, tx.clock)
    if not savepoint:
        tx.finish(result.committed)
        router = tx.binding.router
        if router is not None and result.committed and tx.connected and not tx.options.read_only:
            record_sync(router, tx.binding.name)
    if boundary.started:
        log_end(boundary, result.committed, savepoint)
    if savepoint and result.committed:
        boundary.merge_into_parent()
    hooks = hooks_to_run(boundary, result.committed, savepoint)
    hook_error = run_hooks(hooks, result.committed, observation)
    error = to_raise(exc, result.error, hook_error)
    if observation is not None:
        observation.end(
            result.committed,
            rollback_cause(body, plan, result),
            error if error is not None or result.committed else exc,
            tx.served_by if tx.binding.router is not None else None,
        )
    return error


def end_session(session: Session | None, how: SessionEnd) -> BaseException | None:
    """Commit, roll back or just close the session; return the error instead of raising it."""
    if session is None:
        return None
    error: BaseException | None = None
    try:
        if how == "commit":
            session.commit()
        elif how == "rollback":
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


def end_savepoint(savepoint: Any, commit: bool) -> BaseException | None:
    """Release or roll back a SAVEPOINT; return the error instead of raising it."""
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


def run_hooks(hooks: list[Hook], committed: bool, observation: Observation | None = None) -> HookError | None:
    """Run hooks first in, first out; return the first failure of a non-robust one."""
    first: HookError | None = None
    for hook in hooks:
        try:
            if hook.is_async:
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
            if observation is not None:
                observation.hook_failed(hook.fn, e, committed)
            failure = hook_failure(hook, e, committed)
            first = first or failure
    return first
