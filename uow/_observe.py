"""The observer slot: what the drivers tell an observer (``uow.otel``) about each unit.

``observer`` is ``None`` unless an integration installs one, and the drivers
look at it once when a unit or savepoint begins: a unit that began unobserved
costs nothing more. An observer returns an :class:`Observation` per outermost
unit and per savepoint (joined units have none); the drivers report the
unit's end to it, and the block that entered the unit calls
:meth:`Observation.leave` in the same context, once the unit has ended.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Literal, Protocol

from ._options import UnitOptions

__all__ = ["Observation", "Observer", "RollbackCause", "observer"]

#: why a boundary rolled back: its body raised; a joined unit failed (rollback-only); a
#: read-only unit left writes behind; the COMMIT (or RELEASE) failed; the request's decision
#: (a status that does not commit, a disconnect, no response)
RollbackCause = Literal["exception", "rollback_only", "read_only_violation", "commit_failed", "request"]


class Observation(Protocol):
    """What the drivers report about one outermost unit or savepoint."""

    def commit_started(self) -> None:
        """The outermost unit's COMMIT begins."""

    def commit_ended(self, error: BaseException | None) -> None:
        """The COMMIT (and the session's close) ended, with *error* if it failed."""

    def hook_failed(self, fn: Callable[[], Any], error: BaseException, committed: bool) -> None:
        """An ``on_commit`` (*committed*) or ``on_rollback`` hook raised *error*."""

    def end(
        self,
        committed: bool,
        cause: RollbackCause | None,
        error: BaseException | None,
        served_by: str | None = None,
    ) -> None:
        """The unit ended: committed (released) or rolled back for *cause*; *error* leaves it.

        *served_by* names the database that served it, on a manager with replicas.
        """

    def decided(self, commit_mode: str, status: int | None, commit: bool, committed: bool) -> None:
        """A request's unit ended by the middleware's decision (*status*: None if no response started)."""

    def outside(self) -> AbstractContextManager[None]:
        """Return a block that runs as the caller of the unit (a response sent after its end)."""

    def leave(self) -> None:
        """Leave the unit's context: called once, in the context that entered the unit."""


class Observer(Protocol):
    """Makes an :class:`Observation` for each unit that begins."""

    def start(
        self,
        *,
        options: UnitOptions,
        savepoint: bool,
        db_system: str | None,
        function: Any,
        attempt: int,
        retried: BaseException | None,
    ) -> Observation:
        """A unit (or a savepoint) began; the body runs next, in the caller's context."""


#: the installed observer (``uow.otel.instrument()``), or None: nothing is observed
observer: Observer | None = None
