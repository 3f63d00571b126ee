"""The default manager, set by ``configure``, and the module-level functions using it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar, overload

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from . import _registry
from ._compat import AsyncEngine, AsyncSession, async_sessionmaker
from ._options import Propagation
from .decorators import UnitOfWork
from .exceptions import InvalidOptionError, SessionKindError
from .manager import UnitOfWorkManager
from .proxy import SessionProxy

__all__ = [
    "configure",
    "current_session",
    "get_manager",
    "on_commit",
    "on_rollback",
    "reset_defaults",
    "session",
    "unit_of_work",
]


SyncS = TypeVar("SyncS", bound=Session)
AsyncS = TypeVar("AsyncS", bound=AsyncSession)
M = TypeVar("M", bound=UnitOfWorkManager[Any])


@overload
def configure(bind: M) -> M: ...
@overload
def configure(bind: sessionmaker[SyncS], **options: Any) -> UnitOfWorkManager[SyncS]: ...
@overload
def configure(bind: async_sessionmaker[AsyncS], **options: Any) -> UnitOfWorkManager[AsyncS]: ...
@overload
def configure(bind: Engine, *, class_: type[SyncS], **options: Any) -> UnitOfWorkManager[SyncS]: ...
@overload
def configure(bind: Engine, **options: Any) -> UnitOfWorkManager[Session]: ...
@overload
def configure(bind: AsyncEngine, *, class_: type[AsyncS], **options: Any) -> UnitOfWorkManager[AsyncS]: ...
@overload
def configure(bind: AsyncEngine, **options: Any) -> UnitOfWorkManager[AsyncSession]: ...
def configure(
    bind: Engine | AsyncEngine | sessionmaker[Any] | async_sessionmaker[Any] | UnitOfWorkManager[Any],
    **options: Any,
) -> UnitOfWorkManager[Any]:
    """Set the default manager, used by ``uow.transactional``, ``uow.session`` and the rest.

    *bind* and *options* are those of :class:`UnitOfWorkManager`, or pass a
    ready manager. Returns the manager, typed with its session class
    (``UnitOfWorkManager[sqlmodel.Session]`` after ``configure(engine,
    class_=sqlmodel.Session)``): use its ``session`` where the type checker
    should know the class. Calling it again replaces the default.
    """
    if isinstance(bind, UnitOfWorkManager):
        if options:
            raise InvalidOptionError("options were given with a ready UnitOfWorkManager; set them on it")
        manager = bind
    else:
        manager = UnitOfWorkManager(bind, **options)
    _registry.set_default(manager)
    return manager


def get_manager() -> UnitOfWorkManager:
    """Return the default manager; raise :class:`NotConfiguredError` if there is none."""
    manager = _registry.get_default()
    assert isinstance(manager, UnitOfWorkManager)
    return manager


def reset_defaults() -> None:
    """Forget the default manager, as before ``uow.configure`` (for tests' teardown)."""
    _registry.set_default(None)


def unit_of_work(
    *,
    propagation: Propagation | str = Propagation.REQUIRED,
    read_only: bool = False,
    isolation_level: str | None = None,
    no_rollback_on: type[BaseException] | tuple[type[BaseException], ...] = (),
    durable: bool = False,
    retry: int = 0,
    timeout: float | None = None,
) -> UnitOfWork:
    """Return a unit of work of the default manager, for ``with`` and ``async with``.

    Entering yields the session; the block commits when it ends normally and
    rolls back when it raises. Options are those of :func:`transactional`
    except ``retry`` (a block cannot be re-run).
    """
    return UnitOfWork(
        _registry.get_default,
        propagation=propagation,
        read_only=read_only,
        isolation_level=isolation_level,
        no_rollback_on=no_rollback_on,
        durable=durable,
        retry=retry,
        timeout=timeout,
    )


SessionT = TypeVar("SessionT", bound="Session | AsyncSession")


@overload
def current_session() -> Any: ...
@overload
def current_session(class_: type[SessionT]) -> SessionT: ...
def current_session(class_: type[Any] | None = None) -> Any:
    """Return the innermost open unit's session; raise :class:`NoActiveUnitOfWork` outside one.

    Without *class_* it is typed ``Any``, since the type checker cannot know
    the default manager's session class. ``uow.current_session(sqlmodel.Session)``
    is typed ``sqlmodel.Session``, and raises :class:`SessionKindError` if the
    session is not one (uow configured without ``class_=sqlmodel.Session``).
    """
    session = get_manager().current_session()
    if class_ is not None and not isinstance(session, class_):
        raise SessionKindError(
            f"the current session is a {type(session).__name__}, not a "
            f"{class_.__module__}.{class_.__qualname__}: configure uow with "
            f"class_={class_.__module__}.{class_.__qualname__} (uow.configure(engine, class_=...)), "
            "or build its sessionmaker with that class"
        )
    return session


def on_commit(
    fn: Callable[[], Any],
    *,
    robust: bool = False,
    when_no_unit: Literal["raise", "run"] = "raise",
) -> None:
    """Run *fn* after the outermost transaction commits; see :meth:`UnitOfWorkManager.on_commit`."""
    get_manager().on_commit(fn, robust=robust, when_no_unit=when_no_unit)


def on_rollback(
    fn: Callable[[], Any],
    *,
    robust: bool = False,
    when_no_unit: Literal["raise", "ignore"] = "raise",
) -> None:
    """Run *fn* after the unit rolls back; see :meth:`UnitOfWorkManager.on_rollback`."""
    get_manager().on_rollback(fn, robust=robust, when_no_unit=when_no_unit)


#: Proxy to the current unit's session of the default manager.
session: Session = SessionProxy(_registry.get_default)  # type: ignore[assignment]
