"""A small pool of threads that end sync sessions, with a future cancellation cannot stop.

Why it exists instead of ``anyio.to_thread.run_sync`` in a shielding task:
ending a request's session (COMMIT and close) is the one thread hop every
request that used the database makes, and it must finish even when the task
is cancelled (``Task.cancel()`` included). A job here costs a queue put and
one ``call_soon_threadsafe``, and the future refuses ``cancel()``, so no
shielding task is needed. ``python -m benchmarks.handoff`` measures the
hand-off side by side with the plain idiom (see docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, TypeVar

__all__ = ["FinisherPool", "pool", "set_size"]

T = TypeVar("T")


class Unstoppable(asyncio.Future[T]):
    """A future that ``cancel()`` leaves alone: the thread's work is waited for to its end.

    A task awaiting it that is cancelled meanwhile gets ``CancelledError``
    when the work is done, not before (asyncio delivers it at the task's next
    step), with the result still on the future.
    """

    def cancel(self, msg: Any = None) -> bool:
        return False


_Job = tuple[asyncio.AbstractEventLoop, "Unstoppable[Any]", Callable[[], Any]]


class FinisherPool:
    """Up to *size* threads, started as needed, that run jobs from one queue."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.queue: SimpleQueue[_Job | None] = SimpleQueue()
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        #: jobs given and not yet done; a thread is started while it exceeds the threads
        self.pending = 0
        #: set by shutdown(): its threads are leaving
        self.closed = False

    def submit(self, loop: asyncio.AbstractEventLoop, fn: Callable[[], T]) -> Unstoppable[T]:
        future: Unstoppable[T] = Unstoppable(loop=loop)
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
            del job
            result: Any = None
            error: BaseException | None = None
            try:
                result = fn()
            except BaseException as e:
                error = e
            # let go of the work (a session, say) before the waiter wakes, not after
            del fn
            with self.lock:
                self.pending -= 1
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for it any more
                loop.call_soon_threadsafe(_resolve, future, result, error)
            del loop, future, result, error

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


def _resolve(future: Unstoppable[Any], result: Any, error: BaseException | None) -> None:
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


_size = 32
_pool: FinisherPool | None = None
_pool_lock = threading.Lock()


def pool() -> FinisherPool:
    """Return the process's pool, making it on first use."""
    global _pool
    current = _pool
    if current is None:
        with _pool_lock:
            current = _pool
            if current is None:
                current = _pool = FinisherPool(_size)
    return current


def set_size(count: int) -> None:
    """Bound the threads of pools made from now on; the current one drains and leaves."""
    global _size, _pool
    with _pool_lock:
        _size = count
        old, _pool = _pool, None
    if old is not None:
        old.shutdown()  # its queued work still runs


def size() -> int:
    return _size


def _finish_at_exit() -> None:
    """At interpreter exit, let the sessions being ended finish (the threads are daemons)."""
    current = _pool
    if current is not None:
        current.shutdown(wait=True)


def _forget_pool_in_child() -> None:
    """A forked child has none of the parent's threads: it starts a pool of its own."""
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()


atexit.register(_finish_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)
