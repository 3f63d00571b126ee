"""The slot of the default manager: set by ``uow.configure``, read by the module-level API."""

from __future__ import annotations

from ._transaction import Binding
from .exceptions import NotConfiguredError

__all__ = ["default", "get_default", "set_default"]

_default: Binding | None = None


def default() -> Binding | None:
    """Return the default manager, or None before ``uow.configure``."""
    return _default


def get_default() -> Binding:
    """Return the default manager; raise :class:`NotConfiguredError` if there is none."""
    binding = _default
    if binding is None:
        raise NotConfiguredError(NOT_CONFIGURED)
    return binding


NOT_CONFIGURED = (
    "uow is not configured: call uow.configure(engine) once at start-up "
    "(with an Engine, AsyncEngine or session factory) before using "
    "uow.transactional, uow.unit_of_work or uow.session, or use a "
    "UnitOfWorkManager of your own"
)


def set_default(binding: Binding | None) -> Binding | None:
    """Make *binding* the default (None: no default); return the previous one."""
    global _default
    previous, _default = _default, binding
    return previous
