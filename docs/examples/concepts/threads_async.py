"""Concepts: async code, with a sync engine (threads) or an AsyncEngine.

Run it:  python threads_async.py   (it writes threads_async.db in the current directory)
"""

import asyncio

from sqlalchemy import String, create_engine, func, select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import uow


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)


engine = create_engine("sqlite:///threads_async.db")
uow.configure(engine)


# --8<-- [start:sync-engine]
@uow.transactional
async def register(email: str) -> int:
    def insert() -> int:  # blocking work: runs in a worker thread
        user = User(email=email)
        uow.session.add(user)  # the unit's session is visible in the thread
        uow.session.flush()
        return user.id

    return await uow.run_sync(insert)  # COMMIT runs in a thread too


@uow.transactional(read_only=True)
async def count_users() -> int:
    return await uow.run_sync(lambda: uow.session.scalar(select(func.count(User.id))) or 0)


# --8<-- [end:sync-engine]


# --8<-- [start:async-engine]
async_manager = uow.UnitOfWorkManager(create_async_engine("sqlite+aiosqlite:///threads_async.db"))


@async_manager.transactional
async def rename(user_id: int, email: str) -> None:
    session: AsyncSession = async_manager.current_session()
    user = await session.get(User, user_id)
    assert user is not None
    user.email = email  # committed with await when the function returns


# --8<-- [end:async-engine]


async def demo() -> None:
    # --8<-- [start:use-sync-engine]
    ids = await asyncio.gather(*(register(f"user{i}@example.com") for i in range(5)))
    assert sorted(ids) == [1, 2, 3, 4, 5]  # five tasks, five units, five sessions
    assert await count_users() == 5
    # --8<-- [end:use-sync-engine]

    # --8<-- [start:use-async-engine]
    await rename(1, "ada@example.com")
    async with async_manager.unit_of_work(read_only=True) as session:
        assert await session.scalar(select(User.email).where(User.id == 1)) == "ada@example.com"
    await async_manager.dispose()  # at shutdown: close the pooled connections
    # --8<-- [end:use-async-engine]


def main() -> None:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    try:
        asyncio.run(demo())
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
