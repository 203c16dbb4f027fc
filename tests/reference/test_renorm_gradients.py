"""Renorm gradients by finite differences, the stop-gradient, and the reduction to batch norm.

- With ``r`` and ``d`` frozen at their forward values, central differences of a plain NumPy
  forward written here agree with the reference's ``train_backward``
  (renorm.backward.train.dx, renorm.backward.train.dparams).
- Differentiating through ``r`` and ``d`` gives another gradient wherever the clipping is
  inactive, so the clause can fail (with no clipping at all, the through-gradient is the
  inference gradient ``gamma * dy / sigma``).
- With ``r_max = 1`` and ``d_max = 0`` the training output and gradients are batch norm's,
  bit for bit, for every input, state and dialect (renorm.train.reduces_to_bn).
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from normspec.reference import (
    BN_BOUNDS,
    PAPER_SCHEDULE,
    Affine,
    ConstantSchedule,
    RenormBounds,
    renorm,
    train_backward,
    train_forward,
)

FEATURE_SHAPES = st.sampled_from([(5, 2), (3, 2, 2), (2, 3, 2), (4, 1), (2, 2, 1, 3)])


def _frozen_forward(x, gamma, beta, r, d, eps, axis):
    """``gamma * ((x - mu_B) / sqrt(var_B + eps) * r + d) + beta`` with r, d given (NumPy)."""
    axes = tuple(a for a in range(x.ndim) if a != axis)
    shape = [1] * x.ndim
    shape[axis] = -1
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    zhat = (x - mean) / np.sqrt(var + eps)
    return gamma.reshape(shape) * (zhat * r.reshape(shape) + d.reshape(shape)) + beta.reshape(shape)


def _central(fun, point: np.ndarray, h: float) -> np.ndarray:
    grad = np.zeros_like(point)
    flat = point.ravel()
    for k in range(flat.size):
        step = np.zeros_like(flat)
        step[k] = h
        grad.ravel()[k] = (
            fun((flat + step).reshape(point.shape)) - fun((flat - step).reshape(point.shape))
        ) / (2 * h)
    return grad


@st.composite
def cases(draw):
    shape = draw(FEATURE_SHAPES)
    axis = 1
    features = shape[axis]
    size = int(np.prod(shape))
    x = np.array(draw(st.lists(st.floats(-2.0, 2.0), min_size=size, max_size=size))).reshape(shape)
    # keep every feature well spread so that central differences are accurate
    x = x + np.linspace(-1.5, 1.5, size).reshape(shape)
    dy = np.array(draw(st.lists(st.floats(-1.0, 1.0), min_size=size, max_size=size))).reshape(shape)
    gamma = np.array(draw(st.lists(st.floats(0.2, 2.0), min_size=features, max_size=features)))
    beta = np.array(draw(st.lists(st.floats(-1.0, 1.0), min_size=features, max_size=features)))
    mu = np.array(draw(st.lists(st.floats(-1.0, 1.0), min_size=features, max_size=features)))
    sigma = np.array(draw(st.lists(st.floats(0.3, 3.0), min_size=features, max_size=features)))
    r_max = draw(st.floats(1.0, 4.0))
    d_max = draw(st.floats(0.0, 3.0))
    eps = draw(st.sampled_from([1e-5, 1e-3, 0.1]))
    return x, dy, gamma, beta, mu, sigma, RenormBounds.symmetric(r_max, d_max), eps, axis


@given(cases())
def test_backward_matches_finite_differences_with_r_and_d_frozen(case) -> None:
    """renorm.backward.train.dx / dparams against central differences, r and d frozen."""
    x, dy, gamma, beta, mu, sigma, bounds, eps, axis = case
    _, corr = renorm.train_forward(
        x, mu, sigma, gamma, beta, bounds=bounds, eps=eps, feature_axis=axis
    )
    grads = renorm.train_backward(dy, x, corr.r, corr.d, gamma, eps=eps, feature_axis=axis)

    def loss_x(values):
        return float(np.sum(dy * _frozen_forward(values, gamma, beta, corr.r, corr.d, eps, axis)))

    def loss_gamma(values):
        return float(np.sum(dy * _frozen_forward(x, values, beta, corr.r, corr.d, eps, axis)))

    def loss_beta(values):
        return float(np.sum(dy * _frozen_forward(x, gamma, values, corr.r, corr.d, eps, axis)))

    h = 1e-6
    np.testing.assert_allclose(grads.dx, _central(loss_x, x, h), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads.dgamma, _central(loss_gamma, gamma, h), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads.dbeta, _central(loss_beta, beta, h), rtol=1e-5, atol=1e-6)


@given(cases())
def test_the_gradient_through_r_and_d_differs_when_clipping_is_inactive(case) -> None:
    """Without clipping, y = gamma * (x - mu) / sigma + beta as a function of x, so the
    through-gradient is the inference gradient; the clause's gradient is r times batch norm's.
    The two differ for every input whose features are not constant."""
    x, dy, gamma, beta, mu, sigma, _bounds, eps, axis = case
    free = RenormBounds(0.0, np.inf, np.inf)

    def loss(values):
        y, _ = renorm.train_forward(
            values, mu, sigma, gamma, beta, bounds=free, eps=eps, feature_axis=axis
        )
        return float(np.sum(dy * y))

    through = _central(loss, x, 1e-6)
    inference_grad = renorm.inference_backward(dy, x, mu, sigma, gamma, feature_axis=axis).dx
    np.testing.assert_allclose(through, inference_grad, rtol=1e-5, atol=1e-6)
    _, corr = renorm.train_forward(
        x, mu, sigma, gamma, beta, bounds=free, eps=eps, feature_axis=axis
    )
    stopped = renorm.train_backward(dy, x, corr.r, corr.d, gamma, eps=eps, feature_axis=axis).dx
    # through - stopped = gamma / sigma * (mean(dy) + zhat * mean(dy * zhat)): zero only
    # when dy has zero mean and no correlation with zhat
    axes = tuple(a for a in range(x.ndim) if a != axis)
    shape = [1] * x.ndim
    shape[axis] = -1
    zhat = (x - corr.batch.mean.reshape(shape)) / corr.std.reshape(shape)
    expected = (gamma / sigma).reshape(shape) * (
        np.mean(dy, axis=axes, keepdims=True) + zhat * np.mean(dy * zhat, axis=axes, keepdims=True)
    )
    np.testing.assert_allclose(through - stopped, expected, rtol=1e-5, atol=1e-6)
    ones = np.ones_like(x)
    stopped_ones = renorm.train_backward(ones, x, corr.r, corr.d, gamma, eps=eps, feature_axis=axis)
    through_ones = renorm.inference_backward(ones, x, mu, sigma, gamma, feature_axis=axis)
    assert np.all(np.abs(through_ones.dx - stopped_ones.dx) > 0.1 * np.abs(through_ones.dx))


@st.composite
def states(draw, features: int):
    average = draw(st.sampled_from(["std", "variance_biased", "variance_unbiased"]))
    separate = draw(st.booleans())
    floor = draw(st.sampled_from(["none", "sqrt_eps"]))
    values = st.floats(-100.0, 100.0)
    spreads = st.floats(0.001, 100.0)
    mean = np.array(draw(st.lists(values, min_size=features, max_size=features)))
    spread = np.array(draw(st.lists(spreads, min_size=features, max_size=features)))
    steps = draw(st.integers(0, 5000))
    extra = {}
    if separate:
        extra = {
            "correction_mean": np.array(
                draw(st.lists(values, min_size=features, max_size=features))
            ),
            "correction_spread": np.array(
                draw(st.lists(spreads, min_size=features, max_size=features))
            ),
        }
    state = renorm.RenormStatistics(mean, spread, steps, **extra)
    config = {
        "average": average,
        "statistics": "separate" if separate else "shared",
        "correction_rate": 0.3 if separate else None,
        "sigma_floor": floor,
    }
    return state, config


@st.composite
def reduction_cases(draw):
    shape = draw(st.sampled_from([(1, 2), (2, 3), (4, 2, 3), (3, 1, 2, 2), (2, 2, 5)]))
    axis = draw(st.integers(0, len(shape) - 1))
    features = shape[axis]
    size = int(np.prod(shape))
    element = st.floats(-1e6, 1e6, allow_subnormal=False) | st.sampled_from([0.0, 1.0, 1e-300])
    x = np.array(draw(st.lists(element, min_size=size, max_size=size))).reshape(shape)
    dy = np.array(draw(st.lists(st.floats(-10.0, 10.0), min_size=size, max_size=size))).reshape(
        shape
    )
    gamma = np.array(draw(st.lists(st.floats(-10.0, 10.0), min_size=features, max_size=features)))
    beta = np.array(draw(st.lists(st.floats(-10.0, 10.0), min_size=features, max_size=features)))
    eps = draw(st.sampled_from([1e-5, 1e-3, 1.0, 1e-12]))
    state, dialect = draw(states(features))
    return x, axis, dy, gamma, beta, eps, state, dialect


@given(reduction_cases())
def test_reduces_to_batch_norm_bit_for_bit(case) -> None:
    """renorm.train.reduces_to_bn: r_max = 1, d_max = 0 gives bn's output and gradients."""
    x, axis, dy, gamma, beta, eps, state, dialect = case
    features = x.shape[axis]
    if dialect["average"] == "variance_unbiased" and x.size // features < 2:
        dialect = {**dialect, "average": "variance_biased"}
    config = renorm.RenormConfig(
        features,
        schedule=ConstantSchedule(BN_BOUNDS),
        feature_axis=axis,
        eps=eps,
        rate=0.25,
        **dialect,
    )
    params = Affine(gamma, beta)
    y, new_state = renorm.training_step(config, params, state, x)
    y_bn, _ = train_forward(x, gamma, beta, eps=eps, feature_axis=axis)
    np.testing.assert_array_equal(y, y_bn)
    grads = renorm.backward(config, params, state, x, dy, training=True)
    grads_bn = train_backward(dy, x, gamma, eps=eps, feature_axis=axis)
    np.testing.assert_array_equal(grads.dx, grads_bn.dx)
    np.testing.assert_array_equal(grads.dgamma, grads_bn.dgamma)
    np.testing.assert_array_equal(grads.dbeta, grads_bn.dbeta)
    assert new_state.steps == state.steps + 1


@given(reduction_cases())
def test_the_paper_schedule_is_batch_norm_for_the_first_5000_steps(case) -> None:
    """renorm.schedule.paper with renorm.train.reduces_to_bn: steps 0 to 5,000 are plain BN."""
    x, axis, _dy, gamma, beta, eps, state, dialect = case
    features = x.shape[axis]
    if dialect["average"] == "variance_unbiased" and x.size // features < 2:
        dialect = {**dialect, "average": "variance_biased"}
    config = renorm.RenormConfig(
        features, schedule=PAPER_SCHEDULE, feature_axis=axis, eps=eps, rate=0.25, **dialect
    )
    state = state.replace(steps=min(state.steps, 5000))
    y, _ = renorm.training_step(config, Affine(gamma, beta), state, x)
    y_bn, _ = train_forward(x, gamma, beta, eps=eps, feature_axis=axis)
    np.testing.assert_array_equal(y, y_bn)


def test_without_affine_parameters_gamma_is_one_and_beta_zero() -> None:
    """renorm.train.affine."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(6, 3))
    config = renorm.RenormConfig(3, schedule=ConstantSchedule.symmetric(2.0, 1.0), affine=False)
    state = renorm.RenormStatistics(rng.normal(size=3), rng.uniform(0.5, 2.0, size=3), 0)
    y, _ = renorm.training_step(config, None, state, x)
    with_identity = renorm.RenormConfig(3, schedule=ConstantSchedule.symmetric(2.0, 1.0))
    y_identity, _ = renorm.training_step(with_identity, Affine.identity(3), state, x)
    np.testing.assert_array_equal(y, y_identity)
    grads = renorm.backward(config, None, state, x, np.ones_like(x), training=True)
    grads_identity = renorm.backward(
        with_identity, Affine.identity(3), state, x, np.ones_like(x), training=True
    )
    np.testing.assert_array_equal(grads.dx, grads_identity.dx)
