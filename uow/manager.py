"""``UnitOfWorkManager``: a session factory and the current unit of work."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from ._compat import AsyncEngine, async_sessionmaker
from ._core import TransientPredicate
from ._detect import is_async_callable
from ._unit import Hook, Unit, install_guards, live
from .concurrency import run_sync
from .exceptions import InvalidOptionError, NoActiveUnitOfWork, SessionKindError
from .sqlite import enable_savepoints

if TYPE_CHECKING:
    from .decorators import UnitOfWork
    from .proxy import SessionProxy

__all__ = ["UnitOfWorkManager"]

T = TypeVar("T")

_NO_UNIT = (
    "no unit of work is open here. Wrap the code in @uow.transactional or "
    "`with uow.unit_of_work():` (`async with` in async code); in a Starlette or "
    "FastAPI app add uow.starlette.UnitOfWorkMiddleware. A thread started without "
    "the caller's context (threading.Thread, an executor's submit) does not see "
    "the caller's unit: call it with `await uow.run_sync(fn)`"
)


def _guard_sessions_of(factory: sessionmaker[Any] | async_sessionmaker[Any]) -> None:
    """Install uow's session listeners on the sessions *factory* makes, and only on those."""
    if isinstance(factory, sessionmaker):
        install_guards(factory)  # SQLAlchemy listens on the factory's own Session subclass
        return
    sync_class = factory.kw.get("sync_session_class", Session)
    if not sync_class.__dict__.get("_uow_guarded", False):
        # a subclass of its own, so that listening never reaches other factories' sessions
        sync_class = type(sync_class.__name__, (sync_class,), {"_uow_guarded": True})
        factory.configure(sync_session_class=sync_class)
    install_guards(sync_class)


class UnitOfWorkManager:
    """Bind units of work to a session factory, and track the current one.

    *bind* is a ``sessionmaker``, ``async_sessionmaker``, ``Engine`` or
    ``AsyncEngine``. From an engine it makes a factory with
    ``expire_on_commit=False`` (and any *session_options*), so objects a
    committed unit returns stay readable. A factory you pass is used as is,
    except that uow listens to the sessions it makes (``before_flush``,
    ``do_orm_execute``, ``after_begin``) to refuse a session used after its
    unit ended, or from the event loop thread. *name* names the database in
    errors and log records (default: the engine's URL without its password).
    """

    def __init__(
        self,
        bind: Engine | AsyncEngine | sessionmaker[Any] | async_sessionmaker[Any],
        *,
        sqlite_savepoints: bool = True,
        retry_on: Callable[[BaseException], bool] | None = None,
        retry_backoff: tuple[float, float] = (0.02, 1.0),
        name: str | None = None,
        **session_options: Any,
    ) -> None:
        factory: sessionmaker[Any] | async_sessionmaker[Any]
        if isinstance(bind, (sessionmaker, async_sessionmaker)):
            if session_options:
                raise InvalidOptionError(
                    f"session options {sorted(session_options)} were given with a "
                    "ready-made session factory; set them on the factory instead"
                )
            factory = bind
        elif isinstance(bind, AsyncEngine):
            factory = async_sessionmaker(
                bind, **{"expire_on_commit": False, **session_options}
            )
        elif isinstance(bind, Engine):
            factory = sessionmaker(bind, **{"expire_on_commit": False, **session_options})
        else:
            raise InvalidOptionError(
                f"cannot bind units of work to {bind!r}; pass an Engine, AsyncEngine, "
                "sessionmaker or async_sessionmaker"
            )
        if retry_on is not None and not callable(retry_on):
            raise InvalidOptionError(
                f"retry_on={retry_on!r} must be a callable taking an exception"
            )
        base, cap = retry_backoff
        if not (0 <= base <= cap):
            raise InvalidOptionError(
                f"retry_backoff={retry_backoff!r} must be (base, cap) with 0 <= base <= cap seconds"
            )
        self.session_factory: sessionmaker[Any] | async_sessionmaker[Any] = factory
        #: True when the factory makes ``AsyncSession`` objects
        self.is_async: bool = isinstance(factory, async_sessionmaker)
        engine = factory.kw.get("bind")
        if isinstance(engine, AsyncEngine):
            engine = engine.sync_engine
        self.engine: Engine | None = engine if isinstance(engine, Engine) else None
        self.dialect_name: str | None = (
            self.engine.dialect.name if self.engine is not None else None
        )
        if name is not None and not isinstance(name, str):
            raise InvalidOptionError(f"name={name!r} must be a string naming the database")
        #: names the database in errors and log records (default: the engine's URL, no password)
        self.name: str = name or (
            self.engine.url.render_as_string(hide_password=True) if self.engine is not None else repr(factory)
        )
        if sqlite_savepoints and self.engine is not None:
            enable_savepoints(self.engine)
        _guard_sessions_of(factory)
        self.transient: tuple[TransientPredicate, ...] = (
            (retry_on,) if retry_on is not None else ()
        )
        self.retry_backoff = (float(base), float(cap))
        self._current: ContextVar[Unit | None] = ContextVar(
            f"uow_unit_{id(self):x}", default=None
        )
        self._proxy: SessionProxy | None = None
        #: set by uow.testing: commit hooks are captured here instead of run
        self._hook_sink: list[Hook] | None = None
        #: set by uow.testing: sessions run inside a test's outer transaction
        self._external_transaction = False

    def __repr__(self) -> str:
        return f"<UnitOfWorkManager {self.session_factory!r}>"

    # --- the unit -------------------------------------------------------

    def transactional(self, fn: Any = None, /, **options: Any) -> Any:
        """Run a function in a unit of this manager; see :func:`uow.transactional`."""
        from .decorators import transactional

        return transactional(fn, manager=self, **options)

    def unit_of_work(self, **options: Any) -> UnitOfWork:
        """Return a unit of this manager for ``with`` / ``async with``."""
        from .decorators import UnitOfWork

        return UnitOfWork(lambda: self, **options)

    def in_unit(self) -> bool:
        """Return True if a unit of this manager is open in the caller's context."""
        return live(self._current.get()) is not None

    def current_session(self) -> Any:
        """Return the session of the innermost open unit; raise :class:`NoActiveUnitOfWork`."""
        unit = self._current.get()
        if unit is None:
            raise NoActiveUnitOfWork(_NO_UNIT)
        tx = unit.tx
        session = tx.get_session()
        if tx.innermost is not unit:
            tx.check_boundary(unit)
        return session

    @property
    def session(self) -> Session:
        """A proxy to :meth:`current_session` (typed as ``Session``)."""
        proxy = self._proxy
        if proxy is None:
            from .proxy import SessionProxy

            proxy = self._proxy = SessionProxy(lambda: self)
        return proxy  # type: ignore[return-value]

    # --- hooks ----------------------------------------------------------

    def on_commit(
        self,
        fn: Callable[[], Any],
        *,
        robust: bool = False,
        when_no_unit: Literal["raise", "run"] = "raise",
    ) -> None:
        """Run *fn* after the outermost transaction commits (first in, first out).

        Dropped if the unit, or the savepoint it was registered in, rolls
        back. Runs after the connection is back in the pool, outside the
        unit. A failing hook cannot undo the commit: the other hooks still
        run, then :class:`HookError` is raised, or with ``robust=True`` the
        failure is logged on the ``uow`` logger. Outside any unit this raises
        :class:`NoActiveUnitOfWork`, unless ``when_no_unit="run"``, which
        calls sync *fn* at once.
        """
        self._register(fn, robust, when_no_unit, commit=True)

    def on_rollback(
        self,
        fn: Callable[[], Any],
        *,
        robust: bool = False,
        when_no_unit: Literal["raise", "ignore"] = "raise",
    ) -> None:
        """Run *fn* after the unit (or the savepoint it was registered in) rolls back.

        The mirror of :meth:`on_commit`: dropped when the work commits.
        Outside any unit this raises, unless ``when_no_unit="ignore"``.
        """
        self._register(fn, robust, when_no_unit, commit=False)

    def _register(
        self, fn: Callable[[], Any], robust: bool, when_no_unit: str, commit: bool
    ) -> None:
        if not callable(fn):
            raise InvalidOptionError(f"hook {fn!r} is not callable")
        if not isinstance(robust, bool):
            raise InvalidOptionError(f"robust={robust!r} must be True or False")
        allowed = ("raise", "run") if commit else ("raise", "ignore")
        if when_no_unit not in allowed:
            raise InvalidOptionError(
                f"when_no_unit={when_no_unit!r} must be one of {allowed}"
            )
        is_async = is_async_callable(fn)
        unit = live(self._current.get())
        if unit is None:
            if when_no_unit == "raise":
                kind = "on_commit" if commit else "on_rollback"
                raise NoActiveUnitOfWork(
                    f"{kind}() was called with no unit of work open, so there is "
                    f"no transaction to wait for. {_NO_UNIT}. To run the callable "
                    "at once when no unit is open, pass "
                    + ('when_no_unit="run"' if commit else 'when_no_unit="ignore"')
                )
            if when_no_unit == "run":
                if is_async:
                    raise SessionKindError(
                        "when_no_unit='run' cannot run an async callable from sync "
                        "code; await it yourself"
                    )
                fn()
            return
        if is_async and not unit.tx.driven_async:
            raise SessionKindError(
                f"async hook {fn!r} registered in a unit that ends in sync code, "
                "where it cannot be awaited; register a sync callable, or open the "
                "outermost unit with async def / async with"
            )
        hook = Hook(fn, robust, is_async)
        (unit.commit_hooks if commit else unit.rollback_hooks).append(hook)

    # --- threads and lifecycle -----------------------------------------------

    async def run_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking *fn* in a worker thread with the caller's context; see :func:`uow.run_sync`."""
        return await run_sync(fn, *args, **kwargs)

    async def dispose(self) -> None:
        """Close every pooled connection of the bound engine (call at shutdown)."""
        bind = self.session_factory.kw.get("bind")
        if isinstance(bind, AsyncEngine):
            await bind.dispose()
        elif isinstance(bind, Engine):
            import anyio.to_thread

            await anyio.to_thread.run_sync(bind.dispose)

