"""The README's, docs/' and docs/studies/' relative links lead somewhere: the file exists and, for a #anchor into a Markdown
file, a heading of that file makes that anchor (GitHub's rule: lower case, punctuation dropped, spaces to
hyphens, -1, -2 … for repeats). A renamed heading otherwise breaks its links silently."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def anchors(markdown: str) -> set[str]:
    found, seen, in_code = set(), {}, False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        heading = None if in_code else re.match(r"#{1,6}\s+(.*)", line)
        if heading:
            anchor = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            found.add(anchor if anchor not in seen else f"{anchor}-{seen[anchor]}")
            seen[anchor] = seen.get(anchor, 0) + 1
    return found


def test_anchor_rule_matches_githubs():
    text = "# Title\n## Why students missed the small classes: diagnosis, and the fix measured\n## Title\n" \
           "```\n# not a heading\n```\n## Per-case latency (torch / ONNX Runtime / int8)\n"
    assert anchors(text) == {"title", "why-students-missed-the-small-classes-diagnosis-and-the-fix-measured",
                             "title-1", "per-case-latency-torch--onnx-runtime--int8"}


def test_every_relative_link_in_the_docs_resolves():
    broken = []
    docs = ROOT / "docs"
    for page in [ROOT / "README.md", *sorted(docs.glob("*.md")), *sorted(docs.glob("studies/*.md")),
                 docs / "benchmarks" / "INDEX.md"]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text()):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, broken
