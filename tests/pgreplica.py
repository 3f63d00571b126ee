"""A throwaway PostgreSQL primary with a real streaming replica, for the replica tests.

The primary is a :class:`~tests.pgcluster.Cluster` of its own (never the
suite's shared one) set up for replication; the replica is made from it with
``pg_basebackup -R`` into a second data directory and started on another
port. Lag is injected for real by pausing WAL replay on the replica.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.pgcluster import Cluster, _bin_dir

__all__ = ["Pair", "ReplicaCluster", "can_replicate"]

PRIMARY_SETTINGS = (
    "wal_level = replica",
    "max_wal_senders = 4",
    "wal_keep_size = 64MB",
    # a replica that waits for replay never cancels its own readers' queries
    "max_standby_streaming_delay = -1",
    # a COMMIT's WAL is flushed (so sent to the replica) before it returns, as in production;
    # asynchronous commit would hold it back until the WAL writer's next round (up to 600 ms)
    "synchronous_commit = on",
)


def can_replicate() -> bool:
    """Return True if PostgreSQL's server programs include pg_basebackup."""
    bindir = _bin_dir()
    return bindir is not None and (bindir / "pg_basebackup").exists()


class ReplicaCluster(Cluster):
    """A hot standby of *primary*, streaming from it."""

    def __init__(self, primary: Cluster, *, base: Path | None = None) -> None:
        super().__init__(base=base)
        self.primary = primary

    def start(self, *settings: str) -> ReplicaCluster:
        if not self.datadir.exists():
            self._run(
                "pg_basebackup",
                "-R",
                "-D",
                str(self.datadir),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.primary.port),
                "-U",
                "postgres",
                "-X",
                "stream",
                "-c",
                "fast",
            )
            lines = [
                f"port = {self.port}",
                f"unix_socket_directories = '{self.root}'",
                "hot_standby = on",
                "wal_receiver_status_interval = 1s",
                *settings,
            ]
            with open(self.datadir / "postgresql.conf", "a") as conf:
                conf.write("\n# uow replica\n" + "\n".join(lines) + "\n")
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.log), "-w", "-t", "60", "start")
        return self

    def stop_server(self) -> None:
        """Stop the server and keep its data directory, so that it can start again."""
        self.stop(remove=False)

    def pause_replay(self) -> None:
        self.psql("SELECT pg_wal_replay_pause()")
        while self.psql("SELECT pg_get_wal_replay_pause_state()") != "paused":
            time.sleep(0.01)

    def resume_replay(self) -> None:
        self.psql("SELECT pg_wal_replay_resume()")

    def replayed(self) -> str:
        return self.psql("SELECT pg_last_wal_replay_lsn()")

    def catch_up(self, timeout: float = 60.0) -> None:
        """Wait until the replica has replayed everything the primary has written so far."""
        target = self.primary.psql("SELECT pg_current_wal_insert_lsn()")
        deadline = time.monotonic() + timeout
        while self.psql(f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn") != "t":
            if time.monotonic() > deadline:
                raise TimeoutError(f"the replica did not reach {target} in {timeout} s")
            time.sleep(0.02)


class Pair:
    """A primary and one replica; :meth:`start` both, :meth:`stop` both (always removed)."""

    def __init__(self) -> None:
        self.primary = Cluster()
        self.replica = ReplicaCluster(self.primary)

    def start(self) -> Pair:
        try:
            self.primary.start(*PRIMARY_SETTINGS)
            self.replica.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.replica.stop()
        self.primary.stop()
