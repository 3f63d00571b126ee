"""The documentation site: it builds strictly, and it holds no code the tests do not run.

Code on the site comes only from files under ``docs/examples/``, included with
``pymdownx.snippets`` (``--8<-- "docs/examples/...py"``, or ``...py:section``
for the lines between ``# --8<-- [start:section]`` and ``[end:section]``).
The tests in ``tests/test_examples*.py`` run those files.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
PAGES = sorted(DOCS.rglob("*.md"))
EXAMPLE_FILES = sorted(p for p in EXAMPLES.rglob("*.py") if "__pycache__" not in p.parts)

INCLUDE = re.compile(r'^\s*-{1,}8<-{1,}\s+"(?P<target>[^"]+)"\s*$')
FENCE = re.compile(r"^(?P<indent>\s*)(?P<marks>`{3,}|~{3,})\s*(?P<info>[^\s`]*)")
PYTHON_FENCES = {"python", "py", "python3", "py3", "pycon", "pyi"}


def fences(text: str) -> list[tuple[int, str, list[str]]]:
    """Return (line number, info string, body lines) of each fenced code block."""
    found: list[tuple[int, str, list[str]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        marks, info, start = match["marks"], match["info"].lower(), i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(marks):
            body.append(lines[i])
            i += 1
        found.append((start + 1, info, body))
        i += 1
    return found


def includes(text: str) -> list[str]:
    return [m["target"] for line in text.splitlines() if (m := INCLUDE.match(line))]


def test_there_are_pages_and_examples() -> None:
    assert DOCS / "index.md" in PAGES
    assert len(EXAMPLE_FILES) > 20


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_python_on_a_page_is_only_included_from_a_tested_file(page: Path) -> None:
    """No ```python block with code typed into the page: code lives in docs/examples/."""
    for line, info, body in fences(page.read_text()):
        if info.split("{")[0] not in PYTHON_FENCES:
            continue
        typed = [b for b in body if b.strip() and not INCLUDE.match(b)]
        assert not typed, (
            f"{page.relative_to(ROOT)}:{line}: a python block with code in the page; put the code "
            f"in a file under docs/examples/, run it from tests/test_examples*.py, and include it "
            f'with --8<-- "docs/examples/<file>.py" instead: {typed[0]!r}'
        )


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_every_include_exists(page: Path) -> None:
    for target in includes(page.read_text()):
        path, _, section = target.partition(":")
        file = ROOT / path
        assert file.is_file(), f"{page.relative_to(ROOT)} includes {path}, which does not exist"
        assert file.resolve().is_relative_to(EXAMPLES), f"{page.relative_to(ROOT)} includes {path}"
        if section:
            assert re.fullmatch(r"[a-z][-_0-9a-z]*", section), f"{target}: name sections, not line numbers"
            text = file.read_text()
            for kind in ("start", "end"):
                assert f"# --8<-- [{kind}:{section}]" in text, f"{path} has no [{kind}:{section}] marker"


@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=[str(p.relative_to(EXAMPLES)) for p in EXAMPLE_FILES])
def test_every_example_is_shown_and_run(example: Path) -> None:
    relative = example.relative_to(EXAMPLES).as_posix()
    pages = "\n".join(p.read_text() for p in PAGES)
    assert f"examples/{relative}" in pages, f"no page includes or links docs/examples/{relative}"
    tests = "\n".join(p.read_text() for p in sorted((ROOT / "tests").glob("test_examples*.py")))
    run = (
        f'"{relative}"' in tests
        or f'"{example.name}"' in tests
        or (example.parent.name == "testing" and 'EXAMPLES / "testing"' in tests)
    )
    assert run, f"no tests/test_examples*.py test runs docs/examples/{relative}"


def test_sections_are_balanced() -> None:
    for example in EXAMPLE_FILES:
        text = example.read_text()
        starts = re.findall(r"# --8<-- \[start:([-_0-9a-z]+)\]", text)
        ends = re.findall(r"# --8<-- \[end:([-_0-9a-z]+)\]", text)
        assert sorted(starts) == sorted(ends), example
        assert len(starts) == len(set(starts)), f"{example}: a section name used twice"


def _snippet_is_in(snippet: str, example: Path) -> None:
    """Every import of ``snippet`` is imported by ``example``; every other line is in it, in order."""
    script = example.read_text().splitlines()
    imports = [s for s in script if s.startswith(("import ", "from "))]
    position = 0
    for line in snippet.splitlines():
        if not line.strip():
            continue
        if line.startswith(("import ", "from ")):
            names = line.split(" import ", 1)[1] if " import " in line else line.removeprefix("import ")
            for name in names.split(","):
                assert any(re.search(rf"\b{re.escape(name.strip())}\b", s) for s in imports), (
                    f"README imports {name.strip()!r}; {example.relative_to(ROOT)} does not"
                )
            continue
        try:
            position = script.index(line, position) + 1
        except ValueError:
            pytest.fail(f"README line not in {example.relative_to(ROOT)}, in order: {line!r}")


def test_readme_snippets_match_the_tested_quick_start_examples() -> None:
    """README's snippets are the quick start script's and FastAPI app's code (imports aside)."""
    snippets = [part.split("```", 1)[0] for part in (ROOT / "README.md").read_text().split("```python\n")[1:]]
    assert len(snippets) == 2, "README has a script snippet and a FastAPI snippet"
    _snippet_is_in(snippets[0], EXAMPLES / "quickstart" / "script.py")
    _snippet_is_in(snippets[1], EXAMPLES / "quickstart" / "fastapi_app.py")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


@pytest.mark.skipif(
    sys.version_info < (3, 11),
    reason="the docs toolchain's extensions (pymdownx.highlight under mkdocstrings) break on 3.10; "
    "the site is built by the runs on 3.11+ (CI: 3.13)",
)
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    """The site builds with `mkdocs build --strict`: every page, link, include and API entry resolves."""
    missing = [
        name
        for name in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
        if not _installed(name)
    ]
    if missing:
        message = f"the docs extra is not installed: pip install -e '.[docs]' (missing {', '.join(missing)})"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI builds the site")
        pytest.skip(message)
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("uow.transactional", "uow.starlette.UnitOfWorkMiddleware", "uow.testing.rollback_after"):
        assert f'id="{name}"' in api, f"the API reference lacks {name}"


def test_no_file_keeps_a_merge_conflict_marker() -> None:
    """A conflict left in a page still builds (markdown renders the markers): look for them."""
    tracked = subprocess.run(
        ["git", "ls-files", "*.md", "*.py", "*.toml", "*.yml", "scripts/*", ".ci/*"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    marker = re.compile(r"^(<{7} |>{7} |={7}$)", re.MULTILINE)
    assert [name for name in tracked if marker.search((ROOT / name).read_text(errors="replace"))] == []
