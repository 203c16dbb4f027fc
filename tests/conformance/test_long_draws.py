"""Long arrays are drawn in a few draws and keep their values' range; short ones stay
elementwise (conformance/strategies.py: values_of, standard_values, cotangents)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from normspec.conformance.strategies import (
    ELEMENTWISE_LIMIT,
    PARAMETER_VALUES,
    cotangents,
    standard_values,
    values_of,
)


@st.composite
def _counted(draw: st.DrawFn, size: int) -> tuple[np.ndarray, int]:
    """``values_of(PARAMETER_VALUES, size)`` and how many values Hypothesis drew for it."""
    calls = [0]

    def counting(strategy: st.SearchStrategy[float]) -> float:
        calls[0] += 1
        return draw(strategy)

    return values_of(counting, PARAMETER_VALUES, size), calls[0]  # type: ignore[arg-type]


@settings(max_examples=30, deadline=None)
@given(data=st.data(), size=st.integers(0, 3000))
def test_values_of_draws_at_most_the_limit_and_one_seed(data: st.DataObject, size: int) -> None:
    values, drawn = data.draw(_counted(size))
    assert values.shape == (size,)
    assert drawn == min(size, ELEMENTWISE_LIMIT) + (size > ELEMENTWISE_LIMIT)
    assert np.all((values >= -2.0) & (values <= 2.0))
    if size > ELEMENTWISE_LIMIT:  # the rest lies between the least and greatest drawn
        head, rest = values[:ELEMENTWISE_LIMIT], values[ELEMENTWISE_LIMIT:]
        assert head.min() <= rest.min() and rest.max() <= head.max()


def test_short_arrays_shrink_elementwise_and_long_ones_vary() -> None:
    # a minimal short array is all equal (each value shrinks); a long one still varies
    for shape, varies in (((2, 3), False), ((4, 16), True)):
        example = _minimal(standard_values(shape))
        assert bool(np.ptp(example) > 0) is varies


def test_cotangents_differ_from_the_input_drawn_with_the_same_seed() -> None:
    x, dy = _minimal(st.tuples(standard_values((4, 16)), cotangents((4, 16))))
    assert x.shape == dy.shape == (4, 16)
    assert not np.allclose(x, dy) and abs(np.corrcoef(x.ravel(), dy.ravel())[0, 1]) < 0.9


def _minimal(strategy: st.SearchStrategy[object]) -> object:
    from hypothesis import find

    return find(strategy, lambda _: True, settings=settings(database=None))
