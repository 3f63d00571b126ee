"""uow: transactional units of work for SQLAlchemy, sync and async."""

from ._default import configure as configure
from ._default import current_session as current_session
from ._default import get_manager as get_manager
from ._default import on_commit as on_commit
from ._default import on_rollback as on_rollback
from ._default import reset_defaults as reset_defaults
from ._default import session as session
from ._default import unit_of_work as unit_of_work
from ._options import Propagation as Propagation
from .decorators import UnitOfWork as UnitOfWork
from .decorators import transactional as transactional
from .exceptions import BlockingSessionUse as BlockingSessionUse
from .exceptions import DirectEndError as DirectEndError
from .exceptions import HookError as HookError
from .exceptions import InvalidOptionError as InvalidOptionError
from .exceptions import IsolationLevelConflict as IsolationLevelConflict
from .exceptions import NoActiveUnitOfWork as NoActiveUnitOfWork
from .exceptions import NotConfiguredError as NotConfiguredError
from .exceptions import NotDecoratableError as NotDecoratableError
from .exceptions import PartialCommit as PartialCommit
from .exceptions import PropagationError as PropagationError
from .exceptions import ReadOnlyViolation as ReadOnlyViolation
from .exceptions import SavepointConflict as SavepointConflict
from .exceptions import SessionEnded as SessionEnded
from .exceptions import SessionKindError as SessionKindError
from .exceptions import TimeoutConflict as TimeoutConflict
from .exceptions import TimeoutUnsupported as TimeoutUnsupported
from .exceptions import UnexpectedRollback as UnexpectedRollback
from .exceptions import UnitOfWorkError as UnitOfWorkError
from .exceptions import UnitOfWorkWarning as UnitOfWorkWarning
from .exceptions import UnitTimeout as UnitTimeout
from .manager import UnitOfWorkManager as UnitOfWorkManager
from .sqlite import enable_savepoints as enable_sqlite_savepoints
from .threads import run_sync as run_sync
from .threads import set_finisher_threads as set_finisher_threads

__version__ = "0.1.0"

__all__ = [
    "BlockingSessionUse",
    "DirectEndError",
    "HookError",
    "InvalidOptionError",
    "IsolationLevelConflict",
    "NoActiveUnitOfWork",
    "NotConfiguredError",
    "NotDecoratableError",
    "PartialCommit",
    "Propagation",
    "PropagationError",
    "ReadOnlyViolation",
    "SavepointConflict",
    "SessionEnded",
    "SessionKindError",
    "TimeoutConflict",
    "TimeoutUnsupported",
    "UnexpectedRollback",
    "UnitOfWork",
    "UnitOfWorkError",
    "UnitOfWorkManager",
    "UnitOfWorkWarning",
    "UnitTimeout",
    "configure",
    "current_session",
    "enable_sqlite_savepoints",
    "get_manager",
    "on_commit",
    "on_rollback",
    "reset_defaults",
    "run_sync",
    "session",
    "set_finisher_threads",
    "transactional",
    "unit_of_work",
]
