"""A transactional outbox: messages written in the unit's own transaction, published after it commits.

``Outbox(manager, publisher=...)``; ``outbox.enqueue(task_name, *args,
**kwargs)`` inside a unit; ``outbox.relay()`` (or ``python -m uow.outbox
relay module:outbox``) for what the prompt path missed. Publishers live in
``uow.outbox.celery`` and ``uow.outbox.dramatiq``; importing this package
imports no broker library.
"""

from ._message import JSONSerializer as JSONSerializer
from ._message import OutboxError as OutboxError
from ._message import OutboxMessage as OutboxMessage
from ._message import Publisher as Publisher
from ._message import PublishError as PublishError
from ._message import Serializer as Serializer
from ._message import UnserializableArguments as UnserializableArguments
from ._outbox import Outbox as Outbox
from ._table import handled_table as handled_table
from ._table import outbox_table as outbox_table
from .consumer import first_delivery as first_delivery

__all__ = [
    "JSONSerializer",
    "Outbox",
    "OutboxError",
    "OutboxMessage",
    "PublishError",
    "Publisher",
    "Serializer",
    "UnserializableArguments",
    "first_delivery",
    "handled_table",
    "outbox_table",
]
