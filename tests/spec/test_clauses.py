"""The clause list: consistent with the Markdown, unique, and every clause checked."""

from __future__ import annotations

import pytest

from normspec import spec
from normspec.conformance.checks import load_builtin_checks
from normspec.spec._markdown import parse_chapter
from normspec.spec.build import render_index


def test_clauses_json_is_generated_from_the_chapters() -> None:
    assert spec.published_index() == spec.clause_index(), (
        "spec/clauses.json is stale: run python -m normspec.spec.build"
    )
    assert render_index().startswith("{")


def test_clause_ids_are_unique_and_levels_valid() -> None:
    ids = [c.id for c in spec.clauses()]
    assert len(ids) == len(set(ids))
    assert {c.level for c in spec.clauses()} <= {"MUST", "SHOULD", "MAY"}


def test_every_clause_has_a_check_and_every_check_a_clause() -> None:
    checks = set(load_builtin_checks())
    ids = {c.id for c in spec.clauses()}
    assert checks <= ids
    unchecked = ids - checks
    assert not unchecked, f"clauses without a check: {sorted(unchecked)}"


def test_malformed_clause_headings_are_rejected() -> None:
    with pytest.raises(ValueError, match="malformed"):
        parse_chapter("### `Bad Id` (MUST)\ntext\n", "x")
    with pytest.raises(ValueError, match="level"):
        parse_chapter("### `a.b` (MIGHT)\ntext\n", "x")
    with pytest.raises(ValueError, match="no summary"):
        parse_chapter("### `a.b` (MUST)\n\n### `a.c` (MUST)\nx\n", "x")
