"""The state of units: what they bind to, a transaction (one session), and its boundaries.

- :class:`Binding` — a session factory and the current boundary of each
  context (the core of ``UnitOfWorkManager``);
- :class:`Transaction` — one session and its outermost transaction, shared by
  every unit joined to it; its :class:`Status` changes only through its methods;
- :class:`Boundary` — where a transaction can end: the outermost unit, or a
  SAVEPOINT inside it, with the hooks registered under it;
- :class:`PendingRoot` — the root of a unit opened ahead of its first use (a
  request's): its Transaction and Boundary are made on first use.

Joined units have no object of their own: they mark their boundary
rollback-only when they fail, and their hooks go to the boundary.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import os
import threading
import warnings
from collections.abc import Callable
from contextvars import ContextVar
from time import perf_counter
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, ParamSpec, TypeVar

import anyio
import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from ._compat import AsyncEngine, async_sessionmaker
from ._detect import is_async_callable
from ._observe import Observation
from ._options import UnitOptions
from ._replicas import Replica, Router, guard_replica_sessions
from ._threads import running_asyncio
from ._timeout import Clock, arm, start_clock
from .exceptions import (
    BlockingSessionUse,
    DirectEndError,
    InvalidOptionError,
    NoActiveUnitOfWork,
    ReadOnlyViolation,
    SavepointConflict,
    SessionEnded,
    SessionKindError,
    UnitOfWorkWarning,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = [
    "SUSPENDED",
    "Binding",
    "Boundary",
    "Current",
    "Hook",
    "PendingRoot",
    "Status",
    "Transaction",
    "live",
    "request_root",
    "serial_tx",
    "sync_request_root",
]

logger = logging.getLogger("uow")
P = ParamSpec("P")
T = TypeVar("T")
TransientPredicate = Callable[[BaseException], bool]
_create_lock = threading.Lock()

NO_UNIT = (
    "no unit of work is open here. Wrap the code in @uow.transactional or "
    "`with uow.unit_of_work():` (`async with` in async code); in a Starlette or "
    "FastAPI app add uow.starlette.UnitOfWorkMiddleware. A thread started without "
    "the caller's context (threading.Thread, an executor's submit) does not see "
    "the caller's unit: call it with `await uow.run_sync(fn)`"
)
ENDED = (
    "this unit of work has already ended (a request's unit ends when its response "
    "starts), so its session is closed. Open a unit of your own for this work: "
    "`with uow.unit_of_work():` or @uow.transactional (in a background task, use "
    "uow.starlette.BackgroundTask, which opens one)"
)
#: the key of ``Session.info`` under which a unit's session finds its transaction
TX_KEY = "uow.transaction"


class Hook(NamedTuple):
    fn: Callable[[], Any]
    robust: bool
    is_async: bool


class Binding:
    """What units bind to: a session factory, and the current boundary of each context."""

    def __init__(
        self,
        factory: sessionmaker[Any] | async_sessionmaker[Any],
        *,
        name: str | None,
        transient: tuple[TransientPredicate, ...],
        retry_backoff: tuple[float, float],
        strict: bool = False,
        router: Router | None = None,
    ) -> None:
        self.session_factory: sessionmaker[Any] | async_sessionmaker[Any] = factory
        #: True when the factory makes ``AsyncSession`` objects
        self.is_async: bool = isinstance(factory, async_sessionmaker)
        bind = engine = factory.kw.get("bind")
        if isinstance(engine, AsyncEngine):
            engine = engine.sync_engine
        self.engine: Engine | None = engine if isinstance(engine, Engine) else None
        # also for a factory bound to a connection (a test's outer transaction)
        dialect = getattr(bind, "dialect", None)
        self.dialect_name: str | None = dialect.name if dialect is not None else None
        #: True when a read-only unit's READ ONLY goes out with its BEGIN, set on the driver's
        #: connection (psycopg 3's ``read_only``): no execution options, no connection up front
        self.read_only_in_begin = self.engine is not None and _psycopg_sync(self.engine)
        if self.read_only_in_begin:
            assert self.engine is not None
            event.listen(self.engine, "checkin", _restore_read_only)
        #: names the database in errors and log records
        self.name: str = name or (
            self.engine.url.render_as_string(hide_password=True) if self.engine is not None else repr(factory)
        )
        self.transient = transient
        self.retry_backoff = retry_backoff
        #: a direct commit()/rollback() on a unit's session raises instead of warning
        self.strict = strict
        #: the innermost open boundary of each context; unset, a request's root stands in
        #: (see :meth:`innermost`)
        self.current: ContextVar[Current] = ContextVar(f"uow_unit_{id(self):x}", default=None)
        #: set by uow.testing: commit hooks are captured here instead of run
        self.hook_sink: list[Hook] | None = None
        #: set by uow.testing: sessions run inside a test's outer transaction
        self.external_transaction = False
        #: the read replicas and how read-only units are routed to them (None: no replicas)
        self.router = router
        _guard_sessions_of(factory)
        for replica in router.replicas if router is not None else ():
            guard_replica_sessions(_guard_sessions_of(replica.factory))

    def innermost(self) -> Boundary | PendingRoot | None:
        """Return the innermost unit of the caller's context: its own, else a request's root."""
        current = self.current.get()
        if current is None:
            root = request_root.get()
            while root is not None and root.binding is not self:
                root = root.outer
            return root
        return None if current is SUSPENDED else current

    def in_unit(self) -> bool:
        """Return True if a unit of this manager is open in the caller's context."""
        return live(self.innermost()) is not None

    def current_boundary(self) -> Boundary | None:
        """Return the innermost boundary of the caller's context, ended or not (made if pending)."""
        current = self.innermost()
        if isinstance(current, PendingRoot):
            return current.boundary()
        return current

    def current_session(self) -> Any:
        """Return the session of the innermost open unit; raise :class:`NoActiveUnitOfWork`."""
        return self.current_unit()[1]

    def current_unit(self) -> tuple[Boundary, Any]:
        """Return the innermost open boundary and its session; raise :class:`NoActiveUnitOfWork`."""
        boundary = self.current_boundary()
        if boundary is None:
            raise NoActiveUnitOfWork(NO_UNIT)
        tx = boundary.tx
        session = tx.get_session()
        if tx.innermost is not boundary:
            tx.check_boundary(boundary)
        return boundary, session

    def on_commit(
        self,
        fn: Callable[[], Any],
        *,
        robust: bool = False,
        when_no_unit: Literal["raise", "run"] = "raise",
    ) -> None:
        """Run *fn* after the outermost transaction commits (first in, first out).

        Dropped if the unit, or the savepoint it was registered in, rolls
        back. Runs after the connection is back in the pool, outside the
        unit. A failing hook cannot undo the commit: the other hooks still
        run, then :class:`HookError` is raised, or with ``robust=True`` the
        failure is logged on the ``uow`` logger. Outside any unit this raises
        :class:`NoActiveUnitOfWork`, unless ``when_no_unit="run"``, which
        calls sync *fn* at once.
        """
        self._register(fn, robust, when_no_unit, commit=True)

    def on_rollback(
        self,
        fn: Callable[[], Any],
        *,
        robust: bool = False,
        when_no_unit: Literal["raise", "ignore"] = "raise",
    ) -> None:
        """Run *fn* after the unit (or the savepoint it was registered in) rolls back.

        The mirror of :meth:`on_commit`: dropped when the work commits.
        Outside any unit this raises, unless ``when_no_unit="ignore"``.
        """
        self._register(fn, robust, when_no_unit, commit=False)

    def _register(self, fn: Callable[[], Any], robust: bool, when_no_unit: str, commit: bool) -> None:
        if not callable(fn):
            raise InvalidOptionError(f"hook {fn!r} is not callable")
        if not isinstance(robust, bool):
            raise InvalidOptionError(f"robust={robust!r} must be True or False")
        allowed = ("raise", "run") if commit else ("raise", "ignore")
        if when_no_unit not in allowed:
            raise InvalidOptionError(f"when_no_unit={when_no_unit!r} must be one of {allowed}")
        is_async = is_async_callable(fn)
        boundary = live(self.innermost())
        if boundary is None:
            if when_no_unit == "raise":
                kind = "on_commit" if commit else "on_rollback"
                raise NoActiveUnitOfWork(
                    f"{kind}() was called with no unit of work open, so there is "
                    f"no transaction to wait for. {NO_UNIT}. To run the callable "
                    "at once when no unit is open, pass "
                    + ('when_no_unit="run"' if commit else 'when_no_unit="ignore"')
                )
            if when_no_unit == "run":
                if is_async:
                    raise SessionKindError(
                        "when_no_unit='run' cannot run an async callable from sync code; await it yourself"
                    )
                fn()
            return
        if is_async and not boundary.tx.driven_async:
            raise SessionKindError(
                f"async hook {fn!r} registered in a unit that ends in sync code, "
                "where it cannot be awaited; register a sync callable, or open the "
                "outermost unit with async def / async with"
            )
        hook = Hook(fn, robust, is_async)
        (boundary.commit_hooks if commit else boundary.rollback_hooks).append(hook)


class Status(enum.Enum):
    """Where a transaction is in its life; it only moves forward."""

    ACTIVE = "active"  # its units run; the session is made on first use
    ENDING = "ending"  # its end began: the session is off limits to uow.session
    COMMITTED = "committed"  # ended, and committed: the session is closed
    ROLLED_BACK = "rolled back"  # ended, and rolled back: the session is closed


class Transaction:
    """One session and its outermost transaction, shared by every unit joined to it.

    The session is made on first use, so a unit that never touches the
    database costs no session and no connection.
    """

    __slots__ = (
        "_lock",
        "_status",
        "_thread_lock",
        "binding",
        "clock",
        "connected",
        "direct_end_allowed",
        "driven_async",
        "ended",
        "innermost",
        "lazy",
        "loop_thread",
        "options",
        "outer",
        "replica",
        "session",
    )

    def __init__(
        self,
        binding: Binding,
        options: UnitOptions,
        driven_async: bool,
        outer: Transaction | None = None,
        *,
        loop_thread: int | None = None,
        lazy: bool = False,
    ) -> None:
        self.binding = binding
        self.options = options
        #: the budget of a unit with ``timeout`` (started now), None without one
        self.clock: Clock | None = (
            None if options.timeout is None else start_clock(options.timeout, binding.dialect_name)
        )
        self.session: Session | AsyncSession | None = None
        #: True when the outermost unit is finished with ``await`` (async def / async with)
        self.driven_async = driven_async
        #: the thread running the event loop of an async-driven unit (None for a sync one);
        #: the caller's thread unless given (a pending root may be made in a worker thread)
        if loop_thread is None and driven_async:
            loop_thread = threading.get_ident()
        self.loop_thread = loop_thread
        #: the transaction this one suspended (REQUIRES_NEW), None for the first of a context
        self.outer = outer
        #: the innermost open boundary: the root, or the last SAVEPOINT begun and not ended
        self.innermost: Boundary | None = None
        #: set when the session checks out a connection (SessionEvents.after_begin)
        self.connected = False
        #: True where the code ends the transaction itself (the middleware's manual mode)
        self.direct_end_allowed = False
        #: True if the connection is begun on first use, without start_options() (the middleware's)
        self.lazy = lazy
        #: the read replica that serves this (read-only) transaction; None: the primary
        self.replica: Replica | None = None
        self._status = Status.ACTIVE
        #: True once the end began: ``uow.session`` no longer hands out the session (set by the
        #: methods below, like the status; a plain attribute because every request reads it)
        self.ended = False
        self._lock: anyio.Lock | asyncio.Lock | None = None
        self._thread_lock: threading.RLock | None = None

    # --- status: changed only here -------------------------------------------

    @property
    def status(self) -> Status:
        return self._status

    @property
    def closed(self) -> bool:
        """True once the session is closed: any use of it is refused."""
        return self._status is Status.COMMITTED or self._status is Status.ROLLED_BACK

    @property
    def committed(self) -> bool | None:
        """The outcome once known: True committed, False rolled back, None still running."""
        status = self._status
        if status is Status.COMMITTED:
            return True
        if status is Status.ROLLED_BACK:
            return False
        return None

    def begin_end(self) -> None:
        """Mark the start of the end: the session is off limits from now on."""
        if self._status is not Status.ACTIVE:
            raise RuntimeError(f"a transaction that is {self._status.value} cannot begin to end")
        self._status = Status.ENDING
        self.ended = True

    def finish(self, committed: bool) -> None:
        """Record the outcome once the session is closed, and let go of the session and boundary.

        The closed session keeps its link to this transaction (in its ``info``:
        its listeners refuse any later use); dropping the links back breaks the
        cycles, so that a unit's session and boundaries are freed when the last
        reference goes, not by a pass of the cyclic garbage collector.
        """
        if self._status is Status.COMMITTED or self._status is Status.ROLLED_BACK:
            raise RuntimeError(f"a transaction that is {self._status.value} cannot finish again")
        self._status = Status.COMMITTED if committed else Status.ROLLED_BACK
        self.ended = True
        self.session = None
        self.innermost = None

    def mark_connected(self) -> None:
        self.connected = True

    # --- the session ------------------------------------------------------------

    def get_session(self) -> Session | AsyncSession:
        """Return the session, making it on first use."""
        session = self.session
        if self.ended:
            raise SessionEnded(ENDED)
        if session is None:
            with _create_lock:
                session = self.session
                if session is None:
                    replica = self.replica
                    session = (replica.factory if replica is not None else self.binding.session_factory)()
                    _sync_session(session).info[TX_KEY] = self
                    self.session = session
        loop_thread = self.loop_thread
        if loop_thread is not None and self.binding.is_async and threading.get_ident() != loop_thread:
            raise SessionKindError(
                "this unit's session is an AsyncSession, which only the event loop can "
                "drive; a worker thread (uow.run_sync, asyncio.to_thread) cannot use it. "
                "Await it in the async code itself, or run sync code on it with "
                "`await uow.session.run_sync(fn)` (fn gets a sync Session)"
            )
        return session

    @property
    def served_by(self) -> str:
        """The name of the database that serves this transaction: a replica's, or the primary's."""
        replica = self.replica
        return replica.name if replica is not None else self.binding.name

    def use_primary(self) -> None:
        """Go back to the primary, before any work: the replica's session (closed) is dropped."""
        self.replica = None
        self.session = None
        self.connected = False

    def start_options(self) -> dict[str, Any]:
        """Return the execution options the first connection needs ({} if none)."""
        options = self.options
        opts: dict[str, Any] = {}
        if options.isolation_level is not None:
            opts["isolation_level"] = options.isolation_level
        if (
            options.read_only
            and self.binding.dialect_name == "postgresql"
            and not self.binding.read_only_in_begin
            and self.replica is None
        ):
            # (not on a replica: a standby refuses every write already, and the pool's reset
            # of the mode would make its next transaction BEGIN READ WRITE, which it refuses)
            opts["postgresql_readonly"] = True
        if opts and self.binding.external_transaction:
            # inside a test's outer transaction the connection is already
            # begun: its isolation and read-only mode cannot change
            return {}
        return opts

    def read_only_at_database(self) -> bool:
        """Return True if the database itself refuses writes in this transaction (READ ONLY)."""
        binding = self.binding
        if binding.dialect_name != "postgresql" or binding.external_transaction:
            return False
        if self.replica is not None:
            return True  # a hot standby refuses every write
        # READ ONLY goes out with the BEGIN (psycopg 3), or with the first connection's options
        # (which a connection begun on first use, lazily, does not get)
        return self.options.read_only and (binding.read_only_in_begin or not self.lazy)

    def needs_io_to_end(self) -> bool:
        """Return True if ending the session may touch the database."""
        session = self.session
        if session is None:
            return False
        sync = _sync_session(session)
        return self.connected or bool(sync.new or sync.deleted or sync.dirty)

    def check_boundary(self, boundary: Boundary) -> None:
        """Refuse session work from *boundary* while a SAVEPOINT it does not enclose is open.

        Two tasks of one transaction (``asyncio.gather``) each in a savepoint of
        their own would interleave: rolling one back would silently discard the
        other's writes.
        """
        innermost = self.innermost
        if innermost is not None and innermost is not boundary:
            raise SavepointConflict(
                "another task's savepoint (propagation=NESTED) of this transaction is "
                "open, so this work would land inside it and share its fate. Run "
                "savepoints of one transaction one after another (await each), or give "
                "concurrent work transactions of its own with propagation=REQUIRES_NEW"
            )

    # --- locks: one task, and one thread, at a time ----------------------------

    def async_lock(self) -> anyio.Lock | asyncio.Lock:
        """Return the lock that serializes the tasks doing thread work on this (sync) session.

        On asyncio it is asyncio's own lock (anyio's costs a backend lookup per
        lock, one per request); on other backends, anyio's.
        """
        lock = self._lock
        if lock is None:
            lock = self._lock = asyncio.Lock() if running_asyncio() else anyio.Lock()
        return lock

    def lock_is_free(self) -> bool:
        """Return True if no task is doing thread work on the session (no lock made, or unlocked)."""
        lock = self._lock
        return lock is None or not lock.locked()

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


#: the innermost async-driven transaction whose session is sync; run_sync serializes on it
#: (unset: on the innermost request's root whose session is sync, see :func:`sync_request_root`)
serial_tx: ContextVar[Transaction | None] = ContextVar("uow_serial_tx", default=None)


class Boundary:
    """Where a transaction can end: the outermost unit, or a SAVEPOINT inside it."""

    __slots__ = (
        "attempt",
        "commit_hooks",
        "observation",
        "parent",
        "rollback_cause",
        "rollback_hooks",
        "rollback_only",
        "savepoint",
        "started",
        "tx",
    )

    def __init__(self, tx: Transaction, parent: Boundary | None = None) -> None:
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
        #: what an observer (uow.otel) follows of this boundary, None when unobserved
        self.observation: Observation | None = None
        if parent is None:
            tx.innermost = self

    def is_bare(self) -> bool:
        """Return True if ending this boundary has nothing to run, refuse or log beyond its session."""
        return not (self.commit_hooks or self.rollback_hooks or self.rollback_only or self.started)

    def mark_rollback_only(self, cause: BaseException) -> None:
        if not self.rollback_only:
            self.rollback_only = True
            self.rollback_cause = cause

    def open_savepoint(self, savepoint: Any) -> None:
        """Record the SAVEPOINT this (child) boundary began: it is now the innermost."""
        self.savepoint = savepoint
        self.tx.innermost = self

    def close_savepoint(self) -> None:
        """The savepoint begins to end: its parent is the innermost again (if the unit goes on)."""
        if not self.tx.closed:
            self.tx.innermost = self.parent

    def merge_into_parent(self) -> None:
        """Hand this savepoint's hooks to the enclosing boundary (the savepoint was released)."""
        parent = self.parent
        assert parent is not None
        parent.commit_hooks.extend(self.commit_hooks)
        parent.rollback_hooks.extend(self.rollback_hooks)


class PendingRoot:
    """The root of an async-driven unit opened ahead of its first use: a request's.

    A request that never touches uow costs this object only. Its
    :class:`Transaction` and root :class:`Boundary` are made on first use
    (``uow.session``, ``provide_session``, ``on_commit``, a nested unit),
    possibly in a worker thread: the event loop's thread is recorded up front.

    A subclass (the middleware's request) sets its fields: :attr:`binding`,
    :attr:`loop_thread`, :attr:`outer`, :attr:`made` and :attr:`outcome`.
    """

    __slots__ = ("binding", "loop_thread", "made", "options", "outcome", "outer")

    #: the manager whose unit this is
    binding: Binding
    #: the event loop's thread (the root may be made in a worker thread)
    loop_thread: int
    #: the enclosing request's root (another middleware's, outside this one), if any
    outer: PendingRoot | None
    #: the root boundary, once made
    made: Boundary | None
    #: the outcome the end chose (True: commit), None while the unit is open
    outcome: bool | None
    #: the root's options (a new transaction of its own, whatever the caller's context holds)
    options: UnitOptions

    @property
    def direct_end_allowed(self) -> bool:
        """True where the code ends the transaction itself (the middleware's manual mode)."""
        return False

    def boundary(self) -> Boundary:
        """Return the root boundary, making it (and its transaction) on first use.

        Made after :meth:`end_unmade` (a worker thread that outlived the end),
        it is a transaction that already ended that way.
        """
        made = self.made
        if made is None:
            with _create_lock:
                made = self.made
                if made is None:
                    tx = Transaction(
                        self.binding, self.options, driven_async=True, loop_thread=self.loop_thread, lazy=True
                    )
                    tx.direct_end_allowed = self.direct_end_allowed
                    made = self.made = Boundary(tx)
                    # after publishing it: an end that did not see it has set the outcome by now
                    if self.outcome is not None:
                        tx.finish(self.outcome)
        return made

    def end_unmade(self, commit: bool) -> bool:
        """Begin the end, choosing *commit*; return True if the root was never made (nothing to do).

        No lock on this path, which every request takes: the outcome is set
        before ``made`` is read, and :meth:`boundary` sets ``made`` before it
        reads the outcome, so a root made meanwhile is either seen here or
        finished there. (:meth:`made_open` settles which, under the lock.)
        """
        self.outcome = commit
        return self.made is None

    def made_open(self) -> Boundary | None:
        """After :meth:`end_unmade` returned False: the root if it is still to be ended, else None."""
        with _create_lock:
            made = self.made
            assert made is not None
            return None if made.tx.closed else made


class Suspended(enum.Enum):
    """What a manager's ``current`` holds where its unit is suspended (``NOT_SUPPORTED``, say)."""

    SUSPENDED = "suspended"


SUSPENDED = Suspended.SUSPENDED
#: what a manager's ``current`` holds: its innermost boundary, SUSPENDED (no unit here, whatever
#: the request's), or None (unset: the request's root, if any, stands in)
Current = Boundary | Literal[Suspended.SUSPENDED] | None

#: the innermost request's root (a request served by UnitOfWorkMiddleware), chained to the
#: roots of the middlewares outside it: one variable set per request, whatever its manager
request_root: ContextVar[PendingRoot | None] = ContextVar("uow_request_root", default=None)


def sync_request_root() -> PendingRoot | None:
    """Return the innermost request's root whose session is sync (what run_sync serializes on)."""
    root = request_root.get()
    while root is not None and root.binding.is_async:
        root = root.outer
    return root


def live(current: Boundary | PendingRoot | None) -> Boundary | None:
    """Return the boundary *current* stands for if it is open, None if there is none or it ended.

    A pending root is made here (the caller is about to use it). A savepoint
    whose transaction ended under it (the outer unit ended while another task
    was still inside the savepoint's block) is an error: work there must not
    slip into a new transaction of its own.
    """
    if current is None:
        return None
    if isinstance(current, PendingRoot):
        if current.made is None and current.outcome is not None:
            return None
        current = current.boundary()
    boundary = current
    if boundary.tx.ended:
        if boundary.parent is not None:
            raise SessionEnded(ENDED)
        return None
    return boundary


def has_pending_writes(session: Session | AsyncSession | None) -> bool:
    if session is None:
        return False
    sync = _sync_session(session)
    if sync.new or sync.deleted:
        return True
    # ``dirty`` builds a set of every object marked modified: only when the identity map has one
    return sync.identity_map.check_modified() and any(sync.is_modified(o) for o in sync.dirty)


def _sync_session(session: Session | AsyncSession) -> Session:
    return session if isinstance(session, Session) else session.sync_session


def log_end(boundary: Boundary, committed: bool, savepoint: bool) -> None:
    """Write the one DEBUG record of a unit that ended (only when DEBUG is on)."""
    duration = perf_counter() - boundary.started
    tx = boundary.tx
    propagation = "NESTED" if savepoint else tx.options.propagation.name
    served_by = tx.served_by
    logger.debug(
        "uow: %s %s in %.3f ms (propagation=%s, retries=%d%s)",
        "savepoint" if savepoint else "unit",
        ("released" if savepoint else "committed") if committed else "rolled back",
        duration * 1000,
        propagation,
        boundary.attempt,
        "" if tx.binding.router is None else f", served_by={served_by}",
        extra={
            "uow_served_by": served_by,
            "uow_outcome": "commit" if committed else "rollback",
            "uow_savepoint": savepoint,
            "uow_duration": duration,
            "uow_propagation": propagation,
            "uow_retries": boundary.attempt,
        },
    )


# --- the session listeners: installed once per factory, they cost nothing per session ---------


def _check_use(session: Session) -> None:
    """Refuse a flush that the session's unit no longer allows (or not from here)."""
    tx = session.info.get(TX_KEY)
    if tx is None:
        return
    if tx.closed:
        raise SessionEnded(ENDED)
    if tx.loop_thread == threading.get_ident() and not tx.binding.is_async:
        raise BlockingSessionUse(_BLOCKING)
    boundary = tx.binding.innermost()
    if isinstance(boundary, PendingRoot):
        boundary = boundary.made  # a root not made yet is not this session's
    if boundary is not None and boundary.tx is tx:
        tx.check_boundary(boundary)


_BLOCKING = (
    "a sync session was used on the event loop thread, where its query would "
    "block every other request. Use it from a `def` endpoint or dependency "
    "(they run in the threadpool), run the work with `await uow.run_sync(fn)`, "
    "or configure uow with an AsyncEngine"
)


def _before_flush(session: Session, _flush_context: Any, _instances: Any) -> None:
    _check_use(session)
    tx = session.info.get(TX_KEY)
    if tx is not None and tx.options.read_only and has_pending_writes(session):
        raise ReadOnlyViolation(
            "this unit is read_only=True, but the session was asked to flush "
            "changes; open a read-write unit for writes, or expunge the objects"
        )


def _after_transaction_create(session: Session, transaction: SessionTransaction) -> None:
    """A session whose unit ended begins nothing more: every later use raises, and holds no connection.

    Checked once per transaction, when the session begins one (on its first
    query or flush), not on every statement.
    """
    if transaction.parent is None:
        tx = session.info.get(TX_KEY)
        if tx is not None and tx.closed:
            transaction.close()  # so that the next attempt comes here again
            raise SessionEnded(ENDED)


def _after_begin(session: Session, transaction: SessionTransaction, connection: Connection) -> None:
    tx = session.info.get(TX_KEY)
    if tx is not None:
        tx.mark_connected()  # the unit's end gives the connection back, also after the errors below
        if tx.loop_thread == threading.get_ident() and not tx.binding.is_async:
            raise BlockingSessionUse(_BLOCKING)
        binding = tx.binding
        # read-write units stop at the first test; a test's outer transaction cannot change
        # (before any statement of uow's own: READ ONLY goes out with the BEGIN)
        if (
            tx.options.read_only
            and binding.read_only_in_begin
            and tx.replica is None  # (a standby refuses writes itself; its pool restores nothing)
            and not binding.external_transaction
            and transaction.parent is None
        ):
            _begin_read_only(connection)
        if tx.clock is not None and not binding.external_transaction:
            # (inside a test's outer transaction the connection outlives the unit: not bounded)
            arm(tx.clock, connection, binding.dialect_name)


# --- READ ONLY with the BEGIN, on psycopg 3: set on the driver's connection, restored at checkin --

#: the key of the pool's connection info holding the driver's read_only to restore at checkin
_READ_ONLY_KEY = "uow.read_only_before"


def _psycopg_sync(engine: Engine) -> bool:
    dialect = engine.dialect
    return dialect.name == "postgresql" and dialect.driver == "psycopg" and not dialect.is_async


def _begin_read_only(connection: Connection) -> None:
    """Make the transaction about to begin READ ONLY: psycopg sends ``BEGIN READ ONLY`` (no extra trip).

    Called when the session has taken the connection and before its first
    statement (psycopg begins a transaction with the first statement).
    """
    pooled = connection.connection
    # psycopg's own connection (the sync dialect's DBAPI connection is the driver's, and
    # ``driver_connection`` costs ten times as much to reach)
    driver = pooled.dbapi_connection
    pooled.info[_READ_ONLY_KEY] = driver.read_only  # type: ignore[union-attr]
    driver.read_only = True  # type: ignore[union-attr]


def _restore_read_only(dbapi_connection: Any, record: Any) -> None:
    """On checkin (the transaction is over): give the connection back with its own read_only."""
    info = record.info
    if _READ_ONLY_KEY not in info:
        return
    previous = info.pop(_READ_ONLY_KEY)
    if dbapi_connection is None:
        return
    try:
        dbapi_connection.read_only = previous
    except Exception as e:  # a connection that cannot say it is read-write again is not reused
        record.invalidate(e)


def _direct_end(session: Session, call: str) -> None:
    """Warn (or, strict, raise) when code commits or rolls back a unit's session itself."""
    tx = session.info.get(TX_KEY)
    if tx is None or tx.ended or tx.direct_end_allowed:
        return
    message = (
        f"session.{call}() was called inside a unit of work, which ends its transaction "
        f"itself: the {call} breaks the unit's atomicity (work before it is "
        + ("kept even if the unit later fails" if call == "commit" else "discarded, work after it goes on")
        + f"). Remove the {call}() and let the unit end; use session.flush() to send "
        "pending changes, propagation=REQUIRES_NEW for work that must be kept apart, "
        "or commit_mode='manual' for a request that ends its transaction itself"
    )
    if tx.binding.strict:
        raise DirectEndError(message)
    filename, lineno, module = _caller_outside_libraries()
    warnings.warn_explicit(message, UnitOfWorkWarning, filename, lineno, module=module)


def _caller_outside_libraries() -> tuple[str, int, str]:
    """Return the file, line and module of the first frame outside SQLAlchemy and uow."""
    frame = inspect.currentframe()
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(_LIBRARY_DIRS):
            return filename, frame.f_lineno, str(frame.f_globals.get("__name__", ""))
        frame = frame.f_back
    return "<unknown>", 0, ""


_LIBRARY_DIRS = (
    os.path.dirname(os.path.abspath(__file__)) + os.sep,
    os.path.dirname(os.path.abspath(sqlalchemy.__file__)) + os.sep,
    "<",  # SQLAlchemy's generated wrappers
)


def _before_commit(session: Session) -> None:
    tx = session.info.get(TX_KEY)
    if tx is None or tx.ended:  # the unit's own end (every unit's): nothing more to check
        return
    if not session.in_nested_transaction():  # a SAVEPOINT's release is not the unit's end
        _direct_end(session, "commit")


def _after_soft_rollback(session: Session, previous: SessionTransaction) -> None:
    tx = session.info.get(TX_KEY)
    if tx is None or tx.ended:
        return
    # the root transaction only: not a savepoint, not the subtransaction of a failed flush
    if previous.parent is None and not previous.nested:
        _direct_end(session, "rollback")


def _install_guards(session_class: Any) -> Any:
    """Listen on *session_class*, once: a mark on the class itself says it is done.

    (Not ``event.contains``: SQLAlchemy keys its registry by ``id()``, which a new
    class may share with a collected one whose entries are still there.)
    """
    if session_class.__dict__.get("_uow_listening", False):
        return session_class
    for name, fn in (
        ("before_flush", _before_flush),
        ("after_transaction_create", _after_transaction_create),
        ("after_begin", _after_begin),
        ("before_commit", _before_commit),
        ("after_soft_rollback", _after_soft_rollback),
    ):
        event.listen(session_class, name, fn)
    session_class._uow_listening = True
    return session_class


def _guard_sessions_of(factory: sessionmaker[Any] | async_sessionmaker[Any]) -> type[Session]:
    """Install uow's listeners on the sessions *factory* makes, and only on those; return their class."""
    if isinstance(factory, sessionmaker):
        return _install_guards(factory.class_)  # type: ignore[no-any-return]  # the factory's own subclass
    sync_class = factory.kw.get("sync_session_class", Session)
    if not sync_class.__dict__.get("_uow_guarded", False):
        # a subclass of its own, so that listening never reaches other factories' sessions
        sync_class = type(sync_class.__name__, (sync_class,), {"_uow_guarded": True})
        factory.configure(sync_session_class=sync_class)
    return _install_guards(sync_class)  # type: ignore[no-any-return]
