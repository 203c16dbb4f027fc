"""Parsing clauses out of a chapter's Markdown."""

from __future__ import annotations

import re
from dataclasses import dataclass

LEVELS = ("MUST", "SHOULD", "MAY")

_HEADING = re.compile(r"^###\s+`(?P<id>[a-z0-9_]+(?:\.[a-z0-9_]+)+)`\s+\((?P<level>[A-Z]+)\)\s*$")
_ANY_HEADING = re.compile(r"^#{1,6}\s")


@dataclass(frozen=True)
class Clause:
    """One requirement of the specification."""

    id: str
    level: str
    chapter: str
    summary: str
    text: str

    def render(self) -> str:
        """The clause as printed by ``normspec spec ID``."""
        body = f"\n\n{self.text}" if self.text else ""
        return f"{self.id} ({self.level}, {self.chapter})\n\n{self.summary}{body}\n"


def parse_chapter(markdown: str, chapter: str) -> list[Clause]:
    """All clauses of one chapter, in order; malformed clause headings raise ValueError."""
    lines = markdown.splitlines()
    found: list[Clause] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("### `"):
            match = _HEADING.match(line)
            if match is None:
                raise ValueError(f"{chapter}.md:{i + 1}: malformed clause heading: {line!r}")
            level = match["level"]
            if level not in LEVELS:
                raise ValueError(f"{chapter}.md:{i + 1}: level must be one of {LEVELS}: {level}")
            j = i + 1
            while j < len(lines) and not _ANY_HEADING.match(lines[j]):
                j += 1
            paragraphs = "\n".join(lines[i + 1 : j]).strip().split("\n\n")
            summary = " ".join(paragraphs[0].split())
            if not summary:
                raise ValueError(f"{chapter}.md:{i + 1}: clause {match['id']} has no summary")
            text = "\n\n".join(p.strip() for p in paragraphs[1:]).strip()
            found.append(Clause(match["id"], level, chapter, summary, text))
            i = j
        else:
            i += 1
    return found
