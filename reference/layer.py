"""A batch-normalization layer as the spec defines it: config, parameters, state, step.

This is the reference's whole-layer semantics, including the dialect parameters
(bn.running.untracked, bn.infer.untracked, bn.running.no_inference_update).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from normspec.reference import batchnorm
from normspec.reference._arrays import (
    FloatArray,
    check_eps,
    check_rate,
    check_vector,
    whole_number,
)
from normspec.reference.running import VarianceEstimator, update_running_statistics
from normspec.reference.state import RunningStatistics


@dataclass(frozen=True)
class BatchNormConfig:
    """The spec's parameters of one layer, with the update rate in canonical form.

    ``rate`` is alpha in ``stat <- stat + alpha * (batch_stat - stat)``; ``None`` selects the
    cumulative average. ``running_variance`` is the dialect's estimator.
    """

    num_features: int
    feature_axis: int = 1
    eps: float = 1e-5
    rate: float | None = 0.1
    running_variance: VarianceEstimator = "unbiased"
    affine: bool = True
    track_running_stats: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "num_features", whole_number("num_features", self.num_features, minimum=1)
        )
        object.__setattr__(self, "eps", check_eps(self.eps))
        if self.rate is not None:
            object.__setattr__(self, "rate", check_rate(self.rate))
        if self.running_variance not in ("biased", "unbiased"):
            raise ValueError(
                f"running_variance must be 'biased' or 'unbiased', got {self.running_variance!r}"
            )


@dataclass(frozen=True)
class Affine:
    """The learned per-feature scale and shift (gamma starts at 1, beta at 0)."""

    gamma: FloatArray
    beta: FloatArray

    @classmethod
    def identity(cls, num_features: int) -> Affine:
        return cls(np.ones(num_features), np.zeros(num_features))


def _parameters(config: BatchNormConfig, params: Affine | None) -> tuple[Any, Any]:
    if not config.affine or params is None:
        return None, None
    gamma = check_vector("gamma", params.gamma, config.num_features)
    beta = check_vector("beta", params.beta, config.num_features)
    return gamma, beta


def training_step(
    config: BatchNormConfig, params: Affine | None, state: RunningStatistics | None, x: Any
) -> tuple[FloatArray, RunningStatistics | None]:
    """Training output and the state after the step (bn.train.output, bn.running.*).

    A layer that does not track statistics has no state and returns ``None`` for it.
    """
    gamma, beta = _parameters(config, params)
    y, stats = batchnorm.train_forward(
        x, gamma, beta, eps=config.eps, feature_axis=config.feature_axis
    )
    if not config.track_running_stats:
        return y, None
    if state is None:
        raise ValueError("a layer that tracks running statistics needs a state")
    new_state = update_running_statistics(
        state, stats, rate=config.rate, estimator=config.running_variance
    )
    return y, new_state


def inference(
    config: BatchNormConfig, params: Affine | None, state: RunningStatistics | None, x: Any
) -> FloatArray:
    """Inference output: running statistics, or batch statistics when untracked (bn.infer.*)."""
    gamma, beta = _parameters(config, params)
    if not config.track_running_stats:
        return batchnorm.train_forward(
            x, gamma, beta, eps=config.eps, feature_axis=config.feature_axis
        )[0]
    if state is None:
        raise ValueError("a layer that tracks running statistics needs a state")
    return batchnorm.inference_forward(
        x, state.mean, state.var, gamma, beta, eps=config.eps, feature_axis=config.feature_axis
    )


def backward(
    config: BatchNormConfig,
    params: Affine | None,
    state: RunningStatistics | None,
    x: Any,
    dy: Any,
    *,
    training: bool,
) -> batchnorm.Gradients:
    """The vector-Jacobian product of :func:`training_step` or :func:`inference`.

    Clauses: bn.backward.train.dx, bn.backward.train.dparams, bn.backward.infer.
    """
    gamma, _ = _parameters(config, params)
    if training or not config.track_running_stats:
        return batchnorm.train_backward(
            dy, x, gamma, eps=config.eps, feature_axis=config.feature_axis
        )
    if state is None:
        raise ValueError("a layer that tracks running statistics needs a state")
    return batchnorm.inference_backward(
        dy, x, state.mean, state.var, gamma, eps=config.eps, feature_axis=config.feature_axis
    )
