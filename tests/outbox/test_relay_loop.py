"""The relay loop's decisions, without a database or a broker: pacing, back-off, once, stop."""

from __future__ import annotations

import threading

import pytest

from uow import InvalidOptionError
from uow.outbox.relay import RelayOptions, run


def test_full_batches_go_on_at_once_and_a_short_one_ends_a_once_run() -> None:
    passes = iter([5, 5, 2, 99])
    assert (
        run(
            lambda n: next(passes),
            lambda r: 0,
            RelayOptions(once=True, batch=5, retention=None),
            threading.Event(),
        )
        == 12
    )


def test_failures_back_off_doubling_up_to_the_cap_then_go_on() -> None:
    stop = threading.Event()
    waits: list[float] = []
    results: list[int | Exception] = [ConnectionError("down") for _ in range(4)]
    results.append(3)

    class Recording(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(timeout or 0.0)
            if len(waits) > 4:
                stop.set()
            return False

        def is_set(self) -> bool:
            return stop.is_set()

    def publish(limit: int) -> int:
        result = results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    total = run(
        publish, lambda r: 0, RelayOptions(interval=0.1, max_backoff=0.5, retention=None), Recording()
    )
    assert total == 3
    assert waits == [0.1, 0.2, 0.4, 0.5, 0.1]  # doubling, capped; then the idle interval


def test_a_once_run_raises_the_failure_and_a_set_stop_runs_nothing() -> None:
    def down(limit: int) -> int:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        run(down, lambda r: 0, RelayOptions(once=True), threading.Event())
    stop = threading.Event()
    stop.set()
    assert run(down, lambda r: 0, RelayOptions(), stop) == 0


def test_prune_runs_at_the_first_pass_and_then_every_prune_every() -> None:
    pruned: list[float] = []
    passes = iter([0, 0])
    stop = threading.Event()

    def publish(limit: int) -> int:
        count = next(passes, None)
        if count is None:
            stop.set()
            return 0
        return count

    def prune(retention: float) -> int:
        pruned.append(retention)
        return 0

    run(publish, prune, RelayOptions(interval=0, retention=60.0, prune_every=3600), stop)
    assert pruned == [60.0]


def test_options_are_checked() -> None:
    with pytest.raises(InvalidOptionError):
        RelayOptions(batch=0)
    with pytest.raises(InvalidOptionError):
        RelayOptions(interval=-1)
