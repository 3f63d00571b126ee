"""A real uvicorn process told to stop (SIGTERM) while a request's COMMIT is running.

The COMMIT is held in PostgreSQL: a deferred constraint trigger on the
request's row waits for an advisory lock that the test holds. Once the
server's connection waits on that lock, the test sends SIGTERM and lets the
COMMIT finish either within uvicorn's graceful shutdown
(``--timeout-graceful-shutdown 2``) or after it, when uvicorn has cancelled
the request. Within it, the client gets its 201 and the row is there. After
it, uvicorn cancels the request (uow keeps waiting for the COMMIT instead of
answering) and then ends the process by re-raising SIGTERM: the client gets
no answer, while PostgreSQL still commits the row once the lock is free.
Whatever the timing, the client never gets a 2xx for a row that is not there,
nor a 5xx for a row that is.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, select, text

from tests.field.common import FieldBase, Row, make_engine
from tests.field.servers import CLIENT_TIMEOUT, HOST, SERVERS, Server

pytestmark = pytest.mark.field

#: the advisory lock the trigger waits for at COMMIT (held by the test)
LOCK = 717_017
#: uvicorn's --timeout-graceful-shutdown in tests/field/servers.py
GRACE = 2.0

TRIGGER = (
    f"""CREATE OR REPLACE FUNCTION field_hold_commit() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_advisory_xact_lock_shared({LOCK});
        RETURN NULL;
    END $$""",
    "DROP TRIGGER IF EXISTS field_hold_commit ON field_rows",
    """CREATE CONSTRAINT TRIGGER field_hold_commit AFTER INSERT ON field_rows
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (left(NEW.name, 5) = 'held-') EXECUTE FUNCTION field_hold_commit()""",
)


@pytest.fixture(scope="module")
def pg() -> Iterator[Engine]:
    url = os.environ.get("UOW_TEST_POSTGRES_URL")
    if url is None:
        if os.environ.get("UOW_REQUIRE_POSTGRES") == "1":
            pytest.fail("UOW_REQUIRE_POSTGRES=1 but UOW_TEST_POSTGRES_URL is not set")
        pytest.skip("install PostgreSQL or set UOW_TEST_POSTGRES_URL to run the PostgreSQL cases")
    engine = make_engine(url)
    FieldBase.metadata.create_all(engine)
    with engine.begin() as conn:
        for statement in TRIGGER:
            conn.execute(text(statement))
    yield engine
    with engine.begin() as conn:
        conn.execute(text("DROP TRIGGER IF EXISTS field_hold_commit ON field_rows"))
        conn.execute(text("DROP FUNCTION IF EXISTS field_hold_commit()"))
    engine.dispose()


class Response:
    """The raw bytes a client got for one request on its own connection (b"" if none)."""

    def __init__(self, port: int, request: bytes) -> None:
        self.data = b""
        self._sock = socket.create_connection((HOST, port), timeout=CLIENT_TIMEOUT)
        self._sock.sendall(request)
        self._thread = threading.Thread(target=self._read)
        self._thread.start()

    def _read(self) -> None:
        try:
            while chunk := self._sock.recv(65536):
                self.data += chunk
        except OSError:
            pass
        finally:
            self._sock.close()

    def status(self) -> int | None:
        self._thread.join(CLIENT_TIMEOUT + 5)
        assert not self._thread.is_alive(), "the client is still waiting for its response"
        if not self.data.startswith(b"HTTP/1.1 "):
            return None
        return int(self.data.split(b" ", 2)[1])


def wait_for_held_commit(conn: Connection) -> None:
    """Wait until a server connection's COMMIT waits for the test's advisory lock."""
    deadline = time.monotonic() + 10
    query = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE wait_event_type = 'Lock' AND wait_event = 'advisory' AND query = 'COMMIT'"
    )
    while conn.scalar(query) != 1:
        assert time.monotonic() < deadline, "the request's COMMIT never waited for the lock"
        time.sleep(0.05)


@pytest.mark.parametrize("release_after", [0.5, GRACE + 1.5], ids=["within-grace", "after-grace"])
def test_sigterm_while_the_commit_runs(pg: Engine, tmp_path: Path, release_after: float) -> None:
    uvicorn = next(kind for kind in SERVERS if kind.id == "uvicorn-h11")
    server = Server(uvicorn, pg.url.render_as_string(hide_password=False), tmp_path / "server.log")
    name = f"held-{uuid.uuid4().hex[:12]}"
    server.start()
    try:
        with pg.connect().execution_options(isolation_level="AUTOCOMMIT") as holder:
            holder.scalar(text(f"SELECT pg_advisory_lock({LOCK})"))
            try:
                response = Response(
                    server.port,
                    f"POST /plain/write?name={name} HTTP/1.1\r\nHost: {HOST}\r\n"
                    "Content-Length: 0\r\nConnection: close\r\n\r\n".encode(),
                )
                wait_for_held_commit(holder)
                assert server.proc is not None
                server.proc.send_signal(signal.SIGTERM)
                time.sleep(release_after)
            finally:
                holder.scalar(text(f"SELECT pg_advisory_unlock({LOCK})"))
            status = response.status()
            assert server.proc.wait(timeout=15) is not None
    finally:
        server.stop(grace=1.0)
    with pg.connect() as conn:
        kept = conn.scalar(select(Row.id).where(Row.name == name)) is not None
    log = server.log_text()
    answered = status or 0
    assert not (200 <= answered < 300 and not kept), f"a {status} for a lost write\n{log}"
    assert not (answered >= 500 and kept), f"a {status} for a committed write\n{log}"
    if release_after < GRACE:
        # within the graceful shutdown the request ends as if nothing happened
        assert (status, kept) == (201, True), log
