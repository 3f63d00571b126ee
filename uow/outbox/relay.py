"""The relay's loop: publish what is waiting, back off while the broker is down, prune, stop cleanly.

The loop only decides when to call; :class:`uow.outbox.Outbox` supplies the
passes (claim a batch, publish it, mark it) and the prune.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio.to_thread

from ..exceptions import InvalidOptionError

__all__ = ["RelayOptions", "run", "run_async"]

logger = logging.getLogger("uow.outbox")


@dataclass(frozen=True)
class RelayOptions:
    """How a relay runs; see :meth:`uow.outbox.Outbox.relay`."""

    once: bool = False
    batch: int = 100
    interval: float = 1.0
    max_backoff: float = 30.0
    retention: float | None = 7 * 24 * 3600.0
    prune_every: float = 300.0

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise InvalidOptionError(f"batch={self.batch!r} must be at least 1")
        if self.interval < 0 or self.max_backoff < 0:
            raise InvalidOptionError("interval and max_backoff must not be negative")


class _Pacer:
    """The decisions of the loop, the same for the sync and the async relay."""

    def __init__(self, options: RelayOptions) -> None:
        self.options = options
        self.delay = 0.0
        self.next_prune = time.monotonic()
        self.total = 0

    def failed(self, error: Exception) -> float:
        """A pass failed (broker or database down): return how long to wait before the next one."""
        o = self.options
        self.delay = min(max(self.delay * 2, o.interval, 0.1), o.max_backoff)
        logger.warning("uow.outbox: relay pass failed (%r); next attempt in %.1f s", error, self.delay)
        return self.delay

    def published(self, count: int) -> float | None:
        """A pass published *count*: return how long to wait (0: go on at once), None to stop (once)."""
        self.delay = 0.0
        self.total += count
        if count >= self.options.batch:
            return 0.0
        return None if self.options.once else self.options.interval

    def prune_due(self) -> bool:
        if self.options.retention is None or time.monotonic() < self.next_prune:
            return False
        self.next_prune = time.monotonic() + self.options.prune_every
        return True


def run(
    publish: Callable[[int], int],
    prune: Callable[[float], int],
    options: RelayOptions,
    stop: threading.Event,
) -> int:
    """Run the relay until *stop* is set (or, with ``once``, until nothing is waiting); return the count."""
    pacer = _Pacer(options)
    while not stop.is_set():
        try:
            count = publish(options.batch)
            if pacer.prune_due():
                assert options.retention is not None
                prune(options.retention)
        except Exception as e:
            if options.once:
                raise
            stop.wait(pacer.failed(e))
            continue
        wait = pacer.published(count)
        if wait is None:
            break
        if wait:
            stop.wait(wait)
    return pacer.total


async def run_async(
    publish: Callable[[int], Awaitable[int]],
    prune: Callable[[float], Awaitable[int]],
    options: RelayOptions,
    stop: threading.Event,
) -> int:
    """:func:`run` for an outbox on an ``AsyncEngine``."""
    pacer = _Pacer(options)
    while not stop.is_set():
        try:
            count = await publish(options.batch)
            if pacer.prune_due():
                assert options.retention is not None
                await prune(options.retention)
        except Exception as e:
            if options.once:
                raise
            await anyio.to_thread.run_sync(stop.wait, pacer.failed(e))
            continue
        wait = pacer.published(count)
        if wait is None:
            break
        if wait:
            await anyio.to_thread.run_sync(stop.wait, wait)
    return pacer.total
