"""The only place uow starts threads: ``run_sync`` and the session finisher.

Blocking work called from async code goes to a worker thread with the
caller's context. Ending a sync session (commit, rollback, close) runs on a
limiter of its own, so it never waits for a token of the threadpool that
endpoints and ``run_sync`` share: a connection can always be given back,
which is what keeps a small pool from deadlocking.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar

if TYPE_CHECKING:
    from ._unit import Transaction

__all__ = ["on_event_loop", "run_sync", "set_finisher_threads"]

P = ParamSpec("P")
T = TypeVar("T")

_finisher_size = 32
_finisher: RunVar[anyio.CapacityLimiter] = RunVar("uow_finisher")

#: the innermost async-driven unit whose session is sync; run_sync serializes on it
serial_tx: ContextVar[Transaction | None] = ContextVar("uow_serial_tx", default=None)

_get_running_loop = asyncio._get_running_loop


def on_event_loop() -> bool:
    """Return True on a thread that is running an asyncio event loop."""
    return _get_running_loop() is not None


def set_finisher_threads(count: int) -> None:
    """Set how many threads may end sync sessions at once (default 32), for new event loops."""
    global _finisher_size
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        from .exceptions import InvalidOptionError

        raise InvalidOptionError(f"count={count!r} must be a positive int")
    _finisher_size = count


def _finisher_limiter() -> anyio.CapacityLimiter:
    try:
        return _finisher.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(_finisher_size)
        _finisher.set(limiter)
        return limiter


async def in_finisher(fn: Callable[[], T]) -> T:
    """Run *fn* (session I/O) in a thread of the finisher's own limiter."""
    return await anyio.to_thread.run_sync(fn, limiter=_finisher_limiter())


async def shielded(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``make()`` to completion even if the caller is cancelled meanwhile.

    anyio's shield stops cancel scopes; a native ``Task.cancel()`` gets through
    it, so on asyncio the work runs in a task of its own that is awaited until
    done. A cancellation that arrived meanwhile is raised afterwards.
    """
    with anyio.CancelScope(shield=True):
        if _get_running_loop() is None:  # another backend: the shield is enough
            return await make()
        task = asyncio.ensure_future(make())
        cancelled = False
        while True:
            try:
                result = await asyncio.shield(task)
                break
            except asyncio.CancelledError:
                if task.done():
                    raise
                cancelled = True
    if cancelled:
        raise asyncio.CancelledError()
    return result


async def run_sync(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run blocking *fn* in a worker thread with the caller's context; await its result.

    The current unit is visible in the thread (``uow.session`` works there).
    Calls that share one sync session run one at a time, so concurrent tasks
    (``asyncio.gather``) never use a session from two threads at once.
    """
    call: Callable[[], T] = functools.partial(fn, *args, **kwargs) if (args or kwargs) else fn
    tx = serial_tx.get()
    if tx is None:
        return await anyio.to_thread.run_sync(call)
    async with tx.async_lock():
        return await anyio.to_thread.run_sync(call)


async def maybe_await(value: Awaitable[T] | T) -> T:
    """Await *value* if it is awaitable, else return it."""
    if isinstance(value, Awaitable):
        return await value
    return value
