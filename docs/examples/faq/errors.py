"""The FAQ: each error uow raises, the mistake that causes it, and the fix.

Run it:  python errors.py   (it writes errors.db in the current directory)
"""

# --8<-- [start:setup]
import asyncio
from collections.abc import Iterator

from sqlalchemy import String, create_engine, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import uow
from uow import Propagation


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)


engine = create_engine("sqlite:///errors.db")


@uow.transactional
def register(email: str) -> None:
    uow.session.add(User(email=email))
    uow.session.flush()


# --8<-- [end:setup]


# --8<-- [start:not-configured]
def not_configured_mistake() -> None:
    register("ada@example.com")  # NotConfiguredError: no uow.configure() yet


def not_configured_fix() -> None:
    uow.configure(engine)  # once, at start-up
    register("ada@example.com")


# --8<-- [end:not-configured]


# --8<-- [start:no-active-unit]
def no_active_unit_mistake() -> None:
    uow.session.add(User(email="bob@example.com"))  # NoActiveUnitOfWork: no unit is open


def no_active_unit_fix() -> None:
    with uow.unit_of_work():
        uow.session.add(User(email="bob@example.com"))


# --8<-- [end:no-active-unit]


# --8<-- [start:invalid-option]
def invalid_option_mistake() -> None:
    with uow.unit_of_work(retry=3):  # InvalidOptionError: a block cannot be run again
        uow.session.add(User(email="cy@example.com"))


@uow.transactional(retry=3)  # a function can be
def add_cy() -> None:
    uow.session.add(User(email="cy@example.com"))


def invalid_option_fix() -> None:
    add_cy()


# --8<-- [end:invalid-option]


# --8<-- [start:not-decoratable]
def not_decoratable_mistake() -> None:
    @uow.transactional  # NotDecoratableError: the body would run after the unit ended
    def all_emails() -> Iterator[str]:
        yield from uow.session.scalars(select(User.email))


def not_decoratable_fix() -> list[str]:
    @uow.transactional(read_only=True)
    def all_emails() -> list[str]:
        return list(uow.session.scalars(select(User.email)))  # a list, read inside the unit

    return all_emails()


# --8<-- [end:not-decoratable]


# --8<-- [start:propagation]
@uow.transactional(retry=3)
def add_dee() -> None:
    uow.session.add(User(email="dee@example.com"))


def propagation_mistake() -> None:
    with uow.unit_of_work():
        add_dee()  # PropagationError: a retried unit would join this one, and cannot re-run it


def propagation_fix() -> None:
    add_dee()  # outside any unit, it begins (and can re-run) its own transaction


# --8<-- [end:propagation]


# --8<-- [start:isolation]
@uow.transactional(isolation_level="SERIALIZABLE")
def count_users() -> int:
    return uow.session.scalar(select(func.count(User.id))) or 0


def isolation_mistake() -> None:
    with uow.unit_of_work():  # begun at the engine's default level
        count_users()  # IsolationLevelConflict: a running transaction's level cannot change


def isolation_fix() -> None:
    with uow.unit_of_work(isolation_level="SERIALIZABLE"):  # set it on the outermost unit
        count_users()


# --8<-- [end:isolation]


# --8<-- [start:unexpected-rollback]
def unexpected_rollback_mistake() -> None:
    with uow.unit_of_work():
        uow.session.add(User(email="eve@example.com"))
        try:
            register("ada@example.com")  # a duplicate: fails inside a joined unit
        except IntegrityError:
            print("ada exists; going on")  # UnexpectedRollback when the block ends


def unexpected_rollback_fix() -> None:
    with uow.unit_of_work():
        uow.session.add(User(email="eve@example.com"))
        try:
            with uow.unit_of_work(propagation=Propagation.NESTED):  # a savepoint
                register("ada@example.com")
        except IntegrityError:
            print("ada exists; going on")  # only the savepoint rolled back: eve is kept


# --8<-- [end:unexpected-rollback]


# --8<-- [start:read-only]
def read_only_mistake() -> None:
    with uow.unit_of_work(read_only=True):
        register("fay@example.com")  # ReadOnlyViolation at the flush


def read_only_fix() -> None:
    with uow.unit_of_work():
        register("fay@example.com")


# --8<-- [end:read-only]


# --8<-- [start:session-kind]
async_manager = uow.UnitOfWorkManager(create_async_engine("sqlite+aiosqlite:///errors.db"))


def session_kind_mistake() -> None:
    with async_manager.unit_of_work():  # SessionKindError: sync code cannot drive an AsyncSession
        pass


async def session_kind_fix() -> None:
    async with async_manager.unit_of_work() as session:
        await session.execute(select(User.id))
    await async_manager.dispose()


# --8<-- [end:session-kind]


# --8<-- [start:blocking]
@uow.transactional
async def blocking_mistake() -> int:
    return uow.session.scalar(select(func.count(User.id))) or 0  # BlockingSessionUse


@uow.transactional
async def blocking_fix() -> int:
    return await uow.run_sync(lambda: uow.session.scalar(select(func.count(User.id))) or 0)


# --8<-- [end:blocking]


def refresh_cache() -> None:
    raise ConnectionError("cache is down")


# --8<-- [start:hook]
def hook_mistake() -> None:
    with uow.unit_of_work():
        register("gus@example.com")
        uow.on_commit(refresh_cache)  # HookError after the commit (which stands)


def hook_fix() -> None:
    with uow.unit_of_work():
        register("hal@example.com")
        uow.on_commit(refresh_cache, robust=True)  # logged on the "uow" logger instead


# --8<-- [end:hook]


# --8<-- [start:session-ended]
def session_ended_mistake() -> None:
    with uow.unit_of_work() as session:
        session.add(User(email="ivy@example.com"))
    session.add(User(email="jo@example.com"))
    session.flush()  # SessionEnded: the unit is over, nobody would commit this


def session_ended_fix() -> None:
    with uow.unit_of_work() as session:
        session.add(User(email="ian@example.com"))
    with uow.unit_of_work() as session:  # a unit of its own for the later work
        session.add(User(email="jo@example.com"))


# --8<-- [end:session-ended]


# --8<-- [start:savepoint-conflict]
@uow.transactional(propagation=Propagation.NESTED)
async def add_in_savepoint(email: str) -> None:
    await uow.run_sync(register, email)


@uow.transactional
async def savepoint_conflict_mistake() -> None:
    # SavepointConflict: two savepoints of one transaction at once would interleave
    results = await asyncio.gather(
        add_in_savepoint("kai@example.com"), add_in_savepoint("kit@example.com"), return_exceptions=True
    )
    for result in results:
        if isinstance(result, Exception):
            raise result


@uow.transactional
async def savepoint_conflict_fix() -> None:
    for email in ("kim@example.com", "lee@example.com"):  # one after another
        await add_in_savepoint(email)


# --8<-- [end:savepoint-conflict]


# --8<-- [start:partial-commit]
async def partial_commit_mistake() -> None:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from uow.starlette import UnitOfWorkMiddleware

    audit = uow.UnitOfWorkManager(create_engine("sqlite:///audit.db"), name="audit")
    users = uow.get_manager()

    def sign_up(request: object) -> PlainTextResponse:
        audit.session.execute(text("CREATE TABLE IF NOT EXISTS log (line TEXT)"))
        audit.session.execute(text("INSERT INTO log VALUES ('sign-up of mia')"))
        users.session.add(User(email="ada@example.com"))  # a duplicate: fails at COMMIT
        return PlainTextResponse("", status_code=201)

    app = Starlette(
        routes=[Route("/", sign_up, methods=["POST"])],
        middleware=[
            Middleware(UnitOfWorkMiddleware, manager=users),
            Middleware(UnitOfWorkMiddleware, manager=audit),
        ],
    )

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b""}

    async def send(message: object) -> None:
        pass

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [], "query_string": b""}
    try:
        await app(scope, receive, send)  # PartialCommit: audit kept its line, users failed
    finally:
        audit.session_factory.kw["bind"].dispose()


def partial_commit_fix() -> None:
    # one database per request's unit; or the one likely to fail at COMMIT innermost,
    # so that it commits first and a failure there rolls the other back
    with uow.unit_of_work():
        register("mia@example.com")


# --8<-- [end:partial-commit]


# --8<-- [start:direct-end]
def direct_end_mistake() -> None:
    strict = uow.UnitOfWorkManager(engine, strict=True)  # strict: raise, do not only warn
    with strict.unit_of_work() as session:
        session.add(User(email="nia@example.com"))
        session.commit()  # DirectEndError: the unit ends its transaction itself


def direct_end_fix() -> None:
    with uow.unit_of_work() as session:
        session.add(User(email="nia@example.com"))
        session.flush()  # sends the INSERT; the unit commits at its end


# --8<-- [end:direct-end]


# --8<-- [start:unit-timeout]
COUNT_TO = (
    "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < :last) SELECT count(*) FROM n"
)


def unit_timeout_mistake() -> None:
    with uow.unit_of_work(timeout=0.2) as session:
        session.execute(text(COUNT_TO), {"last": 10**9})  # UnitTimeout: stopped at 0.2 s


def unit_timeout_fix() -> None:
    with uow.unit_of_work(timeout=5) as session:  # work that fits its budget (here: less of it)
        session.execute(text(COUNT_TO), {"last": 1000})


# --8<-- [end:unit-timeout]


# --8<-- [start:timeout-conflict]
@uow.transactional(timeout=5)
def import_users() -> None:
    uow.session.add(User(email="ola@example.com"))


def timeout_conflict_mistake() -> None:
    with uow.unit_of_work(timeout=1):  # the transaction's budget: 1 s
        import_users()  # TimeoutConflict: a joined unit cannot have 5 s of a 1 s budget


def timeout_conflict_fix() -> None:
    with uow.unit_of_work(timeout=5):  # the budget belongs to the outermost unit
        import_users()


# --8<-- [end:timeout-conflict]


# --8<-- [start:timeout-unsupported]
def timeout_unsupported_mistake() -> None:
    import sqlite3  # a stand-in for the MySQL driver, so that this page runs anywhere

    mysql = uow.UnitOfWorkManager(create_engine("mysql://app@db.example/app", module=sqlite3))
    with mysql.unit_of_work(timeout=5):  # TimeoutUnsupported, before it connects
        pass


def timeout_unsupported_fix() -> None:
    # on MySQL, bound statements with the server's own settings (max_execution_time,
    # innodb_lock_wait_timeout), and give uow units no timeout there
    with uow.unit_of_work(timeout=5):  # this manager's database, SQLite, supports it
        pass


# --8<-- [end:timeout-unsupported]


# --8<-- [start:base]
def reused_block_mistake() -> None:
    unit = uow.unit_of_work()
    with unit, unit:  # UnitOfWorkError: one object runs one block at a time
        pass


def reused_block_fix() -> None:
    with uow.unit_of_work(), uow.unit_of_work():  # a new object per block (the inner joins)
        pass


# --8<-- [end:base]


def main() -> None:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    pairs = [
        (not_configured_mistake, not_configured_fix, uow.NotConfiguredError),
        (no_active_unit_mistake, no_active_unit_fix, uow.NoActiveUnitOfWork),
        (invalid_option_mistake, invalid_option_fix, uow.InvalidOptionError),
        (not_decoratable_mistake, not_decoratable_fix, uow.NotDecoratableError),
        (propagation_mistake, propagation_fix, uow.PropagationError),
        (isolation_mistake, isolation_fix, uow.IsolationLevelConflict),
        (unexpected_rollback_mistake, unexpected_rollback_fix, uow.UnexpectedRollback),
        (read_only_mistake, read_only_fix, uow.ReadOnlyViolation),
        (session_kind_mistake, lambda: asyncio.run(session_kind_fix()), uow.SessionKindError),
        (
            lambda: asyncio.run(blocking_mistake()),
            lambda: asyncio.run(blocking_fix()),
            uow.BlockingSessionUse,
        ),
        (hook_mistake, hook_fix, uow.HookError),
        (session_ended_mistake, session_ended_fix, uow.SessionEnded),
        (
            lambda: asyncio.run(savepoint_conflict_mistake()),
            lambda: asyncio.run(savepoint_conflict_fix()),
            uow.SavepointConflict,
        ),
        (lambda: asyncio.run(partial_commit_mistake()), partial_commit_fix, uow.PartialCommit),
        (direct_end_mistake, direct_end_fix, uow.DirectEndError),
        (unit_timeout_mistake, unit_timeout_fix, uow.UnitTimeout),
        (timeout_conflict_mistake, timeout_conflict_fix, uow.TimeoutConflict),
        (timeout_unsupported_mistake, timeout_unsupported_fix, uow.TimeoutUnsupported),
        (reused_block_mistake, reused_block_fix, uow.UnitOfWorkError),
    ]
    try:
        for mistake, fix, error_type in pairs:
            try:
                mistake()
            except error_type as error:
                print(f"{type(error).__name__}: {error}\n")
            else:
                raise AssertionError(f"{mistake} did not raise {error_type.__name__}")
            fix()
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
