"""Small cases worked by hand from papers.md and batchnorm.md (the arithmetic is in comments).

Each expected value is written out from the paper's formulas; the reference must agree to a
few ulps, and with the decimals the chapter prints. Clauses: bn.train.output,
bn.train.statistics, bn.backward.train.dx, bn.backward.train.dparams, bn.backward.infer,
bn.infer.output, bn.running.mean, bn.running.var, bn.running.cumulative,
bn.degenerate.zero_variance, bn.degenerate.single_value.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from normspec.reference import (
    Affine,
    BatchNormConfig,
    RunningStatistics,
    backward,
    batch_statistics,
    inference,
    inference_backward,
    inference_forward,
    train_backward,
    train_forward,
    training_step,
)

ULP = 2.0**-52
ROOT2 = math.sqrt(2.0)


def assert_close(actual: object, expected: object, ulps: float = 4.0) -> None:
    """Within ``ulps`` ulps of the larger magnitude of the expected values (or of 1)."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape
    scale = max(1.0, float(np.max(np.abs(e))))
    assert np.all(np.abs(a - e) <= ulps * ULP * scale), (a, e)


def nchw(values_f0: list[float], values_f1: list[float]) -> np.ndarray:
    """Two features of four values each, laid out as N=2, C=2, H=1, W=2: every feature's
    values span the batch and the spatial axes (n = batch x spatial = 4)."""
    x = np.empty((2, 2, 1, 2))
    x[:, 0, 0, :] = np.reshape(values_f0, (2, 2))
    x[:, 1, 0, :] = np.reshape(values_f1, (2, 2))
    return x


def feature(a: np.ndarray, f: int) -> np.ndarray:
    return a[:, f, 0, :].reshape(-1)


# Feature 0 is the chapter's example: x = (1, 2, 3, 4), gamma = 2, beta = 0.5, eps = 0.75.
#   mu_B  = (1 + 2 + 3 + 4) / 4 = 2.5
#   x - mu_B = (-1.5, -0.5, 0.5, 1.5)
#   var_B = (2.25 + 0.25 + 0.25 + 2.25) / 4 = 5 / 4 = 1.25   (biased: divide by n = 4)
#   sqrt(var_B + eps) = sqrt(1.25 + 0.75) = sqrt(2),  s = 1 / sqrt(2)
#   xhat  = (-1.5, -0.5, 0.5, 1.5) / sqrt(2)
#   y     = 0.5 + 2 * xhat = 0.5 + sqrt(2) * (-1.5, -0.5, 0.5, 1.5)
#         = (0.5 - 2.1213203, 0.5 - 0.7071068, 0.5 + 0.7071068, 0.5 + 2.1213203)
#         = (-1.6213203, -0.2071068, 1.2071068, 2.6213203)
# Feature 1 is constant, x = (7, 7, 7, 7), gamma = -3, beta = 0.25: mu_B = 7, var_B = 0, so
#   xhat = 0 and y = beta = 0.25 exactly (bn.degenerate.zero_variance).
X = nchw([1.0, 2.0, 3.0, 4.0], [7.0, 7.0, 7.0, 7.0])
GAMMA = np.array([2.0, -3.0])
BETA = np.array([0.5, 0.25])
EPS = 0.75
CENTERED = np.array([-1.5, -0.5, 0.5, 1.5])


def test_forward_chapter_example() -> None:
    """bn.train.output / bn.train.statistics: the chapter's hand-worked case."""
    y, stats = train_forward(X, GAMMA, BETA, eps=EPS, feature_axis=1)
    assert stats.count == 4
    assert_close(stats.mean, [2.5, 7.0])
    assert_close(stats.var, [1.25, 0.0])
    assert_close(feature(y, 0), 0.5 + ROOT2 * CENTERED)
    assert_close(feature(y, 0), [-1.6213203, -0.2071068, 1.2071068, 2.6213203], 5e-8 / ULP)
    assert np.all(feature(y, 1) == 0.25)
    # the same values with the feature axis last (NHWC) give the same numbers
    y_last, _ = train_forward(np.moveaxis(X, 1, -1), GAMMA, BETA, eps=EPS, feature_axis=-1)
    assert_close(np.moveaxis(y_last, -1, 1), y)


def test_forward_without_affine_parameters() -> None:
    """bn.train.affine: gamma = 1, beta = 0, so y = xhat = (-1.5, -0.5, 0.5, 1.5) / sqrt(2)."""
    y, _ = train_forward(X, eps=EPS)
    assert_close(feature(y, 0), CENTERED / ROOT2)
    assert np.all(feature(y, 1) == 0.0)


# Backward of feature 0 with dy = (1, 0, 0, 0) (feature 1: dy = (1, 2, 6, 3)):
#   mean(dy) = 1/4; dy * xhat = (-1.5 s, 0, 0, 0), so dgamma = sum(dy xhat) = -1.5 / sqrt(2)
#   = -1.0606602 and mean(dy xhat) = -0.375 s; dbeta = sum(dy) = 1.
#   dx_i = gamma s (dy_i - 1/4 - xhat_i (-0.375 s)) = 2 s (dy_i - 0.25 + 0.375 s^2 c_i)
#   with c = x - mu_B and s^2 = 1/2: 0.1875 c = (-0.28125, -0.09375, 0.09375, 0.28125),
#   dy - 0.25 = (0.75, -0.25, -0.25, -0.25), so the bracket is
#   (0.46875, -0.34375, -0.15625, 0.03125) (it sums to 0) and 2 s = sqrt(2):
#   dx = sqrt(2) (0.46875, -0.34375, -0.15625, 0.03125)
#      = (0.6629126, -0.4861359, -0.2209709, 0.0441942).
# The paper's chain rule gives the same: dxhat = 2 dy = (2, 0, 0, 0);
#   dvar = sum dxhat c (-1/2) (var+eps)^(-3/2) = 2 (-1.5) (-1/2) 2^(-3/2) = 0.5303301;
#   dmu = sum dxhat (-1/sqrt(2)) + dvar sum(-2 c) / 4 = -sqrt(2) + 0 = -1.4142136;
#   dx_1 = 2 / sqrt(2) + 0.5303301 * 2 (-1.5) / 4 + (-1.4142136) / 4
#        = 1.4142136 - 0.3977476 - 0.3535534 = 0.6629126.
# Feature 1 (constant): xhat = 0, s = 1/sqrt(0 + 0.75), so dx = gamma s (dy - mean(dy))
#   = -3 / sqrt(0.75) (1 - 3, 2 - 3, 6 - 3, 3 - 3) = -2 sqrt(3) (-2, -1, 3, 0)
#   = (6.9282032, 3.4641016, -10.3923048, 0); dgamma = 0; dbeta = 12.
DY = nchw([1.0, 0.0, 0.0, 0.0], [1.0, 2.0, 6.0, 3.0])


def test_backward_hand_case() -> None:
    """bn.backward.train.dx / dparams: dx through the batch statistics, dgamma, dbeta."""
    grads = train_backward(DY, X, GAMMA, eps=EPS, feature_axis=1)
    bracket = np.array([0.46875, -0.34375, -0.15625, 0.03125])
    assert_close(feature(grads.dx, 0), ROOT2 * bracket)
    assert_close(feature(grads.dx, 0), [0.6629126, -0.4861359, -0.2209709, 0.0441942], 5e-8 / ULP)
    assert_close(feature(grads.dx, 1), -2 * math.sqrt(3) * np.array([-2.0, -1.0, 3.0, 0.0]))
    assert_close(grads.dgamma, [-1.5 / ROOT2, 0.0])
    assert grads.dgamma[1] == 0.0
    assert_close(grads.dbeta, [1.0, 12.0])
    # the chain-rule route of the comment, term by term
    dvar = 2 * (-1.5) * (-0.5) * 2.0**-1.5
    dmu = -2 / ROOT2
    assert_close(feature(grads.dx, 0)[0], 2 / ROOT2 + dvar * 2 * (-1.5) / 4 + dmu / 4)
    # through the layer API, training mode, the same numbers
    config = BatchNormConfig(2, eps=EPS)
    layer = backward(config, Affine(GAMMA, BETA), None, X, DY, training=True)
    assert_close(layer.dx, grads.dx, 0)


# Inference with running mean (2, 7), running variance (1.25, 0), eps = 0.75:
#   feature 0: sqrt(1.25 + 0.75) = sqrt(2), y = 0.5 + 2 (x - 2) / sqrt(2)
#            = 0.5 + sqrt(2) (-1, 0, 1, 2)
#            = (-0.9142136, 0.5, 1.9142136, 3.3284271);
#   dx = gamma dy / sqrt(2) = sqrt(2) dy = (1.4142136, 0, 0, 0); dgamma = sum dy (x - 2)/sqrt(2)
#      = -1/sqrt(2); dbeta = 1.
#   feature 1: x - 7 = 0, so y = beta = 0.25; dx = -3 dy / sqrt(0.75) = -2 sqrt(3) dy.
RUNNING_MEAN = np.array([2.0, 7.0])
RUNNING_VAR = np.array([1.25, 0.0])


def test_inference_hand_case() -> None:
    """bn.infer.output and bn.backward.infer with the running statistics."""
    y = inference_forward(X, RUNNING_MEAN, RUNNING_VAR, GAMMA, BETA, eps=EPS)
    assert_close(feature(y, 0), 0.5 + ROOT2 * np.array([-1.0, 0.0, 1.0, 2.0]))
    assert_close(feature(y, 0), [-0.9142136, 0.5, 1.9142136, 3.3284271], 5e-8 / ULP)
    assert np.all(feature(y, 1) == 0.25)
    grads = inference_backward(DY, X, RUNNING_MEAN, RUNNING_VAR, GAMMA, eps=EPS)
    assert_close(feature(grads.dx, 0), [ROOT2, 0.0, 0.0, 0.0])
    assert_close(feature(grads.dx, 1), -2 * math.sqrt(3) * np.array([1.0, 2.0, 6.0, 3.0]))
    assert_close(grads.dgamma, [-1 / ROOT2, 0.0])
    assert_close(grads.dbeta, [1.0, 12.0])


def test_a_reported_state_holds_any_value_and_inference_refuses_a_negative_variance() -> None:
    """A state is also what an adapter reports: a negative or NaN variance is held for the
    clauses to judge (bn.params.no_nan_state); inference from a negative one is refused."""
    state = RunningStatistics(RUNNING_MEAN, np.array([-1.0, np.nan]), 2)
    assert state.var[0] == -1.0 and np.isnan(state.var[1])
    config = BatchNormConfig(num_features=2, feature_axis=1, eps=EPS)
    with pytest.raises(ValueError, match="non-negative"):
        inference(config, Affine(GAMMA, BETA), state, X)


# Running statistics, one feature, n = 4 values per feature (N=2, H=1, W=2):
#   batch 1: x = (1, 2, 3, 4): mu = 2.5, var_B = 1.25, unbiased 4/3 * 1.25 = 5/3
#   batch 2: x = (0, 0, 4, 4): mu = 2,   var_B = 4,    unbiased 16/3
#   batch 3: x = (1, 1, 1, 1): mu = 1,   var_B = 0,    unbiased 0
# Fixed rate alpha = 0.1 from the initial state (0, 1), one step:
#   mean = 0 + 0.1 (2.5 - 0) = 0.25
#   var  = 1 + 0.1 (1.25 - 1) = 1.025 (biased), 1 + 0.1 (5/3 - 1) = 16/15 = 1.0666667 (unbiased)
# Cumulative (momentum None), alpha = 1/(t+1): plain averages of the batch statistics:
#   after 1: mean 2.5, var 1.25 | 5/3
#   after 2: mean (2.5 + 2)/2 = 2.25, var (1.25 + 4)/2 = 2.625 | (5/3 + 16/3)/2 = 3.5
#   after 3: mean (2.5 + 2 + 1)/3 = 11/6 = 1.8333333, var (1.25 + 4 + 0)/3 = 1.75
#            | (5/3 + 16/3 + 0)/3 = 7/3 = 2.3333333
BATCHES = [[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 1.0, 1.0]]


def one_feature(values: list[float]) -> np.ndarray:
    return np.reshape(values, (2, 1, 1, 2))


@pytest.mark.parametrize(("estimator", "expected_var"), [("biased", 1.025), ("unbiased", 16 / 15)])
def test_running_update_fixed_rate(estimator: str, expected_var: float) -> None:
    """bn.running.mean / bn.running.var with alpha = 0.1, both estimators."""
    config = BatchNormConfig(1, rate=0.1, running_variance=estimator)  # type: ignore[arg-type]
    state = RunningStatistics.initial(1)
    _, new = training_step(config, None, state, one_feature(BATCHES[0]))
    assert new is not None
    assert_close(new.mean, [0.25])
    assert_close(new.var, [expected_var])
    assert new.steps == 1
    assert state.steps == 0 and state.mean[0] == 0.0 and state.var[0] == 1.0


@pytest.mark.parametrize(
    ("estimator", "expected"),
    [
        ("biased", [(2.5, 1.25), (2.25, 2.625), (11 / 6, 1.75)]),
        ("unbiased", [(2.5, 5 / 3), (2.25, 3.5), (11 / 6, 7 / 3)]),
    ],
)
def test_running_update_cumulative(estimator: str, expected: list[tuple[float, float]]) -> None:
    """bn.running.cumulative / bn.running.steps: momentum None averages all batches."""
    config = BatchNormConfig(1, rate=None, running_variance=estimator)  # type: ignore[arg-type]
    state: RunningStatistics | None = RunningStatistics.initial(1)
    for step, (batch, (mean, var)) in enumerate(zip(BATCHES, expected, strict=True)):
        assert state is not None
        _, state = training_step(config, None, state, one_feature(batch))
        assert state is not None
        assert state.steps == step + 1
        assert_close(state.mean, [mean])
        assert_close(state.var, [var])
    # inference uses the running statistics and changes nothing (bn.running.no_inference_update)
    assert state is not None
    y = inference(config, None, state, one_feature(BATCHES[0]))
    assert_close(
        y.reshape(-1), (np.array(BATCHES[0]) - expected[2][0]) / math.sqrt(expected[2][1] + 1e-5)
    )
    assert state.steps == 3


# A single value per feature (n = 1): mu_B = x, var_B = 0, xhat = 0, so y = beta exactly and
# dx = gamma s (dy - mean(dy)) = gamma s (dy - dy) = 0; the unbiased estimate n/(n-1) is undefined.
def test_single_value_per_feature() -> None:
    """bn.degenerate.single_value: y = beta exactly, dx = 0; unbiased running variance raises."""
    x = np.array([[3.0, -1e300, 5e-324]])
    beta = np.array([0.5, -2.0, 7.0])
    gamma = np.array([4.0, 1e-3, -2.0])
    y, stats = train_forward(x, gamma, beta)
    assert np.array_equal(y, beta[None, :])
    assert np.array_equal(stats.mean, x[0]) and np.array_equal(stats.var, np.zeros(3))
    grads = train_backward(np.array([[1.5, -2.0, 3.0]]), x, gamma)
    assert np.array_equal(grads.dx, np.zeros((1, 3)))
    assert np.array_equal(grads.dgamma, np.zeros(3))
    biased = BatchNormConfig(3, running_variance="biased", rate=0.5)
    _, state = training_step(biased, Affine(gamma, beta), RunningStatistics.initial(3), x)
    assert state is not None and np.all(np.isfinite(state.var))
    assert_close(state.var, [0.5, 0.5, 0.5])  # 1 + 0.5 (0 - 1)
    unbiased = BatchNormConfig(3, running_variance="unbiased")
    with pytest.raises(ValueError, match="unbiased"):
        training_step(unbiased, Affine(gamma, beta), RunningStatistics.initial(3), x)


def test_statistics_of_the_example() -> None:
    """bn.train.statistics over batch and spatial axes: n = 4, not the batch size 2."""
    # over the batch axis alone feature 0 would be (1, 3) and (2, 4): variance 1, not 1.25
    stats = batch_statistics(X, 1)
    assert stats.count == 4
    assert_close(stats.mean, [2.5, 7.0])
    assert_close(stats.var, [1.25, 0.0])
