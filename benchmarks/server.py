"""Real-server runs: uvicorn on 127.0.0.1, a load generator in a second process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from benchmarks import apps

ROOT = Path(__file__).resolve().parents[1]
SERVER_PATTERNS = ("uow UnitOfWorkMiddleware (Starlette)", "FastAPI Depends(get_db)", "hand-written (floor)")
SECONDS = 8.0
CONCURRENCY = 16


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(
    pattern: str,
    url: str,
    pool: int = 5,
    ready_path: str = "/plain",
    app: str = "benchmarks.server_app:app",
    **env_vars: str,
) -> Iterator[str]:
    """Serve *pattern* on *url* from a uvicorn process on 127.0.0.1; yield its base URL; stop it.

    *app* is the ASGI app uvicorn imports; *env_vars* go to its environment.
    """
    port = _port()
    env = {**os.environ, "BENCH_URL": url, "BENCH_PATTERN": pattern, "BENCH_POOL": str(pool), **env_vars}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            app,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=ROOT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(base + ready_path, timeout=1).raise_for_status()
                break
            except (httpx.TransportError, httpx.HTTPStatusError):
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"the server for {pattern!r} did not start") from None
                time.sleep(0.1)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _serve_and_load(pattern: str, url: str) -> dict[str, Any]:
    with serving(pattern, url) as base:
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.load", base, str(SECONDS), str(CONCURRENCY)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        return dict(json.loads(out.stdout))


def run_servers(workdir: Path) -> dict[str, dict[str, Any]]:
    """Return {database: {pattern: result}} for SQLite and (if configured) PostgreSQL."""
    databases = {"sqlite": f"sqlite:///{workdir / 'server.db'}"}
    pg = os.environ.get("UOW_BENCH_POSTGRES_URL") or os.environ.get("UOW_TEST_POSTGRES_URL")
    if pg:
        databases["postgresql"] = pg
    results: dict[str, dict[str, Any]] = {}
    for db, url in databases.items():
        apps.prepare(url).dispose()
        results[db] = {pattern: _serve_and_load(pattern, url) for pattern in SERVER_PATTERNS}
    return results
