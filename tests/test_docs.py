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


LINK = re.compile(r"\]\(([^)\s#]*)(#[^)\s]*)?\)")


def anchors(md: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped, spaces as hyphens."""
    heads = re.findall(r"^#{1,6} (.+)$", md.read_text(), flags=re.M)
    return {"#" + re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_every_link_of_the_readme_and_the_docs_reaches_a_file_and_heading():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    bad, seen = [], 0
    for md in docs:
        for target, anchor in LINK.findall(md.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            seen += 1
            path = (md.parent / target).resolve() if target else md
            if not path.exists():
                bad.append(f"{md.relative_to(ROOT)}: {target} does not exist")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                bad.append(f"{md.relative_to(ROOT)}: {target}{anchor} names no heading")
    assert seen >= 20 and not bad, bad


def test_the_readme_fits_200_lines_and_its_quick_start_one_screen():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = quick.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert 5 <= len(block) <= 15 and all(len(line) <= 120 for line in block)
    for what in ("make install", "make demo", "dataset=folder", "reproduce-table", "hparams_search", "slurm"):
        assert what in "\n".join(block), what          # install, demo, your own pair, a paper row, a sweep, Slurm


def test_the_reference_keeps_the_headings_other_documents_point_to():
    heads = anchors(ROOT / "docs" / "reference.md")
    for anchor in ("#commands", "#stages-are-data-the-pipeline", "#run-directories", "#the-methods-settings",
                   "#reproducing-the-paper", "#the-built-in-benchmark-datasetdigits", "#your-own-domains",
                   "#segment-your-own-images", "#result-tables", "#slurm-multi-gpu-and-sweeps", "#loggers",
                   "#reproducibility", "#loading-files-you-did-not-make", "#conventions-decided",
                   "#layout-section-4-of-the-paper", "#progress-and-logs"):
        assert anchor in heads, anchor
