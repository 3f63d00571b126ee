"""Idempotent consumers: record each handled message id in the consumer's own database, in its own unit."""

from __future__ import annotations

from sqlalchemy import Table, insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .._default import get_manager
from ..manager import UnitOfWorkManager
from ._message import OutboxError, utcnow

__all__ = ["first_delivery"]


def first_delivery(table: Table, message_id: str, *, manager: UnitOfWorkManager | None = None) -> bool:
    """Record *message_id* in *table* (``handled_table(metadata)``) in the current unit; True the first time.

    Call it at the start of a consumer's unit and skip the work when it
    returns False: the record commits with the work, or rolls back with it
    (a failed attempt may run again). Two deliveries of one id running at the
    same time cannot both get True: the second waits for the first's unit on
    the primary key. Needs a sync ``Session`` (consumers are usually sync).
    """
    session = (manager if manager is not None else get_manager()).current_session()
    if not isinstance(session, Session):
        raise OutboxError(
            "first_delivery() needs a sync Session; in an async unit call it as "
            "`await session.run_sync(lambda s: ...)` with a sync manager, or record the id yourself"
        )
    values = {"id": message_id, "handled_at": utcnow()}
    dialect = session.get_bind().dialect.name
    if dialect in ("postgresql", "sqlite"):
        insert_of = postgresql.insert if dialect == "postgresql" else sqlite.insert
        # RETURNING, not rowcount: drivers disagree on the rowcount of a skipped conflict
        stmt = insert_of(table).values(values).on_conflict_do_nothing().returning(table.c.id)
        return session.execute(stmt).first() is not None
    try:
        with session.begin_nested():
            session.execute(insert(table).values(values))
    except IntegrityError:
        return False
    return True
