"""The repository speaks of itself only: no tracked text names a development machine's absolute path, dates a
figure by a work period or cites an issue number (a reader of a clone has none of them), and tests make their
temporary folders through pytest's fixtures (which clean up and stay inside pytest's base folder).

Each check lists every offending `file:line`. Binary files are skipped, and so are notebook image payloads
(base64 text, in which any short pattern can occur by chance)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# This file names the patterns it forbids, so it is the one file the checks skip.
THIS_FILE = Path(__file__).resolve().relative_to(ROOT).as_posix()

# Absolute paths of development machines and scratch space. README's illustrative cluster mount (/shared/...) and
# user-relative paths (~/.cache) do not match; neither does a path inside a URL (preceded by a host name).
ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])/(work|tmp|root|home|Users|scratch)(/|\b)")
# Figures dated by a work period (the word for a work period followed by a number or a range, or "in this ...")
# instead of a commit.
WORK_PERIOD = re.compile(r"\bsessions?[- ]\d|\b(this|that|next|previous|last|earlier|same|one) session\b"
                         r"|\bin session\b", re.IGNORECASE)
# Issue and pull-request references ("issue 12", "issue #12", "issue-15", "(#14)", "PR 3"); hex colours such as
# #1f77b4 and anchors such as #section do not match (a digit run directly followed by a word character is skipped).
ISSUE_REFERENCE = re.compile(r"\b(issues?|PR|pull request)[- ]?#?\d+|(?<![\w&])#\d{1,4}\b", re.IGNORECASE)
# Temporary folders made outside pytest's fixtures (tmp_path, tmp_path_factory).
TEMPORARY_OUTSIDE_FIXTURES = re.compile(r"\btempfile\b|mkdtemp|mkstemp|TemporaryDirectory|gettempdir|[\"']/tmp\b")

CHECKS: dict[str, tuple[re.Pattern[str], str]] = {
    "absolute development paths": (ABSOLUTE_PATH, ""),
    "work-period dating": (WORK_PERIOD, ""),
    "issue references": (ISSUE_REFERENCE, ""),
    "temporary folders outside pytest fixtures": (TEMPORARY_OUTSIDE_FIXTURES, "tests/"),
}


def tracked_files(root: Path) -> list[str] | None:
    """The paths `git ls-files` lists under root, or None where root is not a git checkout."""
    git = shutil.which("git")
    if git is None:
        return None
    listed = subprocess.run([git, "ls-files", "-z"], cwd=root, capture_output=True, check=False)
    if listed.returncode != 0:
        return None
    return [name for name in listed.stdout.decode().split("\0") if name]


def text_lines(path: Path) -> list[str] | None:
    """The file's lines, or None for a binary file (a NUL byte, or not UTF-8)."""
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        return None


def findings(root: Path, files: list[str], pattern: re.Pattern[str], under: str = "") -> list[str]:
    """'file:line: text' for every line of the tracked text files under `under` that `pattern` matches."""
    found = []
    for name in files:
        if name == THIS_FILE or not name.startswith(under):
            continue
        lines = text_lines(root / name)
        for number, line in enumerate(lines or [], start=1):
            if name.endswith(".ipynb") and '"image/' in line:
                continue  # a base64 image payload, not text anyone reads
            if pattern.search(line):
                found.append(f"{name}:{number}: {line.strip()[:160]}")
    return found


@pytest.fixture(scope="module")
def files() -> list[str]:
    """The repository's tracked files (the test is skipped outside a git checkout, e.g. in an sdist)."""
    listed = tracked_files(ROOT)
    if listed is None:
        pytest.skip("not a git checkout")
    return listed


@pytest.mark.parametrize("check", CHECKS, ids=lambda name: name.replace(" ", "_"))
def test_tracked_files_are_clean(check: str, files: list[str]) -> None:
    pattern, under = CHECKS[check]
    found = findings(ROOT, files, pattern, under)
    assert not found, f"{len(found)} line(s) with {check}:\n" + "\n".join(found)


@pytest.mark.parametrize("line, check", [
    ("--workdir /" + "work/runs/core", "absolute development paths"),
    ("output in /" + "tmp/audit_tiny", "absolute development paths"),
    ("measured in sess" + "ion 7 on idle cores", "work-period dating"),
    ("what this sess" + "ion's forward timing says", "work-period dating"),
    ("## Training modes (iss" + "ue 12)", "issue references"),
    ("the merges of #" + "14 and #" + "16", "issue references"),
    ("import temp" + "file", "temporary folders outside pytest fixtures"),
])
def test_each_check_catches_what_it_names(line: str, check: str) -> None:
    assert CHECKS[check][0].search(line)


@pytest.mark.parametrize("line", [
    "--output /shared/runs/sweep",
    "default `~/.cache/secure-assist`",
    "see https://example.org/home/docs",
    'color="#1f77b4"',
    "scope=\"session\"  # built once per test session",
    "a TLS session resumes",
    "upload_wire_bytes_this_session",
    "    tmp_path / \"run\"",
])
def test_the_checks_leave_ordinary_text_alone(line: str) -> None:
    assert not [name for name, (pattern, _) in CHECKS.items() if pattern.search(line)]
