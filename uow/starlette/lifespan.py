"""A lifespan that disposes of the engine's pool at shutdown."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

from .._default import get_manager
from ..manager import UnitOfWorkManager

__all__ = ["lifespan"]

AppT = TypeVar("AppT")


def lifespan(
    manager: UnitOfWorkManager | None = None,
    *,
    app_lifespan: Callable[[AppT], AbstractAsyncContextManager[Any]] | None = None,
) -> Callable[[AppT], AbstractAsyncContextManager[Any]]:
    """Return a lifespan for ``Starlette(lifespan=...)``/``FastAPI(lifespan=...)``.

    It runs *app_lifespan* (yours, if any) and, at shutdown, closes the
    pooled connections of *manager* (default: ``uow.configure``'s).
    """

    @asynccontextmanager
    async def run(app: AppT) -> AsyncIterator[Any]:
        try:
            if app_lifespan is None:
                yield None
            else:
                async with app_lifespan(app) as state:
                    yield state
        finally:
            await (manager or get_manager()).dispose()

    return run
