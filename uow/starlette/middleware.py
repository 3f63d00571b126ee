"""``UnitOfWorkMiddleware``: one unit per HTTP request, committed before the response starts."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from contextvars import Token
from threading import get_ident
from typing import Literal

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import _observe, _registry
from .._async import end_async, start_async
from .._options import Propagation, make_options
from .._replicas import Causal, choose_async, enter_causal, is_disconnect, leave_causal
from .._timeout import start_clock
from .._transaction import Binding, Boundary, Current, PendingRoot, Transaction, request_root, serial_tx
from ..exceptions import HookError, InvalidOptionError, NotConfiguredError, PartialCommit, UnitTimeout
from ..manager import UnitOfWorkManager

__all__ = ["CommitMode", "UnitOfWorkMiddleware"]

CommitMode = Literal["manual", "autocommit", "autocommit_include_redirect"]
_MODES: dict[str, range] = {
    "manual": range(0),
    "autocommit": range(200, 300),
    "autocommit_include_redirect": range(200, 400),
}
logger = logging.getLogger("uow")
_DEBUG = logging.DEBUG


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
    rolls back. With *timeout* (seconds) each request's unit has that budget,
    from the request's start: a request whose unit runs out of it (a
    statement stopped by the database, or a commit past the deadline) is
    rolled back and answered 503, never 2xx, and ``uow.UnitTimeout``
    propagates to the server like any error. The session is
    closed before the response starts; using ``uow.session`` afterwards (in
    a streaming body, say) raises ``NoActiveUnitOfWork`` — open a unit of
    your own there. Without *manager*, the default one from
    ``uow.configure`` is used.

    Requests whose method is in *read_only_methods* (say ``{"GET", "HEAD"}``;
    none by default) get a read-only unit: on a manager with replicas it runs
    on a replica. With *causal_cookie* (a cookie name) a request that
    committed a write sets that cookie to its causal token, and a request
    that brings it back reads its own writes (see ``uow.replicas``).
    """

    def __init__(
        self,
        app: ASGIApp,
        manager: UnitOfWorkManager | None = None,
        *,
        commit_mode: CommitMode = "autocommit",
        extra_commit_statuses: Iterable[int] = (),
        extra_rollback_statuses: Iterable[int] = (),
        timeout: float | None = None,
        read_only_methods: Iterable[str] = (),
        causal_cookie: str | None = None,
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
        self.options = make_options(propagation=Propagation.REQUIRES_NEW, timeout=timeout)
        self.read_only_options = make_options(
            propagation=Propagation.REQUIRES_NEW, read_only=True, timeout=timeout
        )
        if timeout is not None and manager is not None:
            start_clock(timeout, manager.dialect_name)  # refuses a database it cannot bound, now
        if isinstance(read_only_methods, str):
            raise InvalidOptionError(
                f"read_only_methods={read_only_methods!r} must be a collection of "
                "methods, such as {'GET', 'HEAD'}"
            )
        cookie_ok = causal_cookie is None or (isinstance(causal_cookie, str) and causal_cookie.isidentifier())
        if not cookie_ok:
            raise InvalidOptionError(
                f"causal_cookie={causal_cookie!r} must be a cookie name such as 'uow_causal'"
            )
        self.app = app
        self.manager = manager
        self.read_only_methods = frozenset(m.upper() for m in read_only_methods)
        self.causal_cookie = causal_cookie
        self.commit_mode = commit_mode
        self.commit_statuses = frozenset(
            s for s in range(100, 600) if (s in _MODES[commit_mode] or s in commit) and s not in rollback
        )
        self.manual = commit_mode == "manual"
        self.timed = timeout is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                send = self._failing_startup_without_a_manager(send)
            await self.app(scope, receive, send)
            return
        manager = self.manager or _registry.default()
        if manager is None:
            # not configured (the server ran no lifespan to tell): a request that needs no
            # database is answered; uow.session raises NotConfiguredError in one that does
            await self.app(scope, receive, send)
            return
        request = _Request(manager, self, scope, receive, send)
        token = request_root.set(request)
        # a unit of this manager open (or suspended) where the request runs, say a test client
        # called inside one: the request's own unit goes in front of it
        hidden = (
            _hide_outer_units(manager)
            if manager.current.get() is not None or serial_tx.get() is not None
            else None
        )
        try:
            if (
                self.timed
                or manager.router is not None
                or _observe.observer is not None
                or logger.isEnabledFor(_DEBUG)
            ):
                await request.begin_early()
            await self.app(scope, request.receive, request.send)
            if request.outcome is None:
                await request.end(None)  # the app never started a response: roll back
        except BaseException as exc:
            await request.fail(exc)
            raise
        finally:
            if hidden is not None:
                _show_outer_units(manager, hidden)
            request_root.reset(token)
            if request.early:
                request.leave()

    def _failing_startup_without_a_manager(self, send: Send) -> Send:
        """Turn the app's ``lifespan.startup.complete`` into a failure if no manager is configured.

        The app's own startup (its lifespan) may call ``uow.configure``: the
        check comes once it is done, so a misconfigured app fails to start
        instead of answering 500 to its first request.
        """

        async def checked(message: Message) -> None:
            if (
                message["type"] == "lifespan.startup.complete"
                and self.manager is None
                and _registry.default() is None
            ):
                logger.error("uow: %s", _registry.NOT_CONFIGURED)
                message = {
                    "type": "lifespan.startup.failed",
                    "message": f"{NotConfiguredError.__name__}: {_registry.NOT_CONFIGURED}",
                }
            await send(message)

        return checked


_Hidden = tuple[Token[Current], Token[Transaction | None] | None]


def _hide_outer_units(manager: Binding) -> _Hidden:
    """Unset the manager's unit (and, for a sync session, the unit run_sync serializes on) here."""
    return manager.current.set(None), None if manager.is_async else serial_tx.set(None)


def _show_outer_units(manager: Binding, hidden: _Hidden) -> None:
    current, serial = hidden
    if serial is not None:
        serial_tx.reset(serial)
    manager.current.reset(current)


#: the names of the databases whose request units committed, in the ASGI scope
_COMMITTED = "uow.committed"


class _Request(PendingRoot):
    """One request's unit (made on first use), and the receive/send wrappers that end it in time."""

    __slots__ = (
        "_receive",
        "_send",
        "causal",
        "causal_reset",
        "disconnected",
        "early",
        "middleware",
        "scope",
        "started",
    )

    #: set when the app has been told, through :meth:`receive`, that the client is gone
    disconnected: bool
    #: set once ``http.response.start`` went on to the server
    started: bool
    #: set when the unit was made up front (see :meth:`begin_early`)
    early: bool
    #: the request's causal position (a manager with replicas), and what resets it
    causal: Causal | None
    causal_reset: Token[Causal | None]

    def __init__(
        self, manager: Binding, middleware: UnitOfWorkMiddleware, scope: Scope, receive: Receive, send: Send
    ) -> None:
        self.binding = manager
        self.loop_thread = get_ident()
        self.outer = request_root.get()
        self.made = None
        self.outcome = None
        # chosen once (an inner middleware may rewrite the scope's method): read-only for the
        # middleware's read-only methods
        read_only = scope["method"] in middleware.read_only_methods
        self.options = middleware.read_only_options if read_only else middleware.options
        self.middleware = middleware
        self.scope = scope
        self._receive = receive
        self._send = send
        self.disconnected = False
        self.started = False
        self.early = False
        self.causal = None

    @property
    def direct_end_allowed(self) -> bool:
        return self.middleware.manual  # in manual mode the app commits itself

    async def begin_early(self) -> None:
        """Make the unit now: traced, timed, routed or logged, it spans the whole request.

        Made up front, its DEBUG record, its span and its budget time the whole
        request, and a replica is chosen (and connected) before the endpoint runs.
        """
        self.early = True
        manager = self.binding
        router = manager.router
        if router is not None:
            # this request's causal position, shared with its threads and tasks
            self.causal, self.causal_reset = enter_causal(_cookie(self.scope, self.middleware.causal_cookie))
        unit = self.boundary()
        observer = _observe.observer
        if observer is not None:
            unit.observation = observer.start(
                options=self.options,
                savepoint=False,
                db_system=manager.dialect_name,
                function=None,
                attempt=0,
                retried=None,
            )
        if router is not None and self.options.read_only:
            tx = unit.tx
            tx.replica = await choose_async(router, manager.name)
            if tx.replica is not None:
                # connected now, so that a replica gone away gives way to the primary
                # before the endpoint runs, never failing it
                await start_async(tx, tx.start_options())

    def leave(self) -> None:
        """Undo what :meth:`begin_early` set in the request's context."""
        made = self.made
        if made is not None and made.observation is not None:
            made.observation.leave()
        if self.causal is not None:
            leave_causal(self.causal_reset)

    async def fail(self, exc: BaseException) -> None:
        """End the unit of a request whose app raised *exc*, and answer 503 if it ran out of time."""
        made = self.made
        replica = made.tx.replica if made is not None else None
        router = self.binding.router
        if replica is not None and router is not None and is_disconnect(exc):
            router.mark_down(replica, exc)  # the requests after this one go elsewhere
        try:
            await self.end(exc)
        except BaseException as error:
            await self.answer_timeout(error)
            raise
        await self.answer_timeout(exc)

    async def receive(self) -> Message:
        """The server's ``receive``, noting a disconnect on the way; uow never calls it by itself."""
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self.disconnected = True
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            if self.outcome is None:
                # a client the app has seen leave learns nothing of a commit: roll back
                commit = message["status"] in self.middleware.commit_statuses and not self.disconnected
                # (a request that never used uow has no I/O to do)
                if not self.end_unmade(commit) and await self._end_made(message, commit):
                    self.started = True
                    return  # the start went out while the unit ended
            self.started = True
            if self.early:  # (a causal position, or a span: only a unit made up front has them)
                causal = self.causal
                if causal is not None and causal.changed:
                    cookie = self.middleware.causal_cookie
                    if cookie is not None:
                        message = _with_cookie(message, cookie, causal.token())
        if self.early:
            made = self.made
            if made is not None and made.observation is not None and made.tx.ended:
                with made.observation.outside():  # the response is the request's, not the ended unit's
                    await self._send(message)
                return
        await self._send(message)

    async def _end_made(self, start: Message, commit: bool) -> bool:
        """End the unit made in this request; return True if *start* was forwarded meanwhile."""
        unit = self.made_open()
        if unit is None:
            return False  # made in a thread just now, and ended there
        observation = unit.observation
        mode = self.middleware.commit_mode
        if unit.tx.session is None and unit.is_bare():
            unit.tx.finish(commit)  # made, but the database was never used: no I/O
            if observation is not None:
                observation.end(commit, None if commit else "request", None)
                observation.decided(mode, start["status"], commit, commit)
            return False
        try:
            return await self._end_before(unit, start, commit)
        finally:
            if observation is not None:
                observation.decided(mode, start["status"], commit, unit.tx.committed is True)

    async def _end_before(self, unit: Boundary, start: Message, commit: bool) -> bool:
        """End the unit, committing if *commit*; return True if *start* was forwarded meanwhile."""
        tx = unit.tx
        try:
            error = await end_async(unit, self.options, None, rollback=not commit)
        except BaseException:
            if tx.committed:
                # cancelled while a COMMIT ran to its end: the client learns of the commit
                # (and may see a cut body), never a 500 for a kept write
                await _forward_shielded(self._send, start)
            raise
        if error is not None:
            if not (tx.committed and isinstance(error, HookError)):
                raise self._failed(error)
            # the commit stands: the client gets the app's answer, the hook's failure is logged
            logger.error("uow: %s", error, exc_info=error)
        if tx.committed:
            committed = self.scope.get(_COMMITTED)
            if committed is None:
                committed = self.scope[_COMMITTED] = []
            committed.append(tx.binding.name)
            if anyio.current_effective_deadline() == -math.inf:
                # a cancel scope was cancelled while the COMMIT ran: the start goes out first
                await _forward_shielded(self._send, start)
                return True
        return False

    def _failed(self, error: BaseException) -> BaseException:
        """Return what to raise for a request whose unit failed to end: *error*, or PartialCommit."""
        kept = tuple(self.scope.get(_COMMITTED, ()))
        if not kept:
            return error
        failed = self.binding.name
        logger.error(
            "uow: the request's COMMIT on %s failed after %s committed its part: partial commit",
            failed,
            ", ".join(kept),
            extra={"uow_failed": failed, "uow_kept": kept},
        )
        partial = PartialCommit(
            f"the request's unit on {failed} failed to commit ({error!r}), but "
            f"{', '.join(kept)} had already committed its part of this request. The "
            "client gets a 500; reconcile the kept writes (idempotent retries, an outbox), "
            "and put the middleware of the database most likely to fail at COMMIT innermost",
            kept,
            failed,
        )
        partial.__cause__ = error
        return partial

    async def end(self, exc: BaseException | None) -> None:
        """End the unit if the response never started (an exception, or no response)."""
        if self.outcome is not None or self.end_unmade(False):
            return
        unit = self.made_open()
        if unit is None:
            return
        try:
            error = await end_async(unit, self.options, exc, rollback=exc is None)
        finally:
            if unit.observation is not None:
                unit.observation.decided(self.middleware.commit_mode, None, False, False)
        if error is not None:
            raise self._failed(error) from exc

    async def answer_timeout(self, error: BaseException) -> None:
        """Answer 503 for a request that ran out of time before its response started."""
        if self.started or not isinstance(error, UnitTimeout):
            return
        self.started = True
        try:
            await self._send({"type": "http.response.start", "status": 503, "headers": _TIMEOUT_HEADERS})
            await self._send({"type": "http.response.body", "body": _TIMEOUT_BODY})
        except Exception:  # the client is gone, say: the timeout is still what propagates
            logger.warning("uow: the 503 for a request that ran out of time could not be sent", exc_info=True)


async def _forward_shielded(send: Send, message: Message) -> None:
    """Send *message* although the task is being cancelled (for at most a few seconds)."""
    with anyio.move_on_after(_FORWARD_TIMEOUT, shield=True):
        await send(message)


_FORWARD_TIMEOUT = 5.0
_TIMEOUT_BODY = b"Service Unavailable: the request ran out of time and was rolled back"
_TIMEOUT_HEADERS = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", str(len(_TIMEOUT_BODY)).encode()),
]


def _statuses(name: str, values: Iterable[int]) -> frozenset[int]:
    try:
        statuses = frozenset(values)
    except TypeError:
        raise InvalidOptionError(f"{name}={values!r} must be an iterable of HTTP status codes") from None
    bad = [s for s in statuses if isinstance(s, bool) or not isinstance(s, int) or not 100 <= s <= 599]
    if bad:
        raise InvalidOptionError(f"{name} has {bad!r}, which are not HTTP status codes (100-599)")
    return statuses


#: how long a causal cookie lives: a position older than this has long been replayed
_COOKIE_MAX_AGE = 600


def _cookie(scope: Scope, name: str | None) -> str | None:
    """Return the value of cookie *name* of the request, if it sent one."""
    if name is None:
        return None
    for key, value in scope["headers"]:
        if key == b"cookie":
            for part in value.decode("latin-1").split(";"):
                k, _, v = part.strip().partition("=")
                if k == name:
                    return str(v)
    return None


def _with_cookie(start: Message, name: str, token: str | None) -> Message:
    """Return *start* with a ``Set-Cookie`` header that carries *token*."""
    cookie = f"{name}={token}; Path=/; Max-Age={_COOKIE_MAX_AGE}; HttpOnly; SameSite=Lax"
    return {**start, "headers": [*start.get("headers", ()), (b"set-cookie", cookie.encode("latin-1"))]}
