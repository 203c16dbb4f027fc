"""The sync.* checks: the reference passes, known-bad synchronized BNs are caught.

The known-bad implementations are in tests/gallery/replicas.py, each with one realistic bug
of a distributed implementation; every one must be reported failed under its primary
clause (the run selects that clause and the clauses it depends on, as test_gallery does).
"""

from __future__ import annotations

import pytest
from gallery.base import NumpyBatchNorm
from gallery.replicas import SYNC_BUGS, SYNC_CORRECT, NumpySyncBatchNorm
from test_gallery import _summary, with_dependencies

from normspec.adapters.protocol import ReplicatedImplementation
from normspec.adapters.reference import ReferenceImplementation
from normspec.conformance.runner import CheckOptions, check_implementation

SYNC = "sync.*"


@pytest.mark.parametrize("profile", ["torch", "flax", "paper"])
def test_the_reference_passes_every_sync_clause(profile: str) -> None:
    implementation = ReferenceImplementation(profile)
    assert isinstance(implementation, ReplicatedImplementation)
    options = CheckOptions(profile=profile, clauses=SYNC, max_examples=12, seed=1)
    report = check_implementation(implementation, options)
    assert len(report.results) == 10
    assert all(r.outcome == "pass" for r in report.results), _summary(report)
    # every numeric comparison flows through the context, sync.train.statistics' two
    # readings of the variance included (sync.degenerate.all_empty compares no number)
    unmeasured = {r.clause_id for r in report.results if r.worst is None}
    assert unmeasured == {"sync.degenerate.all_empty"}, unmeasured


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("implementation", SYNC_CORRECT, ids=lambda c: c.__name__)
def test_correct_synchronized_implementations_pass(
    implementation: type[NumpySyncBatchNorm], seed: int
) -> None:
    options = CheckOptions(profile="torch", clauses=SYNC, max_examples=10, seed=seed)
    report = check_implementation(implementation(), options)
    assert all(r.outcome == "pass" for r in report.results), _summary(report)


@pytest.mark.parametrize("bug", SYNC_BUGS, ids=lambda c: c.__name__)
def test_each_sync_bug_is_caught_under_its_clause(bug: type[NumpySyncBatchNorm]) -> None:
    primary = bug.expected_clauses[0]
    clauses = ",".join(with_dependencies(primary))
    options = CheckOptions(profile="torch", clauses=clauses, max_examples=20, seed=0)
    report = check_implementation(bug(), options)
    outcome = {r.clause_id: r.outcome for r in report.results}
    assert outcome[primary] in ("fail", "error"), _summary(report)


@pytest.mark.parametrize("bug", SYNC_BUGS, ids=lambda c: c.__name__)
def test_each_sync_bug_fails_only_where_expected(bug: type[NumpySyncBatchNorm]) -> None:
    """Over all sync.* clauses, the bug fails its expected clauses and no others (clauses
    that depend on a failed one are skipped)."""
    options = CheckOptions(profile="torch", clauses=SYNC, max_examples=8, seed=0)
    report = check_implementation(bug(), options)
    failed = {r.clause_id for r in report.results if r.outcome in ("fail", "error")}
    assert set(bug.expected_clauses[:1]) <= failed <= set(bug.expected_clauses), _summary(report)


def test_without_the_replicas_capability_sync_clauses_are_not_applicable() -> None:
    report = check_implementation(NumpyBatchNorm(), CheckOptions(profile="torch", clauses=SYNC))
    assert {r.outcome for r in report.results} == {"not_applicable"}
    assert "does not support replicas" in report.results[0].message
