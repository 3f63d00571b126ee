"""The state of units: a transaction (one session) and its boundaries (root, savepoints)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, ParamSpec, TypeVar

import anyio
from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session

from ._core import Outcome, UnitOptions
from .concurrency import on_event_loop
from .exceptions import (
    BlockingSessionUse,
    HookError,
    ReadOnlyViolation,
    SavepointConflict,
    SessionEnded,
    SessionKindError,
    UnexpectedRollback,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from .manager import UnitOfWorkManager

__all__ = ["Hook", "Transaction", "Unit", "conclude"]

logger = logging.getLogger("uow")
P = ParamSpec("P")
T = TypeVar("T")
_create_lock = threading.Lock()


class Hook(NamedTuple):
    fn: Callable[[], Any]
    robust: bool
    is_async: bool


class Transaction:
    """One session and its outermost transaction, shared by every unit joined to it.

    The session is made on first use, so a unit that never touches the
    database costs no session and no connection.
    """

    __slots__ = (
        "_lock",
        "_thread_lock",
        "closed",
        "committed",
        "connected",
        "driven_async",
        "ended",
        "innermost",
        "loop_thread",
        "manager",
        "options",
        "outer",
        "session",
    )

    def __init__(
        self,
        manager: UnitOfWorkManager,
        options: UnitOptions,
        driven_async: bool,
        outer: Transaction | None = None,
    ) -> None:
        self.manager = manager
        self.options = options
        self.session: Session | AsyncSession | None = None
        #: True when the outermost unit is finished with ``await`` (async def / async with)
        self.driven_async = driven_async
        #: the thread running the event loop of an async-driven unit (None for a sync one)
        self.loop_thread = threading.get_ident() if driven_async else None
        #: the transaction this one suspended (REQUIRES_NEW), None for the first of a context
        self.outer = outer
        #: the innermost open boundary: the root unit, or the last SAVEPOINT begun and not ended
        self.innermost: Unit | None = None
        #: set when the unit begins to end; its session is then off limits
        self.ended = False
        #: set once the session is closed: any use of it after that is refused
        self.closed = False
        #: set when the session checks out a connection (SessionEvents.after_begin)
        self.connected = False
        #: the outcome, once known: True committed, False rolled back
        self.committed: bool | None = None
        self._lock: anyio.Lock | asyncio.Lock | None = None
        self._thread_lock: threading.RLock | None = None

    def get_session(self) -> Session | AsyncSession:
        """Return the session, making it on first use."""
        session = self.session
        if self.ended:
            raise SessionEnded(_ENDED)
        if session is None:
            with _create_lock:
                session = self.session
                if session is None:
                    session = self.manager.session_factory()
                    _sync_session(session).info[TX_KEY] = self
                    self.session = session
        loop_thread = self.loop_thread
        if loop_thread is not None and self.manager.is_async and threading.get_ident() != loop_thread:
            raise SessionKindError(
                "this unit's session is an AsyncSession, which only the event loop can "
                "drive; a worker thread (uow.run_sync, asyncio.to_thread) cannot use it. "
                "Await it in the async code itself, or run sync code on it with "
                "`await uow.session.run_sync(fn)` (fn gets a sync Session)"
            )
        return session

    def thread_lock(self) -> threading.RLock:
        """Return the lock a worker thread holds while it uses this (sync) session."""
        lock = self._thread_lock
        if lock is None:
            with _create_lock:
                lock = self._thread_lock
                if lock is None:
                    lock = self._thread_lock = threading.RLock()
        return lock

    def locked(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call *fn* holding :meth:`thread_lock` (worker threads use the session one at a time)."""
        with self.thread_lock():
            return fn(*args, **kwargs)

    def start_options(self) -> dict[str, Any]:
        """Return the execution options the first connection needs ({} if none)."""
        options = self.options
        opts: dict[str, Any] = {}
        if options.isolation_level is not None:
            opts["isolation_level"] = options.isolation_level
        if options.read_only and self.manager.dialect_name == "postgresql":
            opts["postgresql_readonly"] = True
        if opts and self.manager._external_transaction:
            # inside a test's outer transaction the connection is already
            # begun: its isolation and read-only mode cannot change
            return {}
        return opts

    def needs_io_to_end(self) -> bool:
        """Return True if ending the session may touch the database."""
        session = self.session
        if session is None:
            return False
        sync = _sync_session(session)
        return self.connected or bool(sync.new or sync.deleted or sync.dirty)

    def holds_connection(self) -> bool:
        """Return True if the session has checked out a connection (it holds it until it ends)."""
        return self.connected

    def async_lock(self) -> anyio.Lock | asyncio.Lock:
        """Return the lock that serializes thread work on this (sync) session.

        On asyncio it is asyncio's own lock (anyio's costs a backend lookup per
        lock, one per request); on other backends, anyio's.
        """
        lock = self._lock
        if lock is None:
            lock = self._lock = asyncio.Lock() if on_event_loop() else anyio.Lock()
        return lock

    def lock_is_free(self) -> bool:
        """Return True if no task is doing thread work on the session (no lock made, or unlocked)."""
        lock = self._lock
        return lock is None or not lock.locked()

    def check_boundary(self, unit: Unit) -> None:
        """Refuse session work from *unit* while a SAVEPOINT it does not enclose is open.

        Two tasks of one transaction (``asyncio.gather``) each in a savepoint of
        their own would interleave: rolling one back would silently discard the
        other's writes.
        """
        innermost = self.innermost
        if innermost is not None and innermost is not unit:
            raise SavepointConflict(
                "another task's savepoint (propagation=NESTED) of this transaction is "
                "open, so this work would land inside it and share its fate. Run "
                "savepoints of one transaction one after another (await each), or give "
                "concurrent work transactions of its own with propagation=REQUIRES_NEW"
            )


TX_KEY = "uow.transaction"

_ENDED = (
    "this unit of work has already ended (a request's unit ends when its response "
    "starts), so its session is closed. Open a unit of your own for this work: "
    "`with uow.unit_of_work():` or @uow.transactional (in a background task, use "
    "uow.starlette.BackgroundTask, which opens one)"
)


def _check_use(session: Session) -> None:
    """Refuse I/O on a unit's session that its unit no longer allows (SessionEvents listener)."""
    tx = session.info.get(TX_KEY)
    if tx is None:
        return
    if tx.closed:
        raise SessionEnded(_ENDED)
    if tx.loop_thread == threading.get_ident() and not tx.manager.is_async:
        raise BlockingSessionUse(
            "a sync session was used on the event loop thread, where its query would "
            "block every other request. Use it from a `def` endpoint or dependency "
            "(they run in the threadpool), run the work with `await uow.run_sync(fn)`, "
            "or configure uow with an AsyncEngine"
        )
    unit = tx.manager._current.get()
    if unit is not None and unit.tx is tx:
        tx.check_boundary(unit)


def _before_flush(session: Session, _flush_context: Any, _instances: Any) -> None:
    _check_use(session)
    tx = session.info.get(TX_KEY)
    if tx is not None and tx.options.read_only and has_pending_writes(session):
        raise ReadOnlyViolation(
            "this unit is read_only=True, but the session was asked to flush "
            "changes; open a read-write unit for writes, or expunge the objects"
        )


def _do_orm_execute(state: ORMExecuteState) -> None:
    _check_use(state.session)


def _after_begin(session: Session, _transaction: Any, _connection: Any) -> None:
    tx = session.info.get(TX_KEY)
    if tx is not None:
        tx.connected = True


def install_guards(session_class: Any) -> None:
    """Listen, once, to the sessions a factory makes (a class-level listener costs nothing per session)."""
    for name, fn in (
        ("before_flush", _before_flush),
        ("do_orm_execute", _do_orm_execute),
        ("after_begin", _after_begin),
    ):
        if not event.contains(session_class, name, fn):
            event.listen(session_class, name, fn)


def _sync_session(session: Session | AsyncSession) -> Session:
    return session if isinstance(session, Session) else session.sync_session


def has_pending_writes(session: Session | AsyncSession | None) -> bool:
    if session is None:
        return False
    sync = _sync_session(session)
    return bool(sync.new or sync.deleted or any(sync.is_modified(o) for o in sync.dirty))


def live(unit: Unit | None) -> Unit | None:
    """Return *unit* if it is open, None if there is none or it has ended.

    A savepoint whose transaction ended under it (the outer unit ended while
    another task was still inside the savepoint's block) is an error: work
    there must not slip into a new transaction of its own.
    """
    if unit is None:
        return None
    if unit.tx.ended:
        if unit.parent is not None:
            raise SessionEnded(_ENDED)
        return None
    return unit


class Unit:
    """A transaction boundary: the outermost unit, or a SAVEPOINT inside it.

    Joined units have no object of their own: they mark their boundary
    rollback-only when they fail, and hooks go to the boundary.
    """

    __slots__ = (
        "attempt",
        "commit_hooks",
        "parent",
        "rollback_cause",
        "rollback_hooks",
        "rollback_only",
        "savepoint",
        "started",
        "tx",
    )

    def __init__(self, tx: Transaction, parent: Unit | None = None) -> None:
        self.tx = tx
        #: perf_counter() at the start when the ``uow`` logger is at DEBUG, else 0
        self.started = perf_counter() if logger.isEnabledFor(logging.DEBUG) else 0.0
        self.parent = parent
        self.savepoint: Any = None
        self.rollback_only = False
        self.rollback_cause: BaseException | None = None
        self.commit_hooks: list[Hook] = []
        self.rollback_hooks: list[Hook] = []
        #: earlier runs of this unit by a retrying decorator (0: the first run)
        self.attempt = 0
        if parent is None:
            tx.innermost = self

    def is_bare(self) -> bool:
        """Return True if ending this unit has nothing to run, refuse or log beyond its session."""
        return not (self.commit_hooks or self.rollback_hooks or self.rollback_only or self.started)

    def mark_rollback_only(self, cause: BaseException) -> None:
        if not self.rollback_only:
            self.rollback_only = True
            self.rollback_cause = cause

    def merge_into_parent(self) -> None:
        """Hand this savepoint's hooks to the enclosing unit (the savepoint was released)."""
        parent = self.parent
        assert parent is not None
        parent.commit_hooks.extend(self.commit_hooks)
        parent.rollback_hooks.extend(self.rollback_hooks)


class Verdict(NamedTuple):
    """What ending a unit does: commit or roll back, and the error to raise for it."""

    action: Literal["commit", "rollback"]
    error: BaseException | None


def verdict(unit: Unit, options: UnitOptions, body: Outcome) -> Verdict:
    """Decide how a boundary ends, given how its body ended."""
    if body == "rollback":
        return Verdict("rollback", None)
    if unit.rollback_only:
        error = UnexpectedRollback(
            "nothing was committed: a unit joined into this one failed with "
            f"{unit.rollback_cause!r}, which was caught before it reached here, "
            "so the transaction was marked rollback-only; let the error propagate, "
            "or run the inner work with propagation=NESTED (a savepoint) or "
            "REQUIRES_NEW if its failure must not undo the outer unit"
        )
        error.__cause__ = unit.rollback_cause
        return Verdict("rollback", error)
    if options.read_only and has_pending_writes(unit.tx.session):
        return Verdict(
            "rollback",
            ReadOnlyViolation(
                "a read_only=True unit ended with pending changes in its session; "
                "they were discarded. Open a read-write unit to write, or expunge them"
            ),
        )
    return Verdict("commit", None)


def conclude(
    body_exc: BaseException | None,
    planned: Verdict,
    io_error: BaseException | None,
) -> tuple[bool, BaseException | None]:
    """Return (committed, error to raise) once the session's I/O is done.

    ``None`` as the error means: let the body's own exception (if any) propagate.
    """
    if io_error is not None:
        if planned.action == "rollback" and (body_exc is not None or planned.error is not None):
            logger.warning("uow: rollback failed", exc_info=io_error)
            return False, planned.error
        return False, io_error
    return planned.action == "commit", planned.error


def hook_failure(hook: Hook, exc: BaseException, committed: bool) -> HookError | None:
    """Log a failed hook; return the error to raise for it (None if robust)."""
    kind = "on_commit" if committed else "on_rollback"
    if hook.robust:
        logger.exception("uow: robust %s hook %r failed", kind, hook.fn)
        return None
    outcome = "committed" if committed else "rolled back"
    error = HookError(
        f"the unit {outcome} (that stands), but its {kind} hook {hook.fn!r} "
        f"raised {exc!r}; the other hooks still ran. Pass robust=True to log "
        "such failures instead of raising"
    )
    error.__cause__ = exc
    return error


def add_note(exc: BaseException, note: str) -> None:
    """Attach *note* to *exc* (``add_note`` is Python 3.11+; older ones keep it unsaid)."""
    add = getattr(exc, "add_note", None)
    if add is not None:
        add(note)


def settle(
    exc: BaseException | None, error: BaseException | None, hook_error: HookError | None
) -> BaseException | None:
    """Return what ending a unit raises: its own error, else a hook's unless *exc* propagates."""
    if error is not None:
        return error
    if hook_error is not None and exc is not None:
        add_note(exc, f"uow: {hook_error}")
        return None
    return hook_error


def hooks_after_end(unit: Unit, committed: bool) -> list[Hook]:
    """Record the outermost unit's outcome; return the hooks to run now.

    Under ``uow.testing`` the commit hooks are captured for the test instead.
    """
    unit.tx.committed = committed
    if not committed:
        return unit.rollback_hooks
    sink = unit.tx.manager._hook_sink
    if sink is None:
        return unit.commit_hooks
    sink.extend(unit.commit_hooks)
    return []


def log_end(unit: Unit, committed: bool, savepoint: bool) -> None:
    """Write the one DEBUG record of a unit that ended (only when DEBUG is on)."""
    duration = perf_counter() - unit.started
    propagation = "NESTED" if savepoint else unit.tx.options.propagation.name
    logger.debug(
        "uow: %s %s in %.3f ms (propagation=%s, retries=%d)",
        "savepoint" if savepoint else "unit",
        ("released" if savepoint else "committed") if committed else "rolled back",
        duration * 1000,
        propagation,
        unit.attempt,
        extra={
            "uow_outcome": "commit" if committed else "rollback",
            "uow_savepoint": savepoint,
            "uow_duration": duration,
            "uow_propagation": propagation,
            "uow_retries": unit.attempt,
        },
    )
