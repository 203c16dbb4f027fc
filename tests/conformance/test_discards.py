"""A dtype's run whose examples are all discarded ends inconclusive after
DISCARDED_IN_A_ROW of them, not after Hypothesis's 458 (conformance.discards)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis.errors import UnsatisfiedAssumption

from normspec.adapters.protocol import Array, Layer, LayerConfig
from normspec.adapters.reference import ReferenceImplementation, ReferenceLayer
from normspec.conformance.discards import DISCARDED_IN_A_ROW, Discards, NothingUsable
from normspec.conformance.results import ClauseResult
from normspec.conformance.runner import CheckOptions, check_implementation

DTYPES = ("float64", "float32")


class StillLayer(ReferenceLayer):
    """Keeps its running statistics for its first ``still`` training steps (all of them by
    default), as Flax reads the paper's alpha = 1 (``momentum=1.0``): keep the state."""

    steps = 0
    still: float = float("inf")

    def train_step(self, x: Array) -> Array:
        kept = self._state
        y = super().train_step(x)
        type(self).steps += 1
        if type(self).steps <= self.still:
            self._state = kept
        return y


class Still(ReferenceImplementation):
    def __init__(self, layer: type[StillLayer]) -> None:
        super().__init__("paper")
        self.layer = layer

    def build(self, config: LayerConfig) -> Layer:
        built = super().build(config)
        assert isinstance(built, ReferenceLayer)
        built.__class__ = self.layer
        return built


def train_statistics(layer: type[StillLayer]) -> ClauseResult:
    options = CheckOptions(profile="paper", clauses="bn.train.statistics", dtypes=DTYPES)
    report = check_implementation(Still(layer), options)
    (result,) = [r for r in report.results if r.clause_id == "bn.train.statistics"]
    return result


def test_a_run_whose_every_example_is_discarded_ends_after_the_limit() -> None:
    class Always(StillLayer):
        pass

    result = train_statistics(Always)
    assert result.outcome == "skipped"
    assert f"the first {DISCARDED_IN_A_ROW} examples drawn were all discarded" in result.message
    assert result.dtype_outcomes == dict.fromkeys(DTYPES, "skipped")
    # no more examples than the limit in each dtype, and none of them shrunk or replayed
    assert result.examples == DISCARDED_IN_A_ROW * len(DTYPES)
    assert Always.steps == DISCARDED_IN_A_ROW * len(DTYPES)


def test_discards_before_a_usable_example_below_the_limit_are_no_verdict() -> None:
    class AtFirst(StillLayer):
        still = DISCARDED_IN_A_ROW - 1

    result = train_statistics(AtFirst)
    assert result.outcome == "pass", result.message
    assert result.examples > DISCARDED_IN_A_ROW


def discarded() -> None:
    raise UnsatisfiedAssumption("discarded")  # what hypothesis.reject() raises


def test_once_an_example_was_usable_discards_are_not_counted() -> None:
    discards = Discards()
    discards.run(lambda: None)
    for _ in range(2 * DISCARDED_IN_A_ROW):
        with pytest.raises(UnsatisfiedAssumption):
            discards.run(discarded)


def test_the_limit_ends_a_run_of_discards_from_its_start() -> None:
    discards = Discards()
    for _ in range(DISCARDED_IN_A_ROW - 1):
        with pytest.raises(UnsatisfiedAssumption):
            discards.run(discarded)
    with pytest.raises(NothingUsable):
        discards.run(discarded)


@pytest.mark.parametrize("failure", [AssertionError("a failure"), ValueError("raised")])
def test_a_failing_example_is_usable(failure: Exception) -> None:
    discards = Discards()

    def fail() -> Any:
        raise failure

    with pytest.raises(type(failure)):
        discards.run(fail)
    assert discards.usable
