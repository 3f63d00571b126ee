"""``UnitOfWorkManager``: a session factory, the current unit of work, and the API on them."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, Generic, overload

import anyio.to_thread
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from typing_extensions import TypeVar

from ._compat import AsyncEngine, AsyncSession, async_sessionmaker
from ._options import Propagation
from ._replicas import Replica, Router, Routing
from ._transaction import Binding
from .decorators import UnitOfWork, transactional
from .exceptions import InvalidOptionError, UnitOfWorkWarning
from .proxy import SessionProxy
from .sqlite import enable_savepoints
from .threads import run_sync

__all__ = ["UnitOfWorkManager"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
#: the class of the sessions a manager hands out (``Any`` where it is not known)
S = TypeVar("S", bound="Session | AsyncSession", default=Any)
SyncS = TypeVar("SyncS", bound=Session)
AsyncS = TypeVar("AsyncS", bound=AsyncSession)
Bind = Engine | AsyncEngine | sessionmaker[Any] | async_sessionmaker[Any]


class UnitOfWorkManager(Binding, Generic[S]):
    """Bind units of work to a session factory, and track the current one.

    *bind* is a ``sessionmaker``, ``async_sessionmaker``, ``Engine`` or
    ``AsyncEngine``. From an engine it makes a factory with
    ``expire_on_commit=False`` (and any *session_options*), so objects a
    committed unit returns stay readable. A factory you pass is used as is,
    except that uow listens to the sessions it makes (``before_flush``,
    ``after_transaction_create``, ``after_begin``, ``before_commit``) to refuse a session used after its
    unit ended, or from the event loop thread. *name* names the database in
    errors and log records (default: the engine's URL without its password).
    A direct ``commit()`` or ``rollback()`` on a unit's session warns with
    :class:`UnitOfWorkWarning`; with *strict* it raises :class:`DirectEndError`.

    The manager is generic in its session class, for type checkers:
    ``UnitOfWorkManager(engine, class_=sqlmodel.Session)`` or
    ``UnitOfWorkManager(sessionmaker(engine, class_=sqlmodel.Session, ...))``
    is a ``UnitOfWorkManager[sqlmodel.Session]``, whose :attr:`session` and
    :meth:`current_session` are typed ``sqlmodel.Session``; from an engine
    alone it is a ``UnitOfWorkManager[Session]`` (``[AsyncSession]`` from an
    ``AsyncEngine``).

    *replicas* are read replicas of *bind* (the primary), of its kind (sync
    or async): read-only outermost units run on one of them, as *routing*
    (a :class:`uow.replicas.Routing`) says; everything else on the primary.
    """

    @overload
    def __init__(
        self: UnitOfWorkManager[SyncS],
        bind: sessionmaker[SyncS],
        *,
        replicas: Sequence[Bind] = ...,
        routing: Routing | None = ...,
        sqlite_savepoints: bool = ...,
        retry_on: Callable[[BaseException], bool] | None = ...,
        retry_backoff: tuple[float, float] = ...,
        name: str | None = ...,
        strict: bool = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: UnitOfWorkManager[AsyncS],
        bind: async_sessionmaker[AsyncS],
        *,
        replicas: Sequence[Bind] = ...,
        routing: Routing | None = ...,
        sqlite_savepoints: bool = ...,
        retry_on: Callable[[BaseException], bool] | None = ...,
        retry_backoff: tuple[float, float] = ...,
        name: str | None = ...,
        strict: bool = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: UnitOfWorkManager[SyncS],
        bind: Engine,
        *,
        replicas: Sequence[Bind] = ...,
        routing: Routing | None = ...,
        class_: type[SyncS],
        sqlite_savepoints: bool = ...,
        retry_on: Callable[[BaseException], bool] | None = ...,
        retry_backoff: tuple[float, float] = ...,
        name: str | None = ...,
        strict: bool = ...,
        **session_options: Any,
    ) -> None: ...
    @overload
    def __init__(
        self: UnitOfWorkManager[Session],
        bind: Engine,
        *,
        replicas: Sequence[Bind] = ...,
        routing: Routing | None = ...,
        sqlite_savepoints: bool = ...,
        retry_on: Callable[[BaseException], bool] | None = ...,
        retry_backoff: tuple[float, float] = ...,
        name: str | None = ...,
        strict: bool = ...,
        **session_options: Any,
    ) -> None: ...
    @overload
    def __init__(
        self: UnitOfWorkManager[AsyncS],
        bind: AsyncEngine,
        *,
        replicas: Sequence[Bind] = ...,
        routing: Routing | None = ...,
        class_: type[AsyncS],
        sqlite_savepoints: bool = ...,
        retry_on: Callable[[BaseException], bool] | None = ...,
        retry_backoff: tuple[float, float] = ...,
        name: str | None = ...,
        strict: bool = ...,
        **session_options: Any,
    ) -> None: ...
    @overload
    def __init__(
        self: UnitOfWorkManager[AsyncSession],
        bind: AsyncEngine,
        *,
        replicas: Sequence[Bind] = ...,
        routing: Routing | None = ...,
        sqlite_savepoints: bool = ...,
        retry_on: Callable[[BaseException], bool] | None = ...,
        retry_backoff: tuple[float, float] = ...,
        name: str | None = ...,
        strict: bool = ...,
        **session_options: Any,
    ) -> None: ...
    @overload
    def __init__(
        self: UnitOfWorkManager[Any],
        bind: Engine | AsyncEngine | sessionmaker[Any] | async_sessionmaker[Any],
        *,
        replicas: Sequence[Bind] = ...,
        routing: Routing | None = ...,
        sqlite_savepoints: bool = ...,
        retry_on: Callable[[BaseException], bool] | None = ...,
        retry_backoff: tuple[float, float] = ...,
        name: str | None = ...,
        strict: bool = ...,
        **session_options: Any,
    ) -> None: ...
    def __init__(
        self,
        bind: Engine | AsyncEngine | sessionmaker[Any] | async_sessionmaker[Any],
        *,
        replicas: Sequence[Bind] = (),
        routing: Routing | None = None,
        sqlite_savepoints: bool = True,
        retry_on: Callable[[BaseException], bool] | None = None,
        retry_backoff: tuple[float, float] = (0.02, 1.0),
        name: str | None = None,
        strict: bool = False,
        **session_options: Any,
    ) -> None:
        factory = _factory(bind, session_options)
        kind = type(factory)
        replica_factories = [_factory(r, session_options) for r in replicas]
        for replica in replica_factories:
            if type(replica) is not kind:
                raise InvalidOptionError(
                    f"replica {replica.kw.get('bind')!r} is "
                    + ("async" if isinstance(replica, async_sessionmaker) else "sync")
                    + " but the primary is "
                    + ("async" if isinstance(factory, async_sessionmaker) else "sync")
                    + "; give replicas of the primary's kind (Engines, or AsyncEngines, for both)"
                )
        if routing is not None and not isinstance(routing, Routing):
            raise InvalidOptionError(f"routing={routing!r} must be a uow.replicas.Routing")
        if retry_on is not None and not callable(retry_on):
            raise InvalidOptionError(f"retry_on={retry_on!r} must be a callable taking an exception")
        base, cap = retry_backoff
        if not (0 <= base <= cap):
            raise InvalidOptionError(
                f"retry_backoff={retry_backoff!r} must be (base, cap) with 0 <= base <= cap seconds"
            )
        if name is not None and not isinstance(name, str):
            raise InvalidOptionError(f"name={name!r} must be a string naming the database")
        if not isinstance(strict, bool):
            raise InvalidOptionError(f"strict={strict!r} must be True or False")
        super().__init__(
            factory,
            name=name,
            strict=strict,
            transient=(retry_on,) if retry_on is not None else (),
            retry_backoff=(float(base), float(cap)),
            router=_router(replica_factories, routing, factory),
        )
        if sqlite_savepoints and self.engine is not None:
            enable_savepoints(self.engine)
            for replica in replica_factories:
                bound = replica.kw["bind"]
                enable_savepoints(bound.sync_engine if isinstance(bound, AsyncEngine) else bound)
        self._proxy = SessionProxy(lambda: self)

    def __repr__(self) -> str:
        return f"<UnitOfWorkManager {self.name}>"

    @overload
    def transactional(self, fn: F, /) -> F: ...
    @overload
    def transactional(
        self,
        fn: None = None,
        /,
        *,
        propagation: Propagation | str = ...,
        read_only: bool = ...,
        isolation_level: str | None = ...,
        retry: int = ...,
        no_rollback_on: type[BaseException] | tuple[type[BaseException], ...] = ...,
        durable: bool = ...,
        timeout: float | None = ...,
    ) -> Callable[[F], F]: ...
    def transactional(self, fn: Any = None, /, **options: Any) -> Any:
        """Run a function in a unit of this manager; see :func:`uow.transactional`."""
        return transactional(fn, manager=self, **options)

    def unit_of_work(self, **options: Any) -> UnitOfWork:
        """Return a unit of this manager for ``with`` / ``async with``."""
        return UnitOfWork(lambda: self, **options)

    @property
    def session(self) -> S:
        """A proxy to :meth:`current_session`, typed as this manager's session class.

        The typed way to reach the current session: ``uow.session`` is typed
        ``Session`` whatever the class, while ``manager.session`` of a
        ``UnitOfWorkManager[sqlmodel.Session]`` is a ``sqlmodel.Session`` to
        the type checker (``manager.session.exec(...)``).
        """
        return self._proxy  # type: ignore[return-value]

    def current_session(self) -> S:
        """Return the session of the innermost open unit; raise :class:`NoActiveUnitOfWork`."""
        session: S = super().current_session()
        return session

    async def run_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking *fn* in a worker thread with the caller's context; see :func:`uow.run_sync`."""
        return await run_sync(fn, *args, **kwargs)

    async def dispose(self) -> None:
        """Close every pooled connection of the bound engine and the replicas' (call at shutdown)."""
        factories = [self.session_factory]
        if self.router is not None:
            factories += [r.factory for r in self.router.replicas]
        for factory in factories:
            bind = factory.kw.get("bind")
            if isinstance(bind, AsyncEngine):
                await bind.dispose()
            elif isinstance(bind, Engine):
                await anyio.to_thread.run_sync(bind.dispose)


def _factory(bind: Bind, session_options: dict[str, Any]) -> sessionmaker[Any] | async_sessionmaker[Any]:
    """Return the session factory for *bind*: a factory as is, or one made for an engine."""
    if isinstance(bind, (sessionmaker, async_sessionmaker)):
        if session_options:
            raise InvalidOptionError(
                f"session options {sorted(session_options)} were given with a "
                "ready-made session factory; set them on the factory instead"
            )
        if bind.kw.get("expire_on_commit", True):
            warnings.warn(
                "this session factory has expire_on_commit=True: objects a committed "
                "unit returns are expired and detached, so reading one raises "
                "DetachedInstanceError. Build it with expire_on_commit=False, or pass "
                "the engine (with class_= and other session options) to uow instead",
                UnitOfWorkWarning,
                stacklevel=3,
            )
        return bind
    if isinstance(bind, AsyncEngine):
        return async_sessionmaker(bind, **{"expire_on_commit": False, **session_options})
    if isinstance(bind, Engine):
        return sessionmaker(bind, **{"expire_on_commit": False, **session_options})
    raise InvalidOptionError(
        f"cannot bind units of work to {bind!r}; pass an Engine, AsyncEngine, "
        "sessionmaker or async_sessionmaker"
    )


def _router(
    factories: list[sessionmaker[Any] | async_sessionmaker[Any]],
    routing: Routing | None,
    primary: sessionmaker[Any] | async_sessionmaker[Any],
) -> Router | None:
    """Return the router of *factories* (None without replicas: units cost nothing more)."""
    if not factories:
        if routing is not None:
            raise InvalidOptionError("routing= was given without replicas=; pass the replicas too")
        return None
    replicas = [Replica(f, None) for f in factories]
    dialect = _dialect(primary)
    for replica in replicas:
        if _dialect(replica.factory) != dialect:
            raise InvalidOptionError(
                f"replica {replica.name} is not a {dialect} database like the primary; "
                "a replica is a copy of the primary"
            )
    return Router(replicas, routing or Routing(), dialect, primary.kw.get("bind"))


def _dialect(factory: sessionmaker[Any] | async_sessionmaker[Any]) -> str | None:
    bind = factory.kw.get("bind")
    return bind.dialect.name if isinstance(bind, (Engine, AsyncEngine)) else None
