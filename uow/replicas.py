"""Read replicas: the routing options, and the causal token that carries read-your-writes.

Give a manager its replicas (``UnitOfWorkManager(primary, replicas=[...],
routing=Routing(...))``): read-only outermost units run on a replica,
everything else on the primary. After a unit commits on the primary, the
caller's context remembers where the primary's WAL was; a later read-only
unit in the same context reads from a replica only once it has replayed that
far. :func:`causal_token` and :func:`use_token` carry that position to
another context (a later request, a job).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ._default import get_manager
from ._replicas import Routing as Routing
from ._replicas import current
from ._replicas import use_token as _use_token
from ._transaction import live
from .manager import UnitOfWorkManager

__all__ = ["Routing", "causal_token", "served_by", "use_token"]


def causal_token() -> str | None:
    """Return the caller's causal position as a short string (None if it wrote nothing yet).

    Hand it to a later context (a cookie, a job's arguments) and open
    :func:`use_token` there: its read-only units then see these writes.
    The token is not signed: a forged one can only send reads to the primary,
    or make them wait up to ``Routing.max_wait``.
    """
    causal = current()
    return None if causal is None else causal.token()


@contextmanager
def use_token(token: str | None) -> Iterator[None]:
    """Run the block with the causal position of *token* (from :func:`causal_token`).

    Writes inside the block move the position on; :func:`causal_token`
    inside it returns the new one. An unreadable token carries no position.
    """
    with _use_token(token):
        yield


def served_by(manager: UnitOfWorkManager | None = None) -> str:
    """Return the name of the database serving the current unit: a replica's, or the primary's.

    *manager* defaults to the one ``uow.configure`` set. Raises
    :class:`uow.NoActiveUnitOfWork` outside a unit.
    """
    if manager is None:
        manager = get_manager()
    manager.current_session()  # raises the usual error outside a unit
    boundary = live(manager.innermost())
    assert boundary is not None
    return boundary.tx.served_by
