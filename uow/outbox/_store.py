"""The outbox table's statements, and running them on a sync or async session.

Every row moves: written (unclaimed, or already claimed for a lease by the
unit's publishing hook) → claimed for a lease by a relay → published (or
released back when the broker refused it) → pruned after the retention. A
claim is one UPDATE that only takes rows still unpublished and unclaimed (or
whose lease ran out), so a prompt publisher and any number of relays never
hold the same row at once; relays first lock their candidates with
``SELECT ... FOR UPDATE SKIP LOCKED`` (PostgreSQL) so they never wait on each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Delete, Select, Table, Update, and_, delete, or_, select, update
from sqlalchemy.sql.elements import ColumnElement

from ._message import OutboxMessage, Serializer

__all__ = ["Store"]


class Store:
    """The statements on one outbox table; each method returns a statement or a result's meaning."""

    def __init__(self, table: Table, serializer: Serializer) -> None:
        self.table = table
        self.serializer = serializer

    def _claimable(self, now: datetime) -> ColumnElement[bool]:
        c = self.table.c
        return and_(c.published_at.is_(None), or_(c.claimed_until.is_(None), c.claimed_until < now))

    def candidates(self, now: datetime, limit: int) -> Select[Any]:
        """The oldest claimable rows, locked without waiting for rows other relays hold."""
        c = self.table.c
        return (
            select(c.id)
            .where(self._claimable(now))
            .order_by(c.created_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )

    def claim(self, ids: Sequence[str], now: datetime, lease: float, token: str) -> Update:
        """Claim those of *ids* still claimable, for *lease* seconds; returns the claimed rows."""
        c = self.table.c
        return (
            update(self.table)
            .where(c.id.in_(ids), self._claimable(now))
            .values(claimed_until=now + timedelta(seconds=lease), claimed_by=token, attempts=c.attempts + 1)
            .returning(c.id, c.task, c.args, c.kwargs, c.created_at)
        )

    def messages(self, rows: Sequence[Any]) -> list[OutboxMessage]:
        """Read claimed rows back as messages, oldest first."""
        loads = self.serializer.loads
        found = [
            OutboxMessage(
                id=r.id, task=r.task, args=loads(r.args), kwargs=loads(r.kwargs), created_at=r.created_at
            )
            for r in rows
        ]
        found.sort(key=lambda m: (m.created_at or datetime.min, m.id))
        return found

    def mark_published(self, ids: Sequence[str], now: datetime, token: str) -> Update:
        c = self.table.c
        return (
            update(self.table)
            .where(c.id.in_(ids), c.claimed_by == token)
            .values(published_at=now, claimed_until=None)
        )

    def release(self, ids: Sequence[str], token: str) -> Update:
        """Give rows the broker refused back at once (they wait for the next relay pass)."""
        c = self.table.c
        return (
            update(self.table)
            .where(c.id.in_(ids), c.claimed_by == token, c.published_at.is_(None))
            .values(claimed_until=None, claimed_by=None)
        )

    def prune(self, before: datetime) -> Delete:
        c = self.table.c
        return delete(self.table).where(c.published_at.is_not(None), c.published_at < before)

    def pending(self) -> Select[Any]:
        c = self.table.c
        return select(c.id).where(c.published_at.is_(None))
