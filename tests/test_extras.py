"""The optional dependencies are split by job, and the suite copes with only the ``test`` extra.

``test`` is what the suite needs to run; ``docs`` (the mkdocs toolchain) and
``bench`` (the libraries uow is compared with) are extras of their own, which
``scripts/bootstrap`` installs for ``scripts/test``. Without them, the tests
that need them skip and name the extra.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib

ROOT = Path(__file__).resolve().parent.parent
DOCS_TOOLCHAIN = {"mkdocs", "mkdocs-material", "mkdocstrings"}
COMPARED = {"fastapi-sqlalchemy", "advanced-alchemy"}


def extras() -> dict[str, set[str]]:
    if sys.version_info < (3, 11):
        pytest.skip("tomllib is Python 3.11's")
    else:
        table = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        return {
            extra: {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in reqs}
            for extra, reqs in table.items()
        }


def test_the_test_extra_brings_neither_the_docs_toolchain_nor_the_compared_libraries() -> None:
    found = extras()
    assert not found["test"] & (DOCS_TOOLCHAIN | COMPARED | {"matplotlib"})
    assert {"pytest", "sqlmodel", "fastapi", "psycopg", "asyncpg", "aiosqlite"} <= found["test"]
    assert found["docs"] >= DOCS_TOOLCHAIN
    assert found["bench"] >= COMPARED | {"matplotlib"}


def test_bootstrap_installs_what_scripts_test_runs() -> None:
    bootstrap = (ROOT / "scripts" / "bootstrap").read_text()
    assert 'pip install -q -e ".[test,docs,bench]"' in bootstrap
    assert "scripts/bootstrap" in (ROOT / "scripts" / "test").read_text()


def test_without_docs_and_bench_their_tests_skip_and_name_the_extra(tmp_path: Path) -> None:
    hide = tmp_path / "hide"
    hide.mkdir()
    absent = ("fastapi_sqlalchemy", "advanced_alchemy", "mkdocs", "material", "mkdocstrings", "matplotlib")
    (hide / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in absent)  # as if not installed
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    environ.update(PYTHONPATH=f"{hide}{os.pathsep}{ROOT}", PYTHONDONTWRITEBYTECODE="1")
    environ.pop("CI", None)  # CI makes a missing docs toolchain a failure
    needing = ["tests/test_examples_migration.py", "tests/test_docs.py::test_mkdocs_build_strict"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *needing],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    skips = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skips) == 4, done.stdout
    assert sum("'.[bench]'" in line for line in skips) == 3, skips
    if sys.version_info >= (3, 11):  # (on 3.10 the site's build skips for a reason of its own)
        assert sum("'.[docs]'" in line for line in skips) == 1, skips
