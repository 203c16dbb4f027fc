"""Strategies made once per argument list (conformance/reuse.py): the same object for equal
arguments, a new one for arguments that only compare equal, and the same draws as a strategy
made afresh."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, seed, settings
from hypothesis import strategies as st

from normspec.adapters.protocol import Capabilities
from normspec.conformance.reuse import made, reused, sampled
from normspec.conformance.strategies import feature_values, free_settings, standard_values
from normspec.reference.dialects import profile


@reused
def _just(low: Any, high: Any = 10) -> st.SearchStrategy[tuple[Any, Any]]:
    return st.just((low, high))  # a new object at every call


def test_equal_arguments_share_one_strategy() -> None:
    assert _just(1) is _just(1)
    assert _just(1, high=10) is _just(1, high=10)
    assert standard_values((2, 3)) is standard_values((2, 3))
    assert sampled([1.0, 2.0]) is sampled((1.0, 2.0))
    assert _just([1, 2]) is _just([1, 2])


def test_arguments_that_only_compare_equal_do_not() -> None:
    assert len({id(_just(v)) for v in (1, 1.0, True)}) == 3
    assert _just(0.0) is not _just(-0.0)
    assert _just(1, high=10) is not _just(1, high=11)
    assert standard_values((2, 3)) is not standard_values((2, 3), stream=1)
    assert standard_values((2, 3)) is not standard_values((2, 3.0))  # type: ignore[arg-type]
    assert _just([1, 2]) is not _just((1, 2))


def test_unhashable_arguments_get_a_new_strategy() -> None:
    assert _just(np.int64(1), high=np.array(3)) is not _just(np.int64(1), high=np.array(3))


def test_a_frozen_dataclass_holding_a_dict_is_kept_by_identity() -> None:
    capabilities, dialect = Capabilities(), profile("torch")
    first = made(free_settings, capabilities, dialect, _wanted(capabilities))
    assert made(free_settings, capabilities, dialect, _wanted(capabilities)) is first
    other = Capabilities()
    assert made(free_settings, other, dialect, _wanted(other)) is not first


def _wanted(capabilities: Capabilities) -> Any:
    from normspec.conformance.strategies import Wanted

    return Wanted().within(capabilities)


def _draws(shared: bool) -> list[bytes]:
    """The inputs a seeded test draws, its strategy reused or made afresh at each draw."""
    drawn: list[bytes] = []
    fresh = st.composite(feature_values.inline)
    factory = feature_values if shared else fresh

    @seed(7)
    @settings(max_examples=30, database=None, deadline=None)
    @given(st.data())
    def record(data: st.DataObject) -> None:
        shape = data.draw(st.sampled_from([(2, 3), (4, 2, 2), (1, 20)]))
        drawn.append(data.draw(factory(shape, 1, "float32", "ill")).tobytes())

    record()
    return drawn


def test_a_reused_strategy_draws_what_a_fresh_one_draws() -> None:
    assert _draws(shared=True) == _draws(shared=False)


def _inline_draws(inline: bool) -> list[tuple[bytes, bytes, int]]:
    """A seeded test's inputs and choices: drawn from the composite strategy, or inline by a
    composite of the test's own."""
    drawn: list[tuple[bytes, bytes, int]] = []

    @st.composite
    def pair(draw: st.DrawFn, shape: tuple[int, ...]) -> tuple[Any, Any]:
        if inline:
            return feature_values.inline(draw, shape, 1, "float16"), draw(st.integers(0, 9))
        return draw(feature_values(shape, 1, "float16")), draw(st.integers(0, 9))

    @seed(11)
    @settings(max_examples=30, database=None, deadline=None)
    @given(st.data())
    def record(data: st.DataObject) -> None:
        shape = data.draw(st.sampled_from([(2, 3), (3, 1, 2), (2, 20)]))
        x, after = data.draw(pair(shape))
        drawn.append((x.tobytes(), str(x.dtype).encode(), after))

    record()
    return drawn


def test_an_inline_draw_makes_the_choices_of_its_strategy() -> None:
    """The same values, and the draws after it the same: it consumed the same choices."""
    assert _inline_draws(inline=True) == _inline_draws(inline=False)
