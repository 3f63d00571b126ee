"""FastAPI dependencies that hand the request's session to an endpoint."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from .._default import get_manager
from ..manager import UnitOfWorkManager

__all__ = ["provide_session", "session_dependency"]


async def provide_session() -> Any:
    """Return the request's session (``db: Session = Depends(provide_session)``).

    It is ``async def``, so FastAPI calls it on the event loop with no
    threadpool hop; no I/O happens here (the session is made, not used).
    With a sync engine, use the session from ``def`` endpoints (they run in
    the threadpool), or through ``await uow.run_sync(...)``.
    """
    return get_manager().current_session()


def session_dependency(manager: UnitOfWorkManager) -> Callable[[], Coroutine[Any, Any, Any]]:
    """Return a dependency like :func:`provide_session` for *manager* instead of the default."""

    async def provide() -> Any:
        return manager.current_session()

    return provide
