"""Zero-debiased running averages in the reference (dialects.md: ``running_average``).

The reference keeps the hidden averages with the ordinary update and reads them in inference
divided by ``c_t = 1 - (1 - alpha)^t`` (bn.running.initial, bn.infer.output,
bn.backward.infer). Checked here against hand-worked cases (batchnorm.md's example) and
against an independent 50-digit mpmath evaluation of what the debiased average *means*: the
mean of the batch statistics weighted by ``(1 - alpha)^(t - k)``, summed directly rather
than recursively.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from normspec.reference import (
    BatchNormConfig,
    RunningStatistics,
    debias_factor,
    inference,
    inference_statistics,
    training_step,
)
from normspec.reference.ghost import GhostConfig
from normspec.reference.layer import backward

U = 2.0**-53
TINY = float(np.finfo(np.float64).tiny)


def _layer(rate: float, **options: object) -> BatchNormConfig:
    return BatchNormConfig(
        num_features=1,
        rate=rate,
        running_variance="biased",
        running_average="zero_debiased",
        **options,  # type: ignore[arg-type]
    )


def test_the_hand_worked_case_of_batchnorm_md() -> None:
    """alpha = 0.1, batches of means 1 and 2 (variance 1 each): hidden mean 0.1, then 0.29,
    c_2 = 0.19, inference reads 29 / 19 and the variance 0.19 / 0.19 = 1."""
    config = _layer(0.1, eps=0.75)
    state = config.initial_state()
    assert state is not None
    assert (state.mean.tolist(), state.var.tolist(), state.steps) == ([0.0], [0.0], 0)
    for x in ([[0.0], [2.0]], [[1.0], [3.0]]):
        _, state = training_step(config, None, state, np.array(x))
        assert state is not None
    assert state.steps == 2
    assert state.mean[0] == pytest.approx(0.29, rel=4 * U)
    assert state.var[0] == pytest.approx(0.19, rel=4 * U)
    assert debias_factor(0.1, 2) == pytest.approx(0.19, rel=2 * U)
    mean, var = inference_statistics(state, rate=0.1, running_average="zero_debiased")
    assert mean[0] == pytest.approx(29 / 19, rel=8 * U)
    assert var[0] == pytest.approx(1.0, rel=8 * U)
    x = np.array([[1.0], [3.0]])
    y = inference(config, None, state, x)  # eps 0.75: sqrt(var + eps) = sqrt(1.75)
    assert y[:, 0] == pytest.approx((x[:, 0] - 29 / 19) / math.sqrt(1.75), rel=16 * U)
    grads = backward(config, None, state, x, np.ones_like(x), training=False)
    assert grads.dx[:, 0] == pytest.approx([1 / math.sqrt(1.75)] * 2, rel=16 * U)


def test_the_first_step_reads_the_batch_and_step_zero_the_hidden_values() -> None:
    config = _layer(0.01)
    before = RunningStatistics(np.array([5.0]), np.array([7.0]), 0)
    assert inference_statistics(before, rate=0.01, running_average="zero_debiased") == (
        before.mean,
        before.var,
    )
    start = config.initial_state()
    assert start is not None
    _, after = training_step(config, None, start, np.array([[1.0], [2.0], [6.0]]))
    assert after is not None
    mean, var = config.inference_statistics(after)
    assert mean[0] == pytest.approx(3.0, rel=4 * U)
    assert var[0] == pytest.approx(14 / 3, rel=8 * U)


def test_the_debias_factor() -> None:
    assert debias_factor(0.3, 0) == 1.0
    assert debias_factor(1.0, 5) == 1.0
    assert debias_factor(0.5, 3) == 0.875
    with pytest.raises(ValueError, match="alpha = 0"):
        debias_factor(0.0, 3)
    with mpmath.workdps(50):
        for rate, steps in ((1e-12, 3), (1e-4, 1), (0.3, 40), (1e-6, 10**6)):
            exact = 1 - (1 - mpmath.mpf(rate)) ** steps
            assert abs(debias_factor(rate, steps) - exact) <= 4 * U * exact, (rate, steps)


def test_configs_reject_what_the_debias_factor_cannot_mean() -> None:
    with pytest.raises(ValueError, match="alpha > 0"):
        _layer(0.0)
    with pytest.raises(ValueError, match="no cumulative-average mode"):
        BatchNormConfig(num_features=1, rate=None, running_average="zero_debiased")
    with pytest.raises(ValueError, match="running_average must be"):
        BatchNormConfig(num_features=1, running_average="debiased")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not defined for ghost batches"):
        GhostConfig(_layer(0.1), 2)


@given(
    rate=st.one_of(st.sampled_from([0.1, 0.01, 0.001, 1.0, 0.5]), st.floats(1e-6, 1.0)),
    batches=st.lists(
        st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=6), min_size=1, max_size=30
    ),
)
def test_the_debiased_average_is_the_weighted_mean_of_the_batches(
    rate: float, batches: list[list[float]]
) -> None:
    """After t steps from the initial state, inference reads
    ``sum_k (1 - alpha)^(t - k) s_k / sum_k (1 - alpha)^(t - k)`` for the batch means and
    biased variances ``s_k``, evaluated directly at 50 digits."""
    config = _layer(rate)
    state = config.initial_state()
    assert state is not None
    for values in batches:
        _, state = training_step(config, None, state, np.array(values)[:, None])
        assert state is not None
    mean, var = config.inference_statistics(state)
    t = len(batches)
    with mpmath.workdps(50):
        decay = 1 - mpmath.mpf(rate)
        weights = [decay ** (t - k) for k in range(1, t + 1)]
        total = mpmath.fsum(weights)
        means = [mpmath.fsum(mpmath.mpf(v) for v in b) / len(b) for b in batches]
        variances = [
            mpmath.fsum((mpmath.mpf(v) - m) ** 2 for v in b) / len(b)
            for b, m in zip(batches, means, strict=True)
        ]
        expected_mean = mpmath.fsum(w * m for w, m in zip(weights, means, strict=True)) / total
        expected_var = mpmath.fsum(w * v for w, v in zip(weights, variances, strict=True)) / total
        # the natural scale of the recursive evaluation: each step rounds the hidden average
        # it starts from and the batch's share, and the debias factor divides them
        factor = 1 - decay**t
        hidden_mean = hidden_var = scale_mean = scale_var = mpmath.mpf(0)
        for b, m, v in zip(batches, means, variances, strict=True):
            size = mpmath.fsum(abs(mpmath.mpf(x)) for x in b) / len(b)
            scale_mean += abs(hidden_mean) + rate * size
            scale_var += hidden_var + rate * v
            hidden_mean += rate * (m - hidden_mean)
            hidden_var += rate * (v - hidden_var)
        allowed = 8 * U
        # values below float64's normal range (squares of tiny deviations) lose their digits
        underflow = 4 * t * TINY / factor
        assert abs(mean[0] - expected_mean) <= (
            allowed * (scale_mean / factor + abs(expected_mean)) + underflow
        )
        assert (
            abs(var[0] - expected_var) <= allowed * (scale_var / factor + expected_var) + underflow
        )
