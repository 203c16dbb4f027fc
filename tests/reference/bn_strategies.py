"""Hypothesis strategies for the reference's tests: shapes, layouts, conditioning, cases.

Inputs have rank 2 to 5 with the feature axis anywhere (negative indices too), n >= 1 values
per feature, and per feature one of: a centred spread, a mean offset by 1e6, 1e8, 1e12 or
1e16 times the spread (ill-conditioned), or a constant (zero variance). Spreads range over
2^-60..2^60. The memory layout is contiguous, Fortran, channels-last, strided or reversed,
and the arrays are read-only (the reference must never write into its inputs).
"""

from __future__ import annotations

import math
from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
from bn_measure import Case
from hypothesis import settings
from hypothesis import strategies as st

OFFSETS = (1e6, 1e8, 1e12, 1e16)


def fewer(fraction: float) -> settings:
    """A fraction of the loaded profile's examples, for the slow mpmath tests (ci: 200)."""
    return settings(max_examples=max(10, int(settings.default.max_examples * fraction)))


LAYOUTS = ("contiguous", "fortran", "channels_last", "strided", "reversed")


@st.composite
def shapes(
    draw: Any, *, max_elements: int = 64, max_features: int = 3, min_n: int = 1
) -> tuple[tuple[int, ...], int]:
    """(shape, feature_axis): rank 2-5, feature axis drawn from [-rank, rank)."""
    rank = draw(st.integers(2, 5))
    axis = draw(st.integers(-rank, rank - 1))
    features = draw(st.integers(1, max_features))
    budget = max(1, max_elements // features)
    others = []
    for i in range(rank - 1):
        low = min_n if i == rank - 2 and math.prod(others) < min_n else 1
        side = draw(st.integers(min(low, budget), max(min(low, budget), min(8, budget))))
        others.append(side)
        budget = max(1, budget // side)
    others.insert(axis % rank, features)
    return tuple(others), axis


def with_layout(x: np.ndarray, axis: int, layout: str) -> np.ndarray:
    """The same values in another memory layout; read-only."""
    if layout == "fortran":
        out = np.asfortranarray(x)
    elif layout == "channels_last":
        out = np.moveaxis(np.ascontiguousarray(np.moveaxis(x, axis, -1)), -1, axis)
    elif layout == "strided":
        big = np.zeros((2 * x.shape[0], *x.shape[1:]))
        big[::2] = x
        out = big[::2]
    elif layout == "reversed":
        out = np.ascontiguousarray(x[::-1])[::-1]
    else:
        out = np.ascontiguousarray(x)
    out = out.view()
    out.setflags(write=False)
    assert np.array_equal(out, x)
    return out


@st.composite
def feature_values(
    draw: Any, shape: tuple[int, ...], axis: int, *, offsets: tuple[float, ...] = OFFSETS
) -> np.ndarray:
    """x with per-feature conditioning: centred, offset mean (ill-conditioned) or constant."""
    features = shape[axis]
    n = math.prod(shape) // features
    unit = draw(hnp.arrays(np.float64, (features, n), elements=st.floats(-1, 1)))
    rows = []
    for f in range(features):
        kind = draw(st.sampled_from(("centred", "centred", "offset", "constant")))
        spread = math.ldexp(1.0, draw(st.integers(-60, 60)))
        if kind == "constant":
            value = draw(st.floats(-1e6, 1e6)) * spread
            rows.append(np.full(n, value))
            continue
        offset = 0.0
        if kind == "offset":
            offset = draw(st.sampled_from(offsets)) * draw(st.sampled_from((-1.0, 1.0)))
        else:
            offset = draw(st.floats(-2, 2))
        rows.append((unit[f] + offset) * spread)
    others = [size for i, size in enumerate(shape) if i != axis % len(shape)]
    moved = np.stack(rows).reshape([features, *others])
    return np.moveaxis(moved, 0, axis % len(shape))


def _vector(draw: Any, count: int, low: float, high: float) -> np.ndarray:
    return draw(hnp.arrays(np.float64, (count,), elements=st.floats(low, high)))


eps_values = st.one_of(
    st.sampled_from((1e-5, 1e-3, 0.75, 1e-12)),
    st.builds(lambda m, e: m * 10.0**e, st.floats(1, 9.99), st.integers(-12, 1)),
)


@st.composite
def cases(
    draw: Any,
    *,
    max_elements: int = 64,
    offsets: tuple[float, ...] = OFFSETS,
    min_n: int = 1,
) -> Case:
    """A complete input of every reference function (see :class:`bn_measure.Case`)."""
    shape, axis = draw(shapes(max_elements=max_elements, min_n=min_n))
    x = draw(feature_values(shape, axis, offsets=offsets))
    features = shape[axis]
    affine = draw(st.booleans())
    gamma = _vector(draw, features, -10, 10) if affine else None
    beta = _vector(draw, features, -10, 10) if affine else None
    dy_scale = math.ldexp(1.0, draw(st.integers(-20, 20)))
    dy = draw(hnp.arrays(np.float64, shape, elements=st.floats(-4, 4))) * dy_scale
    rows = np.moveaxis(x, axis, 0).reshape(features, -1)
    center = rows.mean(axis=1)
    spread = np.maximum(rows.std(axis=1), 1e-300)
    running_mean = center + spread * _vector(draw, features, -3, 3)
    running_var = spread**2 * _vector(draw, features, 0, 4)
    layout = draw(st.sampled_from(LAYOUTS))
    rate = draw(st.one_of(st.none(), st.sampled_from((0.0, 1.0, 0.1, 0.01)), st.floats(0, 1)))
    return Case(
        x=with_layout(x, axis, layout),
        axis=axis,
        gamma=gamma,
        beta=beta,
        eps=draw(eps_values),
        dy=with_layout(dy, axis, draw(st.sampled_from(LAYOUTS))),
        running_mean=running_mean,
        running_var=running_var,
        steps=draw(st.integers(0, 1000)),
        rate=rate,
        estimator=draw(st.sampled_from(("biased", "unbiased"))),
    )
