"""Test isolation: each test runs in an outer transaction that is rolled back afterwards.

The code under test commits and rolls back its own units as usual; they
commit to SAVEPOINTs of the test's transaction (SQLAlchemy's "join a session
into an external transaction" recipe, ``join_transaction_mode=
"create_savepoint"``), so nothing outlives the test. ``on_commit`` hooks are
captured for the test to inspect or run, as with Django's
``captureOnCommitCallbacks``.

As a pytest plugin (:mod:`uow.pytest_plugin`, registered through the
``pytest11`` entry point, opt-in by fixture): define a ``uow_engine`` fixture
returning your sync ``Engine``, and request ``uow_test``. For an
``AsyncEngine``, use :func:`async_rollback_after` in an async fixture of your own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from . import _registry
from ._compat import AsyncEngine, async_sessionmaker
from ._detect import is_async_callable
from ._transaction import Hook
from .manager import UnitOfWorkManager
from .sqlite import enable_savepoints

__all__ = ["TestTransaction", "async_rollback_after", "rollback_after"]


class TestTransaction:
    """What a test sees: the manager bound to the test's transaction, and the hooks.

    While it is active, ``uow.configure``'s default manager is this one, so
    ``uow.transactional``, ``uow.session`` and ``UnitOfWorkMiddleware``
    (without ``manager=``) use it.
    """

    __test__ = False  # not a test class for pytest

    def __init__(self, manager: UnitOfWorkManager, hooks: list[Hook]) -> None:
        self.manager = manager
        self._hooks = hooks

    @property
    def on_commit_callbacks(self) -> list[Any]:
        """The captured ``on_commit`` callables, in order, not yet run."""
        return [hook.fn for hook in self._hooks]

    def run_on_commit(self) -> int:
        """Run the captured sync ``on_commit`` callables (and forget them); return how many ran."""
        hooks, self._hooks[:] = list(self._hooks), []
        for hook in hooks:
            if hook.is_async:
                raise TypeError(f"{hook.fn!r} is async: use `await run_on_commit_async()`")
            hook.fn()
        return len(hooks)

    async def run_on_commit_async(self) -> int:
        """Run the captured ``on_commit`` callables, awaiting async ones; return how many ran."""
        hooks, self._hooks[:] = list(self._hooks), []
        for hook in hooks:
            result = hook.fn()
            if hook.is_async or is_async_callable(hook.fn) or hasattr(result, "__await__"):
                await result
        return len(hooks)


@contextmanager
def rollback_after(
    engine: Engine, *, capture_on_commit: bool = True, **session_options: Any
) -> Iterator[TestTransaction]:
    """Run the block in a transaction on *engine* that is rolled back at the end.

    Units inside commit to savepoints. The sessions are of the class, and
    take the options, of the manager ``uow.configure`` set up, if any
    (*session_options* add to or override them). With *capture_on_commit* (the
    default), ``on_commit`` hooks are kept on the returned object instead of
    run; pass False to run them when their unit ends, as in production.
    """
    enable_savepoints(engine)
    connection = engine.connect()
    outer = connection.begin()
    factory = sessionmaker(
        bind=connection,
        join_transaction_mode="create_savepoint",
        **{"expire_on_commit": False, **_configured_options(sessionmaker), **session_options},
    )
    with _installed(factory, capture_on_commit) as test:
        try:
            yield test
        finally:
            if outer.is_active:
                outer.rollback()
            connection.close()


@asynccontextmanager
async def async_rollback_after(
    engine: AsyncEngine, *, capture_on_commit: bool = True, **session_options: Any
) -> AsyncIterator[TestTransaction]:
    """The async form of :func:`rollback_after`, for an ``AsyncEngine``."""
    enable_savepoints(engine)
    connection = await engine.connect()
    outer = await connection.begin()
    factory = async_sessionmaker(
        bind=connection,
        join_transaction_mode="create_savepoint",
        **{"expire_on_commit": False, **_configured_options(async_sessionmaker), **session_options},
    )
    with _installed(factory, capture_on_commit) as test:
        try:
            yield test
        finally:
            if outer.is_active:
                await outer.rollback()
            await connection.close()


def _configured_options(kind: type[Any]) -> dict[str, Any]:
    """The session class and options of the app's configured manager (none if there is none).

    So that the test's sessions are of the kind the app uses (``sqlmodel.Session``
    and its ``exec()``, the app's ``autoflush`` ...); *session_options* win.
    """
    configured = _registry.default()
    if configured is None or not isinstance(configured.session_factory, kind):
        return {}  # none, or of the other kind (a sync test of an async app): nothing to follow
    factory = configured.session_factory
    options = {k: v for k, v in factory.kw.items() if k not in ("bind", "binds", "join_transaction_mode")}
    if isinstance(factory, sessionmaker):
        options["class_"] = factory.class_.__mro__[1]  # the class the factory was given
    sync_class = options.get("sync_session_class")
    if sync_class is not None and sync_class.__dict__.get("_uow_guarded", False):
        options["sync_session_class"] = sync_class.__mro__[1]  # the app's, without uow's listeners
    return options


@contextmanager
def _installed(factory: Any, capture: bool) -> Iterator[TestTransaction]:
    manager = UnitOfWorkManager(factory)
    manager.external_transaction = True
    hooks: list[Hook] = []
    if capture:
        manager.hook_sink = hooks
    previous = _registry.set_default(manager)
    try:
        yield TestTransaction(manager, hooks)
    finally:
        _registry.set_default(previous)
