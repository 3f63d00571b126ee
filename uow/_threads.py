"""Where uow's own thread work runs, and the one idiom that shields it from cancellation.

Ending a sync session (commit, rollback, close), and any thread work of a
unit whose session already holds a connection, runs on a limiter of its own,
so it never waits for a token of the threadpool that endpoints and
``run_sync`` share (tokens that threads waiting for a pooled connection may
all be holding): a connection can always be used to the end and given back,
which is what keeps a small pool from deadlocking.

Once a thread works on a unit's session it is waited for, even if the task
is cancelled (``Task.cancel()`` included), so the unit's end never uses the
session from a second thread at the same time. :func:`shielded` is that
idiom: it returns the work's result and the cancellation that arrived
meanwhile, for the caller to raise once it has used the result.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar

from . import _finisher

__all__ = ["finish", "running_asyncio", "session_thread", "shielded"]

T = TypeVar("T")

_finisher_limiter: RunVar[anyio.CapacityLimiter] = RunVar("uow_finisher")
_unlimited: RunVar[anyio.CapacityLimiter] = RunVar("uow_unlimited")


def running_asyncio() -> bool:
    """Return True in a thread that runs an asyncio event loop (False under trio, or in a worker)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def finisher_limiter() -> anyio.CapacityLimiter:
    try:
        return _finisher_limiter.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(_finisher.size())
        _finisher_limiter.set(limiter)
        return limiter


def _unlimited_limiter() -> anyio.CapacityLimiter:
    try:
        return _unlimited.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(math.inf)
        _unlimited.set(limiter)
        return limiter


async def shielded(make: Callable[[], Awaitable[T]]) -> tuple[T, BaseException | None]:
    """Run ``make()`` to its end even if the caller is cancelled meanwhile.

    Return its result and the cancellation that arrived (None if none). anyio's
    shield stops cancel scopes; a native ``Task.cancel()`` gets through it, so
    on asyncio the work runs in a task of its own that is awaited until done.
    An exception of the work propagates, with a cancellation that arrived
    meanwhile chained to it.
    """
    with anyio.CancelScope(shield=True):
        if not running_asyncio():  # another backend: the shield is enough
            return await make(), None
        task = asyncio.ensure_future(make())
        cancelled: BaseException | None = None
        while not task.done():
            try:
                await asyncio.wait((task,))
            except asyncio.CancelledError as e:
                cancelled = e
    if cancelled is not None and not task.cancelled() and task.exception() is not None:
        raise cancelled from task.exception()
    return task.result(), cancelled


async def finish(fn: Callable[[], T]) -> tuple[T, BaseException | None]:
    """Run *fn* (the end of a session) in a finisher thread and wait for it to end.

    Return its result and the cancellation that arrived meanwhile. On asyncio
    the threads are :mod:`uow._finisher`'s (no shielding task needed); on
    other backends, anyio's threads under the finisher's limiter, shielded.
    """
    if not running_asyncio():
        with anyio.CancelScope(shield=True):
            return await anyio.to_thread.run_sync(fn, limiter=finisher_limiter()), None
    future = _finisher.pool().submit(asyncio.get_running_loop(), fn)
    cancelled: BaseException | None = None
    # anyio's shield keeps its cancel scopes from retrying on every loop cycle while
    # the work runs; Task.cancel() meets the unstoppable future
    with anyio.CancelScope(shield=True):
        try:
            await future
        except asyncio.CancelledError as e:
            if not future.done():  # pragma: no cover - the future refuses cancellation
                raise
            cancelled = e
    return future.result(), cancelled


async def session_thread(fn: Callable[[], T], *, holds_connection: bool) -> T:
    """Run *fn*, which uses a unit's sync session, in a worker thread; wait for it to end.

    Waiting for a thread token can be cancelled; once the thread is given the
    work, cancellation waits for it to finish and is raised afterwards. Work
    on a session that *holds_connection* takes the finisher's tokens: it never
    waits for the pool, so it must not wait behind threads that do.
    """
    limiter = finisher_limiter() if holds_connection else anyio.to_thread.current_default_thread_limiter()
    async with limiter:
        result, cancelled = await shielded(
            functools.partial(anyio.to_thread.run_sync, fn, limiter=_unlimited_limiter())
        )
    if cancelled is not None:
        raise cancelled
    return result


def raise_after(cancelled: BaseException | None, error: BaseException | None) -> None:
    """Raise a cancellation that arrived while a unit ended, chained to the end's *error*."""
    if cancelled is None:
        return
    if error is not None:
        raise cancelled from error
    raise cancelled
