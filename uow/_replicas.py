"""Read replicas: which database serves a read-only unit, and the position read-your-writes needs.

- :class:`Routing` — the options (read-your-writes mode, waits, health bounds);
- :class:`Replica` — one replica's session factory and what is known of its health;
- :class:`Router` — the replicas of a manager, and :func:`routing`, the decision
  as a generator of I/O steps (probe a replica, sleep) that the sync and
  async drivers (:func:`choose_sync`, :func:`choose_async`) perform;
- the causal position of the caller's context (:func:`position`,
  :func:`note_write`) and its token form, carried across requests.

Writes go to the primary. After a unit commits there, the context remembers
the primary's WAL insert position (``pg_current_wal_insert_lsn()``, read on a
connection of its own once the COMMIT returned, so it lies at or past the
commit record), or, in window mode, a deadline. A later read-only unit uses a
replica only once ``pg_last_wal_replay_lsn()`` there has reached it (waiting
up to ``max_wait``), and the primary otherwise.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import itertools
import json
import logging
import math
import threading
import time
from collections.abc import Generator, Iterator
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import anyio
import anyio.to_thread
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker

from ._compat import AsyncEngine, async_sessionmaker
from ._threads import shielded
from .exceptions import InvalidOptionError, ReadOnlyViolation

__all__ = [
    "Causal",
    "Position",
    "Replica",
    "Router",
    "Routing",
    "choose_async",
    "choose_sync",
    "enter_causal",
    "guard_replica_sessions",
    "is_disconnect",
    "leave_causal",
    "note_write",
    "position",
    "record_async",
    "record_sync",
    "use_token",
]

logger = logging.getLogger("uow")

ReadYourWrites = Literal["lsn", "window", "off"]


@dataclass(frozen=True)
class Routing:
    """How a manager with replicas routes read-only units.

    *read_your_writes*: ``"lsn"`` (PostgreSQL only, the default there) uses a
    replica only once it has replayed the context's last write; ``"window"``
    (the default elsewhere) sends the context's reads to the primary for
    *window* seconds after its last write; ``"off"`` routes every read-only
    unit to a replica, which may not show the caller's own writes yet.
    *max_wait*: how long a read waits for a replica to catch up before it goes
    to the primary. *max_lag*: a replica further behind (seconds) is skipped.
    *cooldown*: a replica that refused a connection is skipped this long.
    *check_interval*: how often a replica's position and lag are read (a
    short query on a connection of its own), at most.
    """

    read_your_writes: ReadYourWrites | None = None
    max_wait: float = 0.5
    window: float = 5.0
    max_lag: float = 10.0
    cooldown: float = 5.0
    check_interval: float = 1.0
    #: how long a waiting read sleeps between two reads of the replica's position
    poll: float = 0.01
    #: "round-robin": healthy replicas take turns; "least-lag": the one least behind first
    #: (as of the last probes; replicas as far behind take turns)
    prefer: Literal["round-robin", "least-lag"] = "round-robin"

    def __post_init__(self) -> None:
        if self.prefer not in ("round-robin", "least-lag"):
            raise InvalidOptionError(f"prefer={self.prefer!r} must be 'round-robin' or 'least-lag'")
        if self.read_your_writes not in (None, "lsn", "window", "off"):
            raise InvalidOptionError(
                f"read_your_writes={self.read_your_writes!r} must be 'lsn', 'window' or 'off'"
            )
        for name in ("max_wait", "window", "max_lag", "cooldown", "check_interval", "poll"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise InvalidOptionError(f"{name}={value!r} must be a number of seconds, 0 or more")


def _autocommit(engine: Engine | AsyncEngine) -> Engine | AsyncEngine:
    return engine.execution_options(isolation_level="AUTOCOMMIT")


class Replica:
    """One replica: its session factory, and what the last probe found."""

    __slots__ = ("checked_at", "down_until", "engine", "factory", "lag", "name", "probe_engine", "replayed")

    def __init__(self, factory: sessionmaker[Any] | async_sessionmaker[Any], name: str | None) -> None:
        self.factory = factory
        engine = factory.kw.get("bind")
        if not isinstance(engine, (Engine, AsyncEngine)):
            raise InvalidOptionError(
                f"replica {factory!r} is not bound to one engine; pass an Engine, an "
                "AsyncEngine, or a session factory made with bind=<engine>"
            )
        self.engine: Engine | AsyncEngine = engine
        #: the engine's pool, without a transaction: a probe is one query, one round trip
        self.probe_engine: Engine | AsyncEngine = _autocommit(engine)
        sync = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
        self.name: str = name or sync.url.render_as_string(hide_password=True)
        #: monotonic time until which the replica is skipped (it refused a connection)
        self.down_until = 0.0
        #: seconds behind the primary, as of the last probe
        self.lag = 0.0
        #: the WAL position replayed, as of the last probe (math.inf: not a standby)
        self.replayed: float = 0
        #: monotonic time of the last probe
        self.checked_at = -math.inf

    def __repr__(self) -> str:
        return f"<Replica {self.name}>"


class Router:
    """The replicas of a manager, in round-robin order, and the routing options."""

    def __init__(
        self, replicas: list[Replica], routing: Routing, dialect: str | None, primary: object = None
    ) -> None:
        self.replicas = replicas
        self.routing = routing
        self.probes = dialect == "postgresql"
        mode = routing.read_your_writes or ("lsn" if self.probes else "window")
        if mode == "lsn" and not self.probes:
            raise InvalidOptionError(
                f"read_your_writes='lsn' needs PostgreSQL (its WAL positions); this is {dialect}. "
                "Use read_your_writes='window' (reads go to the primary for `window` seconds "
                "after a write)"
            )
        self.mode: ReadYourWrites = mode
        #: where a write's WAL position is read: the primary's pool, without a transaction
        self.positions: Engine | AsyncEngine | None = (
            _autocommit(primary) if mode == "lsn" and isinstance(primary, (Engine, AsyncEngine)) else None
        )
        self._turn = itertools.count()
        self._lock = threading.Lock()

    def in_turn(self, now: float) -> list[Replica]:
        """Return the replicas not cooling down, in the order to try them."""
        with self._lock:
            start = next(self._turn)
        healthy = [r for r in self.replicas if r.down_until <= now]
        if not healthy:
            return healthy
        if self.routing.prefer == "least-lag":
            healthy.sort(key=lambda r: r.lag)
            level = [r for r in healthy if r.lag == healthy[0].lag]  # the least behind take turns
            k = start % len(level)
            return level[k:] + level[:k] + healthy[len(level) :]
        k = start % len(healthy)
        return healthy[k:] + healthy[:k]

    def mark_down(self, replica: Replica, exc: BaseException) -> None:
        replica.down_until = time.monotonic() + self.routing.cooldown
        logger.warning(
            "uow: replica %s is unreachable (%s); reads go elsewhere for %.1f s",
            replica.name,
            exc.__class__.__name__,
            self.routing.cooldown,
            extra={"uow_replica": replica.name},
        )


# --- the causal position of a context -------------------------------------------------------


class Position(NamedTuple):
    """What a read must wait for: a WAL position (None: none), and a wall-clock deadline."""

    lsn: int | None
    until: float


@dataclass
class Causal:
    """The positions a context's reads must see, per database (mutable: shared by a request's threads)."""

    positions: dict[str, Position] = field(default_factory=dict)
    #: True once a write of this context moved a position
    changed: bool = False

    def token(self) -> str | None:
        if not self.positions:
            return None
        data = json.dumps({k: [p.lsn, p.until] for k, p in self.positions.items()}, separators=(",", ":"))
        return base64.urlsafe_b64encode(data.encode()).decode().rstrip("=")

    @classmethod
    def from_token(cls, token: str | None) -> Causal:
        """Read a token; one that cannot be read (a tampered cookie) carries no position."""
        causal = cls()
        if not token:
            return causal
        try:
            data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            for name, (lsn, until) in data.items():
                if not (lsn is None or isinstance(lsn, int)) or not isinstance(until, (int, float)):
                    raise ValueError(name)
                causal.positions[str(name)] = Position(lsn, float(until))
        except (ValueError, TypeError, binascii.Error, AttributeError):
            logger.debug("uow: ignoring an unreadable causal token %r", token[:100])
            return cls()
        return causal


_causal: ContextVar[Causal | None] = ContextVar("uow_causal", default=None)


def position(name: str) -> Position | None:
    """Return the position the caller's context must see on database *name*, if any."""
    causal = _causal.get()
    return None if causal is None else causal.positions.get(name)


def note_write(name: str, lsn: int | None, until: float) -> None:
    """Remember a committed write on *name*: its WAL position, or a deadline (window mode)."""
    causal = _causal.get()
    if causal is None:
        causal = Causal()
        _causal.set(causal)
    old = causal.positions.get(name)
    if old is not None:
        lsn = old.lsn if lsn is None else lsn if old.lsn is None else max(lsn, old.lsn)
        until = max(until, old.until)
    causal.positions[name] = Position(lsn, until)
    causal.changed = True


def current() -> Causal | None:
    return _causal.get()


@contextlib.contextmanager
def use_token(token: str | None) -> Iterator[Causal]:
    """Make the positions in *token* (from :func:`Causal.token`) the caller's own, for the block."""
    causal = Causal.from_token(token)
    reset = _causal.set(causal)
    try:
        yield causal
    finally:
        _causal.reset(reset)


# --- the decision, as steps of I/O -------------------------------------------------------


class Probe(NamedTuple):
    replica: Replica


class Sleep(NamedTuple):
    seconds: float


Step = Probe | Sleep


def routing(router: Router, pos: Position | None) -> Generator[Step, bool, Replica | None]:
    """Decide which replica serves a read-only unit (None: the primary).

    Yields the I/O it needs — :class:`Probe` (read the replica's position
    and lag; the driver sends back False if it refused the connection) and
    :class:`Sleep` — and returns the replica.
    """
    opts = router.routing
    if router.mode != "off" and pos is not None and pos.until > time.time():
        return None  # a recent write whose position is unknown (window mode, or a failed read)
    need = pos.lsn if router.mode == "lsn" and pos is not None else None
    behind: list[Replica] = []
    for replica in router.in_turn(time.monotonic()):
        stale = time.monotonic() - replica.checked_at >= opts.check_interval
        wanted = stale or (need is not None and replica.replayed < need)
        if router.probes and wanted and not (yield Probe(replica)):
            continue
        if replica.lag > opts.max_lag:
            logger.debug("uow: replica %s lags %.1f s, skipped", replica.name, replica.lag)
            continue
        if need is None or replica.replayed >= need:
            return replica
        behind.append(replica)
    if not behind:
        return None
    replica = max(behind, key=lambda r: r.replayed)
    deadline = time.monotonic() + opts.max_wait
    while time.monotonic() < deadline:
        yield Sleep(opts.poll)
        if not (yield Probe(replica)):
            return None
        if replica.replayed >= need:  # type: ignore[operator]
            return replica
    logger.debug("uow: replica %s has not replayed the context's last write; primary", replica.name)
    return None


_PROBE = text(
    "SELECT pg_last_wal_replay_lsn()::text, CASE WHEN pg_last_wal_receive_lsn() = "
    "pg_last_wal_replay_lsn() THEN 0 ELSE COALESCE(EXTRACT(EPOCH FROM now() - "
    "pg_last_xact_replay_timestamp()), 0) END"
)
_INSERT_LSN = text("SELECT pg_current_wal_insert_lsn()::text")


def parse_lsn(value: str) -> int:
    high, low = value.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def _found(replica: Replica, row: Any) -> None:
    lsn, lag = row
    replica.replayed = math.inf if lsn is None else parse_lsn(lsn)  # not a standby: current
    replica.lag = float(lag or 0)
    replica.checked_at = time.monotonic()


def is_disconnect(exc: BaseException) -> bool:
    """Return True for an error that says the database cannot be reached.

    SQLAlchemy's (psycopg's refusals arrive as ``OperationalError``), or the
    socket's own (asyncpg lets ``ConnectionRefusedError`` through as is).
    """
    return isinstance(exc, (OperationalError, InterfaceError, OSError)) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )


def _probe_sync(router: Router, replica: Replica) -> bool:
    engine = replica.probe_engine
    assert isinstance(engine, Engine)
    try:
        with engine.connect() as connection:
            _found(replica, connection.execute(_PROBE).one())
    except Exception as exc:
        if not is_disconnect(exc):
            raise
        router.mark_down(replica, exc)
        return False
    return True


async def _probe_async(router: Router, replica: Replica) -> bool:
    engine = replica.probe_engine
    if isinstance(engine, Engine):
        return await anyio.to_thread.run_sync(_probe_sync, router, replica)
    try:
        async with engine.connect() as connection:
            _found(replica, (await connection.execute(_PROBE)).one())
    except Exception as exc:
        if not is_disconnect(exc):
            raise
        router.mark_down(replica, exc)
        return False
    return True


def choose_sync(router: Router, name: str) -> Replica | None:
    """Return the replica that serves a read-only unit of the caller (None: the primary)."""
    steps = routing(router, position(name))
    try:
        step = next(steps)
        while True:
            if isinstance(step, Probe):
                step = steps.send(_probe_sync(router, step.replica))
            else:
                time.sleep(step.seconds)
                step = next(steps)
    except StopIteration as stop:
        chosen: Replica | None = stop.value
        return chosen


async def choose_async(router: Router, name: str) -> Replica | None:
    """The async form of :func:`choose_sync`."""
    steps = routing(router, position(name))
    try:
        step = next(steps)
        while True:
            if isinstance(step, Probe):
                step = steps.send(await _probe_async(router, step.replica))
            else:
                await anyio.sleep(step.seconds)
                step = next(steps)
    except StopIteration as stop:
        chosen: Replica | None = stop.value
        return chosen


# --- recording a write ------------------------------------------------------------------


def _read_insert_lsn(engine: Engine) -> int:
    with engine.connect() as connection:
        return parse_lsn(connection.execute(_INSERT_LSN).scalar_one())


_NO_LSN = "uow: reading the primary's WAL position failed; the context reads from the primary for `window` s"


def _window(router: Router) -> float:
    return time.time() + router.routing.window


def record_sync(router: Router, name: str) -> None:
    """Remember, in the caller's context, that a unit just committed on the primary *name*."""
    if router.mode == "off":
        return
    engine = router.positions
    if not isinstance(engine, Engine):
        note_write(name, None, _window(router))
        return
    try:
        note_write(name, _read_insert_lsn(engine), 0.0)
    except Exception:
        logger.warning(_NO_LSN, exc_info=True)
        note_write(name, None, _window(router))


async def _read_insert_lsn_async(engine: Engine | AsyncEngine) -> int | None:
    """Read the primary's WAL position; None if that failed (logged)."""
    try:
        if isinstance(engine, AsyncEngine):
            async with engine.connect() as connection:
                return parse_lsn((await connection.execute(_INSERT_LSN)).scalar_one())
        return await anyio.to_thread.run_sync(_read_insert_lsn, engine)
    except Exception:
        logger.warning(_NO_LSN, exc_info=True)
        return None


async def record_async(router: Router, name: str) -> BaseException | None:
    """The async form of :func:`record_sync`; return a cancellation that arrived meanwhile.

    The read runs to its end even if the task is cancelled (the commit
    already happened, and the unit's hooks are still to run): the driver
    raises the cancellation once the unit has ended.
    """
    if router.mode == "off":
        return None
    engine = router.positions
    if engine is None:
        note_write(name, None, _window(router))
        return None
    lsn, cancelled = await shielded(functools.partial(_read_insert_lsn_async, engine))
    if lsn is None:
        note_write(name, None, _window(router))
    else:
        note_write(name, lsn, 0.0)
    return cancelled


# --- writes refused on a replica's sessions, before they reach the database ------------------


def _refuse_writes(state: ORMExecuteState) -> None:
    if state.is_insert or state.is_update or state.is_delete:
        raise ReadOnlyViolation(
            "this unit runs on a read replica (it is read_only=True), which cannot "
            "write; open a read-write unit for the write (it runs on the primary)"
        )


def guard_replica_sessions(session_class: type[Session]) -> None:
    """Refuse INSERT/UPDATE/DELETE statements on *session_class* (a replica factory's own)."""
    if session_class.__dict__.get("_uow_replica", False):
        return
    event.listen(session_class, "do_orm_execute", _refuse_writes)
    session_class._uow_replica = True  # type: ignore[attr-defined]


def enter_causal(token: str | None) -> tuple[Causal, Token[Causal | None]]:
    """Give the caller's context the positions of *token*; return them and the reset token."""
    causal = Causal.from_token(token)
    return causal, _causal.set(causal)


def leave_causal(reset: Token[Causal | None]) -> None:
    _causal.reset(reset)
