"""The SQLModel page's example app: its own test suite passes on SQLite and PostgreSQL, and it type-checks.

The app, its ``conftest.py`` and its tests live in ``docs/examples/sqlmodel/``;
they are run here as a user runs them, with pytest in a process of their own
(``uow_test`` comes from uow's pytest plugin), and checked with ``mypy --strict``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import pg_url
from tests.examples import EXAMPLES, ROOT

FOLDER = EXAMPLES / "sqlmodel"


def run(command: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    # this checkout's uow, whichever one the virtualenv has installed
    environ.update(PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1", **env)
    return subprocess.run(
        command, cwd=cwd, env=environ, capture_output=True, text=True, timeout=300, check=False
    )


def test_the_sqlmodel_app_passes_its_own_tests(backend: str, tmp_path: Path) -> None:
    env = {"TEST_DATABASE_URL": pg_url() or ""} if backend == "postgresql" else {}
    done = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(FOLDER)], tmp_path, **env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed" in done.stdout, done.stdout
    assert not (tmp_path / "heroes.db").exists()  # the app's own database was never touched


def test_the_sqlmodel_app_type_checks_under_mypy_strict(tmp_path: Path) -> None:
    files = [str(FOLDER / name) for name in ("app.py", "conftest.py", "test_app.py")]
    done = run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "mypy"), *files],
        ROOT,
        MYPYPATH=str(FOLDER),
    )
    assert done.returncode == 0, done.stdout + done.stderr
