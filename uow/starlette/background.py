"""``BackgroundTask``: work after the response, in a unit of its own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, ParamSpec

from starlette.background import BackgroundTask as StarletteBackgroundTask
from starlette.concurrency import run_in_threadpool

from .._async import AsyncBlock
from .._default import get_manager
from .._options import Propagation, UnitOptions
from .._sync import SyncBlock
from .._transaction import PendingRoot, Transaction
from ..exceptions import InvalidOptionError, NotConfiguredError
from ..manager import UnitOfWorkManager

__all__ = ["BackgroundTask", "RunWhen"]

P = ParamSpec("P")
RunWhen = Literal["committed", "always", "rolled_back"]
_OWN_UNIT = UnitOptions(propagation=Propagation.REQUIRES_NEW)


class BackgroundTask(StarletteBackgroundTask):
    """A Starlette background task that runs *func* in its own, new unit of work.

    The task never sees the request's session: ``uow.session`` in *func* is
    a fresh session, committed when *func* returns. ``def`` functions run in
    the threadpool. By default the task runs only if the request's unit
    committed (made inside a request without a unit, it always runs); use
    :meth:`when` for ``"always"`` or ``"rolled_back"``. Made inside a
    ``REQUIRES_NEW`` unit of the request, it still follows the request's unit.
    """

    def __init__(self, func: Callable[P, Any], *args: P.args, **kwargs: P.kwargs) -> None:
        super().__init__(func, *args, **kwargs)
        self.run_when: RunWhen = "committed"
        self.request_tx: Transaction | None = None
        self.manager: UnitOfWorkManager | None = None
        try:
            self.manager = get_manager()
        except NotConfiguredError:  # a manager may still come from .using()
            self.manager = None
        if self.manager is not None:
            self.request_tx = _first_transaction(self.manager)

    def when(self, run_when: RunWhen) -> BackgroundTask:
        """Run the task when the request's unit ``"committed"``, ``"rolled_back"``, or ``"always"``."""
        if run_when not in ("committed", "always", "rolled_back"):
            raise InvalidOptionError(f"run_when={run_when!r} must be 'committed', 'rolled_back' or 'always'")
        self.run_when = run_when
        return self

    def using(self, manager: UnitOfWorkManager) -> BackgroundTask:
        """Open the task's unit (and find the request's) with *manager* instead of the default."""
        self.manager = manager
        self.request_tx = _first_transaction(manager)
        return self

    def should_run(self) -> bool:
        """Return whether the request's outcome lets this task run."""
        tx = self.request_tx
        if self.run_when == "always" or tx is None:
            return True
        committed = tx.committed
        if self.run_when == "committed":
            return committed is True
        return committed is False

    async def __call__(self) -> None:
        if not self.should_run():
            return
        manager = self.manager or get_manager()
        current = manager.innermost()
        request = current.made if isinstance(current, PendingRoot) else current  # (not made: not traced)
        if request is not None and request.tx.ended and request.observation is not None:
            # traced: the task's unit is the request's child, not the ended unit's
            with request.observation.outside():
                await self._run(manager)
        else:
            await self._run(manager)

    async def _run(self, manager: UnitOfWorkManager) -> None:
        if self.is_async:
            async with AsyncBlock(manager, _OWN_UNIT):
                await self.func(*self.args, **self.kwargs)
        else:
            await run_in_threadpool(self._run_in_unit, manager)

    def _run_in_unit(self, manager: UnitOfWorkManager) -> None:
        with SyncBlock(manager, _OWN_UNIT):
            self.func(*self.args, **self.kwargs)


def _first_transaction(manager: UnitOfWorkManager) -> Transaction | None:
    """Return the request's transaction: the first of the context, under any REQUIRES_NEW ones."""
    boundary = manager.current_boundary()
    if boundary is None:
        return None
    tx = boundary.tx
    while tx.outer is not None:
        tx = tx.outer
    return tx
