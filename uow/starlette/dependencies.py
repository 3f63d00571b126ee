"""FastAPI dependencies that hand the request's session to an endpoint."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from .._compat import AsyncSession
from .._default import get_manager
from ..manager import UnitOfWorkManager

S = TypeVar("S", bound="Session | AsyncSession")

__all__ = ["provide_session", "session_dependency"]


async def provide_session() -> Any:
    """Return the request's session (``db: Session = Depends(provide_session)``).

    It is ``async def``, so FastAPI calls it on the event loop with no
    threadpool hop; no I/O happens here (the session is made, not used).
    With a sync engine, use the session from ``def`` endpoints (they run in
    the threadpool), or through ``await uow.run_sync(...)``.
    It returns ``Any``: annotate the parameter with your session class
    (``db: sqlmodel.Session = Depends(provide_session)``), or use
    :func:`session_dependency` of a typed manager.
    """
    return get_manager().current_session()


def session_dependency(manager: UnitOfWorkManager[S]) -> Callable[[], Coroutine[Any, Any, S]]:
    """Return a dependency like :func:`provide_session` for *manager* instead of the default.

    It is typed with the manager's session class: ``sqlmodel.Session`` for a
    ``UnitOfWorkManager[sqlmodel.Session]``.
    """

    async def provide() -> S:
        return manager.current_session()

    return provide
