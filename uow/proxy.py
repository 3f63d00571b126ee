"""``uow.session``: a proxy whose attributes are those of the current unit's session."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy.orm import Session

from ._transaction import Binding, Transaction
from .exceptions import BlockingSessionUse

__all__ = ["SessionProxy"]

#: Session attributes that never touch the database, safe on the event loop.
_NO_IO = frozenset(
    {
        "add",
        "add_all",
        "expunge",
        "expunge_all",
        "info",
        "new",
        "dirty",
        "deleted",
        "identity_map",
        "is_active",
        "in_transaction",
        "in_nested_transaction",
        "is_modified",
        "get_bind",
        "bind",
        "no_autoflush",
        "expire",
        "expire_all",
        "sync_session",
    }
)


class SessionProxy:
    """Forward attribute access to the current unit's session.

    With a sync session owned by an async unit, anything that may do I/O
    raises :class:`BlockingSessionUse` on the event loop thread: run that
    work with ``await uow.run_sync(fn)``. In worker threads each call holds
    the transaction's thread lock, so threads that inherit the unit
    (``asyncio.to_thread``, Starlette's threadpool) use the session one at a time.
    """

    __slots__ = ("_get_manager",)

    def __init__(self, get_manager: Callable[[], Binding]) -> None:
        self._get_manager = get_manager

    def _unit(self, name: str) -> tuple[Transaction, Any]:
        """Return the current unit's transaction and session, refusing blocking use on the loop."""
        unit, session = self._get_manager().current_unit()
        tx = unit.tx
        if (
            tx.loop_thread is not None
            and name not in _NO_IO
            and isinstance(session, Session)
            and tx.loop_thread == threading.get_ident()
        ):
            raise BlockingSessionUse(
                f"uow.session.{name} was used on the event loop thread, but the "
                "unit's session is sync and would block the loop. Run the work "
                "in a thread with `await uow.run_sync(fn)`, use a sync endpoint, "
                "or configure uow with an AsyncEngine"
            )
        return tx, session

    def __getattr__(self, name: str) -> Any:
        tx, session = self._unit(name)
        attr = getattr(session, name)
        if tx.loop_thread is not None and not tx.binding.is_async and callable(attr):
            # a worker thread (run_in_threadpool, asyncio.to_thread) of an async unit: each
            # call holds the transaction's thread lock, so threads use the session one at a time
            return functools.partial(tx.locked, attr)
        return attr

    def __contains__(self, instance: object) -> bool:
        return instance in self._unit("__contains__")[1]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._unit("__iter__")[1])

    def __repr__(self) -> str:
        try:
            return f"<uow.session proxy to {self._get_manager().current_session()!r}>"
        except Exception:
            return "<uow.session proxy (no unit open)>"
