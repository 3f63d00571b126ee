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
import atexit
import contextlib
import functools
import math
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import ContextVar
from queue import SimpleQueue
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
_pool: _FinisherPool | None = None
_pool_lock = threading.Lock()

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
    global _finisher_size, _pool
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        from .exceptions import InvalidOptionError

        raise InvalidOptionError(f"count={count!r} must be a positive int")
    with _pool_lock:
        _finisher_size = count
        old, _pool = _pool, None
    if old is not None:
        old.shutdown()  # its queued work still runs


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


class _Unstoppable(asyncio.Future[T]):
    """A future that ``cancel()`` leaves alone: the thread's work is waited for to its end.

    A task awaiting it that is cancelled meanwhile gets ``CancelledError``
    when the work is done, not before (asyncio delivers it at the task's next
    step), with the result still on the future.
    """

    def cancel(self, msg: Any = None) -> bool:
        return False


_Job = tuple[asyncio.AbstractEventLoop, "_Unstoppable[Any]", Callable[[], Any]]


class _FinisherPool:
    """Up to *size* threads, started as needed, that run jobs from one queue.

    A hand-off costs a queue put and one ``call_soon_threadsafe``: a third of
    what ``loop.run_in_executor`` costs with its two chained futures, and
    this runs once per request.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.queue: SimpleQueue[_Job | None] = SimpleQueue()
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        #: jobs given and not yet done; a thread is started while it exceeds the threads
        self.pending = 0
        #: set by shutdown(): its threads are leaving
        self.closed = False

    def submit(self, loop: asyncio.AbstractEventLoop, fn: Callable[[], T]) -> _Unstoppable[T]:
        future: _Unstoppable[T] = _Unstoppable(loop=loop)
        with self.lock:
            self.pending += 1
            # a job that comes after shutdown() (its pool was replaced meanwhile) gets a
            # thread of its own, which leaves after it
            late = self.closed
            if late or self.pending > len(self.threads) < self.size:
                thread = threading.Thread(target=self._work, name="uow-finisher", daemon=True)
                thread.start()
                self.threads.append(thread)
        self.queue.put((loop, future, fn))
        if late:
            self.queue.put(None)
        return future

    def _work(self) -> None:
        get = self.queue.get
        while (job := get()) is not None:
            loop, future, fn = job
            result: Any = None
            error: BaseException | None = None
            try:
                result = fn()
            except BaseException as e:
                error = e
            with self.lock:
                self.pending -= 1
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for it any more
                loop.call_soon_threadsafe(_resolve, future, result, error)
            del job, loop, future, fn, result, error

    def shutdown(self, wait: bool = False) -> None:
        """Let the threads end once the jobs queued so far are done (wait for them if *wait*)."""
        with self.lock:
            self.closed = True
            threads = list(self.threads)
        for _ in threads:
            self.queue.put(None)
        if wait:
            for thread in threads:
                thread.join()


def _resolve(future: _Unstoppable[Any], result: Any, error: BaseException | None) -> None:
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _finisher_pool() -> _FinisherPool:
    global _pool
    pool = _pool
    if pool is None:
        with _pool_lock:
            pool = _pool
            if pool is None:
                pool = _pool = _FinisherPool(_finisher_size)
    return pool


def _finish_at_exit() -> None:
    """At interpreter exit, let the sessions being ended finish (the threads are daemons)."""
    pool = _pool
    if pool is not None:
        pool.shutdown(wait=True)


def _forget_pool_in_child() -> None:
    """A forked child has none of the parent's threads: it starts a pool of its own."""
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()


atexit.register(_finish_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


async def finish(fn: Callable[[], T]) -> tuple[T, BaseException | None]:
    """Run *fn* (the end of a session) on the finisher's threads and wait for it to end.

    Cancellation does not stop the wait: return *fn*'s result and the
    cancellation that arrived meanwhile (None if none), for the caller to
    raise once it has used the result. On asyncio the threads are the
    finisher's own: the end needs no context, and a plain hand-off costs a
    third of ``run_in_executor`` on every request. On other backends,
    anyio's threads under the finisher's limiter, in a shielded scope.
    """
    loop = _get_running_loop()
    if loop is None:
        with anyio.CancelScope(shield=True):
            result = await anyio.to_thread.run_sync(fn, limiter=_finisher_limiter())
        return result, None
    future = _finisher_pool().submit(loop, fn)
    # anyio's shield keeps its cancel scopes from retrying on every loop
    # cycle while the work runs; Task.cancel() meets the unstoppable future
    cancelled: BaseException | None = None
    with anyio.CancelScope(shield=True):
        try:
            await future
        except asyncio.CancelledError as e:
            if not future.done():  # pragma: no cover - the future refuses cancellation
                raise
            cancelled = e
    return future.result(), cancelled


async def in_finisher(fn: Callable[[], T]) -> T:
    """Run *fn* on the finisher's threads (see :func:`finish`); raise a cancellation afterwards."""
    result, cancelled = await finish(fn)
    if cancelled is not None:
        raise cancelled
    return result


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
        return await session_thread(
            functools.partial(tx.locked, call), holds_connection=tx.holds_connection()
        )


async def maybe_await(value: Awaitable[T] | T) -> T:
    """Await *value* if it is awaitable, else return it."""
    if isinstance(value, Awaitable):
        return await value
    return value
