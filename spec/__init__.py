"""The normative specification: Markdown chapters whose clauses carry stable IDs.

A clause is written in a chapter as a level-3 heading followed by a one-paragraph
summary and any further text up to the next heading::

    ### `bn.train.output` (MUST)
    The training output is ``gamma * (x - mu_B) / sqrt(var_B + eps) + beta``.

    Further explanation, math, examples...

``clauses.json`` beside the chapters is the machine-readable list, generated from the
Markdown by ``python -m normspec.spec.build`` and checked for consistency by the tests.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from normspec.spec._markdown import Clause, parse_chapter

__all__ = ["CHAPTERS", "SPEC_VERSION", "Clause", "UnknownClauseError", "clause", "clauses"]

SPEC_VERSION = "0.1.0"

#: Chapter files in reading order.
CHAPTERS: tuple[str, ...] = (
    "conventions.md",
    "batchnorm.md",
    "renorm.md",
    "replicas.md",
    "ghost.md",
    "layernorm.md",
    "groupnorm.md",
    "dialects.md",
)


class UnknownClauseError(KeyError):
    """Raised for a clause ID that the specification does not define."""


def chapter_text(name: str) -> str:
    """The Markdown source of one chapter."""
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def _available_chapters() -> tuple[str, ...]:
    root = resources.files(__name__)
    return tuple(name for name in CHAPTERS if root.joinpath(name).is_file())


@cache
def clauses() -> tuple[Clause, ...]:
    """Every clause of the specification, in document order."""
    found: list[Clause] = []
    for name in _available_chapters():
        found.extend(parse_chapter(chapter_text(name), chapter=name.removesuffix(".md")))
    seen: set[str] = set()
    for item in found:
        if item.id in seen:
            raise ValueError(f"clause {item.id} is defined twice")
        seen.add(item.id)
    return tuple(found)


def clause(clause_id: str) -> Clause:
    """The clause with this ID; :class:`UnknownClauseError` if there is none."""
    for item in clauses():
        if item.id == clause_id:
            return item
    raise UnknownClauseError(clause_id)


def clause_index() -> list[dict[str, str]]:
    """The machine-readable list: ID, level, chapter and one-line summary of each clause."""
    return [
        {"id": c.id, "level": c.level, "chapter": c.chapter, "summary": c.summary}
        for c in clauses()
    ]


def published_index() -> list[dict[str, str]]:
    """The list as shipped in ``clauses.json`` (kept equal to :func:`clause_index`)."""
    text = resources.files(__name__).joinpath("clauses.json").read_text(encoding="utf-8")
    data: list[dict[str, str]] = json.loads(text)["clauses"]
    return data
