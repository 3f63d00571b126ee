"""Throwaway PostgreSQL clusters for the tests: a data directory and a port of their own.

A cluster is made with ``initdb`` in a fresh directory, started with
``pg_ctl`` on a free port of 127.0.0.1 and removed when stopped. Nothing
here touches a cluster it did not create. As root (CI), the server runs as
the ``postgres`` system user, since PostgreSQL refuses to run as root.

Command line, for scripts that need a server for the length of one command::

    python -m tests.pgcluster run -- python -m benchmarks.run --full

starts a cluster, runs the command with ``UOW_TEST_POSTGRES_URL`` set to it,
and removes the cluster afterwards.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["Cluster", "available", "free_port"]


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def available() -> bool:
    """Return True if PostgreSQL's server programs are installed."""
    return _bin_dir() is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """One throwaway cluster; ``start()`` it, use :attr:`url`, ``stop()`` it."""

    def __init__(self, *, port: int | None = None, base: Path | None = None) -> None:
        bindir = _bin_dir()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed: apt-get install -y postgresql")
        self.bindir = bindir
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="uow-pg-", dir=base))
        self.datadir = self.root / "data"
        self.log = self.root / "server.log"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")

    @property
    def url(self) -> str:
        """A sync SQLAlchemy URL (psycopg 3) for the ``uow`` database."""
        return f"postgresql+psycopg://uow@127.0.0.1:{self.port}/uow"

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / argv[0]), *argv[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, cwd=self.root)

    def init(self, *settings: str) -> None:
        """Create the data directory, with *settings* (``name = value`` lines) appended."""
        self._run(
            "initdb", "-D", str(self.datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"
        )
        lines = [
            f"port = {self.port}",
            "listen_addresses = '127.0.0.1'",
            f"unix_socket_directories = '{self.root}'",
            "max_connections = 300",
            "fsync = off",
            "synchronous_commit = off",
            "full_page_writes = off",
            "shared_buffers = 64MB",
            *settings,
        ]
        with open(self.datadir / "postgresql.conf", "a") as conf:
            conf.write("\n# uow tests\n" + "\n".join(lines) + "\n")

    def start(self, *settings: str) -> Cluster:
        """Make (if needed) and start the cluster; create the ``uow`` role and database."""
        fresh = not self.datadir.exists()
        if fresh:
            self.init(*settings)
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.log), "-w", "-t", "60", "start")
        if fresh:
            self.psql("CREATE ROLE uow LOGIN SUPERUSER")
            self.psql("CREATE DATABASE uow OWNER uow")
        return self

    def psql(self, sql: str, database: str = "postgres") -> str:
        out = self._run(
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-qtAc",
            sql,
        )
        return out.stdout.strip()

    def stop(self, *, remove: bool = True) -> None:
        """Stop the server (fast shutdown) and, with *remove*, delete its directory."""
        if (self.datadir / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "-t", "60", "stop", check=False)
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "run" or argv[1] != "--":
        print("usage: python -m tests.pgcluster run -- COMMAND...", file=sys.stderr)
        return 2
    cluster = Cluster().start()
    try:
        env = dict(os.environ, UOW_TEST_POSTGRES_URL=cluster.url)
        return subprocess.call(argv[2:], env=env)
    finally:
        cluster.stop()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
