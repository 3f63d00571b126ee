"""Random trees of nested units against a model of the expected outcome (hypothesis).

Each node opens a unit with a propagation kind, inserts one row, runs its
children (catching a child's failure when the tree says so) and may fail at
the end. A pure-Python model of Spring's semantics — joined units share
their boundary and mark it rollback-only, NESTED units are savepoints,
REQUIRES_NEW units commit on their own — predicts which rows survive and
whether the root raises; the database must agree.

On SQLite, REQUIRES_NEW is only generated at the root: an inner independent
transaction would need a second writer while the outer one holds SQLite's
write lock, which waits and fails with "database is locked" by design.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete

import uow
from tests.conftest import Item, names
from uow import Propagation


class Boom(Exception):
    pass


@dataclass
class Node:
    propagation: Propagation
    fail: bool
    caught: bool
    children: list[Node] = field(default_factory=list)
    name: str = ""


def trees(allow_requires_new_inside: bool) -> st.SearchStrategy[Node]:
    inner_kinds = [Propagation.REQUIRED, Propagation.NESTED]
    if allow_requires_new_inside:
        inner_kinds.append(Propagation.REQUIRES_NEW)

    def node(kinds: list[Propagation], children: st.SearchStrategy[list[Node]]) -> st.SearchStrategy[Node]:
        return st.builds(Node, st.sampled_from(kinds), st.booleans(), st.booleans(), children)

    inner = st.recursive(
        node(inner_kinds, st.just([])),
        lambda kids: node(inner_kinds, st.lists(kids, max_size=3)),
        max_leaves=8,
    )
    return node(
        [Propagation.REQUIRED, Propagation.REQUIRES_NEW, Propagation.NESTED], st.lists(inner, max_size=3)
    )


# --- the model ----------------------------------------------------------------


@dataclass
class Boundary:
    rows: list[str] = field(default_factory=list)
    rollback_only: bool = False


class Failed(Exception):
    """The model's stand-in for any exception leaving a unit."""


def model(node: Node, boundary: Boundary | None, committed: set[str]) -> None:
    if node.propagation is Propagation.REQUIRED and boundary is not None:
        try:
            body(node, boundary, committed)
        except Failed:
            boundary.rollback_only = True
            raise
        return
    own = Boundary()
    body(node, own, committed)  # an exception discards `own`
    if own.rollback_only:
        raise Failed  # UnexpectedRollback
    if node.propagation is Propagation.NESTED and boundary is not None:
        boundary.rows.extend(own.rows)  # released savepoint
    else:
        committed.update(own.rows)


def body(node: Node, boundary: Boundary, committed: set[str]) -> None:
    boundary.rows.append(node.name)
    for child in node.children:
        if child.caught:
            with contextlib.suppress(Failed):
                model(child, boundary, committed)
        else:
            model(child, boundary, committed)
    if node.fail:
        raise Failed


# --- the real thing -------------------------------------------------------------


def execute(node: Node) -> None:
    with uow.unit_of_work(propagation=node.propagation) as session:
        session.add(Item(name=node.name))
        session.flush()
        for child in node.children:
            if child.caught:
                with contextlib.suppress(Boom, uow.UnexpectedRollback):
                    execute(child)
            else:
                execute(child)
        if node.fail:
            raise Boom


def name_all(root: Node) -> None:
    counter = itertools.count()
    stack = [root]
    while stack:
        n = stack.pop()
        n.name = f"n{next(counter)}"
        stack.extend(n.children)


def check(engine: Engine, root: Node) -> None:
    name_all(root)
    with engine.begin() as conn:
        conn.execute(delete(Item))
    expected: set[str] = set()
    try:
        model(root, None, expected)
        model_raised = False
    except Failed:
        model_raised = True
    try:
        execute(root)
        raised = False
    except (Boom, uow.UnexpectedRollback):
        raised = True
    assert raised == model_raised
    assert names(engine) == sorted(expected)
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.fixture
def model_engine(manager: uow.UnitOfWorkManager, engine: Engine, backend: str) -> tuple[Engine, str]:
    return engine, backend


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_unit_trees_match_the_model(model_engine: tuple[Engine, str], data: st.DataObject) -> None:
    engine, backend = model_engine
    root = data.draw(trees(allow_requires_new_inside=backend == "postgresql"))
    check(engine, root)
