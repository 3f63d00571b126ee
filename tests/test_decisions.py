"""The decisions of a unit, as plain functions: tables, no database, no I/O."""

from __future__ import annotations

import sqlite3
import time

import psycopg.errors
import pytest
from sqlalchemy import create_engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import sessionmaker

import uow
from tests.conftest import Item
from uow._decisions import (
    Action,
    EndPlan,
    EndResult,
    backoff_delay,
    body_outcome,
    end_plan,
    end_result,
    entering,
    hooks_to_run,
    is_transient,
    rollback_cause,
    session_end,
    to_raise,
)
from uow._options import UnitOptions, make_options
from uow._transaction import Binding, Boundary, Hook, Status, Transaction

P = uow.Propagation


@pytest.fixture
def binding() -> Binding:
    """A binding whose engine is never connected: these tests do no I/O."""
    return Binding(sessionmaker(create_engine("sqlite://")), name="t", transient=(), retry_backoff=(0, 0))


def boundary(binding: Binding, **options: object) -> Boundary:
    return Boundary(Transaction(binding, make_options(**options), driven_async=False))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("propagation", "in_unit", "action"),
    [
        (P.REQUIRED, False, Action.BEGIN),
        (P.REQUIRED, True, Action.JOIN),
        (P.REQUIRES_NEW, False, Action.BEGIN),
        (P.REQUIRES_NEW, True, Action.BEGIN),
        (P.NESTED, False, Action.BEGIN),
        (P.NESTED, True, Action.SAVEPOINT),
        (P.MANDATORY, True, Action.JOIN),
        (P.SUPPORTS, False, Action.NONE),
        (P.SUPPORTS, True, Action.JOIN),
        (P.NOT_SUPPORTED, False, Action.NONE),
        (P.NOT_SUPPORTED, True, Action.SUSPEND),
        (P.NEVER, False, Action.NONE),
    ],
)
def test_entering(propagation: uow.Propagation, in_unit: bool, action: Action) -> None:
    assert entering(UnitOptions(propagation=propagation), in_unit) is action


@pytest.mark.parametrize(
    ("options", "in_unit"),
    [
        (UnitOptions(propagation=P.MANDATORY), False),
        (UnitOptions(propagation=P.NEVER), True),
        (UnitOptions(durable=True), True),
        (UnitOptions(retry=2), True),  # REQUIRED would join: a joined unit cannot be re-run
    ],
)
def test_entering_refuses(options: UnitOptions, in_unit: bool) -> None:
    with pytest.raises(uow.PropagationError):
        entering(options, in_unit)


class Kept(Exception):
    pass


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (None, "commit"),
        (ValueError("x"), "rollback"),
        (Kept(), "commit"),  # listed in no_rollback_on
        (KeyboardInterrupt(), "rollback"),  # a BaseException always rolls back
    ],
)
def test_body_outcome(exc: BaseException | None, outcome: str) -> None:
    assert body_outcome(UnitOptions(no_rollback_on=(Kept,)), exc) == outcome


def test_end_plan(binding: Binding) -> None:
    b = boundary(binding)
    assert end_plan(b, b.tx.options, "commit") == EndPlan(True, None)
    assert end_plan(b, b.tx.options, "rollback") == EndPlan(False, None)
    cause = ValueError("inner")
    b.mark_rollback_only(cause)
    plan = end_plan(b, b.tx.options, "commit")
    assert not plan.commit and isinstance(plan.error, uow.UnexpectedRollback)
    assert plan.error.__cause__ is cause
    assert end_plan(b, b.tx.options, "rollback") == EndPlan(False, None)  # the body's error wins


def test_end_plan_of_a_read_only_unit_with_writes(binding: Binding) -> None:
    b = boundary(binding, read_only=True)
    assert end_plan(b, b.tx.options, "commit") == EndPlan(True, None)  # no session yet: nothing to check
    session = b.tx.get_session()
    session.add(Item(name="x"))
    plan = end_plan(b, b.tx.options, "commit")
    assert not plan.commit and isinstance(plan.error, uow.ReadOnlyViolation)
    session.close()


@pytest.mark.parametrize(
    ("plan", "body", "io", "result"),
    [
        ((True, None), None, None, (True, None)),
        ((False, None), ValueError(), None, (False, None)),
        ((True, None), None, "io", (False, "io")),  # a failed COMMIT is the error
        ((False, None), ValueError(), "io", (False, None)),  # a failed rollback is only logged
        ((False, "plan"), None, "io", (False, "plan")),
    ],
)
def test_end_result(
    plan: tuple[bool, str | None],
    body: BaseException | None,
    io: str | None,
    result: tuple[bool, str | None],
) -> None:
    errors = {"io": OSError("io"), "plan": uow.UnexpectedRollback("plan")}
    end = EndPlan(plan[0], errors.get(plan[1]) if plan[1] else None)
    got = end_result(end, body, errors.get(io) if io else None)
    want = EndResult(result[0], errors.get(result[1]) if result[1] else None)
    assert got == want


_COMMIT_FAILED = OSError("COMMIT failed")


@pytest.mark.parametrize(
    ("body", "plan", "result", "forced", "cause"),
    [
        ("commit", EndPlan(True, None), EndResult(True, None), False, None),
        ("rollback", EndPlan(False, None), EndResult(False, None), False, "exception"),
        ("rollback", EndPlan(False, None), EndResult(False, None), True, "request"),
        (
            "commit",
            EndPlan(False, uow.UnexpectedRollback("x")),
            EndResult(False, uow.UnexpectedRollback("x")),
            False,
            "rollback_only",
        ),
        (
            "commit",
            EndPlan(False, uow.ReadOnlyViolation("x")),
            EndResult(False, uow.ReadOnlyViolation("x")),
            False,
            "read_only_violation",
        ),
        ("commit", EndPlan(True, None), EndResult(False, _COMMIT_FAILED), False, "commit_failed"),
        ("commit", EndPlan(True, None), EndResult(False, _COMMIT_FAILED), True, "commit_failed"),
    ],
)
def test_rollback_cause(body: str, plan: EndPlan, result: EndResult, forced: bool, cause: str | None) -> None:
    assert rollback_cause(body, plan, result, forced) == cause  # type: ignore[arg-type]


def test_hooks_to_run(binding: Binding) -> None:
    b = boundary(binding)

    def commit_fn() -> None:
        pass

    def rollback_fn() -> None:
        pass

    on_commit, on_rollback = Hook(commit_fn, False, False), Hook(rollback_fn, False, False)
    b.commit_hooks.append(on_commit)
    b.rollback_hooks.append(on_rollback)
    assert hooks_to_run(b, committed=True, savepoint=False) == [on_commit]
    assert hooks_to_run(b, committed=False, savepoint=False) == [on_rollback]
    assert hooks_to_run(b, committed=True, savepoint=True) == []  # they wait for the outer commit
    assert hooks_to_run(b, committed=False, savepoint=True) == [on_rollback]
    sink: list[Hook] = []
    binding.hook_sink = sink
    assert hooks_to_run(b, committed=True, savepoint=False) == []
    assert sink == [on_commit]  # captured for the test instead


def test_to_raise() -> None:
    body, own, hook = ValueError("body"), uow.UnexpectedRollback("own"), uow.HookError("hook")
    assert to_raise(None, None, None) is None
    assert to_raise(body, None, None) is None  # the body's exception propagates as is
    assert to_raise(body, own, hook) is own
    assert to_raise(None, None, hook) is hook
    assert to_raise(body, None, hook) is None  # the body's error wins; the hook's is noted on it


def test_transaction_status_moves_only_forward(binding: Binding) -> None:
    tx = Transaction(binding, UnitOptions(), driven_async=False)
    assert (tx.status, tx.ended, tx.closed, tx.committed) == (Status.ACTIVE, False, False, None)
    tx.begin_end()
    assert (tx.status, tx.ended, tx.closed, tx.committed) == (Status.ENDING, True, False, None)
    tx.finish(committed=True)
    assert (tx.status, tx.ended, tx.closed, tx.committed) == (Status.COMMITTED, True, True, True)
    with pytest.raises(RuntimeError):
        tx.begin_end()
    with pytest.raises(RuntimeError):
        tx.finish(committed=False)


def _sqlite_error(code: int, message: str) -> OperationalError:
    orig = sqlite3.OperationalError(message)
    orig.sqlite_errorcode = code  # type: ignore[attr-defined]
    return OperationalError("SELECT 1", {}, orig)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (OperationalError("x", {}, psycopg.errors.SerializationFailure("40001")), True),
        (OperationalError("x", {}, psycopg.errors.DeadlockDetected("40P01")), True),
        (OperationalError("x", {}, psycopg.errors.UniqueViolation("23505")), False),
        (_sqlite_error(5, "database is locked"), True),  # SQLITE_BUSY
        (_sqlite_error(262, "database table is locked"), True),  # SQLITE_LOCKED_SHAREDCACHE
        (_sqlite_error(19, "UNIQUE constraint failed"), False),
        (ValueError("not a database error"), False),
    ],
)
def test_is_transient(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


def test_is_transient_follows_causes_and_extra_predicates() -> None:
    wrapped = RuntimeError("wrapper")
    wrapped.__cause__ = OperationalError("x", {}, psycopg.errors.SerializationFailure("40001"))
    assert is_transient(wrapped)
    assert is_transient(ValueError("retry me"), (lambda e: "retry" in str(e),))


def test_backoff_delay_is_full_jitter_under_the_cap() -> None:
    delays = [backoff_delay(attempt, 0.01, 0.05) for attempt in range(8) for _ in range(50)]
    assert all(0 <= d <= 0.05 for d in delays)
    assert max(backoff_delay(0, 0.01, 1.0) for _ in range(200)) <= 0.01


@pytest.mark.parametrize(
    ("url", "read_only", "commit", "end"),
    [
        ("sqlite://", False, True, "commit"),
        ("sqlite://", False, False, "rollback"),
        ("sqlite://", True, True, "close"),  # nothing to commit, and nothing sent is kept
        ("sqlite://", True, False, "rollback"),
        ("postgresql+psycopg://u@127.0.0.1/none", True, True, "commit"),  # READ ONLY at the database
        ("postgresql+psycopg://u@127.0.0.1/none", True, False, "rollback"),
    ],
)
def test_session_end(url: str, read_only: bool, commit: bool, end: str) -> None:
    engine = create_engine(url)  # never connected
    binding = Binding(sessionmaker(engine), name="t", transient=(), retry_backoff=(0, 0))
    tx = Transaction(binding, make_options(read_only=read_only), driven_async=False)
    assert session_end(EndPlan(commit, None), tx) == end
    binding.external_transaction = True  # inside a test's transaction: not READ ONLY at the database
    if read_only and commit:
        assert session_end(EndPlan(commit, None), tx) == "close"


# --- timeouts ---------------------------------------------------------------------------

CANCELED = OperationalError("SELECT pg_sleep(9)", {}, psycopg.errors.QueryCanceled("statement timeout"))
LOCK_WAIT = OperationalError("UPDATE t", {}, psycopg.errors.LockNotAvailable("lock timeout"))


@pytest.mark.parametrize(
    "error", [CANCELED, LOCK_WAIT, _sqlite_error(9, "interrupted")], ids=["57014", "55P03", "interrupted"]
)
def test_end_plan_turns_a_database_timeout_into_unit_timeout(binding: Binding, error: BaseException) -> None:
    b = boundary(binding, timeout=60)
    plan = end_plan(b, b.tx.options, "rollback", error)
    assert not plan.commit and isinstance(plan.error, uow.UnitTimeout)
    assert plan.error.__cause__ is error
    no_budget = boundary(binding)
    assert end_plan(no_budget, no_budget.tx.options, "rollback", error) == EndPlan(False, None)


def test_end_plan_with_a_budget(binding: Binding) -> None:
    b = boundary(binding, timeout=60)
    assert end_plan(b, b.tx.options, "commit") == EndPlan(True, None)
    assert end_plan(b, b.tx.options, "rollback", ValueError("other")) == EndPlan(False, None)
    assert end_plan(b, b.tx.options, "rollback", uow.UnitTimeout("own")) == EndPlan(False, None)
    assert b.tx.clock is not None
    b.tx.clock.deadline = time.monotonic() - 1  # the budget is spent
    plan = end_plan(b, b.tx.options, "commit")
    assert not plan.commit and isinstance(plan.error, uow.UnitTimeout)
    assert "before the commit" in str(plan.error)


def test_end_result_turns_a_commit_stopped_at_the_budget_into_unit_timeout(binding: Binding) -> None:
    clock = boundary(binding, timeout=60).tx.clock
    result = end_result(EndPlan(True, None), None, CANCELED, clock)
    assert not result.committed and isinstance(result.error, uow.UnitTimeout)
    assert result.error.__cause__ is CANCELED
    assert end_result(EndPlan(True, None), None, CANCELED) == EndResult(False, CANCELED)  # no budget


def test_a_timeout_is_never_transient() -> None:
    timeout = uow.UnitTimeout("spent")
    timeout.__cause__ = OperationalError("x", {}, psycopg.errors.SerializationFailure("40001"))
    assert not is_transient(timeout)
    assert not is_transient(CANCELED) and not is_transient(LOCK_WAIT)


def test_a_budget_is_refused_where_it_cannot_be_enforced() -> None:
    unbound = Binding(sessionmaker(), name="t", transient=(), retry_backoff=(0, 0))
    with pytest.raises(uow.TimeoutUnsupported):
        Transaction(unbound, make_options(timeout=1), driven_async=False)
    Transaction(unbound, make_options(), driven_async=False)  # without one: nothing to check
