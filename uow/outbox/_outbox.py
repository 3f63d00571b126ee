"""``Outbox``: messages written in the unit's own transaction, published after its commit or by a relay."""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import anyio
import anyio.to_thread
from sqlalchemy import MetaData, Table, inspect
from sqlalchemy.orm import Session, registry

from .._compat import AsyncSession
from .._default import get_manager
from .._transaction import Boundary
from ..exceptions import InvalidOptionError
from ..manager import UnitOfWorkManager
from . import relay as _relay
from ._message import (
    JSONSerializer,
    OutboxError,
    OutboxMessage,
    Publisher,
    PublishError,
    Serializer,
    UnserializableArguments,
    utcnow,
)
from ._store import Store
from ._table import outbox_table

__all__ = ["Outbox"]

logger = logging.getLogger("uow.outbox")

#: ids per UPDATE of the prompt path (a unit may enqueue thousands)
_CHUNK = 500


class _Batch:
    """The messages one transaction enqueued (their rows claimed under *token*), and its hooks' boundaries."""

    __slots__ = ("boundaries", "done", "entries", "started", "token")

    def __init__(self) -> None:
        #: each message with its row object, whose identity says whether its INSERT committed
        self.entries: list[tuple[Any, OutboxMessage]] = []
        self.boundaries: list[Boundary] = []
        self.done = False
        self.token = uuid.uuid4().hex
        #: time.monotonic() at the first row's claim: the earliest lease ends ``lease`` seconds later
        self.started = time.monotonic()

    def hooked(self, boundary: Boundary | None) -> bool:
        """True if the hook sits under *boundary* or a boundary enclosing it (so it runs if they commit)."""
        while boundary is not None:
            if any(b is boundary for b in self.boundaries):
                return True
            boundary = boundary.parent
        return False

    def committed(self) -> list[OutboxMessage]:
        """The messages whose rows the commit kept (a rolled-back savepoint's rows lost their identity)."""
        return [message for row, message in self.entries if inspect(row).has_identity]


class Outbox:
    """A transactional outbox: ``enqueue`` inside a unit, published once that unit commits.

    *manager* (default: the configured one) is where the outbox table lives
    and whose units ``enqueue`` writes in. *publisher* sends one message to a
    queue (``uow.outbox.celery.CeleryPublisher``). *table* is the outbox
    table (``outbox_table(metadata)``; default: ``uow_outbox`` on a MetaData
    of its own, :attr:`table`). *serializer* turns arguments into text (JSON
    by default). *lease* is how long, in seconds, a publisher holds the rows
    it claimed before another may take them (it must outlast publishing one
    batch); ``enqueue`` writes its row already claimed by the unit's
    publishing hook, which publishes only while half that lease is left and
    gives the rows back otherwise. With *publish_on_commit* False only
    relays publish (rows are written unclaimed). After the
    broker refused a publish after commit, units skip publishing for
    *broker_cooldown* seconds (their messages wait for a relay), so that
    requests do not each wait for a broker that is down.
    """

    def __init__(
        self,
        manager: UnitOfWorkManager | None = None,
        publisher: Publisher | None = None,
        *,
        table: Table | None = None,
        serializer: Serializer | None = None,
        lease: float = 60.0,
        publish_on_commit: bool = True,
        broker_cooldown: float = 5.0,
    ) -> None:
        if publisher is None or not callable(getattr(publisher, "publish", None)):
            raise InvalidOptionError(
                f"publisher={publisher!r} has no publish(message) method; pass one, such as "
                "uow.outbox.celery.CeleryPublisher(celery_app)"
            )
        if lease <= 0:
            raise InvalidOptionError(f"lease={lease!r} must be a positive number of seconds")
        self._manager = manager
        self.publisher = publisher
        #: the outbox table (give ``table.metadata`` to Alembic, or create it with ``create_all``)
        self.table = table if table is not None else outbox_table(MetaData())
        #: the table's metadata (``outbox.metadata.create_all(engine)``)
        self.metadata: MetaData = self.table.metadata
        self.serializer: Serializer = serializer if serializer is not None else JSONSerializer()
        self.store = Store(self.table, self.serializer)
        self.lease = float(lease)
        self.publish_on_commit = publish_on_commit
        self.broker_cooldown = float(broker_cooldown)
        #: time.monotonic() until which units leave their messages to relays (the broker just failed)
        self._skip_until = 0.0
        self._row = _row_class(self.table)
        self._key = f"uow.outbox.{id(self):x}"

    @property
    def manager(self) -> UnitOfWorkManager:
        """The manager whose units write to the outbox (the configured one unless given)."""
        return self._manager if self._manager is not None else get_manager()

    # --- writing --------------------------------------------------------------

    def enqueue(self, task: Any, /, *args: Any, **kwargs: Any) -> str:
        """Write a message for *task* (a name, or a task object with ``.name``) in the current unit.

        The row goes through the unit's own session (``session.add``: no I/O,
        so the same call works on ``Session`` and ``AsyncSession``): it exists
        if and only if the unit commits. After the outermost unit commits, the
        messages it wrote are published in one batch. Returns the message id,
        which the broker gets as the task id. Raises
        :class:`~uow.NoActiveUnitOfWork` outside a unit and
        :class:`UnserializableArguments` for arguments the serializer refuses.
        """
        name = task if isinstance(task, str) else getattr(task, "name", None)
        if not isinstance(name, str) or not name:
            raise InvalidOptionError(f"task={task!r} must be a task name, or a task with a .name")
        manager = self.manager
        session = manager.current_session()
        boundary = _current_boundary(manager)
        if boundary.tx.options.read_only:
            raise OutboxError(
                "enqueue() was called in a read_only unit, which never commits, so the message "
                "would never be sent; enqueue in a read-write unit"
            )
        try:
            args_text = self.serializer.dumps(list(args))
            kwargs_text = self.serializer.dumps(kwargs)
        except Exception as e:  # whatever the serializer refuses, it refuses here
            raise UnserializableArguments(
                f"the arguments of {name!r} cannot be serialized ({e}); pass plain values (str, int, "
                "float, bool, None, lists and dicts of them, such as ids) and load objects in the "
                "task, or give the Outbox a serializer= that handles them"
            ) from e
        message_id, now = str(uuid.uuid4()), utcnow()
        values: dict[str, Any] = {}
        batch = self._batch(session) if self._publishes_after_commit() else None
        if batch is not None:
            # claimed by this transaction's publishing hook from the start: no relay takes the row
            # before the lease runs out, so after the commit the hook needs no claim of its own
            values = {"claimed_until": now + timedelta(seconds=self.lease), "claimed_by": batch.token}
        row = self._row(
            id=message_id,
            task=name,
            args=args_text,
            kwargs=kwargs_text,
            created_at=now,
            attempts=0 if batch is None else 1,
            **values,
        )
        session.add(row)
        if batch is not None:
            loads = self.serializer.loads  # the message as a relay would read it back from the row
            message = OutboxMessage(
                id=message_id, task=name, args=loads(args_text), kwargs=loads(kwargs_text), created_at=now
            )
            batch.entries.append((row, message))
            self._hook(manager, batch, boundary)
        return message_id

    def _publishes_after_commit(self) -> bool:
        """True unless only relays publish, or the broker is cooling down."""
        return self.publish_on_commit and time.monotonic() >= self._skip_until

    def _batch(self, session: Session | AsyncSession) -> _Batch:
        info = (session if isinstance(session, Session) else session.sync_session).info
        batch: _Batch | None = info.get(self._key)
        if batch is None:
            batch = info[self._key] = _Batch()
        return batch

    def _hook(self, manager: UnitOfWorkManager, batch: _Batch, boundary: Boundary) -> None:
        if batch.hooked(boundary):
            return
        # under the current boundary: a savepoint that rolls back drops it (and its rows are gone too)
        if manager.is_async:

            async def publish_async() -> None:
                await self._publish_committed_async(batch)

            manager.on_commit(publish_async, robust=True)
        else:
            manager.on_commit(functools.partial(self._publish_committed, batch), robust=True)
        batch.boundaries.append(boundary)

    # --- publishing: the prompt path --------------------------------------------

    def _missed(self, error: Exception) -> None:
        self._skip_until = time.monotonic() + self.broker_cooldown
        logger.warning(
            "uow.outbox: publishing after commit failed (%r); the messages stay in the outbox table until "
            "a relay (python -m uow.outbox relay) publishes them; units leave theirs to relays for %.1f s",
            error,
            self.broker_cooldown,
        )

    def _chunks(self, batch: _Batch) -> list[list[OutboxMessage]]:
        """The batch's committed messages in chunks; [] if its hook already ran."""
        if batch.done:
            return []
        batch.done = True
        messages = batch.committed()
        return [messages[start : start + _CHUNK] for start in range(0, len(messages), _CHUNK)]

    def _in_time(self, batch: _Batch) -> bool:
        """True if the broker is not cooling down and half the lease is left: time to publish a chunk."""
        return self._publishes_after_commit() and time.monotonic() - batch.started < self.lease / 2

    def _publish_committed(self, batch: _Batch) -> None:
        factory = self.manager.session_factory
        error: Exception | None = None
        try:
            for chunk in self._chunks(batch):
                sent: list[str] = []
                if error is None and self._in_time(batch):
                    sent, error = self._send(chunk)
                with factory() as session, session.begin():  # mark what went out, give back the rest
                    self._settle_sync(session, chunk, sent, batch.token)
        except Exception as e:
            error = e
        if error is not None:
            self._missed(error)

    async def _publish_committed_async(self, batch: _Batch) -> None:
        factory = self.manager.session_factory
        error: Exception | None = None
        try:
            for chunk in self._chunks(batch):
                sent: list[str] = []
                if error is None and self._in_time(batch):
                    sent, error = await anyio.to_thread.run_sync(self._send, chunk)
                async with factory() as session, session.begin():
                    await session.run_sync(self._settle_sync, chunk, sent, batch.token)
        except Exception as e:
            error = e
        if error is not None:
            self._missed(error)

    # --- one pass: claim, publish, mark -------------------------------------------

    def publish_pending(self, limit: int = 100) -> int:
        """Claim up to *limit* waiting rows, publish them, mark them; return how many were published.

        Raises :class:`PublishError` (after marking what went out and giving
        the rest back) when the broker refuses a message.
        """
        if self.manager.is_async:
            raise OutboxError("this outbox's manager is async: await outbox.publish_pending_async()")
        return self._pass(limit)

    async def publish_pending_async(self, limit: int = 100) -> int:
        """:meth:`publish_pending` for an outbox on an ``AsyncEngine``."""
        return await self._pass_async(limit)

    def _pass(self, limit: int) -> int:
        store, token, now = self.store, uuid.uuid4().hex, utcnow()
        factory = self.manager.session_factory
        with factory() as session, session.begin():
            ids = list(session.scalars(store.candidates(now, limit)))
            rows = session.execute(store.claim(ids, now, self.lease, token)).all() if ids else []
        if not rows:
            return 0
        messages = store.messages(rows)
        sent, error = self._send(messages)
        with factory() as session, session.begin():
            self._settle_sync(session, messages, sent, token)
        return _outcome(messages, sent, error)

    def _settle_sync(
        self, session: Session, messages: list[OutboxMessage], sent: list[str], token: str
    ) -> None:
        if sent:
            session.execute(self.store.mark_published(sent, utcnow(), token))
        unsent = [m.id for m in messages[len(sent) :]]
        if unsent:
            session.execute(self.store.release(unsent, token))

    async def _pass_async(self, limit: int) -> int:
        store, token, now = self.store, uuid.uuid4().hex, utcnow()
        factory = self.manager.session_factory
        async with factory() as session, session.begin():
            ids = list(await session.scalars(store.candidates(now, limit)))
            rows = (await session.execute(store.claim(ids, now, self.lease, token))).all() if ids else []
        if not rows:
            return 0
        messages = store.messages(rows)
        sent, error = await anyio.to_thread.run_sync(self._send, messages)
        async with factory() as session, session.begin():
            await session.run_sync(self._settle_sync, messages, sent, token)
        return _outcome(messages, sent, error)

    def _send(self, messages: list[OutboxMessage]) -> tuple[list[str], Exception | None]:
        """Publish in order; stop at the first refusal (the broker is likely down for the rest too)."""
        sent: list[str] = []
        for message in messages:
            try:
                self.publisher.publish(message)
            except Exception as e:
                return sent, e
            sent.append(message.id)
        return sent, None

    # --- relays -------------------------------------------------------------------

    def prune(self, retention: float) -> int:
        """Delete rows published more than *retention* seconds ago; return how many."""
        before = utcnow() - timedelta(seconds=retention)
        with self.manager.session_factory() as session, session.begin():
            return int(session.execute(self.store.prune(before)).rowcount)

    async def prune_async(self, retention: float) -> int:
        """:meth:`prune` for an outbox on an ``AsyncEngine``."""
        before = utcnow() - timedelta(seconds=retention)
        async with self.manager.session_factory() as session, session.begin():
            result = await session.execute(self.store.prune(before))
            return int(result.rowcount)

    def relay(
        self,
        *,
        once: bool = False,
        batch: int = 100,
        interval: float = 1.0,
        max_backoff: float = 30.0,
        retention: float | None = 7 * 24 * 3600.0,
        prune_every: float = 300.0,
        stop: threading.Event | None = None,
    ) -> int:
        """Publish rows the prompt path missed, until *stop* is set; return how many were published.

        Each pass claims at most *batch* rows (``SELECT ... FOR UPDATE SKIP
        LOCKED`` on PostgreSQL, so relays on any number of machines share the
        work), publishes them and marks them published. When a batch comes
        back full the next pass starts at once; otherwise the relay sleeps
        *interval* seconds. While the broker (or the database) is down it
        backs off, doubling up to *max_backoff*. Every *prune_every* seconds
        it deletes rows published more than *retention* seconds ago (None:
        never). With *once* it returns as soon as nothing is waiting, and
        raises :class:`PublishError` if the broker refuses a message. On an
        async manager it runs its own event loop, and closes the engine's
        pooled connections when it ends (``relay_async`` is the same loop for
        code already in one). On SQLite run one relay at a time.
        """
        options = _relay.RelayOptions(once, batch, interval, max_backoff, retention, prune_every)
        stop = stop if stop is not None else threading.Event()
        if self.manager.is_async:
            return anyio.run(self._relay_in_own_loop, options, stop)
        return _relay.run(self.publish_pending, self.prune, options, stop)

    async def _relay_in_own_loop(self, options: _relay.RelayOptions, stop: threading.Event) -> int:
        try:
            return await _relay.run_async(self._pass_async, self.prune_async, options, stop)
        finally:
            await self.manager.dispose()  # its connections belong to this loop, which ends here

    async def relay_async(
        self,
        *,
        once: bool = False,
        batch: int = 100,
        interval: float = 1.0,
        max_backoff: float = 30.0,
        retention: float | None = 7 * 24 * 3600.0,
        prune_every: float = 300.0,
        stop: threading.Event | None = None,
    ) -> int:
        """:meth:`relay` for an outbox on an ``AsyncEngine``, in the caller's event loop."""
        options = _relay.RelayOptions(once, batch, interval, max_backoff, retention, prune_every)
        stop = stop if stop is not None else threading.Event()
        return await _relay.run_async(self._pass_async, self.prune_async, options, stop)


def _current_boundary(manager: UnitOfWorkManager) -> Boundary:
    """The innermost boundary of the caller's unit (``current_session()`` found one)."""
    boundary = manager.current_boundary()
    assert boundary is not None
    return boundary


def _row_class(table: Table) -> Any:
    """Map a class of its own to *table*, so that ``enqueue`` can ``session.add`` a row without I/O."""

    class OutboxRow:
        def __init__(self, **values: Any) -> None:
            for key, value in values.items():
                setattr(self, key, value)

    registry().map_imperatively(OutboxRow, table)
    return OutboxRow


def _outcome(messages: list[OutboxMessage], sent: list[str], error: Exception | None) -> int:
    if error is not None:
        raise PublishError(
            f"the broker refused a message ({error!r}); {len(sent)} of {len(messages)} went out, "
            "the rest stay in the outbox table for the next relay pass"
        ) from error
    return len(sent)
