"""Ghost batch normalization in float64 (spec: ghost.md), built on the BN reference.

Each ghost batch is a batch of :mod:`normspec.reference.batchnorm`: the forward and the
backward run :func:`~normspec.reference.batchnorm.train_forward` and
:func:`~normspec.reference.batchnorm.train_backward` on it, so every ghost batch has the
accuracy stated for those. Inference is that of batch normalization (ghost.infer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from normspec.reference import batchnorm, layer
from normspec.reference._arrays import FloatArray, check_input, whole_number
from normspec.reference.batchnorm import Gradients, IntArray
from normspec.reference.layer import Affine, BatchNormConfig
from normspec.reference.running import (
    VarianceEstimator,
    update_running_statistics,
    variance_estimate,
)
from normspec.reference.state import BatchStatistics, RunningStatistics

#: ``consecutive``: ghost batch g holds samples g*V .. g*V + V - 1 (the paper);
#: ``strided``: it holds samples g, g + G, g + 2G, ... (tf_keras' reshape to (V, G)).
GhostGroups = Literal["consecutive", "strided"]
#: ``averaged``: one update with the ghost batches' mean statistics (tf_keras);
#: ``sequential``: one update per ghost batch, in order (the paper).
GhostRunning = Literal["averaged", "sequential"]


@dataclass(frozen=True)
class GhostDialect:
    """The ghost dialect parameters (dialects.md: ghost_groups, ghost_running)."""

    groups: GhostGroups
    running: GhostRunning


def check_virtual_batch_size(value: Any) -> int:
    """``V`` must be a positive integer (ghost.params.invalid)."""
    return whole_number("virtual_batch_size", value, minimum=1)


def ghost_batches(batch_size: int, virtual_batch_size: int, groups: GhostGroups) -> list[IntArray]:
    """The sample indices of each ghost batch, in order (ghost.groups, ghost.remainder).

    A batch size that is not a multiple of ``V`` raises ``ValueError``.
    """
    size = check_virtual_batch_size(virtual_batch_size)
    if batch_size % size:
        raise ValueError(
            f"the batch size {batch_size} is not a multiple of virtual_batch_size {size}"
        )
    count = batch_size // size
    if groups == "consecutive":
        return [np.arange(g * size, (g + 1) * size) for g in range(count)]
    if groups == "strided":
        return [np.arange(g, batch_size, count) for g in range(count)]
    raise ValueError(f"ghost_groups must be 'consecutive' or 'strided', got {groups!r}")


def _split(x: Any, feature_axis: int, virtual_batch_size: int, groups: GhostGroups) -> Any:
    array = np.asarray(x)
    axis = check_input(array, feature_axis)
    if axis == 0:
        raise ValueError("ghost batches are formed along axis 0, which cannot be the feature axis")
    return array, ghost_batches(array.shape[0], virtual_batch_size, groups)


def train_forward(
    x: Any,
    gamma: Any = None,
    beta: Any = None,
    *,
    eps: float = 1e-5,
    feature_axis: int = 1,
    virtual_batch_size: int,
    groups: GhostGroups = "consecutive",
) -> tuple[FloatArray, tuple[BatchStatistics, ...]]:
    """Each ghost batch normalized with its own statistics; the output and those statistics.

    Clauses: ghost.groups, ghost.train.output, ghost.remainder.
    """
    array, index = _split(x, feature_axis, virtual_batch_size, groups)
    y = np.empty(array.shape)
    stats = []
    for rows in index:
        part, batch = batchnorm.train_forward(
            array[rows], gamma, beta, eps=eps, feature_axis=feature_axis
        )
        y[rows] = part
        stats.append(batch)
    return y, tuple(stats)


def train_backward(
    dy: Any,
    x: Any,
    gamma: Any = None,
    *,
    eps: float = 1e-5,
    feature_axis: int = 1,
    virtual_batch_size: int,
    groups: GhostGroups = "consecutive",
) -> Gradients:
    """``dx`` through each ghost batch's own statistics; ``dgamma``, ``dbeta`` summed over all.

    Clause: ghost.backward.
    """
    array, index = _split(x, feature_axis, virtual_batch_size, groups)
    upstream = np.asarray(dy)
    if upstream.shape != array.shape:
        raise ValueError(f"dy must have the shape of x {array.shape}, got {upstream.shape}")
    dx = np.empty(array.shape)
    dgamma = dbeta = None
    for rows in index:
        part = batchnorm.train_backward(
            upstream[rows], array[rows], gamma, eps=eps, feature_axis=feature_axis
        )
        dx[rows] = part.dx
        dgamma = part.dgamma if dgamma is None else dgamma + part.dgamma
        dbeta = part.dbeta if dbeta is None else dbeta + part.dbeta
    assert dgamma is not None and dbeta is not None
    return Gradients(dx, dgamma, dbeta)


def update_running(
    state: RunningStatistics,
    stats: tuple[BatchStatistics, ...],
    *,
    rate: float | None,
    estimator: VarianceEstimator,
    running: GhostRunning,
) -> RunningStatistics:
    """The state after a training step with these ghost batches (ghost.running).

    ``averaged``: one update towards the mean of the ghost batches' means and of their
    variance estimates; ``sequential``: one update per ghost batch. The counter moves by one.
    """
    if rate is None:
        raise ValueError("the cumulative average is not defined for ghost batches")
    if not stats:
        raise ValueError("a training step has at least one ghost batch")
    if running == "averaged":
        estimates = [variance_estimate(batch, estimator) for batch in stats]
        mean = np.mean([batch.mean for batch in estimates], axis=0)
        var = np.mean([batch.var for batch in estimates], axis=0)
        target = BatchStatistics(mean, var, stats[0].count)
        return update_running_statistics(state, target, rate=rate, estimator="biased")
    if running != "sequential":
        raise ValueError(f"ghost_running must be 'averaged' or 'sequential', got {running!r}")
    current = state
    for batch in stats:
        current = update_running_statistics(current, batch, rate=rate, estimator=estimator)
    return current.replace(steps=state.steps + 1)


@dataclass(frozen=True)
class GhostConfig:
    """A BN layer config with ghost batches of ``virtual_batch_size`` samples."""

    batchnorm: BatchNormConfig
    virtual_batch_size: int
    groups: GhostGroups = "consecutive"
    running: GhostRunning = "sequential"

    def __post_init__(self) -> None:
        check_virtual_batch_size(self.virtual_batch_size)
        if not self.batchnorm.track_running_stats:
            raise ValueError("a ghost layer keeps running statistics")
        if self.batchnorm.rate is None:
            raise ValueError("the cumulative average is not defined for ghost batches")
        ghost_batches(self.virtual_batch_size, self.virtual_batch_size, self.groups)
        if self.running not in ("averaged", "sequential"):
            raise ValueError(
                f"ghost_running must be 'averaged' or 'sequential', got {self.running!r}"
            )

    @property
    def num_features(self) -> int:
        return self.batchnorm.num_features

    @property
    def affine(self) -> bool:
        return self.batchnorm.affine


def _options(config: GhostConfig) -> dict[str, Any]:
    return {
        "eps": config.batchnorm.eps,
        "feature_axis": config.batchnorm.feature_axis,
        "virtual_batch_size": config.virtual_batch_size,
        "groups": config.groups,
    }


def _affine(config: GhostConfig, params: Affine | None) -> tuple[Any, Any]:
    if not config.affine or params is None:
        return None, None
    return params.gamma, params.beta


def training_step(
    config: GhostConfig, params: Affine | None, state: RunningStatistics | None, x: Any
) -> tuple[FloatArray, RunningStatistics]:
    """Training output and the state after the step (ghost.train.output, ghost.running)."""
    if state is None:
        raise ValueError("a ghost layer needs its running statistics")
    gamma, beta = _affine(config, params)
    y, stats = train_forward(x, gamma, beta, **_options(config))
    new_state = update_running(
        state,
        stats,
        rate=config.batchnorm.rate,
        estimator=config.batchnorm.running_variance,
        running=config.running,
    )
    return y, new_state


def inference(
    config: GhostConfig, params: Affine | None, state: RunningStatistics | None, x: Any
) -> FloatArray:
    """Inference output: batch normalization's, for any batch size (ghost.infer)."""
    return layer.inference(config.batchnorm, params, state, x)


def backward(
    config: GhostConfig,
    params: Affine | None,
    state: RunningStatistics | None,
    x: Any,
    dy: Any,
    *,
    training: bool,
) -> Gradients:
    """The vector-Jacobian product of :func:`training_step` or :func:`inference` (ghost.backward)."""
    if not training:
        return layer.backward(config.batchnorm, params, state, x, dy, training=False)
    gamma, _ = _affine(config, params)
    return train_backward(dy, x, gamma, **_options(config))
