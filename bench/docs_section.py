"""Write one `## Title ...` section of docs/benchmarks.md, replacing the old one of the same title."""
from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def write_section(title: str, body: str, docs: Path = DOCS) -> None:
    """`title` is the heading without '## ' (its start identifies the section); `body` follows it."""
    section = f"## {title}\n\n{body.rstrip()}\n"
    text = docs.read_text() if docs.exists() else "# Benchmarks\n\n"
    key = re.escape(title.split(" (")[0])
    pattern = re.compile(rf"## {key}.*?(?=\n## |\Z)", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    docs.parent.mkdir(exist_ok=True)
    docs.write_text(text)
