"""The running-statistics update after a training step (spec: batchnorm.md, bn.running.*)."""

from __future__ import annotations

from typing import Literal

from normspec.reference._arrays import check_rate
from normspec.reference.state import BatchStatistics, RunningStatistics

VarianceEstimator = Literal["biased", "unbiased"]


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
