"""Celery: the outbox's publisher (the message id is the task id) and an idempotent-task decorator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import celery
import wrapt
from sqlalchemy import Table

from .._default import get_manager
from ..manager import UnitOfWorkManager
from ._message import OutboxMessage
from .consumer import first_delivery

__all__ = ["CeleryPublisher", "idempotent"]

F = TypeVar("F", bound=Callable[..., Any])


class CeleryPublisher:
    """Publish outbox messages with ``app.send_task(name, args, kwargs, task_id=message.id)``.

    *send_options* go to every ``send_task`` call (``queue=``, ``retry=``,
    ``retry_policy=``...). By default a refused publish is retried for about
    a second (Celery's own policy) before it fails; the outbox then keeps the
    message for a relay.
    """

    def __init__(self, app: celery.Celery, **send_options: Any) -> None:
        self.app = app
        self.send_options = send_options

    def publish(self, message: OutboxMessage) -> None:
        """Send *message* as a task whose id is the message id."""
        self.app.send_task(
            message.task, args=message.args, kwargs=message.kwargs, task_id=message.id, **self.send_options
        )


def idempotent(table: Table, *, manager: UnitOfWorkManager | None = None) -> Callable[[F], F]:
    """Make a bound Celery task (``bind=True``) run once per task id, in a unit of its own.

    Put it under ``@app.task(bind=True)``. The task's body runs in a unit of
    *manager* (the configured one by default) that first records the task id
    in *table* (``handled_table(metadata)``); a repeated delivery of the same
    id finds it there and returns None without running the body. The record
    and the body's writes commit together, so a failed attempt can run again.
    """

    @wrapt.decorator
    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        task = args[0] if instance is None else instance
        task_id = task.request.id
        units = manager if manager is not None else get_manager()
        with units.unit_of_work():
            if task_id is not None and not first_delivery(table, task_id, manager=units):
                return None
            return wrapped(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
