"""Real ASGI server processes for the field matrix: started, watched, stopped.

Each server is started with ``subprocess.Popen`` in a session of its own on a
free port of 127.0.0.1, its output going to a log file; it is ready when
``GET /health`` answers. Stopping sends SIGTERM to the process, then SIGKILL
to its process group (workers included) after a bound.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from tests.field.common import DB_URL_ENV
from tests.pgcluster import free_port

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.field.app:app"
HOST = "127.0.0.1"

#: seconds any one request may take before it counts as hung
CLIENT_TIMEOUT = 10.0
#: seconds a server may take to start answering
START_TIMEOUT = 30.0
#: seconds a server gets to leave after SIGTERM before SIGKILL
STOP_GRACE = 5.0


@dataclass(frozen=True)
class ServerKind:
    id: str
    argv: Callable[[int], list[str]]


def _uvicorn(http: str, loop: str) -> Callable[[int], list[str]]:
    def argv(port: int) -> list[str]:
        return [
            sys.executable, "-m", "uvicorn", APP, "--host", HOST, "--port", str(port),
            "--http", http, "--loop", loop, "--lifespan", "on", "--log-level", "warning",
            "--no-access-log", "--timeout-graceful-shutdown", "2",
        ]  # fmt: skip

    return argv


def _hypercorn(worker_class: str) -> Callable[[int], list[str]]:
    def argv(port: int) -> list[str]:
        return [
            sys.executable, "-m", "hypercorn", "-k", worker_class, "-b", f"{HOST}:{port}",
            "--log-level", "WARNING", "--graceful-timeout", "2", APP,
        ]  # fmt: skip

    return argv


def _granian(port: int) -> list[str]:
    return [
        sys.executable, "-m", "granian", "--interface", "asgi", "--host", HOST, "--port", str(port),
        "--workers", "1", "--log-level", "warning", "--no-access-log", APP,
    ]  # fmt: skip


SERVERS = (
    ServerKind("uvicorn-h11", _uvicorn("h11", "asyncio")),
    ServerKind("uvicorn-httptools", _uvicorn("httptools", "asyncio")),
    ServerKind("uvicorn-uvloop", _uvicorn("httptools", "uvloop")),
    ServerKind("hypercorn-asyncio", _hypercorn("asyncio")),
    ServerKind("hypercorn-trio", _hypercorn("trio")),
    ServerKind("granian", _granian),
)


class ServerFailed(Exception):
    """The server process would not start (its log is in the message)."""


class Server:
    """One server process hosting the field app; restartable if it wedges."""

    def __init__(self, kind: ServerKind, db_url: str, log_path: Path) -> None:
        self.kind = kind
        self.db_url = db_url
        self.log_path = log_path
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        #: how many times a wedged process was replaced
        self.restarts = 0

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def client(self) -> httpx.Client:
        """A client for the server; one connection per request (a 500 may end a kept-alive one)."""
        return httpx.Client(base_url=self.base, timeout=CLIENT_TIMEOUT, headers={"connection": "close"})

    # -- life -------------------------------------------------------------------------------------

    def start(self) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            DB_URL_ENV: self.db_url,
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
        }
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log.write(f"=== starting {self.kind.id} on port {self.port}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            self.kind.argv(self.port),
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop(grace=1.0)
            raise

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise ServerFailed(
                    f"{self.kind.id} exited with {self.proc.returncode} while starting:\n{self.log_text()}"
                )
            if self.responsive(timeout=1.0):
                return
            if time.monotonic() > deadline:
                raise ServerFailed(
                    f"{self.kind.id} did not answer GET /health within {START_TIMEOUT:.0f} s:\n"
                    f"{self.log_text()}"
                )
            time.sleep(0.05)

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM, then SIGKILL (to the whole process group) after *grace* seconds."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                # the group: granian's worker process too, which would outlive its parent
                self._kill_group(proc.pid)
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    @staticmethod
    def _kill_group(pgid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)

    def ensure_responsive(self) -> None:
        """Replace the process if it no longer answers (a previous test wedged it)."""
        if self.proc is not None and self.proc.poll() is None and self.responsive(timeout=3.0):
            return
        self.restarts += 1
        self.stop(grace=1.0)
        self.start()

    # -- looking at it ----------------------------------------------------------------------------

    def responsive(self, timeout: float) -> bool:
        try:
            with httpx.Client(timeout=timeout) as http:
                return http.get(f"{self.base}/health").status_code == 200
        except httpx.HTTPError:
            return False

    def log_text(self, tail: int = 6000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"(no log: {e})"
        return text[-tail:]

    def raw_connection(self) -> socket.socket:
        conn = socket.create_connection((HOST, self.port), timeout=CLIENT_TIMEOUT)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn
