"""The repository's documentation is self-contained (issue 15): no file under README.md, docs/ or
src/ points outside the repository, every relative link in the Markdown files resolves to a file
inside it, and every section a file cites (``§8.2``) exists in docs/protocol.md."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SKIP_DIRS = {"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}

OUTSIDE = re.compile(r"\.\./shared|shared/spec")
MD_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
SECTION_REF = re.compile(r"§ ?(\d+(?:\.\d+)?)")
HEADING = re.compile(r"^#{2,3} (\d+(?:\.\d+)?)[. ]")
LIST_ITEM = re.compile(r"^(\d+)\. ")


def _files(*, under: tuple[str, ...] = ("README.md", "docs", "src")) -> Iterator[Path]:
    """The project's own text files under the given paths (no caches, no build metadata)."""
    for name in under:
        path = ROOT / name
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        for p in candidates:
            rel = p.relative_to(ROOT).parts
            if not p.is_file() or SKIP_DIRS & set(rel) or any(x.endswith(".egg-info") for x in rel):
                continue
            if p.suffix in {".md", ".py", ".toml", ".txt", ".json", ".cfg", ""}:
                yield p


def outside_references(text: str) -> list[str]:
    """Lines of ``text`` that point at files outside the repository."""
    return [line.strip() for line in text.splitlines() if OUTSIDE.search(line)]


def broken_links(md: Path, text: str) -> list[str]:
    """Relative links of a Markdown file that leave the repository or name no existing file."""
    bad = []
    for target in MD_LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL (http:, mailto:) or an anchor in the same file
        path = (md.parent / target.split("#", 1)[0]).resolve()
        if not path.is_relative_to(ROOT) or not path.exists():
            bad.append(target)
    return bad


def protocol_sections(text: str) -> set[str]:
    """Section numbers of docs/protocol.md: its numbered headings, and §10's numbered invariants
    (cited as §10.N)."""
    sections: set[str] = set()
    current = ""
    for line in text.splitlines():
        m = HEADING.match(line)
        if m:
            current = m.group(1)
            sections.add(current)
        elif current == "10" and (item := LIST_ITEM.match(line)):
            sections.add(f"10.{item.group(1)}")
    return sections


def test_nothing_points_outside_the_repository() -> None:
    found = {
        str(p.relative_to(ROOT)): refs
        for p in _files()
        if (refs := outside_references(p.read_text(encoding="utf-8", errors="replace")))
    }
    assert not found, f"references outside the repository: {found}"


def test_markdown_links_resolve_inside_the_repository() -> None:
    found = {
        str(p.relative_to(ROOT)): bad
        for p in _files()
        if p.suffix == ".md" and (bad := broken_links(p, p.read_text(encoding="utf-8")))
    }
    assert not found, f"links that leave the repository or name no file: {found}"


def test_cited_protocol_sections_exist() -> None:
    sections = protocol_sections((ROOT / "docs" / "protocol.md").read_text(encoding="utf-8"))
    assert {"1", "4.2", "8.2", "8.6", "10.8", "13"} <= sections
    missing = {}
    for p in _files(under=("README.md", "docs", "src", "tests")):
        cited = set(SECTION_REF.findall(p.read_text(encoding="utf-8", errors="replace")))
        if cited - sections:
            missing[str(p.relative_to(ROOT))] = sorted(cited - sections)
    assert not missing, f"sections cited but not in docs/protocol.md: {missing}"


def test_the_checks_catch_what_they_look_for(tmp_path: Path) -> None:
    """The three checks flag a link outside the repository, a missing file and a missing
    section (so that the tests above can fail)."""
    assert outside_references("see [the spec](../shared/spec/protocol.md) §8.2") != []
    assert outside_references("see [the spec](docs/protocol.md) §8.2") == []
    md = ROOT / "docs" / "x.md"
    links = (
        "[a](protocol.md) [b](../../outside.md) [c](nosuch.md) [d](https://example.org) [e](#top)"
    )
    assert broken_links(md, links) == ["../../outside.md", "nosuch.md"]
    sections = protocol_sections("## 8. A\n### 8.2 B\n## 10. C\n1. one\n2. two\n## 11. D\n1. x\n")
    assert sections == {"8", "8.2", "10", "10.1", "10.2", "11"}
