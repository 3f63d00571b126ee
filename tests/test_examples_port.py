"""The "port a real app" page: the app before and after the port, each with its own test suite.

Both live in ``docs/examples/port/`` (``before/`` and ``after/``: models, a
CRUD module, the app, its ``conftest.py`` and tests) and are run here as their
authors run them, with pytest in a process of their own, on a SQLite file and
on PostgreSQL. The "before" tests show what the helpers' commits do (half a
sign-up kept, a welcome mail for it); the "after" tests show one unit per
request, the mail sent after the commit, and a write kept by a 400 through
``REQUIRES_NEW``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import uow
from tests.conftest import Item, names, pg_url
from tests.examples import EXAMPLES, ROOT, client
from uow.starlette import UnitOfWorkMiddleware

PORT = EXAMPLES / "port"


def run_suite(folder: Path, backend: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    url = pg_url() if backend == "postgresql" else f"sqlite:///{tmp_path / 'app.db'}"
    # this checkout's uow, whichever one the virtualenv has installed
    environ.update(PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1", DATABASE_URL=url or "")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize(("folder", "passed"), [("before", 4), ("after", 6)])
def test_the_app_passes_its_own_tests(folder: str, passed: int, backend: str, tmp_path: Path) -> None:
    done = run_suite(PORT / folder, backend, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{passed} passed" in done.stdout, done.stdout


def test_the_ported_app_type_checks_under_mypy_strict(tmp_path: Path) -> None:
    folder = PORT / "after"
    names = ("models.py", "crud.py", "main.py", "conftest.py", "test_main.py")
    environ = {**os.environ, "MYPYPATH": str(folder)}
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "mypy")]
        + [str(folder / name) for name in names],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --- what the testing page says of fixtures that keep a session of their own ---------------


@pytest.mark.anyio
async def test_a_fixtures_uncommitted_write_holds_up_the_request_until_it_commits(engine: Engine) -> None:
    """The request's INSERT of the same unique name waits on the fixture's open transaction."""
    uow.configure(engine)

    def create(request: Request) -> PlainTextResponse:
        uow.session.add(Item(name="ada"))
        try:
            uow.session.flush()
        except IntegrityError:
            raise HTTPException(409, "taken") from None
        return PlainTextResponse("created", status_code=201)

    app = Starlette(
        routes=[Route("/", create, methods=["POST"])], middleware=[Middleware(UnitOfWorkMiddleware)]
    )
    fixture = Session(engine)  # a module-scoped fixture's own session
    fixture.add(Item(name="ada"))
    fixture.flush()  # what a helper does after the port: no commit
    responses: list[httpx.Response] = []
    try:
        async with client(app) as http, anyio.create_task_group() as tasks:

            async def post() -> None:
                responses.append(await http.post("/"))

            tasks.start_soon(post)
            await anyio.sleep(1)
            assert responses == []  # still waiting for the fixture's transaction
            await anyio.to_thread.run_sync(fixture.commit)  # the fix: commit the fixture's writes
    finally:
        fixture.close()
    assert [r.status_code for r in responses] == [409]  # answered at once, and correctly
    assert names(engine) == ["ada"]
