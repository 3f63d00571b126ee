"""The outbox table, and the table of handled ids a consumer keeps: plain SQLAlchemy ``Table`` objects."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, Integer, MetaData, String, Table, Text

__all__ = ["handled_table", "outbox_table"]


def outbox_table(metadata: MetaData, name: str = "uow_outbox") -> Table:
    """Return the outbox table *name* on *metadata* (hand that metadata to Alembic or ``create_all``).

    One row per message: its id (the task id at the broker), the task's name,
    its serialized arguments, when it was written and published, and the
    relay's claim on it. A partial index covers the unpublished rows, the
    only ones a relay reads.
    """
    table = Table(
        name,
        metadata,
        Column("id", String(36), primary_key=True),
        Column("task", String(255), nullable=False),
        Column("args", Text, nullable=False),
        Column("kwargs", Text, nullable=False),
        Column("created_at", DateTime, nullable=False),
        Column("published_at", DateTime, nullable=True),
        Column("claimed_until", DateTime, nullable=True),
        Column("claimed_by", String(64), nullable=True),
        Column("attempts", Integer, nullable=False, default=0),
    )
    unpublished = table.c.published_at.is_(None)
    Index(
        f"ix_{name}_unpublished",
        table.c.created_at,
        postgresql_where=unpublished,
        sqlite_where=unpublished,
    )
    Index(f"ix_{name}_published_at", table.c.published_at)
    return table


def handled_table(metadata: MetaData, name: str = "uow_handled") -> Table:
    """Return the table where an idempotent consumer records the message ids it handled."""
    return Table(
        name,
        metadata,
        Column("id", String(255), primary_key=True),
        Column("handled_at", DateTime, nullable=False),
    )
