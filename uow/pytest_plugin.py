"""The pytest plugin: the ``uow_test`` fixture (registered through the ``pytest11`` entry point).

Opt-in by fixture: define a ``uow_engine`` fixture returning your sync
``Engine`` and request ``uow_test``; see :mod:`uow.testing`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.engine import Engine

from .testing import TestTransaction, rollback_after

__all__ = ["uow_test"]


@pytest.fixture
def uow_test(request: pytest.FixtureRequest) -> Iterator[TestTransaction]:
    """Run the test in a transaction on the ``uow_engine`` fixture's engine, rolled back after."""
    engine = request.getfixturevalue("uow_engine")
    if not isinstance(engine, Engine):
        raise TypeError(
            "the uow_test fixture needs a `uow_engine` fixture returning a sync Engine; "
            "for an AsyncEngine use `async with uow.testing.async_rollback_after(engine)`"
        )
    with rollback_after(engine) as test:
        yield test
