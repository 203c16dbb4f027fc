"""The reference against an independent 60-digit mpmath evaluation of the paper's formulas.

The oracle (bn_oracle.py) is written from shared/papers.md, not from the reference. Every
output must lie within the bound of its accuracy clause evaluated with
``u_o = u_w = 2^-53`` (batchnorm.md: "The reference meets them"), for ranks 2-5, any feature
axis and memory layout, n >= 1, ill-conditioned and constant features, and inputs anywhere in
the float64 range. Clauses: bn.accuracy.forward, bn.accuracy.inference,
bn.accuracy.backward, bn.accuracy.running (and through them bn.train.*, bn.infer.output,
bn.backward.*, bn.running.mean/var/cumulative).
"""

from __future__ import annotations

import math

import bn_bounds as bounds
import bn_oracle as oracle
import hypothesis.extra.numpy as hnp
import mpmath
import numpy as np
import pytest
from bn_measure import Case, measure
from bn_strategies import cases, fewer, shapes, with_layout
from hypothesis import given
from hypothesis import strategies as st

from normspec.reference import (
    Affine,
    BatchNormConfig,
    RunningStatistics,
    batch_statistics,
    train_backward,
    train_forward,
    training_step,
)

FLOAT64_MAX = float(np.finfo(np.float64).max)


def assert_within(case: Case, kinds: tuple[str, ...]) -> None:
    for kind, tally in measure(case, kinds).items():
        worst = max(tally.ratios, default=0.0)
        assert worst <= 1.0, (
            f"{kind}: {worst:.3g} x the bound of its clause; {tally.worst}; "
            f"x={case.x.tolist()!r} gamma={case.gamma!r} eps={case.eps!r}"
        )


# These compare every value with the oracle at 60 digits (tens of milliseconds an example):
# 100 examples each, 300 in all.


@fewer(0.5)
@given(case=cases())
def test_training_forward_statistics_and_running_update(case: Case) -> None:
    """bn.accuracy.forward (bn.train.output), the batch mean and biased variance
    (bn.train.statistics) and bn.accuracy.running: one update, fixed or cumulative rate,
    biased or unbiased variance (bn.running.mean, bn.running.var)."""
    assert_within(case, ("y", "mean", "var", "running_mean", "running_var"))


@fewer(0.5)
@given(case=cases())
def test_training_backward(case: Case) -> None:
    """bn.accuracy.backward: dx through the batch statistics, dgamma, dbeta."""
    assert_within(case, ("dx", "dgamma", "dbeta"))


@fewer(0.5)
@given(case=cases())
def test_inference(case: Case) -> None:
    """bn.accuracy.inference and bn.backward.infer with the running statistics as constants."""
    assert_within(case, ("infer_y", "infer_dx", "infer_dgamma", "infer_dbeta"))


@fewer(0.3)
@given(
    layout=shapes(max_elements=24, min_n=2),
    data=st.data(),
    steps=st.integers(1, 4),
    estimator=st.sampled_from(("biased", "unbiased")),
)
def test_cumulative_average_over_steps(
    layout: tuple[tuple[int, ...], int], data: st.DataObject, steps: int, estimator: str
) -> None:
    """bn.running.cumulative: after T steps from the initial state (momentum None) the running
    statistics are the plain averages of the T batch means and variance estimates."""
    shape, axis = layout
    features = shape[axis]
    config = BatchNormConfig(
        features, feature_axis=axis, rate=None, running_variance=estimator, eps=1e-3
    )
    state = RunningStatistics.initial(features)
    mus: list[list[mpmath.mpf]] = [[] for _ in range(features)]
    vs: list[list[mpmath.mpf]] = [[] for _ in range(features)]
    tol_mean = [0.0] * features
    tol_var = [0.0] * features
    for _ in range(steps):
        x = data.draw(hnp.arrays(np.float64, shape, elements=st.floats(-100, 100)))
        _, new_state = training_step(config, Affine.identity(features), state, x)
        assert new_state is not None and new_state.steps == state.steps + 1
        state = new_state
        for f, fwd in enumerate(oracle.train_forward(x, None, None, 1e-3, axis)):
            n = len(fwd.x)
            c = n / (n - 1) if estimator == "unbiased" else 1.0
            mus[f].append(fwd.mu)
            vs[f].append(fwd.var * c)
            mean_abs = float(mpmath.fsum(abs(v) for v in fwd.x) / n)
            # one step's bound (alpha <= 1, |mean|, |m*| <= max |x|), summed over the steps
            tol_mean[f] += bounds.K * bounds.U * ((n + 1) * mean_abs + 2 * 100)
            tol_var[f] += bounds.K * (
                c * (bounds.U * (n + 3) * float(fwd.var) + (bounds.U * (n + 1) * mean_abs) ** 2)
                + bounds.U * 2 * 2 * 100**2
            )
    with mpmath.workdps(oracle.DPS):
        for f in range(features):
            exact_mean = mpmath.fsum(mus[f]) / steps
            exact_var = mpmath.fsum(vs[f]) / steps
            assert bounds.error(float(state.mean[f]), exact_mean) <= tol_mean[f]
            assert bounds.error(float(state.var[f]), exact_var) <= tol_var[f]


# ---------------------------------------------------------------------------------------
# the whole float64 range: huge, tiny and subnormal values, huge constants, tiny eps

finite_floats = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def extreme_inputs(draw: st.DrawFn) -> tuple[np.ndarray, int, float]:
    shape, axis = draw(shapes(max_elements=24))
    features = shape[axis]
    x = draw(hnp.arrays(np.float64, shape, elements=finite_floats))
    moved = np.moveaxis(x, axis, 0).copy()
    for f in range(features):
        kind = draw(st.sampled_from(("raw", "scaled", "constant", "offset")))
        if kind == "constant":
            moved[f] = draw(finite_floats)
        elif kind == "scaled":
            unit = draw(hnp.arrays(np.float64, moved[f].shape, elements=st.floats(-1, 1)))
            moved[f] = unit * math.ldexp(1.0, draw(st.integers(-1074, 1023)))
        elif kind == "offset":
            unit = draw(hnp.arrays(np.float64, moved[f].shape, elements=st.floats(-1, 1)))
            base = draw(st.floats(1e-300, 1e300)) * draw(st.sampled_from((-1.0, 1.0)))
            moved[f] = base + unit * abs(base) * draw(st.sampled_from((1e-20, 1e-12, 1e-6)))
    x = np.moveaxis(moved, 0, axis)
    eps = draw(st.one_of(st.sampled_from((5e-324, 1e-320, 1e-300, 1e-5, 1e300)), finite_floats))
    eps = abs(eps) if eps != 0 else 1e-5
    return with_layout(x, axis, draw(st.sampled_from(("contiguous", "channels_last")))), axis, eps


@given(inputs=extreme_inputs(), data=st.data())
def test_full_float64_range(inputs: tuple[np.ndarray, int, float], data: st.DataObject) -> None:
    """Finite inputs of any magnitude meet the clauses (conv.io.finite); the reference raises
    ValueError only where the exact batch variance exceeds the float64 range."""
    x, axis, eps = inputs
    features = x.shape[axis]
    gamma = data.draw(hnp.arrays(np.float64, (features,), elements=st.floats(-1e100, 1e100)))
    beta = data.draw(hnp.arrays(np.float64, (features,), elements=st.floats(-10, 10)))
    dy = data.draw(hnp.arrays(np.float64, x.shape, elements=st.floats(-10, 10)))
    fwds = oracle.train_forward(x, gamma, beta, eps, axis)
    if any(fwd.var > FLOAT64_MAX for fwd in fwds):
        for call in (
            lambda: train_forward(x, gamma, beta, eps=eps, feature_axis=axis),
            lambda: train_backward(dy, x, gamma, eps=eps, feature_axis=axis),
            lambda: batch_statistics(x, axis),
        ):
            with pytest.raises(ValueError, match="x: the batch variance"):
                call()
        return
    case = Case(
        x, axis, gamma, beta, eps, dy, np.zeros(features), np.ones(features), 0, 0.5, "biased"
    )
    assert_within(case, ("y", "mean", "var", "dx", "dgamma", "dbeta"))
    stats = batch_statistics(x, axis)
    assert np.all(np.isfinite(stats.mean)) and np.all(np.isfinite(stats.var))
