"""The synchronized-BN chapter (replicas.md): its clauses, the index, and the citations."""

from __future__ import annotations

import re
from importlib import resources

from normspec import spec
from normspec.conformance.checks import load_builtin_checks

EXPECTED = {
    "sync.train.statistics": "MUST",
    "sync.train.output": "MUST",
    "sync.train.mask": "MUST",
    "sync.running.mean": "MUST",
    "sync.running.var": "MUST",
    "sync.backward.dx": "MUST",
    "sync.backward.dparams": "MUST",
    "sync.degenerate.empty_replica": "MUST",
    "sync.degenerate.all_empty": "MUST",
    "sync.accuracy.concatenated": "SHOULD",
}


def test_the_replicas_chapter_defines_its_clauses() -> None:
    assert {c.id: c.level for c in spec.clauses() if c.chapter == "replicas"} == EXPECTED
    assert spec.CHAPTERS.index("replicas.md") == spec.CHAPTERS.index("renorm.md") + 1


def test_the_published_index_lists_the_sync_clauses() -> None:
    published = [item for item in spec.published_index() if item["chapter"] == "replicas"]
    assert published == [item for item in spec.clause_index() if item["chapter"] == "replicas"]
    assert [item["id"] for item in published] == list(EXPECTED)


def test_every_sync_clause_needs_the_replicas_capability() -> None:
    checks = load_builtin_checks()
    for clause_id in EXPECTED:
        assert "replicas" in checks[clause_id].needs, clause_id


def test_the_hand_worked_example_is_in_the_output_clause() -> None:
    text = spec.clause("sync.train.output").text
    assert "(0, 2)" in text and "(3, 4, 6)" in text and "`(0, 1/3, 1)`" in text


def test_clause_ids_cited_by_the_reference_exist() -> None:
    text = resources.files("normspec.reference").joinpath("replicas.py").read_text("utf-8")
    known = {c.id for c in spec.clauses()}
    for citation in set(re.findall(r"\b(sync\.[a-z_]+(?:\.[a-z_*]+)+)", text)):
        if citation.endswith(".*"):
            assert any(k.startswith(citation[:-1]) for k in known), citation
        else:
            assert citation in known, citation
