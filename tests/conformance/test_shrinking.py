"""The time limit on shrinking one failure (conformance.shrinking, CheckOptions.shrink_seconds)."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.internal.conjecture import engine
from test_engine import Wrapped

from normspec.conformance.runner import CheckOptions, check_implementation
from normspec.conformance.shrinking import shrink_limit

SLOW_CALL = 0.02


@settings(max_examples=50, database=None, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.integers(0, 10**6), min_size=1))
def slow_failing_property(values: list[int]) -> None:
    time.sleep(SLOW_CALL)
    assert sum(values) < 100


def run_property(limit: float) -> tuple[bool, float, list[int]]:
    """(stopped early, seconds, the failing list Hypothesis reports)."""
    started = time.perf_counter()
    with shrink_limit(limit) as watch, pytest.raises(AssertionError) as failure:
        slow_failing_property()
    notes = "".join(getattr(failure.value, "__notes__", []))
    shown = [int(v) for v in notes.split("values=[")[1].split("]")[0].split(",")]
    return watch.stopped_early, time.perf_counter() - started, shown


def test_a_short_limit_stops_shrinking_and_says_so() -> None:
    stopped, seconds, shown = run_property(0.2)
    assert stopped
    assert seconds < 0.2 + 2.0  # the limit, the generation and one last replay
    assert sum(shown) >= 100, "the example shown still fails"


def test_a_generous_limit_shrinks_to_the_minimal_example() -> None:
    stopped, _, shown = run_property(60.0)
    assert not stopped
    assert shown == [100]


def test_the_limit_is_restored_after_the_block() -> None:
    before = engine.MAX_SHRINKING_SECONDS
    with pytest.raises(RuntimeError), shrink_limit(0.5):
        assert engine.MAX_SHRINKING_SECONDS == 0.5
        raise RuntimeError
    assert before == engine.MAX_SHRINKING_SECONDS


def slow_and_wrong_beyond_six_values(original, x):
    """Slow, and wrong only for inputs of more than six values: the first failing example
    is larger than the minimal one, so there is shrinking to do."""
    time.sleep(SLOW_CALL)
    return original(x) * (1 + 1e-3 * (x.size > 6))


def test_a_check_reports_a_failure_whose_shrinking_was_cut_short() -> None:
    options = CheckOptions(
        profile="torch", clauses="bn.train.output", max_examples=40, shrink_seconds=0.3
    )
    report = check_implementation(Wrapped("train_step", slow_and_wrong_beyond_six_values), options)
    (result,) = report.results
    assert result.outcome == "fail"
    assert "stopped after 0.3 s" in result.details["shrinking"]
    assert "--shrink-seconds 0.3" in result.details["reproduce"]
    assert result.details["example"]["shape"]


def test_a_failure_shrunk_within_the_limit_has_no_shrinking_note() -> None:
    options = CheckOptions(profile="torch", clauses="bn.train.output", max_examples=8)
    wrong = Wrapped("train_step", lambda original, x: original(x) + 1.0)
    (result,) = check_implementation(wrong, options).results
    assert result.outcome == "fail"
    assert "shrinking" not in result.details
    assert "--shrink-seconds" not in result.details["reproduce"]
