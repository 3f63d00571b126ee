"""``python -m uow.outbox relay module:outbox``: run a relay until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from ._outbox import Outbox

__all__ = ["main"]


def _load(target: str) -> Outbox:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"relay: {target!r} must be module:attribute, such as myapp.tasks:outbox")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    found = importlib.import_module(module_name)
    for part in attr.split("."):
        found = getattr(found, part)
    if not isinstance(found, Outbox):
        raise SystemExit(f"relay: {target} is {found!r}, not a uow.outbox.Outbox")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m uow.outbox", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    relay = commands.add_parser("relay", help="publish the outbox's waiting messages")
    relay.add_argument("target", help="where the Outbox is: module:attribute")
    relay.add_argument("--once", action="store_true", help="publish what is waiting, then exit")
    relay.add_argument("--batch", type=int, default=100, help="rows claimed per pass (default 100)")
    relay.add_argument("--interval", type=float, default=1.0, help="seconds between idle passes (default 1)")
    relay.add_argument(
        "--max-backoff", type=float, default=30.0, help="longest wait while the broker is down"
    )
    relay.add_argument(
        "--retention",
        type=float,
        default=7 * 24 * 3600.0,
        help="seconds published rows are kept before pruning (default 7 days; 0: never prune)",
    )
    relay.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    outbox = _load(args.target)
    stop = threading.Event()

    def stopping(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("uow.outbox").info(
            "relay: %s received, stopping after this pass", signal.Signals(signum).name
        )
        stop.set()

    signal.signal(signal.SIGTERM, stopping)
    signal.signal(signal.SIGINT, stopping)
    published = outbox.relay(
        once=args.once,
        batch=args.batch,
        interval=args.interval,
        max_backoff=args.max_backoff,
        retention=args.retention or None,
        stop=stop,
    )
    logging.getLogger("uow.outbox").info("relay: stopped, %d message(s) published", published)
    return 0


if __name__ == "__main__":
    sys.exit(main())
