"""The documentation's examples run: the quick starts, the concepts, the FAQ, the testing page.

Every example is a file under ``docs/examples/`` that the pages include, so
what a page shows is what these tests run. Each example is loaded from its
path, fresh, inside a temporary directory: the relative ``sqlite:///x.db``
URLs the examples use land there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

import uow
import uow.otel
from tests.examples import EXAMPLES, Load, client, example_loader, rows

load_example = example_loader()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """A uvicorn process serving an example: its base URL, and its output once it stopped."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.log = ""


@contextlib.contextmanager
def uvicorn_running(app: str, cwd: Path, env: dict[str, str], probe: str) -> Iterator[Served]:
    """Run ``uvicorn app`` in *cwd* on a free port until the block ends; GET *probe* to wait for it."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    served = Served(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(served.base + probe, timeout=1)
                break
            except httpx.TransportError:
                if server.poll() is not None or time.monotonic() > deadline:
                    server.kill()
                    pytest.fail(f"uvicorn did not start:\n{server.communicate()[0]}")
                time.sleep(0.1)
        yield served
    finally:
        server.terminate()
        try:
            served.log = server.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            server.kill()
            served.log = server.communicate()[0]


# --- quick start -------------------------------------------------------------


def test_quickstart_script_runs_as_a_newcomer_runs_it(tmp_path: Path) -> None:
    shutil.copy(EXAMPLES / "quickstart" / "script.py", tmp_path / "script.py")
    for _ in range(2):  # and again: a second run adds a second row
        done = subprocess.run(
            [sys.executable, "-W", "error", "script.py"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    assert "welcome mail sent to user 2" in done.stdout
    assert rows(tmp_path / "app.db", "SELECT id, email FROM users") == [
        (1, "ada@example.com"),
        (2, "ada@example.com"),
    ]


def test_quickstart_script_main(
    load_example: Load, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = load_example("quickstart/script.py")
    module.main()
    out = capsys.readouterr().out
    assert "welcome mail sent to user 1" in out  # the on_commit hook ran
    assert rows(tmp_path / "app.db", "SELECT email FROM users") == [("ada@example.com",)]  # bob rolled back


@pytest.mark.anyio
async def test_quickstart_fastapi_commits_a_row(load_example: Load, tmp_path: Path) -> None:
    module = load_example("quickstart/fastapi_app.py")
    async with client(module.app) as http:
        created = await http.post("/users", params={"email": "ada@example.com"})
        assert created.status_code == 201
        assert created.json() == {"id": 1}
        taken = await http.post("/users", params={"email": "ada@example.com"})
        assert taken.status_code == 409
        listed = await http.get("/users")
        assert listed.json() == [{"id": 1, "email": "ada@example.com"}]
    assert rows(tmp_path / "app.db", "SELECT id, email FROM users") == [(1, "ada@example.com")]


def test_quickstart_fastapi_under_uvicorn(tmp_path: Path) -> None:
    """What the quick start tells a newcomer to do: run it with uvicorn, POST, find the row."""
    shutil.copy(EXAMPLES / "quickstart" / "fastapi_app.py", tmp_path / "fastapi_app.py")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with uvicorn_running("fastapi_app:app", tmp_path, env, "/users") as served:
        response = httpx.post(f"{served.base}/users", params={"email": "ada@example.com"}, timeout=10)
        assert response.status_code == 201, response.text
        assert httpx.get(f"{served.base}/users", timeout=10).json() == [{"id": 1, "email": "ada@example.com"}]
    assert rows(tmp_path / "app.db", "SELECT id, email FROM users") == [(1, "ada@example.com")]


@pytest.mark.anyio
async def test_quickstart_starlette(load_example: Load, tmp_path: Path) -> None:
    module = load_example("quickstart/starlette_app.py")
    async with client(module.app, raise_app_exceptions=False) as http:
        response = await http.post("/users", params={"email": "ada@example.com"})
        assert response.status_code == 201
        duplicate = await http.post("/users", params={"email": "ada@example.com"})
        assert duplicate.status_code == 500  # the flush failed in the endpoint: rolled back
    # the request committed, then the background task ran in its own unit and committed too
    assert rows(tmp_path / "app.db", "SELECT email, welcomed FROM users") == [("ada@example.com", 1)]


def test_demo_script(load_example: Load, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = load_example("demo.py")
    result = module.main(tmp_path / "demo.db")
    assert result == ["ada@example.com", "cy@example.com", "dee@example.com"]
    out = capsys.readouterr().out
    assert "never printed" not in out
    assert "savepoint rolled back: IntegrityError" in out


@pytest.mark.anyio
async def test_complete_fastapi_app(
    load_example: Load, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'complete.db'}")
    module = load_example("fastapi_app.py")
    async with client(module.app) as http:
        created = await http.post("/users", params={"email": "ada@example.com"})
        assert created.status_code == 201
        user_id = created.json()["id"]
        assert (await http.post("/users", params={"email": "ada@example.com"})).status_code == 409
        assert (await http.get(f"/users/{user_id}")).json() == {"id": user_id, "email": "ada@example.com"}
        assert (await http.get("/users/999")).status_code == 404
        assert (await http.get("/health")).json() == {"status": "ok"}
    assert module.sent == [user_id]  # the background task ran once: the 409 rolled back, no task
    assert rows(tmp_path / "complete.db", "SELECT email FROM users") == [("ada@example.com",)]


# --- concepts ------------------------------------------------------------------


def test_concepts_unit(load_example: Load, tmp_path: Path) -> None:
    module = load_example("concepts/unit.py")
    module.main()
    assert rows(tmp_path / "unit.db", "SELECT email FROM users ORDER BY id") == [
        ("ada@example.com",),
        ("bob@example.com",),
        ("dee@example.com",),
        ("fay@example.com",),
    ]
    assert rows(tmp_path / "unit.db", "SELECT name FROM profiles") == [("Dee",)]
    assert rows(tmp_path / "audit.db", "SELECT text FROM events") == [("fay signed up",)]


def test_concepts_propagation(load_example: Load, tmp_path: Path) -> None:
    module = load_example("concepts/propagation.py")
    module.main()
    assert rows(tmp_path / "propagation.db", "SELECT item FROM orders") == [("book",)]
    assert rows(tmp_path / "propagation.db", "SELECT message FROM audit_log ORDER BY id") == [
        ("order attempt: book",),
        ("order attempt: unicorn",),
    ]


def test_concepts_savepoints(load_example: Load, tmp_path: Path) -> None:
    module = load_example("concepts/savepoints.py")
    module.main()
    assert rows(tmp_path / "savepoints.db", "SELECT email FROM users ORDER BY id") == [
        ("ada@example.com",),
        ("bob@example.com",),
    ]


def test_concepts_hooks(load_example: Load, caplog: pytest.LogCaptureFixture) -> None:
    module = load_example("concepts/hooks.py")
    module.main()
    assert module.outbox[-1] == "now"  # when_no_unit="run" ran it at once
    assert any("robust on_commit hook" in r.getMessage() for r in caplog.records)


def test_concepts_retry(load_example: Load) -> None:
    module = load_example("concepts/retry.py")
    module.main()
    assert module.attempts == ["ada", "ada"]
    assert module.confirmations == ["ada"]


def test_concepts_read_only(load_example: Load) -> None:
    load_example("concepts/read_only.py").main()


def test_concepts_isolation(load_example: Load) -> None:
    load_example("concepts/isolation.py").main()


def test_concepts_threads_and_async(load_example: Load, tmp_path: Path) -> None:
    load_example("concepts/threads_async.py").main()
    assert rows(tmp_path / "threads_async.db", "SELECT email FROM users WHERE id = 1") == [
        ("ada@example.com",)
    ]


# --- FAQ -------------------------------------------------------------------------

FAQ = [
    ("not_configured", uow.NotConfiguredError),
    ("no_active_unit", uow.NoActiveUnitOfWork),
    ("invalid_option", uow.InvalidOptionError),
    ("not_decoratable", uow.NotDecoratableError),
    ("propagation", uow.PropagationError),
    ("isolation", uow.IsolationLevelConflict),
    ("unexpected_rollback", uow.UnexpectedRollback),
    ("read_only", uow.ReadOnlyViolation),
    ("session_kind", uow.SessionKindError),
    ("blocking", uow.BlockingSessionUse),
    ("hook", uow.HookError),
    ("session_ended", uow.SessionEnded),
    ("savepoint_conflict", uow.SavepointConflict),
    ("partial_commit", uow.PartialCommit),
    ("direct_end", uow.DirectEndError),
    ("unit_timeout", uow.UnitTimeout),
    ("timeout_conflict", uow.TimeoutConflict),
    ("timeout_unsupported", uow.TimeoutUnsupported),
    ("reused_block", uow.UnitOfWorkError),
]


def run(result: object) -> object:
    return asyncio.run(result) if asyncio.iscoroutine(result) else result


def test_faq_every_error_class_has_an_example() -> None:
    documented = {error for _, error in FAQ}
    public = {
        getattr(uow, name)
        for name in uow.__all__
        if isinstance(getattr(uow, name), type) and issubclass(getattr(uow, name), uow.UnitOfWorkError)
    }
    assert public <= documented, public - documented


@pytest.mark.parametrize(("name", "error"), FAQ, ids=[name for name, _ in FAQ])
def test_faq_mistake_raises_and_fix_works(
    load_example: Load, tmp_path: Path, name: str, error: type[Exception], caplog: pytest.LogCaptureFixture
) -> None:
    module = load_example("faq/errors.py")
    module.Base.metadata.create_all(module.engine)
    if name != "not_configured":
        uow.configure(module.engine)
        module.register("ada@example.com")
    with pytest.raises(error) as raised:
        run(getattr(module, f"{name}_mistake")())
    if error is uow.UnitOfWorkError:
        assert type(raised.value) is uow.UnitOfWorkError
    run(getattr(module, f"{name}_fix")())
    emails = {email for (email,) in rows(tmp_path / "errors.db", "SELECT email FROM users")}
    expected_after_fix = {
        "no_active_unit": "bob@example.com",
        "invalid_option": "cy@example.com",
        "propagation": "dee@example.com",
        "unexpected_rollback": "eve@example.com",
        "read_only": "fay@example.com",
        "hook": "hal@example.com",
        "session_ended": "jo@example.com",
        "savepoint_conflict": "lee@example.com",
        "partial_commit": "mia@example.com",
        "direct_end": "nia@example.com",
        "timeout_conflict": "ola@example.com",
    }
    if name in expected_after_fix:
        assert expected_after_fix[name] in emails
    if name == "unexpected_rollback":
        assert emails == {"ada@example.com", "eve@example.com"}  # the mistake kept nothing
    if name == "hook":
        assert "gus@example.com" in emails  # the commit stood, though the hook failed
    if name == "not_decoratable":
        assert run(module.not_decoratable_fix()) == ["ada@example.com"]


def test_faq_script(load_example: Load, capsys: pytest.CaptureFixture[str]) -> None:
    load_example("faq/errors.py").main()
    out = capsys.readouterr().out
    for _, error in FAQ:
        assert f"{error.__name__}: " in out


# --- testing page ------------------------------------------------------------


def test_testing_page_examples_pass_under_pytest(tmp_path: Path) -> None:
    """The testing page's conftest and tests are a real test suite: run it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLES / "testing")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "7 passed" in done.stdout, done.stdout
    assert not (tmp_path / "app.db").exists()  # the app's own database was never touched


def test_observability_logger_and_events(load_example: Load, capsys: pytest.CaptureFixture[str]) -> None:
    module = load_example("observability/logging_and_events.py")
    try:
        module.main()
    finally:
        logging.getLogger("uow").removeHandler(module.metrics)
        logging.getLogger("uow").setLevel(logging.NOTSET)
    assert capsys.readouterr().out.splitlines() == [
        "second sign-up failed: IntegrityError",
        "savepoint commit propagation=NESTED retries=0",
        "unit commit propagation=REQUIRED retries=0",
        "unit rollback propagation=REQUIRED retries=0",
        "session began / COMMIT / session began / ROLLBACK",
    ]


def test_observability_opentelemetry_trace_tree(
    load_example: Load, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        module = load_example("observability/tracing.py")
        module.main()
    finally:
        uow.otel.uninstrument()
        SQLAlchemyInstrumentor().uninstrument()
    savepoint = f"code.function.name={module.__name__}.grant_welcome_credit"
    assert capsys.readouterr().out.splitlines() == [
        "201 {'id': 1, 'users': 1}",
        "POST /users  uow.commit_mode=autocommit uow.decision=commit uow.outcome=commit "
        "uow.response_status=201 http.status_code=201",
        "    uow.unit  uow.propagation=REQUIRES_NEW uow.read_only=False uow.retries=0 uow.outcome=commit",
        "        connect",
        "        BEGIN traced.db  db.statement=BEGIN",
        "        INSERT traced.db  db.statement=INSERT INTO users (email) VALUES (?)",
        "        uow.savepoint  uow.propagation=NESTED uow.read_only=False uow.retries=0 "
        f"{savepoint} uow.outcome=commit",
        "            SAVEPOINT traced.db  db.statement=SAVEPOINT sa_savepoint_1",
        "            INSERT traced.db  db.statement=INSERT INTO credits (user_id) VALUES (?)",
        "            RELEASE traced.db  db.statement=RELEASE SAVEPOINT sa_savepoint_1",
        "        SELECT traced.db  db.statement=SELECT count(users.id) AS count_1 FROM users",
        "    POST /users http send  http.status_code=201",
        "    POST /users http send",
    ]


def test_observability_timeouts(load_example: Load, capsys: pytest.CaptureFixture[str]) -> None:
    module = load_example("observability/timeouts.py")
    module.main()
    assert capsys.readouterr().out.splitlines() == [
        "timed out: OperationalError",
        "request answered 503",
        "reports kept: []",
    ]


def test_observability_timeouts_under_uvicorn(tmp_path: Path) -> None:
    """The example's app on a real server: a request that runs out of time is answered 503."""
    shutil.copy(EXAMPLES / "observability" / "timeouts.py", tmp_path / "timeouts.py")
    env = {**os.environ, "PYTHONPATH": str(Path(uow.__file__).resolve().parents[1])}  # this checkout's uow
    subprocess.run(
        [sys.executable, "-c", "import timeouts; timeouts.Base.metadata.create_all(timeouts.engine)"],
        cwd=tmp_path,
        env=env,
        check=True,
        timeout=60,
    )
    with uvicorn_running("timeouts:app", tmp_path, env, "/") as served:
        started = time.monotonic()
        response = httpx.post(f"{served.base}/report", timeout=30)
        assert 1.0 <= time.monotonic() - started < 15
        assert response.status_code == 503, response.text
        assert "ran out of time" in response.text
    assert "UnitTimeout" in served.log  # the server logged the error, after the 503 went out
    assert rows(tmp_path / "timeouts.db", "SELECT title FROM reports") == []
