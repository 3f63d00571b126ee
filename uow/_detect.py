"""Tell sync from async callables, after unwrapping what hides them."""

from __future__ import annotations

import functools
import inspect
from typing import Any

__all__ = ["is_async_callable", "is_generator_callable", "unwrap"]


def unwrap(fn: Any) -> Any:
    """Return the function under classmethod, staticmethod, partial and ``__wrapped__``."""
    while True:
        if isinstance(fn, (classmethod, staticmethod)):
            fn = fn.__func__
        elif isinstance(fn, functools.partial):
            fn = fn.func
        elif inspect.ismethod(fn):
            fn = fn.__func__
        elif hasattr(fn, "__wrapped__") and not inspect.isclass(fn):
            fn = fn.__wrapped__
        else:
            return fn


def is_async_callable(fn: Any) -> bool:
    """Return True if calling *fn* returns a coroutine (``async def``, or ``__call__`` one)."""
    target = unwrap(fn)
    if inspect.iscoroutinefunction(target):
        return True
    call = getattr(target, "__call__", None)  # noqa: B004 - instances with async __call__
    return (
        call is not None
        and not inspect.isfunction(target)
        and not inspect.isclass(target)
        and inspect.iscoroutinefunction(unwrap(call))
    )


def is_generator_callable(fn: Any) -> bool:
    """Return True for generator and async generator functions."""
    target = unwrap(fn)
    return inspect.isgeneratorfunction(target) or inspect.isasyncgenfunction(target)
