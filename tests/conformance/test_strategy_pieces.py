"""The case strategies are composed from small pieces (conformance/strategies*.py): a bad
argument is refused when a strategy is built, not when it is first drawn from; each piece
means the same in every chapter; and every chapter names its strategy in one table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from normspec.adapters.protocol import Capabilities, Chapter
from normspec.conformance.context import CASE_STRATEGIES
from normspec.conformance.strategies import LONG_SIZES, Sizes, Wanted, cases
from normspec.conformance.strategies_renorm import (
    MAX_BATCH as RENORM_MAX_BATCH,
)
from normspec.conformance.strategies_renorm import (
    Moving,
    renorm_cases,
    schedules,
)
from normspec.reference.dialects import profile

BROAD = Capabilities(
    renorm=True, feature_axes=("first", "last"), untracked=True, without_affine=True
)
NARROW = Capabilities(renorm=True, untracked=False, without_affine=False)
PAPER, TORCH = profile("paper"), profile("torch")

BAD_BUILDS: dict[str, Callable[[], Any]] = {
    "rate above 1": lambda: Wanted(rate=1.5),
    "rate a bool": lambda: Wanted(rate=True),
    "unknown rate": lambda: Wanted(rate="sometimes"),  # type: ignore[arg-type]
    "unknown position": lambda: Wanted(positions=("middle",)),  # type: ignore[arg-type]
    "no position": lambda: Wanted(positions=()),
    "features reversed": lambda: Sizes(features=(3, 1)),
    "no value per feature": lambda: Sizes(min_count=0),
    "unknown conditioning": lambda: cases(BROAD, TORCH, ["float64"], conditioning="bad"),  # type: ignore[arg-type]
    "unknown layout": lambda: cases(BROAD, TORCH, ["float64"], layout="diagonal"),  # type: ignore[arg-type]
    "no dtype": lambda: cases(BROAD, TORCH, []),
    "cumulative renorm": lambda: renorm_cases(BROAD, PAPER, ["float64"], Wanted(rate="cumulative")),
    "untracked renorm": lambda: renorm_cases(BROAD, PAPER, ["float64"], Wanted(track=None)),
    "unknown regime": lambda: Moving("nowhere"),  # type: ignore[arg-type]
    "correction rate above 1": lambda: Moving(correction_rate=2.0),
    "unknown counter": lambda: schedules(PAPER, counter="sometimes"),  # type: ignore[arg-type]
    "unknown schedule": lambda: schedules(PAPER, ("cosine",)),  # type: ignore[list-item]
}


@pytest.mark.parametrize("build", BAD_BUILDS.values(), ids=list(BAD_BUILDS))
def test_a_bad_argument_is_refused_when_the_strategy_is_built(build: Callable[[], Any]) -> None:
    with pytest.raises(InvalidArgument):
        build()


def test_every_chapter_names_its_strategy() -> None:
    assert set(CASE_STRATEGIES) == set(get_args(Chapter))


@pytest.mark.parametrize(
    ("capabilities", "either"), [(BROAD, None), (NARROW, True)], ids=["both", "one"]
)
def test_either_setting_is_drawn_only_where_the_implementation_offers_both(
    capabilities: Capabilities, either: bool | None
) -> None:
    wanted = Wanted(affine=None, track=None).within(capabilities)
    assert (wanted.affine, wanted.tracked) == (either, either)
    fixed = Wanted(rate="cumulative", affine=False, track=False).within(capabilities)
    assert (fixed.fixed_rate, fixed.rate, fixed.affine, fixed.tracked) == (True, None, False, False)


def test_the_chapter_defaults_fill_what_a_clause_leaves_open() -> None:
    """Batch norm's sizes and primary position; renorm's smaller batches and every position;
    what a clause gives wins in both (the long reductions included)."""
    plain = Wanted(Sizes.fixed_features(2)).within(BROAD)
    assert (plain.max_batch, plain.positions, plain.min_features, plain.max_features) == (
        8,
        ("first",),
        2,
        2,
    )
    renorm = Wanted(Sizes.fixed_features(2)).within(BROAD, Sizes(max_batch=6), BROAD.feature_axes)
    assert (renorm.max_batch, renorm.positions) == (6, ("first", "last"))
    long = Wanted(LONG_SIZES).within(BROAD, Sizes(max_batch=6))
    assert (long.max_batch, long.long_reductions) == (64, True)


@settings(max_examples=15, deadline=None, database=None)
@given(data=st.data())
def test_a_renorm_case_keeps_the_pieces_promises(data: st.DataObject) -> None:
    """Fixed features within renorm's own batch limit, a fixed rate, one moving set."""
    case = data.draw(
        renorm_cases(
            BROAD,
            profile("tf_keras"),
            ["float32"],
            Wanted(Sizes.fixed_features(3), rate=0.25, affine=False),
            moving=Moving("exact", same_sets=True),
        )
    )
    assert case.config.num_features == 3 and case.rate == 0.25 and case.params is None
    assert case.x.shape[0] <= RENORM_MAX_BATCH
    assert case.renorm.correction_rate == 0.25
    assert case.state.correction_mean is not None
    assert (case.state.correction_mean == case.state.mean).all()
