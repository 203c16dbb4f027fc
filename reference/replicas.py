"""Synchronized batch normalization across K replicas, in float64 (spec: replicas.md, sync.*).

A synchronized layer computes what a single-device layer computes on the *concatenated
batch*: the replicas' inputs joined along the batch axis (axis 0). Without masks the
functions here concatenate, call the single-device reference (:mod:`.batchnorm`,
:mod:`.running`) and split the results back into the replicas' slices, so they inherit its
evaluation and its accuracy. With masks (Flax's ``mask=``: true where a value counts), the
values that count are gathered per feature into one column (again a concatenation, feature
by feature, since a mask may leave each feature its own count) and the column goes through
the same reference.

The parameter gradients of a replica are the partial sums over its own values
(``replica_param_gradients = partial``, sync.backward.dparams); the cotangent at a
masked-out position is taken as 0 and ``dx`` there is 0 (sync.train.mask). An empty replica
(batch size 0, or every value masked out) gets outputs and gradients of its own empty shape
and zero parameter gradients (sync.degenerate.empty_replica); no value at all on any
replica, or a feature without any value that counts, raises ``ValueError`` ("empty batch",
sync.degenerate.all_empty).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from normspec.reference import batchnorm
from normspec.reference._arrays import FloatArray, check_eps, check_input
from normspec.reference.batchnorm import Gradients
from normspec.reference.layer import Affine, BatchNormConfig
from normspec.reference.running import VarianceEstimator, update_running_statistics
from normspec.reference.state import BatchStatistics, RunningStatistics

IntArray = NDArray[np.intp]
BoolArray = NDArray[np.bool_]


@dataclass(frozen=True)
class GlobalStatistics:
    """Per-feature statistics of the concatenated batch (sync.train.statistics).

    ``counts[c]`` is ``N`` of feature ``c`` (the same for every feature without masks);
    ``replica_counts[k, c]`` is replica ``k``'s count ``n_k``.
    """

    mean: FloatArray
    var: FloatArray
    counts: IntArray
    replica_counts: IntArray


@dataclass(frozen=True)
class _Replicas:
    """Validated per-replica inputs: float64 arrays, the feature axis, optional masks."""

    xs: list[FloatArray]
    axis: int
    masks: list[BoolArray] | None

    @property
    def sizes(self) -> list[int]:
        return [x.shape[0] for x in self.xs]

    @property
    def num_features(self) -> int:
        return int(self.xs[0].shape[self.axis])

    def column(self, feature: int, arrays: Sequence[FloatArray]) -> list[FloatArray]:
        """Per replica, the values of ``feature`` in ``arrays`` that count (1-d)."""
        assert self.masks is not None
        return [
            np.take(a, feature, axis=self.axis)[np.take(m, feature, axis=self.axis)]
            for a, m in zip(arrays, self.masks, strict=True)
        ]


def _as_replicas(xs: Sequence[Any], feature_axis: int, masks: Sequence[Any] | None) -> _Replicas:
    """Check the replicas' inputs: one rank and one shape but for the batch axis (axis 0)."""
    if len(xs) == 0:
        raise ValueError("there must be at least one replica")
    arrays = [batchnorm._as_input("x", x) for x in xs]
    axis = check_input(arrays[0], feature_axis)
    if axis == 0:
        raise ValueError("the feature axis cannot be axis 0, the batch axis replicas split")
    rest = arrays[0].shape[1:]
    for k, array in enumerate(arrays):
        if array.ndim != arrays[0].ndim or array.shape[1:] != rest:
            raise ValueError(
                f"replica {k} has shape {array.shape}; every replica must have the shape "
                f"(*, {', '.join(map(str, rest))})"
            )
    if masks is None:
        return _Replicas(arrays, axis, None)
    if len(masks) != len(arrays):
        raise ValueError(f"{len(masks)} masks for {len(arrays)} replicas")
    checked: list[BoolArray] = []
    for k, (mask, array) in enumerate(zip(masks, arrays, strict=True)):
        flags = np.asarray(mask)
        if flags.dtype != np.bool_:
            raise TypeError(f"the mask of replica {k} must be boolean, got {flags.dtype}")
        try:
            checked.append(np.broadcast_to(flags, array.shape))
        except ValueError:
            raise ValueError(
                f"the mask of replica {k} (shape {flags.shape}) does not broadcast to its "
                f"input's shape {array.shape}"
            ) from None
    return _Replicas(arrays, axis, checked)


def concatenate(xs: Sequence[Any], feature_axis: int = 1) -> FloatArray:
    """The replicas' inputs joined along the batch axis: the concatenated batch."""
    replicas = _as_replicas(xs, feature_axis, None)
    return np.concatenate(replicas.xs, axis=0)


def split(array: FloatArray, sizes: Sequence[int]) -> list[FloatArray]:
    """``array`` cut along the batch axis into the replicas' slices (copies)."""
    bounds = np.cumsum(sizes)[:-1]
    return [np.array(part) for part in np.split(array, bounds, axis=0)]


def _replica_counts(replicas: _Replicas) -> IntArray:
    """``n_k`` per replica and feature."""
    if replicas.masks is None:
        per_value = [x.size // max(1, x.shape[replicas.axis]) for x in replicas.xs]
        counts = np.array(per_value, dtype=np.intp)[:, None]
        return np.repeat(counts, replicas.num_features, axis=1)
    axes = tuple(a for a in range(replicas.xs[0].ndim) if a != replicas.axis)
    return np.array([np.sum(m, axis=axes) for m in replicas.masks], dtype=np.intp)


def _column_statistics(replicas: _Replicas) -> list[BatchStatistics]:
    """Per feature, the statistics of its values that count (masked replicas)."""
    found = []
    for feature in range(replicas.num_features):
        values = np.concatenate(replicas.column(feature, replicas.xs))
        if values.size == 0:
            raise ValueError(f"empty batch: feature {feature} has no value that counts")
        found.append(batchnorm.batch_statistics(values[:, None], feature_axis=1))
    return found


def _statistics(replicas: _Replicas) -> GlobalStatistics:
    counts = _replica_counts(replicas)
    if replicas.masks is None:
        stats = batchnorm.batch_statistics(np.concatenate(replicas.xs), replicas.axis)
        return GlobalStatistics(stats.mean, stats.var, counts.sum(axis=0), counts)
    columns = _column_statistics(replicas)
    return GlobalStatistics(
        np.array([s.mean[0] for s in columns]),
        np.array([s.var[0] for s in columns]),
        counts.sum(axis=0),
        counts,
    )


def statistics(
    xs: Sequence[Any], masks: Sequence[Any] | None = None, *, feature_axis: int = 1
) -> GlobalStatistics:
    """Mean and biased variance of the concatenated batch, per feature.

    Clauses: sync.train.statistics, sync.train.mask, sync.degenerate.all_empty (no value
    raises ``ValueError``).
    """
    return _statistics(_as_replicas(xs, feature_axis, masks))


def _scatter(replicas: _Replicas, feature: int, targets: list[FloatArray], column: Any) -> None:
    """Write a feature's column of counted values back into the replicas' arrays."""
    assert replicas.masks is not None
    start = 0
    for target, mask in zip(targets, replicas.masks, strict=True):
        where = np.take(mask, feature, axis=replicas.axis)
        count = int(np.sum(where))
        view = np.moveaxis(target, replicas.axis, 0)[feature]
        view[where] = column[start : start + count]
        start += count


def train_forward(
    xs: Sequence[Any],
    gamma: Any = None,
    beta: Any = None,
    *,
    eps: float = 1e-5,
    feature_axis: int = 1,
    masks: Sequence[Any] | None = None,
) -> tuple[list[FloatArray], GlobalStatistics]:
    """Every replica's training output, normalized with the global statistics.

    A masked-out value is normalized with the same statistics (as Flax does; the spec
    leaves it unspecified). Clauses: sync.train.output, sync.train.statistics,
    sync.train.mask, sync.degenerate.empty_replica.
    """
    eps = check_eps(eps)
    replicas = _as_replicas(xs, feature_axis, masks)
    if replicas.masks is None:
        y, stats = batchnorm.train_forward(
            np.concatenate(replicas.xs), gamma, beta, eps=eps, feature_axis=replicas.axis
        )
        counts = _replica_counts(replicas)
        found = GlobalStatistics(stats.mean, stats.var, counts.sum(axis=0), counts)
        return split(y, replicas.sizes), found
    found = _statistics(replicas)
    scale, shift = batchnorm._affine(gamma, beta, replicas.num_features)
    ys = [
        batchnorm.inference_forward(
            x, found.mean, found.var, scale, shift, eps=eps, feature_axis=replicas.axis
        )
        for x in replicas.xs
    ]
    for feature in range(replicas.num_features):
        values = np.concatenate(replicas.column(feature, replicas.xs))
        y, _ = batchnorm.train_forward(
            values[:, None], scale[feature : feature + 1], shift[feature : feature + 1], eps=eps
        )
        _scatter(replicas, feature, ys, y[:, 0])
    return ys, found


def train_backward(
    dys: Sequence[Any],
    xs: Sequence[Any],
    gamma: Any = None,
    *,
    eps: float = 1e-5,
    feature_axis: int = 1,
    masks: Sequence[Any] | None = None,
) -> list[Gradients]:
    """Per replica: ``dx`` through the global statistics and the partial ``dgamma``, ``dbeta``.

    ``dx = gamma * s * (dy - S_dy / N - xhat * S_dyxh / N)`` with the sums over every
    replica's counted values; ``dgamma^(k)``, ``dbeta^(k)`` are the sums over replica
    ``k``'s own values (with the global ``xhat``). A masked-out cotangent is taken as 0 and
    its ``dx`` is 0. Clauses: sync.backward.dx, sync.backward.dparams, sync.train.mask,
    sync.degenerate.empty_replica.
    """
    eps = check_eps(eps)
    replicas = _as_replicas(xs, feature_axis, masks)
    upstream = [batchnorm._as_input("dy", dy) for dy in dys]
    if len(upstream) != len(replicas.xs):
        raise ValueError(f"{len(upstream)} cotangents for {len(replicas.xs)} replicas")
    for k, (dy, x) in enumerate(zip(upstream, replicas.xs, strict=True)):
        if dy.shape != x.shape:
            raise ValueError(
                f"dy of replica {k} must have the shape of x {x.shape}, got {dy.shape}"
            )
    axis, features = replicas.axis, replicas.num_features
    scale, _ = batchnorm._affine(gamma, None, features)
    if replicas.masks is None:
        whole = batchnorm.train_backward(
            np.concatenate(upstream), np.concatenate(replicas.xs), scale, eps=eps, feature_axis=axis
        )
        dxs = split(whole.dx, replicas.sizes)
    else:
        dxs = [np.zeros_like(x) for x in replicas.xs]
        for feature in range(features):
            values = np.concatenate(replicas.column(feature, replicas.xs))
            cotangent = np.concatenate(replicas.column(feature, upstream))
            part = batchnorm.train_backward(
                cotangent[:, None], values[:, None], scale[feature : feature + 1], eps=eps
            )
            _scatter(replicas, feature, dxs, part.dx[:, 0])
    result = []
    for k, (xhat, dy, dx) in enumerate(zip(_normalized(replicas, eps), upstream, dxs, strict=True)):
        counted = dy if replicas.masks is None else np.where(replicas.masks[k], dy, 0.0)
        result.append(Gradients(dx, *_partial_sums(xhat, counted, axis)))
    return result


def _normalized(replicas: _Replicas, eps: float) -> list[FloatArray]:
    """``xhat`` of every replica's values with the global statistics (0 where masked out),
    as accurate as the single-device forward (no error growing with the condition number)."""
    if replicas.masks is None:
        xhat, _ = batchnorm.train_forward(
            np.concatenate(replicas.xs), eps=eps, feature_axis=replicas.axis
        )
        return split(xhat, replicas.sizes)
    found = [np.zeros_like(x) for x in replicas.xs]
    for feature in range(replicas.num_features):
        values = np.concatenate(replicas.column(feature, replicas.xs))
        column, _ = batchnorm.train_forward(values[:, None], eps=eps)
        _scatter(replicas, feature, found, column[:, 0])
    return found


def _partial_sums(xhat: FloatArray, dy: FloatArray, axis: int) -> tuple[FloatArray, FloatArray]:
    """``sum dy * xhat`` and ``sum dy`` over one replica's values, summed blockwise."""
    if xhat.size == 0:
        features = xhat.shape[axis]
        return np.zeros(features), np.zeros(features)
    return batchnorm._total(xhat, axis, dy), batchnorm._total(dy, axis)


def update_running(
    state: RunningStatistics,
    found: GlobalStatistics,
    *,
    rate: float | None,
    estimator: VarianceEstimator,
) -> RunningStatistics:
    """One update of the running statistics from the global ones, with ``n = N``.

    Clauses: sync.running.mean, sync.running.var (Bessel's correction with the total count).
    """
    counts = {int(n) for n in found.counts}
    if len(counts) == 1:
        batch = BatchStatistics(found.mean, found.var, counts.pop())
        return update_running_statistics(state, batch, rate=rate, estimator=estimator)
    parts = [
        update_running_statistics(
            RunningStatistics(state.mean[c : c + 1], state.var[c : c + 1], state.steps),
            BatchStatistics(found.mean[c : c + 1], found.var[c : c + 1], int(found.counts[c])),
            rate=rate,
            estimator=estimator,
        )
        for c in range(state.num_features)
    ]
    return RunningStatistics(
        np.concatenate([p.mean for p in parts]),
        np.concatenate([p.var for p in parts]),
        state.steps + 1,
    )


def _parameters(config: BatchNormConfig, params: Affine | None) -> tuple[Any, Any]:
    if not config.affine or params is None:
        return None, None
    return params.gamma, params.beta


def training_step(
    config: BatchNormConfig,
    params: Affine | None,
    state: RunningStatistics | None,
    xs: Sequence[Any],
    masks: Sequence[Any] | None = None,
) -> tuple[list[FloatArray], RunningStatistics | None]:
    """Every replica's training output and the state every replica holds after the step.

    Clauses: sync.train.*, sync.running.*, sync.degenerate.*.
    """
    gamma, beta = _parameters(config, params)
    ys, found = train_forward(
        xs, gamma, beta, eps=config.eps, feature_axis=config.feature_axis, masks=masks
    )
    if not config.track_running_stats:
        return ys, None
    if state is None:
        raise ValueError("a layer that tracks running statistics needs a state")
    new_state = update_running(state, found, rate=config.rate, estimator=config.running_variance)
    return ys, new_state


def backward(
    config: BatchNormConfig,
    params: Affine | None,
    xs: Sequence[Any],
    dys: Sequence[Any],
    masks: Sequence[Any] | None = None,
) -> list[Gradients]:
    """The vector-Jacobian product of :func:`training_step`, per replica (sync.backward.*)."""
    gamma, _ = _parameters(config, params)
    return train_backward(
        dys, xs, gamma, eps=config.eps, feature_axis=config.feature_axis, masks=masks
    )


__all__ = [
    "GlobalStatistics",
    "backward",
    "concatenate",
    "split",
    "statistics",
    "train_backward",
    "train_forward",
    "training_step",
    "update_running",
]
