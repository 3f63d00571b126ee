"""The only place uow starts threads: ``run_sync`` and the session finisher.

Blocking work called from async code goes to a worker thread with the
caller's context. Ending a sync session (commit, rollback, close), and any
thread work of a unit whose session already holds a connection, runs on a
limiter of its own, so it never waits for a token of the threadpool that
endpoints and ``run_sync`` share (tokens that threads waiting for a pooled
connection may all be holding): a connection can always be used to the end
and given back, which is what keeps a small pool from deadlocking.

Once a thread works on a unit's session, it is waited for even if the task
is cancelled (``Task.cancel()`` included), so the unit's end never uses the
session from a second thread at the same time.
"""

from __future__ import annotations

import asyncio
import functools
import math
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
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
_unlimited: RunVar[anyio.CapacityLimiter] = RunVar("uow_unlimited")
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()

#: the innermost async-driven unit whose session is sync; run_sync serializes on it
serial_tx: ContextVar[Transaction | None] = ContextVar("uow_serial_tx", default=None)

_get_running_loop = asyncio._get_running_loop


def on_event_loop() -> bool:
    """Return True on a thread that is running an asyncio event loop."""
    return _get_running_loop() is not None


def set_finisher_threads(count: int) -> None:
    """Set how many threads may end sync sessions at once (default 32).

    It applies to sessions that end from now on (under anyio's other
    backends, to event loops started from now on).
    """
    global _finisher_size, _executor
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        from .exceptions import InvalidOptionError

        raise InvalidOptionError(f"count={count!r} must be a positive int")
    with _executor_lock:
        _finisher_size = count
        old, _executor = _executor, None
    if old is not None:
        old.shutdown(wait=False)  # its queued work still runs


def _finisher_limiter() -> anyio.CapacityLimiter:
    try:
        return _finisher.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(_finisher_size)
        _finisher.set(limiter)
        return limiter


def _unlimited_limiter() -> anyio.CapacityLimiter:
    try:
        return _unlimited.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(math.inf)
        _unlimited.set(limiter)
        return limiter


def _finisher_executor() -> ThreadPoolExecutor:
    global _executor
    executor = _executor
    if executor is None:
        with _executor_lock:
            executor = _executor
            if executor is None:
                executor = _executor = ThreadPoolExecutor(_finisher_size, thread_name_prefix="uow-finisher")
    return executor


async def in_finisher(fn: Callable[[], T]) -> T:
    """Run *fn* (the end of a session: commit or rollback, and close) on the finisher's threads.

    On asyncio, a thread pool of the finisher's own (a plain executor: the
    end needs no context, and the caller shields it from cancellation, so
    anyio's bookkeeping would only cost time on every request); on other
    backends, anyio's threads under the finisher's limiter.
    """
    loop = _get_running_loop()
    if loop is None:
        return await anyio.to_thread.run_sync(fn, limiter=_finisher_limiter())
    return await loop.run_in_executor(_finisher_executor(), fn)


async def shielded(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``make()`` to completion even if the caller is cancelled meanwhile.

    anyio's shield stops cancel scopes; a native ``Task.cancel()`` gets through
    it, so on asyncio the work runs in a task of its own that is awaited until
    done. A cancellation that arrived meanwhile is raised afterwards, chained
    to the work's own error if it failed, so that neither is lost.
    """
    with anyio.CancelScope(shield=True):
        if _get_running_loop() is None:  # another backend: the shield is enough
            return await make()
        task = asyncio.ensure_future(make())
        cancelled = False
        while not task.done():
            try:
                await asyncio.wait((task,))
            except asyncio.CancelledError:
                cancelled = True
    if cancelled:
        if not task.cancelled() and task.exception() is not None:
            raise asyncio.CancelledError() from task.exception()
        raise asyncio.CancelledError()
    return task.result()


async def session_thread(fn: Callable[[], T], *, holds_connection: bool) -> T:
    """Run *fn*, which uses a unit's sync session, in a worker thread; wait for it to end.

    Waiting for a thread token can be cancelled; once the thread is given the
    work, cancellation waits for it to finish and is raised afterwards. Work
    on a session that *holds_connection* takes the finisher's tokens: it never
    waits for the pool, so it must not wait behind threads that do.
    """
    limiter = (
        _finisher_limiter() if holds_connection else anyio.to_thread.current_default_thread_limiter()
    )
    async with limiter:
        return await shielded(
            functools.partial(anyio.to_thread.run_sync, fn, limiter=_unlimited_limiter())
        )


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
        return await session_thread(call, holds_connection=tx.holds_connection())


async def maybe_await(value: Awaitable[T] | T) -> T:
    """Await *value* if it is awaitable, else return it."""
    if isinstance(value, Awaitable):
        return await value
    return value
