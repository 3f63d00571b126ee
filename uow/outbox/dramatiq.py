"""Dramatiq: the outbox's second publisher (the message id is Dramatiq's message id)."""

from __future__ import annotations

import time
from typing import Any

import dramatiq

from ._message import OutboxMessage

__all__ = ["DramatiqPublisher"]


class DramatiqPublisher:
    """Publish outbox messages to a Dramatiq *broker*, the task name as the actor's name.

    Messages go to *queue_name* (the queue of the actors they name;
    ``"default"`` unless an actor sets another). An actor finds the id with
    ``dramatiq.middleware.CurrentMessage.get_current_message().message_id``
    (add the ``CurrentMessage`` middleware to the worker's broker).
    """

    def __init__(self, broker: dramatiq.Broker, queue_name: str = "default", **options: Any) -> None:
        self.broker = broker
        self.queue_name = queue_name
        self.options = options

    def publish(self, message: OutboxMessage) -> None:
        """Enqueue *message* with its id as the Dramatiq message id."""
        self.broker.enqueue(
            dramatiq.Message(
                queue_name=self.queue_name,
                actor_name=message.task,
                args=tuple(message.args),
                kwargs=message.kwargs,
                options=dict(self.options),
                message_id=message.id,
                message_timestamp=int(time.time() * 1000),
            )
        )
