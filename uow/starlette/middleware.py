"""``UnitOfWorkMiddleware``: one unit per HTTP request, committed before the response starts."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._async import end_unit
from .._core import Propagation, UnitOptions
from .._default import get_manager
from .._unit import Transaction, Unit
from ..concurrency import serial_tx
from ..exceptions import InvalidOptionError
from ..manager import UnitOfWorkManager

__all__ = ["CommitMode", "UnitOfWorkMiddleware"]

CommitMode = Literal["manual", "autocommit", "autocommit_include_redirect"]
_MODES: dict[str, range] = {
    "manual": range(0),
    "autocommit": range(200, 300),
    "autocommit_include_redirect": range(200, 400),
}
_REQUEST_OPTIONS = UnitOptions(propagation=Propagation.REQUIRES_NEW)


class UnitOfWorkMiddleware:
    """Give each HTTP request its own unit of work (pure ASGI).

    The unit opens lazily: a request that never asks for ``uow.session``
    makes no session and checks out no connection. When the app sends
    ``http.response.start``, the unit commits or rolls back *before* the
    message is forwarded, by *commit_mode*:

    - ``"autocommit"``: commit on 2xx, roll back otherwise;
    - ``"autocommit_include_redirect"``: commit on 2xx and 3xx;
    - ``"manual"``: never commit (call ``uow.session.commit()`` yourself);

    *extra_commit_statuses* and *extra_rollback_statuses* add to and take
    from the statuses that commit. If the commit fails, the client gets a
    500, never the status the handler chose, and the error propagates to
    the app's error handlers (Starlette's answers 500) and to the server. An exception, a
    cancellation, or a disconnect the app saw rolls back. The session is
    closed before the response starts; using ``uow.session`` afterwards (in
    a streaming body, say) raises ``NoActiveUnitOfWork`` — open a unit of
    your own there. Without *manager*, the default one from
    ``uow.configure`` is used.
    """

    def __init__(
        self,
        app: ASGIApp,
        manager: UnitOfWorkManager | None = None,
        *,
        commit_mode: CommitMode = "autocommit",
        extra_commit_statuses: Iterable[int] = (),
        extra_rollback_statuses: Iterable[int] = (),
    ) -> None:
        if commit_mode not in _MODES:
            raise InvalidOptionError(
                f"commit_mode={commit_mode!r} is not one of {sorted(_MODES)}"
            )
        if manager is not None and not isinstance(manager, UnitOfWorkManager):
            raise InvalidOptionError(
                f"manager={manager!r} must be a uow.UnitOfWorkManager (or None for the default)"
            )
        commit = _statuses("extra_commit_statuses", extra_commit_statuses)
        rollback = _statuses("extra_rollback_statuses", extra_rollback_statuses)
        if commit & rollback:
            raise InvalidOptionError(
                f"statuses {sorted(commit & rollback)} are in both extra_commit_statuses "
                "and extra_rollback_statuses; put each status in one of them"
            )
        self.app = app
        self.manager = manager
        self.commit_mode = commit_mode
        self.commit_statuses = frozenset(
            s for s in range(100, 600) if (s in _MODES[commit_mode] or s in commit) and s not in rollback
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        manager = self.manager or get_manager()
        tx = Transaction(manager, _REQUEST_OPTIONS, driven_async=True)
        unit = Unit(tx)
        disconnected = False
        commit_statuses = self.commit_statuses

        async def receive_watching() -> Message:
            nonlocal disconnected
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected = True
            return message

        async def send_after_ending(message: Message) -> None:
            if message["type"] == "http.response.start" and not tx.ended:
                commit = message["status"] in commit_statuses and not disconnected
                error = await end_unit(unit, _REQUEST_OPTIONS, None, rollback=not commit)
                if error is not None:
                    raise error
            await send(message)

        token = manager._current.set(unit)
        serial = None if manager.is_async else serial_tx.set(tx)
        try:
            await self.app(scope, receive_watching, send_after_ending)
        except BaseException as exc:
            if not tx.ended:
                error = await end_unit(unit, _REQUEST_OPTIONS, exc)
                if error is not None:
                    raise error from exc
            raise
        else:
            if not tx.ended:  # the app never started a response
                error = await end_unit(unit, _REQUEST_OPTIONS, None, rollback=True)
                if error is not None:
                    raise error
        finally:
            if serial is not None:
                serial_tx.reset(serial)
            manager._current.reset(token)


def _statuses(name: str, values: Iterable[int]) -> frozenset[int]:
    try:
        statuses = frozenset(values)
    except TypeError:
        raise InvalidOptionError(f"{name}={values!r} must be an iterable of HTTP status codes") from None
    bad = [s for s in statuses if isinstance(s, bool) or not isinstance(s, int) or not 100 <= s <= 599]
    if bad:
        raise InvalidOptionError(f"{name} has {bad!r}, which are not HTTP status codes (100-599)")
    return statuses
