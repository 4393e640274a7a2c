"""Every reason the repository gives can be read in the repository.

Comments and docs may cite the project's own files (``docs/nats-pitfalls.md#pull-request-heartbeats``)
and public sources by address (``nats.py#986``, a URL), but not notes that live elsewhere: the design
notes the project started from are summarised, in our words, under ``docs/``. A citation of such a
note, a section sign (``§``, which only ever pointed into them), a doc path that does not exist or an
anchor that is not a heading of that doc fails here.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
THIS = Path(__file__).resolve()

#: Notes that are not in the repository, by the names they were cited with.
EXTERNAL_NOTES = re.compile(
    r"(?<![\w/-])pitfalls(?:\.md|\s*§)"
    r"|fechatter-events(?:\.md|\s*§)"
    r"|(?<![\w/-])web-client(?:\.md|\s*§)"
    r"|\bdecisions\.md|(?<![\w/-])seed\.md|style-models|shared/reference"
    r"|\bevents doc\b"
    r"|§"
    # An issue number without its repository cannot be looked up (``owner/repo#N`` can).
    r"|\bissue \d+",
    re.IGNORECASE,
)
#: A relative path to a Markdown file, with an optional anchor; URLs are skipped below.
DOC_PATH = re.compile(r"(?<![\w./:-])((?:[\w.-]+/)*[\w-]+\.md)(?:#([\w-]+))?")
#: A repository path in backticks inside docs/, e.g. `bridge/pull.py`.
CODE_PATH = re.compile(
    r"`((?:bridge|events|gateway|settings|workers|fechatter_notify|tests|bench|deploy|docs)/[\w/.-]+)`"
)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
SKIP_DIRS = {
    ".git", ".venv", "build", "dist", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis",
}


def repository_files() -> list[Path]:
    """Tracked files plus new ones not ignored (what the next commit may hold)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT, check=True, capture_output=True,
        ).stdout
        paths = [ROOT / name for name in out.decode().split("\0") if name]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an unpacked sdist)
        paths = [
            p for p in ROOT.rglob("*")
            if p.is_file() and not SKIP_DIRS.intersection(p.relative_to(ROOT).parts)
            and not p.relative_to(ROOT).parts[0].endswith(".egg-info")
        ]
    return [p for p in paths if p.is_file() and p.resolve() != THIS]


def text_of(path: Path) -> str | None:
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[`*_]", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    return {slug(h) for h in HEADING.findall(doc.read_text(encoding="utf-8"))}


def line_problems(rel: str, line: str) -> list[str]:
    """What is wrong with the citations on one line of the file ``rel`` (repository-relative)."""
    problems = [f"cites a note the repository does not hold: {m.group(0)!r}" for m in EXTERNAL_NOTES.finditer(line)]
    # URLs never match DOC_PATH: every character inside one follows a word character, '/', ':' or '.'.
    for match in DOC_PATH.finditer(line):
        target, anchor = match.group(1), match.group(2)
        doc = next((d for d in (ROOT / target, (ROOT / rel).parent / target) if d.is_file()), None)
        if doc is None:
            problems.append(f"cites {target}, which is not in the repository")
        elif anchor and anchor not in anchors(doc):
            problems.append(f"cites {target}#{anchor}, which is not a heading there")
    if rel.startswith("docs/"):
        missing = [m.group(1) for m in CODE_PATH.finditer(line) if not (ROOT / m.group(1)).exists()]
        problems += [f"names {name}, which does not exist" for name in missing]
    return problems


def citations() -> list[str]:
    """Every problem in the repository, as ``file:line: what``."""
    problems: list[str] = []
    for path in repository_files():
        text = text_of(path)
        if text is None:
            continue
        rel = path.relative_to(ROOT).as_posix()
        for number, line in enumerate(text.splitlines(), 1):
            problems += [f"{rel}:{number}: {what}" for what in line_problems(rel, line)]
    return problems


def test_every_cited_document_is_in_the_repository() -> None:
    problems = citations()
    assert not problems, "\n".join(problems)


def md(stem: str) -> str:
    """A Markdown file name, assembled here so that this file cites no document it only names as an example."""
    return f"{stem}.md"


#: A doc path that is not in the repository, for the checks below.
MISSING_DOC = f"docs/{md('absent')}"


@pytest.mark.parametrize(
    ("line", "flagged"),
    [
        ("heartbeat clamp (pitfalls §2)", True),
        (f"see {md('pitfalls')} §17", True),
        (f"after {md('fechatter-events')} §4", True),
        (f"({md('web-client')} §7)", True),
        (f"Per {md('decisions')}, the consumer", True),
        ("as the events doc says", True),
        ("Every example of issue 3", True),
        ("see docs/nats-pitfalls.md#pull-request-heartbeats", False),
        ("docs/web-client-contract.md#frame-format", False),
        ("nats.py#986 and redis/redis-py#2028", False),
    ],
)
def test_the_check_tells_an_external_note_from_a_repository_doc(line: str, flagged: bool) -> None:
    assert bool(EXTERNAL_NOTES.search(line)) is flagged


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (f"see {MISSING_DOC}", f"{MISSING_DOC}, which is not in the repository"),
        ("see docs/nats-pitfalls.md#no-such-heading", "docs/nats-pitfalls.md#no-such-heading, which is not a heading"),
        ("see docs/nats-pitfalls.md#pull-request-heartbeats", None),
        ("see the [README](README.md) and https://github.com/nats-io/nats.py/blob/main/README.md", None),
    ],
)
def test_a_missing_doc_or_anchor_is_caught(line: str, problem: str | None) -> None:
    found = line_problems("bridge/pull.py", line)
    if problem is None:
        assert found == []
    else:
        assert len(found) == 1 and problem in found[0], found


def test_docs_name_only_files_that_exist() -> None:
    assert line_problems("docs/nats-pitfalls.md", "see `bridge/pull.py`") == []
    assert line_problems("docs/nats-pitfalls.md", "see `bridge/no_such.py`") == [
        "names bridge/no_such.py, which does not exist"]
