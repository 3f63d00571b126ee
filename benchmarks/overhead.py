"""Decorator overhead: ``@transactional`` around a primary-key read vs the same work by hand."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import sessionmaker

import uow
from benchmarks import apps


def per_call_us(fn: Callable[[int], Any], calls: int) -> float:
    start = time.perf_counter()
    for i in range(calls):
        fn(i)
    return (time.perf_counter() - start) / calls * 1e6


async def per_call_us_async(fn: Callable[[int], Any], calls: int) -> float:
    start = time.perf_counter()
    for i in range(calls):
        await fn(i)
    return (time.perf_counter() - start) / calls * 1e6


def decorator_overhead(url: str, calls: int, rounds: int) -> dict[str, list[float]]:
    """Return µs per call, per round, for each variant."""
    engine = create_engine(url)
    factory = sessionmaker(engine, expire_on_commit=False)
    manager = uow.UnitOfWorkManager(engine)

    def by_hand(i: int) -> Any:
        with factory.begin() as session:
            return session.get(apps.User, i % apps.ROWS + 1)

    @manager.transactional
    def decorated(i: int) -> Any:
        return manager.session.get(apps.User, i % apps.ROWS + 1)

    def bare(i: int) -> int:
        return i

    @manager.transactional
    def bare_decorated(i: int) -> int:
        return i

    async_engine = apps.async_engine_for(url)
    async_factory = async_sessionmaker(async_engine, expire_on_commit=False)
    async_manager = uow.UnitOfWorkManager(async_engine)

    async def async_by_hand(i: int) -> Any:
        async with async_factory.begin() as session:
            return await session.get(apps.User, i % apps.ROWS + 1)

    @async_manager.transactional
    async def async_decorated(i: int) -> Any:
        return await async_manager.current_session().get(apps.User, i % apps.ROWS + 1)

    results: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name, fn in (
            ("sync by hand", by_hand),
            ("sync @transactional", decorated),
            ("bare function", bare),
            ("bare @transactional", bare_decorated),
        ):
            results.setdefault(name, []).append(per_call_us(fn, calls))

        async def run_async() -> None:
            for name, fn in (("async by hand", async_by_hand), ("async @transactional", async_decorated)):
                results.setdefault(name, []).append(await per_call_us_async(fn, max(calls // 4, 10)))

        asyncio.run(run_async())
    asyncio.run(async_engine.dispose())
    engine.dispose()
    return results


def summary(results: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in results.items()}
