"""What the outbox carries and hands on: messages, publishers, serializers, and its errors."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol, runtime_checkable

from ..exceptions import UnitOfWorkError

__all__ = [
    "JSONSerializer",
    "OutboxError",
    "OutboxMessage",
    "PublishError",
    "Publisher",
    "Serializer",
    "UnserializableArguments",
    "utcnow",
]


class OutboxError(UnitOfWorkError):
    """Base of the errors the outbox raises."""


class UnserializableArguments(OutboxError, TypeError):
    """Raised by ``enqueue`` when the task's arguments cannot be serialized."""


class PublishError(OutboxError):
    """Raised by a relay's ``once`` pass when the broker refused messages; they stay in the table."""


@dataclass(frozen=True)
class OutboxMessage:
    """One message read back from the outbox table, ready to publish."""

    #: the stable id: the broker's task/message id, the consumer's deduplication key
    id: str
    #: the task's name, as the consumer registered it
    task: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: when the unit that wrote it ran (UTC, naive)
    created_at: datetime | None = None


@runtime_checkable
class Publisher(Protocol):
    """Sends one message to a queue; raise if the broker did not take it.

    ``publish`` is called from a worker thread (never from the event loop),
    once per message; it must use ``message.id`` as the broker's message id,
    so that consumers can deduplicate. Another queue is one class with this
    method.
    """

    def publish(self, message: OutboxMessage) -> None: ...


class Serializer(Protocol):
    """Turns a task's positional and keyword arguments into text and back."""

    def dumps(self, value: Any) -> str: ...

    def loads(self, text: str) -> Any: ...


class JSONSerializer:
    """JSON, strictly: what ``json.dumps`` refuses is refused at ``enqueue`` time."""

    def dumps(self, value: Any) -> str:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)

    def loads(self, text: str) -> Any:
        return json.loads(text)


def utcnow() -> datetime:
    """The time the outbox stores: naive UTC (the same on every database)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)
