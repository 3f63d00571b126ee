"""Blocking work from async code: ``run_sync``, and the bound on session-ending threads."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import anyio.to_thread

from . import _finisher
from ._threads import session_thread
from ._transaction import serial_tx, sync_request_root
from .exceptions import InvalidOptionError

__all__ = ["run_sync", "set_finisher_threads"]

P = ParamSpec("P")
T = TypeVar("T")


async def run_sync(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run blocking *fn* in a worker thread with the caller's context; await its result.

    The current unit is visible in the thread (``uow.session`` works there).
    Calls that share one sync session run one at a time, so concurrent tasks
    (``asyncio.gather``) never use a session from two threads at once.
    """
    call: Callable[[], T] = functools.partial(fn, *args, **kwargs) if (args or kwargs) else fn
    tx = serial_tx.get()
    if tx is None:
        root = sync_request_root()
        if root is None:
            return await anyio.to_thread.run_sync(call)
        tx = root.boundary().tx
    async with tx.async_lock():
        return await session_thread(functools.partial(tx.locked, call), holds_connection=tx.connected)


def set_finisher_threads(count: int) -> None:
    """Set how many threads may end sync sessions at once (default 32).

    It applies to sessions that end from now on (under anyio's other
    backends, to event loops started from now on).
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InvalidOptionError(f"count={count!r} must be a positive int")
    _finisher.set_size(count)
