"""bn.accuracy.backward's underflow term admits a flushed cotangent of ``var_B`` and a
flushed ``gamma * dy``.

Autodiff of ``c * (gamma * rsqrt(mean(c * c) + eps))`` passes ``d var_B / n = -g * s^2 *
mean(dy * xhat) / 2`` to every value; XLA's CPU kernels flush it to zero where it is
subnormal, which drops the ``xhat_i * mean(dy * xhat)`` part of ``dx`` (flax.linen.BatchNorm,
float64, gamma 4.09e-277 against a spread of 1e16: bn.degenerate.zero_variance failed by a
factor 1e12 over the bound before the ``a_i / s`` term). The simulation here is NumPy's, which
keeps subnormals unless told to flush.
"""

from __future__ import annotations

import numpy as np
import pytest

from normspec.conformance.tolerance import (
    SAFETY_FACTOR,
    GradientBounds,
    Precision,
    RenormTerms,
    backward_bounds,
    renorm_backward_bounds,
)
from normspec.reference import Gradients, renorm, train_backward
from normspec.reference.schedules import RenormBounds

TINY = float(np.finfo(np.float64).tiny)
EPS = 1e-3
#: gamma of the flax failure (drawn gamma are normal numbers; this one is near the bottom).
TINY_GAMMA = 4.0880063969164504e-277


def _case(gamma: float, spread: float, proportional: bool) -> tuple[np.ndarray, ...]:
    """Two features (n = 48): feature 0 with ``gamma`` and ``spread``, feature 1 ordinary.

    ``proportional``: ``dy = x / spread`` in feature 0, the pattern of the shrunk example
    (x and dy drawn from one seed), where the exact ``dx`` nearly cancels.
    """
    rng = np.random.default_rng(7)
    u = rng.uniform(-1.0, 1.0, (48, 2))
    x = u * np.array([spread, 1.0]) + np.array([0.2 * spread, 0.3])
    dy = rng.uniform(-1.0, 1.0, (48, 2))
    if proportional:
        dy[:, 0] = u[:, 0]
    return x, dy, np.array([gamma, 1.5])


def _flushing_dx(x: np.ndarray, dy: np.ndarray, gamma: np.ndarray) -> tuple[np.ndarray, bool]:
    """The reverse pass of the textbook graph, with the per-value cotangent of ``var_B``
    flushed to zero where subnormal (as XLA's CPU kernels do); whether any was flushed."""
    n = x.shape[0]
    c = x - x.mean(axis=0)
    var = (c * c).mean(axis=0)
    s = 1.0 / np.sqrt(var + EPS)
    # in autodiff's order: the cotangent of var_B is normal, its share per value may not be
    dvar = gamma * (dy * c).sum(axis=0) * (-0.5 * s**3)
    dvar_each = dvar / n
    flushed = (dvar_each != 0.0) & (np.abs(dvar_each) < TINY)
    dvar_each = np.where(flushed, 0.0, dvar_each)
    dc = dy * (gamma * s) + 2.0 * c * dvar_each
    return dc - dc.mean(axis=0), bool(np.any(flushed))


def _bound(x: np.ndarray, dy: np.ndarray, gamma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    expected = train_backward(dy, x, gamma, eps=EPS, feature_axis=1)
    bound = backward_bounds(Precision.of("float64"), x, dy, gamma, EPS, 1, expected).dx
    return expected.dx, bound


@pytest.mark.parametrize("proportional", [False, True])
def test_a_flushed_variance_cotangent_is_within_the_bound(proportional: bool) -> None:
    x, dy, gamma = _case(TINY_GAMMA, 1e16, proportional)
    dx, flushed = _flushing_dx(x, dy, gamma)
    assert flushed, "the case must flush the cotangent of var_B"
    expected, bound = _bound(x, dy, gamma)
    error = np.abs(dx - expected)
    assert np.all(error <= bound)
    # it is the a_i / s term that admits it: without it the error is far beyond the bound
    # (the implementation's and the reference's shares, each K * tiny * a_i / s)
    a_over_s = np.abs(x) + np.mean(np.abs(x), axis=0)
    without = bound - 2 * SAFETY_FACTOR * TINY * a_over_s
    assert np.max(error[:, 0] / without[:, 0]) > 1e6
    # the ordinary feature is untouched by the flush and accurate to the usual bound
    assert np.all(error[:, 1] <= without[:, 1])


@pytest.mark.parametrize(("gamma", "spread"), [(1.3, 1e16), (TINY_GAMMA, 1.0), (1.3, 1.0)], ids=str)
def test_dropping_the_variance_term_fails_where_nothing_underflows(
    gamma: float, spread: float
) -> None:
    """The term loosens the bound only near underflow: where ``d var_B / n`` is normal,
    an implementation that drops ``xhat_i * mean(dy * xhat)`` is still far outside it."""
    x, dy, gamma_vector = _case(gamma, spread, proportional=False)
    dx, flushed = _flushing_dx(x, dy, gamma_vector)
    assert not flushed
    expected, bound = _bound(x, dy, gamma_vector)
    assert np.all(np.abs(dx - expected) <= bound)  # the flushing graph is exact here
    s = 1.0 / np.sqrt(x.var(axis=0) + EPS)
    dropped = gamma_vector * s * (dy - dy.mean(axis=0))  # no xhat * mean(dy * xhat) part
    assert np.max(np.abs(dropped - expected)[:, 0] / bound[:, 0]) > 1e6


TINY32 = float(np.finfo(np.float32).tiny)


def _flushing_gamma_dy(x: np.ndarray, dy: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """The reverse pass with the cotangent of ``xhat``, ``gamma * dy``, flushed to zero
    where it is subnormal in float32 (the order autodiff takes for ``y = xhat * gamma``)."""
    c = x - x.mean(axis=0)
    s = 1.0 / np.sqrt((c * c).mean(axis=0) + EPS)
    xhat = c * s
    dxhat = gamma * dy
    dxhat = np.where(np.abs(dxhat) < TINY32, 0.0, dxhat)
    return s * (dxhat - dxhat.mean(axis=0) - xhat * (dxhat * xhat).mean(axis=0))


def test_a_flushed_gamma_dy_is_within_the_bound() -> None:
    """bfloat16 and float32 layers: gamma the smallest normal number, a constant feature
    (s = 1 / sqrt(eps)): ``dx`` is normal, ``gamma * dy`` is not (a flax-style module
    failed bn.degenerate.zero_variance in bfloat16: 0 for -9.3e-37, bound 2.8e-37)."""
    x = np.array([[0.0, 0.1], [0.0, -0.4]])
    dy = np.array([[0.0, 0.25], [0.5, -0.75]])
    gamma = np.array([TINY32, 1.0])
    dx = _flushing_gamma_dy(x, dy, gamma)
    expected = train_backward(dy, x, gamma, eps=EPS, feature_axis=1)
    assert dx[1, 0] == 0.0 and abs(expected.dx[1, 0]) > TINY32  # flushed; normal
    bound = backward_bounds(Precision.of("float32"), x, dy, gamma, EPS, 1, expected).dx
    assert np.all(np.abs(dx - expected.dx) <= bound)
    # it is the s * (2 + |xhat|) term that admits it
    s = 1.0 / np.sqrt(x.var(axis=0) + EPS)
    xhat = (x - x.mean(axis=0)) * s
    without = bound - 2 * SAFETY_FACTOR * TINY32 * s * (2 + np.abs(xhat))
    assert np.abs(dx - expected.dx)[1, 0] > without[1, 0]


def test_the_gamma_dy_term_admits_no_bug_away_from_underflow() -> None:
    """With gamma 1 nothing flushes, and a ``dx`` without its ``mean(dy)`` part is still
    far outside the float32 bound."""
    rng = np.random.default_rng(3)
    x, dy = rng.uniform(-1.0, 1.0, (16, 2)), rng.uniform(-1.0, 1.0, (16, 2))
    gamma = np.array([1.0, 0.5])
    expected = train_backward(dy, x, gamma, eps=EPS, feature_axis=1)
    bound = backward_bounds(Precision.of("float32"), x, dy, gamma, EPS, 1, expected).dx
    assert np.all(np.abs(_flushing_gamma_dy(x, dy, gamma) - expected.dx) <= bound)
    s = 1.0 / np.sqrt(x.var(axis=0) + EPS)
    buggy = expected.dx + gamma * s * dy.mean(axis=0)
    assert np.max(np.abs(buggy - expected.dx) / bound) > 1e4


#: tf_keras's renorm in float32, shrunk (renorm.backward.train.dparams failed there before
#: the renorm training gradients had an underflow term of their own): one feature, a
#: correction spread of 5.3e36 against a batch spread of 0.05, so ``r`` is subnormal.
RENORM_X = np.array([[0.0], [0.0], [0.0], [0.1]])
RENORM_DY = np.array([[0.7794776], [0.1142761], [0.6018162], [0.9130276]])
RENORM_EPS = 1e-3
BIG_SPREAD = 5.3169116662270134e36


UNCLIPPED = RenormBounds(0.0, np.inf, np.inf)


def _renorm_bounds(sigma: float) -> tuple[Gradients, GradientBounds]:
    """The exact training gradients with the correction set (the batch mean, ``sigma``),
    unclipped, and renorm.accuracy.backward's float32 bounds for them."""
    bounds = UNCLIPPED
    mean, std = np.array([0.025]), np.array([sigma])
    _, corr = renorm.train_forward(
        RENORM_X, mean, std, bounds=bounds, eps=RENORM_EPS, feature_axis=1
    )
    expected = renorm.train_backward(
        RENORM_DY, RENORM_X, corr.r, corr.d, np.ones(1), eps=RENORM_EPS, feature_axis=1
    )
    limits = renorm_backward_bounds(
        Precision.of("float32"), RENORM_X, RENORM_DY, np.ones(1), RENORM_EPS, 1, expected,
        mean, std, bounds,
    )  # fmt: skip
    return expected, limits


def test_a_flushed_renorm_correction_is_within_the_bound() -> None:
    """A machine that flushes subnormal results (TensorFlow's CPU kernels) computes ``r = 0``
    where ``sigma_B / sigma`` is subnormal: both gradients are then 0. Their exact values
    are subnormal too, and the batch-norm terms, scaled by ``r``, admit next to nothing."""
    expected, limits = _renorm_bounds(BIG_SPREAD)
    r = np.sqrt(RENORM_X.var(axis=0) + RENORM_EPS) / BIG_SPREAD
    assert 0 < r[0] < TINY32  # subnormal in float32: flushed to zero
    assert 0 < abs(expected.dgamma[0]) < TINY32
    assert np.all(np.abs(0.0 - expected.dgamma) <= limits.dgamma)
    assert np.all(np.abs(0.0 - expected.dx) <= limits.dx)
    # without the underflow term (K * tiny per unit, the implementation's and the
    # reference's), the flushed dgamma was far beyond the bound
    terms = RenormTerms.of(
        RENORM_X, 1, RENORM_EPS, np.array([0.025]), np.array([BIG_SPREAD]), UNCLIPPED
    )
    _, flushed_dgamma = terms.flushed_gradients(RENORM_DY, np.ones(1))
    without = limits.dgamma - SAFETY_FACTOR * (TINY32 + TINY) * flushed_dgamma
    assert abs(expected.dgamma[0]) > 1e3 * without[0]


def test_the_renorm_underflow_term_admits_no_zero_gradient_away_from_underflow() -> None:
    """With an ordinary correction (``r`` about 1) nothing flushes, and a ``dgamma`` or
    ``dx`` of 0 is far outside the bound."""
    expected, limits = _renorm_bounds(0.05)
    assert np.min(np.abs(expected.dgamma) / limits.dgamma) > 1e4
    assert np.max(np.abs(expected.dx) / limits.dx) > 1e4
