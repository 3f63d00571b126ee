"""SQLAlchemy's asyncio classes, when greenlet is installed; stand-ins otherwise.

The sync core must import without ``sqlalchemy[asyncio]``; nothing can be an
instance of a stand-in, so ``isinstance`` checks simply say no.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
else:
    try:
        from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
    except ImportError:  # pragma: no cover - exercised only without greenlet

        class AsyncEngine:
            pass

        class AsyncSession:
            pass

        class async_sessionmaker:
            def __class_getitem__(cls, item):
                return cls


__all__ = ["AsyncEngine", "AsyncSession", "async_sessionmaker"]
