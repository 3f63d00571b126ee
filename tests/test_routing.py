"""The routing decision as a plain generator: the I/O it asks for, and the replica it returns."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from uow._replicas import Position, Probe, Replica, Router, Routing, Sleep, routing

MakeRouter = Callable[..., Router]


@pytest.fixture
def make_router() -> Iterator[MakeRouter]:
    engines = []

    def make(n: int = 1, dialect: str = "postgresql", **options: object) -> Router:
        replicas = []
        for i in range(n):
            engine = create_engine(f"sqlite:///r{i}.db")  # never connected: only a name here
            engines.append(engine)
            replica = Replica(sessionmaker(engine), None)
            replica.checked_at = time.monotonic()  # a fresh probe
            replicas.append(replica)
        return Router(replicas, Routing(**options), dialect)  # type: ignore[arg-type]

    yield make
    for engine in engines:
        engine.dispose()


def drive(
    router: Router, pos: Position | None, probe: Callable[[Replica], bool] = lambda r: True
) -> tuple[list[str], Replica | None]:
    """Run the decision, answering its probes with *probe*; return the steps taken and the choice."""
    steps: list[str] = []
    gen = routing(router, pos)
    try:
        step = next(gen)
        while True:
            if isinstance(step, Probe):
                steps.append("probe")
                step = gen.send(probe(step.replica))
            else:
                assert isinstance(step, Sleep)
                steps.append("sleep")
                step = next(gen)
    except StopIteration as stop:
        return steps, stop.value


def test_no_write_to_wait_for_uses_a_replica_without_io(make_router: MakeRouter) -> None:
    router = make_router()
    assert drive(router, None) == ([], router.replicas[0])


def test_a_replica_known_to_have_replayed_the_write_costs_no_query(make_router: MakeRouter) -> None:
    router = make_router()
    router.replicas[0].replayed = 100
    assert drive(router, Position(100, 0.0)) == ([], router.replicas[0])


def test_a_replica_behind_is_read_again_and_used_once_it_caught_up(make_router: MakeRouter) -> None:
    router = make_router(max_wait=60.0)
    replica = router.replicas[0]
    reads = iter([50, 80, 100])

    def probe(r: Replica) -> bool:
        r.replayed = next(reads)
        return True

    steps = ["probe", "sleep", "probe", "sleep", "probe"]
    assert drive(router, Position(100, 0.0), probe) == (steps, replica)


def test_a_replica_still_behind_after_max_wait_gives_way_to_the_primary(
    make_router: MakeRouter,
) -> None:
    router = make_router(max_wait=0.0)
    assert drive(router, Position(100, 0.0)) == (["probe"], None)


def test_a_replica_that_refuses_is_passed_over(make_router: MakeRouter) -> None:
    router = make_router(2, check_interval=0.0)
    refused = router.replicas[0]
    chosen = drive(router, None, lambda r: r is not refused)
    assert chosen == (["probe", "probe"], router.replicas[1])


def test_a_lagging_replica_is_skipped(make_router: MakeRouter) -> None:
    router = make_router(max_lag=1.0)
    router.replicas[0].lag = 2.0
    assert drive(router, None) == ([], None)


def test_the_window_sends_reads_to_the_primary_and_off_ignores_it(make_router: MakeRouter) -> None:
    recent = Position(None, time.time() + 60)
    assert drive(make_router(dialect="sqlite"), recent) == ([], None)
    off = make_router(dialect="sqlite", read_your_writes="off")
    assert drive(off, recent) == ([], off.replicas[0])


def test_a_server_that_is_not_a_standby_counts_as_current(make_router: MakeRouter) -> None:
    router = make_router()
    router.replicas[0].replayed = math.inf
    assert drive(router, Position(10**12, 0.0)) == ([], router.replicas[0])
