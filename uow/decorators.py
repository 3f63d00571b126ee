"""``transactional`` and ``unit_of_work``: one unit, as a decorator or a block."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar, overload

import anyio
import wrapt

from ._async import AsyncBlock
from ._decisions import backoff_delay, is_transient
from ._detect import is_async_callable, is_generator_callable
from ._options import Propagation, UnitOptions, make_options
from ._registry import get_default
from ._sync import SyncBlock
from ._transaction import Binding, logger
from .exceptions import InvalidOptionError, NotDecoratableError, UnitOfWorkError

__all__ = ["UnitOfWork", "transactional"]

F = TypeVar("F", bound=Callable[..., Any])
GetManager = Callable[[], Binding]


@overload
def transactional(fn: F, /) -> F: ...
@overload
def transactional(
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
    manager: Binding | None = ...,
) -> Callable[[F], F]: ...
def transactional(
    fn: Any = None,
    /,
    *,
    propagation: Propagation | str = Propagation.REQUIRED,
    read_only: bool = False,
    isolation_level: str | None = None,
    retry: int = 0,
    no_rollback_on: type[BaseException] | tuple[type[BaseException], ...] = (),
    durable: bool = False,
    timeout: float | None = None,
    manager: Binding | None = None,
) -> Any:
    """Run the decorated function in a unit of work.

    Use it bare (``@transactional``) or with options
    (``@transactional(propagation=Propagation.NESTED, retry=3)``) on ``def``
    and ``async def`` functions, methods, classmethods and staticmethods. The
    unit commits when the function returns and rolls back when it raises
    (except for types in *no_rollback_on*, which commit and still
    propagate). *retry* re-runs an outermost unit on transient errors
    (serialization failure, deadlock, SQLite busy) with jittered back-off.
    *timeout* gives an outermost unit a budget in seconds, from its start
    (each retry has a budget of its own); running past it raises
    :class:`uow.UnitTimeout` and rolls back. Without *manager* the default
    one from :func:`uow.configure` is used, looked up at each call.
    """
    options = make_options(
        propagation=propagation,
        read_only=read_only,
        isolation_level=isolation_level,
        retry=retry,
        no_rollback_on=no_rollback_on,
        durable=durable,
        timeout=timeout,
    )
    get_manager: GetManager = (lambda: manager) if manager is not None else get_default
    if fn is None:
        return lambda f: _decorate(f, get_manager, options)
    return _decorate(fn, get_manager, options)


def _decorate(fn: Any, get_manager: GetManager, options: UnitOptions) -> Any:
    if not (callable(fn) or isinstance(fn, (classmethod, staticmethod))):
        raise NotDecoratableError(
            f"@transactional needs a function or method, got {fn!r} of type "
            f"{type(fn).__name__}; to pass options, call it with keywords: "
            "@transactional(read_only=True)"
        )
    if is_generator_callable(fn):
        raise NotDecoratableError(
            f"@transactional cannot wrap generator function {fn!r}: its body runs "
            "while the caller iterates, after the call has returned, so no unit "
            "can span it. Return a list instead, or open `with unit_of_work():` "
            "around the code that consumes the generator"
        )
    if is_async_callable(fn):
        return _async_wrapper(get_manager, options)(fn)
    return _sync_wrapper(get_manager, options)(fn)


def _sync_wrapper(get_manager: GetManager, options: UnitOptions) -> Any:
    @wrapt.decorator  # type: ignore[untyped-decorator,unused-ignore]
    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        manager = get_manager()
        if not options.retry:
            with SyncBlock(manager, options, function=wrapped):
                return wrapped(*args, **kwargs)
        attempt = 0
        retried: BaseException | None = None  # the error that made this run a retry (for observers)
        try:
            while True:
                try:
                    with SyncBlock(manager, options, attempt, function=wrapped, retried=retried):
                        return wrapped(*args, **kwargs)
                except Exception as e:
                    if attempt >= options.retry or not is_transient(e, manager.transient):
                        raise
                    attempt += 1
                    retried = e
                    _log_retry(wrapped, e, attempt, options.retry)
                    time.sleep(backoff_delay(attempt - 1, *manager.retry_backoff))
        finally:
            del retried  # its traceback holds this frame: leave no cycle behind

    return wrapper


def _async_wrapper(get_manager: GetManager, options: UnitOptions) -> Any:
    @wrapt.decorator  # type: ignore[untyped-decorator,unused-ignore]
    async def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        manager = get_manager()
        if not options.retry:
            async with AsyncBlock(manager, options, function=wrapped):
                return await wrapped(*args, **kwargs)
        attempt = 0
        retried: BaseException | None = None  # the error that made this run a retry (for observers)
        try:
            while True:
                try:
                    async with AsyncBlock(manager, options, attempt, function=wrapped, retried=retried):
                        return await wrapped(*args, **kwargs)
                except Exception as e:
                    if attempt >= options.retry or not is_transient(e, manager.transient):
                        raise
                    attempt += 1
                    retried = e
                    _log_retry(wrapped, e, attempt, options.retry)
                    await anyio.sleep(backoff_delay(attempt - 1, *manager.retry_backoff))
        finally:
            del retried  # its traceback holds this frame: leave no cycle behind

    return wrapper


def _log_retry(fn: Any, error: BaseException, attempt: int, retries: int) -> None:
    logger.debug(
        "uow: retry %d of %d for %s after transient %r",
        attempt,
        retries,
        getattr(fn, "__qualname__", fn),
        error,
        extra={"uow_retry": attempt},
    )


class UnitOfWork:
    """One unit of work as a block: ``with`` in sync code, ``async with`` in async code.

    Entering yields the unit's session (``None`` for propagation kinds that
    run without a unit). One object runs one block at a time; call
    ``unit_of_work()`` again for another.
    """

    __slots__ = ("_block", "_get_manager", "_options")

    def __init__(
        self,
        get_manager: GetManager,
        *,
        propagation: Propagation | str = Propagation.REQUIRED,
        read_only: bool = False,
        isolation_level: str | None = None,
        no_rollback_on: type[BaseException] | tuple[type[BaseException], ...] = (),
        durable: bool = False,
        retry: int = 0,
        timeout: float | None = None,
    ) -> None:
        if retry:
            raise InvalidOptionError(
                f"retry={retry!r}: a `with` block cannot be run again; put the work "
                "in a function and decorate it with @transactional(retry=...)"
            )
        self._get_manager = get_manager
        self._options = make_options(
            propagation=propagation,
            read_only=read_only,
            isolation_level=isolation_level,
            no_rollback_on=no_rollback_on,
            durable=durable,
            timeout=timeout,
        )
        self._block: SyncBlock | AsyncBlock | None = None

    def _claim(self, block: SyncBlock | AsyncBlock) -> None:
        if self._block is not None:
            raise UnitOfWorkError(
                "this unit_of_work() object is already running a block; call "
                "unit_of_work() again for each block"
            )
        self._block = block

    def __enter__(self) -> Any:
        block = SyncBlock(self._get_manager(), self._options)
        self._claim(block)
        try:
            boundary = block.__enter__()
        except BaseException:
            self._block = None
            raise
        return None if boundary is None else boundary.tx.get_session()

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        block, self._block = self._block, None
        assert isinstance(block, SyncBlock)
        return block.__exit__(exc_type, exc, tb)

    async def __aenter__(self) -> Any:
        block = AsyncBlock(self._get_manager(), self._options)
        self._claim(block)
        try:
            boundary = await block.__aenter__()
        except BaseException:
            self._block = None
            raise
        return None if boundary is None else boundary.tx.get_session()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        block, self._block = self._block, None
        assert isinstance(block, AsyncBlock)
        return await block.__aexit__(exc_type, exc, tb)
