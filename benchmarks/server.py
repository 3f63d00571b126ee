"""Real-server runs: uvicorn on 127.0.0.1, a load generator in a second process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
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


def _serve_and_load(pattern: str, url: str) -> dict[str, Any]:
    port = _port()
    env = {**os.environ, "BENCH_URL": url, "BENCH_PATTERN": pattern}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "benchmarks.server_app:app",
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
                httpx.get(base + "/plain", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.load", base, str(SECONDS), str(CONCURRENCY)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        return dict(json.loads(out.stdout))
    finally:
        server.terminate()
        server.wait(timeout=30)


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
