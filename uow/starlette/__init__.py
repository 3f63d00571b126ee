"""Starlette and FastAPI adapters: a request middleware, a session dependency, background tasks."""

from .background import BackgroundTask as BackgroundTask
from .background import RunWhen as RunWhen
from .dependencies import provide_session as provide_session
from .dependencies import session_dependency as session_dependency
from .lifespan import lifespan as lifespan
from .middleware import CommitMode as CommitMode
from .middleware import UnitOfWorkMiddleware as UnitOfWorkMiddleware

__all__ = [
    "BackgroundTask",
    "CommitMode",
    "RunWhen",
    "UnitOfWorkMiddleware",
    "lifespan",
    "provide_session",
    "session_dependency",
]
