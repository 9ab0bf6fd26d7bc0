"""Every Python snippet of the README and docs/ runs as written, and quietly.

Each ```python block runs in a fresh interpreter, in a directory of its own (snippets
write to relative paths such as ``out/...``), with ``PADDLENLP_EXT_HOME`` shared by the
module, so the embedded model is built once. Shell blocks are not run here; the
README's two Quick-start commands are test_readme's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A fenced python block, possibly indented (inside a list item): the closing fence has
# the opening one's indentation.
PYTHON_BLOCK = re.compile(r"^(?P<indent>[ \t]*)```python[ \t]*\n(?P<code>.*?)^(?P=indent)```[ \t]*$", re.S | re.M)
GLOG_LINE = re.compile(r"^[IW]\d{4} ")  # glog's INFO and WARNING lines: I1201 21:45:57.670310 ...
PADDLENLP_INFO = "[    INFO]"  # PaddleNLP's logger at INFO
# A comment giving a pass report (``print(report.summary())  # removed 9 copies ...``):
# the snippet must print it.
REPORT_COMMENT = re.compile(r"#\s*(removed \d+ copies from \d+ loops; kept \d+)")


def python_snippets() -> list[tuple[str, str]]:
    """``(where, code)`` for every python block: where is ``file:line``."""
    found = []
    for document in DOCUMENTS:
        text = document.read_text(encoding="utf-8")
        for match in PYTHON_BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append((f"{document.relative_to(ROOT)}:{line}", textwrap.dedent(match.group("code"))))
    return found


SNIPPETS = dict(python_snippets())


@pytest.fixture(scope="module")
def run_snippet(tmp_path_factory):
    """``run_snippet(where)``: the finished process of that snippet, run once per module."""
    home = tmp_path_factory.mktemp("paddlenlp_ext_home")
    environment = {**os.environ, "PADDLENLP_EXT_HOME": str(home)}
    environment.pop("PADDLENLP_EXT_VERBOSE", None)  # the library's own default: quiet
    done = {}

    def run(where: str) -> subprocess.CompletedProcess:
        if where not in done:
            workdir = tmp_path_factory.mktemp("snippet")
            done[where] = subprocess.run([sys.executable, "-c", SNIPPETS[where]], cwd=workdir, env=environment,
                                         capture_output=True, text=True, timeout=300)
        return done[where]

    return run


def test_the_documents_have_python_snippets():
    assert len(SNIPPETS) >= 4, sorted(SNIPPETS)
    for where, code in SNIPPETS.items():
        assert "import " in code, where


@pytest.mark.parametrize("where", sorted(SNIPPETS))
def test_snippet_runs(run_snippet, where):
    result = run_snippet(where)
    assert result.returncode == 0, f"{where} failed:\n{result.stderr[-3000:]}"
    for report in REPORT_COMMENT.findall(SNIPPETS[where]):
        assert report in result.stdout, f"{where} says {report!r} but printed:\n{result.stdout[-2000:]}"


@pytest.mark.parametrize("where", sorted(SNIPPETS))
def test_snippet_is_quiet(run_snippet, where):
    """No glog INFO/WARNING lines and no PaddleNLP INFO lines on stderr."""
    stderr = run_snippet(where).stderr
    chatter = [line for line in stderr.splitlines() if GLOG_LINE.match(line) or PADDLENLP_INFO in line]
    assert not chatter, f"{where} wrote Paddle/PaddleNLP log lines to stderr:\n" + "\n".join(chatter[:20])


def test_the_readme_links_every_document_and_each_exists():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\((docs/[^)#]+)\)", readme))
    assert all((ROOT / path).is_file() for path in linked), sorted(linked)
    documents = {f"docs/{path.name}" for path in (ROOT / "docs").glob("*.md")}
    assert documents <= linked, sorted(documents - linked)


def test_documents_name_only_documents_that_exist():
    for document in DOCUMENTS:
        text = document.read_text(encoding="utf-8")
        for name in re.findall(r"`(?:docs/)?([\w.-]+\.md)`", text):
            assert (ROOT / "docs" / name).is_file() or (ROOT / name).is_file(), (document.name, name)
