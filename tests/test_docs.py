"""The README stays a five-minute read that keeps what a newcomer needs (the two commands, the command-line table,
a delimited headline), CI runs the README's test command, and every relative link of the README and docs/ leads
to a file of the repository."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
MAX_README_LINES = 250


def test_readme_is_short_and_keeps_the_essentials():
    text = README.read_text()
    assert len(text.splitlines()) <= MAX_README_LINES
    for needle in ("bash run.sh main", "bash run.sh test", "| command | what it does |", "docs/results.md",
                   "docs/reliability.md", "docs/performance.md", "docs/real-models.md"):
        assert needle in text, needle
    assert re.search(r"!\[[^\]]+\]\(docs/[\w-]+grid\.png\)", text), "the README shows the demo's before/after grid"
    begin, end = text.index("<!-- headline results: begin"), text.index("<!-- headline results: end -->")
    assert begin < text.index("## Headline results") < end
    assert "exec bash run.sh test" in (ROOT / ".ci" / "run").read_text()


def test_every_relative_link_leads_to_a_file():
    broken = []
    for doc in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for target in LINK.findall(doc.read_text()):
            if "://" not in target and not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert not broken, broken
