"""The running-statistics update after a training step (spec: batchnorm.md, bn.running.*)."""

from __future__ import annotations

import math
from typing import Literal

from normspec.reference._arrays import FloatArray, check_rate
from normspec.reference.state import (
    RUNNING_AVERAGES,
    BatchStatistics,
    RunningAverage,
    RunningStatistics,
)

VarianceEstimator = Literal["biased", "unbiased"]

__all__ = [
    "RUNNING_AVERAGES",
    "RunningAverage",
    "VarianceEstimator",
    "check_running_average",
    "debias_factor",
    "inference_statistics",
    "step_rate",
    "update_running_statistics",
    "variance_estimate",
]


def variance_estimate(batch: BatchStatistics, estimator: VarianceEstimator) -> BatchStatistics:
    """The batch variance that enters the running variance (bn.running.var).

    ``biased`` is var_B itself; ``unbiased`` is ``n / (n - 1) * var_B`` with n the number of
    values per feature (batch size times spatial size), undefined (an error) for n = 1.
    """
    if estimator == "biased":
        return batch
    if estimator != "unbiased":
        raise ValueError(f"variance estimator must be 'biased' or 'unbiased', got {estimator!r}")
    if batch.count < 2:
        raise ValueError("the unbiased running variance needs at least 2 values per feature, got 1")
    factor = batch.count / (batch.count - 1)
    return BatchStatistics(batch.mean, batch.var * factor, batch.count)


def step_rate(state: RunningStatistics, rate: float | None) -> float:
    """The update rate alpha of the next step: fixed, or ``1 / (steps + 1)`` when cumulative.

    Clauses: bn.running.mean, bn.running.cumulative.
    """
    return 1.0 / (state.steps + 1) if rate is None else check_rate(rate)


def update_running_statistics(
    state: RunningStatistics,
    batch: BatchStatistics,
    *,
    rate: float | None,
    estimator: VarianceEstimator,
) -> RunningStatistics:
    """``stat <- stat + alpha * (batch_stat - stat)`` for the mean and the variance.

    ``rate`` is the canonical update rate alpha, or ``None`` for the cumulative average
    (PyTorch's ``momentum=None``). The step counter increases by one.
    Clauses: bn.running.mean, bn.running.var, bn.running.cumulative, bn.running.steps.
    """
    if batch.mean.shape != state.mean.shape:
        raise ValueError(
            f"batch statistics have {batch.mean.shape[0]} features, the state {state.num_features}"
        )
    alpha = step_rate(state, rate)
    target = variance_estimate(batch, estimator)
    mean = state.mean + alpha * (target.mean - state.mean)
    var = state.var + alpha * (target.var - state.var)
    return RunningStatistics(mean, var, state.steps + 1)


def check_running_average(value: object, rate: float | None) -> RunningAverage:
    """A ``running_average`` and the rate it is used with: a zero-debiased average needs a
    fixed rate alpha > 0 (``1 - (1 - alpha)^t`` is 0 for alpha = 0; no cumulative mode)."""
    if value == "plain":
        return "plain"
    if value != "zero_debiased":
        raise ValueError(f"running_average must be 'plain' or 'zero_debiased', got {value!r}")
    if rate is None:
        raise ValueError("zero-debiased running statistics have no cumulative-average mode")
    if not check_rate(rate) > 0:
        raise ValueError(
            "zero-debiased running statistics need an update rate alpha > 0 (a decay < 1): "
            "1 - (1 - alpha)^t is 0 for alpha = 0"
        )
    return "zero_debiased"


def debias_factor(rate: float, steps: int) -> float:
    """``1 - (1 - alpha)^t``, the total weight a zero-debiased average of ``t`` steps gave
    the batches (bn.infer.output); 1 for ``t = 0``, where the layer reads its initial
    values. Evaluated as ``-expm1(t * log1p(-alpha))``, to a few ulps for every alpha."""
    alpha = check_rate(rate)
    if steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if steps == 0 or alpha == 1.0:
        return 1.0
    if alpha == 0.0:
        raise ValueError("the debias factor 1 - (1 - alpha)^t is 0 for alpha = 0")
    return -math.expm1(steps * math.log1p(-alpha))


def inference_statistics(
    state: RunningStatistics, *, rate: float | None, running_average: RunningAverage
) -> tuple[FloatArray, FloatArray]:
    """The mean and variance inference normalizes with (bn.infer.output, bn.backward.infer).

    ``plain``: the running statistics themselves. ``zero_debiased``: the hidden averages
    divided by :func:`debias_factor` of ``rate`` and the step counter ``t``.
    """
    if check_running_average(running_average, rate) == "plain":
        return state.mean, state.var
    assert rate is not None
    factor = debias_factor(rate, state.steps)
    return state.mean / factor, state.var / factor
