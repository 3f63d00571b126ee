"""``UnitOfWorkMiddleware``: one unit per HTTP request, committed before the response starts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine, Iterable
from typing import Literal

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._async import end_unit
from .._core import Propagation, UnitOptions
from .._default import get_manager
from .._unit import Transaction, Unit
from ..concurrency import on_event_loop, serial_tx
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
    cancellation, or a client that disconnected before the response started
    rolls back. The session is
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
            raise InvalidOptionError(f"commit_mode={commit_mode!r} is not one of {sorted(_MODES)}")
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
        request = _Request(manager, receive, send, self.commit_statuses)
        token = manager._current.set(request.unit)
        serial = None if manager.is_async else serial_tx.set(request.unit.tx)
        try:
            await self.app(scope, request.receive, request.send)
        except BaseException as exc:
            await request.end(exc)
            raise
        else:
            if not request.unit.tx.ended:
                await request.end(None)  # the app never started a response: roll back
        finally:
            if serial is not None:
                serial_tx.reset(serial)
            manager._current.reset(token)


class _Request:
    """One request's unit, and the receive/send wrappers that end it in time."""

    __slots__ = (
        "_receive",
        "_send",
        "buffered",
        "commit_statuses",
        "disconnected",
        "receiving",
        "unit",
    )

    def __init__(
        self, manager: UnitOfWorkManager, receive: Receive, send: Send, commit_statuses: frozenset[int]
    ) -> None:
        self.unit = Unit(Transaction(manager, _REQUEST_OPTIONS, driven_async=True))
        self._receive = receive
        self._send = send
        self.commit_statuses = commit_statuses
        self.disconnected = False
        self.receiving = 0
        #: messages the disconnect probe read before the app asked for them, oldest first
        self.buffered: list[Message] = []

    async def receive(self) -> Message:
        if self.buffered:
            return self.buffered.pop(0)
        self.receiving += 1
        try:
            message = await self._receive()
        finally:
            self.receiving -= 1
        self._note(message)
        return message

    def _note(self, message: Message) -> None:
        if message["type"] == "http.disconnect":
            self.disconnected = True

    async def client_gone(self) -> bool:
        """Return True if the client has disconnected, without waiting or losing a message.

        ``receive()`` calls that may not wait: a server that knows of the
        disconnect answers at once; otherwise the call is cancelled at the
        point where it would wait. Body messages read on the way (an app that
        never read the body) are kept for the app, in order.
        """
        if self.disconnected or self.receiving:
            return self.disconnected
        while not self.disconnected:
            if on_event_loop():
                message = _receive_now(self._receive)
            else:
                message = None
                with anyio.move_on_after(0):
                    message = await self._receive()
            if message is None:
                break
            self._note(message)
            if message["type"] != "http.disconnect":
                self.buffered.append(message)
        return self.disconnected

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            unit = self.unit
            tx = unit.tx
            if not tx.ended:
                commit = message["status"] in self.commit_statuses
                if tx.session is None and unit.is_bare():  # the request never used the database
                    tx.ended = True
                    tx.committed = commit
                else:
                    if commit and tx.session is not None and await self.client_gone():
                        commit = False  # nobody will learn that it committed: roll back
                    error = await end_unit(unit, _REQUEST_OPTIONS, None, rollback=not commit)
                    if error is not None:
                        raise error
        await self._send(message)

    async def end(self, exc: BaseException | None) -> None:
        """End the unit if the response never started (an exception, or no response)."""
        if self.unit.tx.ended:
            return
        error = await end_unit(self.unit, _REQUEST_OPTIONS, exc, rollback=exc is None)
        if error is not None:
            raise error from exc


def _receive_now(receive: Receive) -> Message | None:
    """Call *receive* and return its message if it has one ready, else cancel it and return None.

    This is what a cancel scope with a deadline of now does on asyncio, in
    one step instead of a trip through the event loop (it runs on every
    request that used the database): the coroutine runs until it would wait,
    then is cancelled there the way ``Task.cancel()`` does it (the future it
    waits on is cancelled and the coroutine resumed, or ``CancelledError``
    thrown in), so its cleanup runs as under any cancellation.
    """
    awaitable = receive()
    coroutine = awaitable if isinstance(awaitable, Coroutine) else _as_coroutine(awaitable)
    try:
        waits_on = coroutine.send(None)
        if asyncio.isfuture(waits_on) and waits_on.cancel():
            coroutine.send(None)
        else:
            coroutine.throw(asyncio.CancelledError())
    except StopIteration as done:  # a message was ready (or it answered the cancellation)
        message: Message = done.value
        return message
    except asyncio.CancelledError:
        return None
    # it swallowed the cancellation and waits again: stop it for good
    coroutine.close()
    return None


async def _as_coroutine(awaitable: Awaitable[Message]) -> Message:
    return await awaitable


def _statuses(name: str, values: Iterable[int]) -> frozenset[int]:
    try:
        statuses = frozenset(values)
    except TypeError:
        raise InvalidOptionError(f"{name}={values!r} must be an iterable of HTTP status codes") from None
    bad = [s for s in statuses if isinstance(s, bool) or not isinstance(s, int) or not 100 <= s <= 599]
    if bad:
        raise InvalidOptionError(f"{name} has {bad!r}, which are not HTTP status codes (100-599)")
    return statuses
