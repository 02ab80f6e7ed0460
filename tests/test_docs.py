"""The project's documents are inside the project: nothing in the repo points at a file outside it."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT = (".py", ".yaml", ".yml", ".md", ".toml", ".sh", ".txt", ".cfg", ".ini")
OUTSIDE = [
    (re.compile(r"\bDESIGN(\.md)?\b"), "a design document that does not ship with the repo"),
    # (the optional real-Cityscapes test fixture next to a developer checkout is data, not a document)
    (re.compile(r"\.\./shared(?!/fixtures)\b|/work/shared|\bshared/(DESIGN|tools)"), "a path outside the repo"),
    (re.compile(r"\.\./\.library|/work/\.library"), "the developers' tool library"),
]
SECTION = re.compile(r"docs/method\.md §(\d+)")


def tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    me = Path(__file__).resolve()
    files = [ROOT / f for f in out if f.endswith(TEXT) or f in ("Makefile", ".ci/run")]
    return [f for f in files if f.is_file() and f.resolve() != me]


def test_no_file_refers_to_a_document_outside_the_repo():
    bad = []
    for f in tracked_text_files():
        for i, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            for pattern, what in OUTSIDE:
                if pattern.search(line):
                    bad.append(f"{f.relative_to(ROOT)}:{i}: {what}: {line.strip()[:100]}")
    assert not bad, "\n".join(bad)


def test_every_reference_to_the_method_notes_names_an_existing_section():
    doc = (ROOT / "docs" / "method.md").read_text()
    sections = {int(m) for m in re.findall(r"^## §(\d+) ", doc, flags=re.M)}
    assert sections == set(range(1, len(sections) + 1)) and len(sections) >= 8
    refs = []
    for f in tracked_text_files():
        refs += [(f, int(n)) for n in SECTION.findall(f.read_text(errors="replace"))]
    assert len(refs) >= 20                                   # code, configs and README cite it
    missing = [f"{f.relative_to(ROOT)}: §{n}" for f, n in refs if n not in sections]
    assert not missing, missing
