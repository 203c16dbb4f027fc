"""Batch Normalization in float64: training and inference forward, backward (spec: batchnorm.md).

Every function takes plain arrays, returns new arrays, and never writes into its arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from normspec.reference._arrays import (
    FloatArray,
    as_float64,
    check_eps,
    check_input,
    check_vector,
    per_feature,
    reduction_axes,
)
from normspec.reference.state import BatchStatistics


@dataclass(frozen=True)
class Gradients:
    """The vector-Jacobian product of a forward pass: dx, dgamma, dbeta."""

    dx: FloatArray
    dgamma: FloatArray
    dbeta: FloatArray


def _inputs(x: Any, feature_axis: int) -> tuple[FloatArray, int, tuple[int, ...]]:
    array = as_float64("x", x)
    axis = check_input(array, feature_axis)
    return array, axis, reduction_axes(array.ndim, axis)


def _affine(gamma: Any, beta: Any, num_features: int) -> tuple[FloatArray, FloatArray]:
    """gamma and beta as vectors; ``None`` means the layer has no affine parameters (1 and 0)."""
    scale = np.ones(num_features) if gamma is None else check_vector("gamma", gamma, num_features)
    shift = np.zeros(num_features) if beta is None else check_vector("beta", beta, num_features)
    return scale, shift


def _centered_statistics(
    x: FloatArray, axis: int, axes: tuple[int, ...]
) -> tuple[BatchStatistics, FloatArray]:
    """Batch statistics and ``x - mean`` by the corrected two-pass algorithm.

    The first-pass mean is refined by the mean of the deviations from it, and the variance
    is ``(sum c^2 - (sum c)^2 / n) / n`` (Chan, Golub and LeVeque), so a feature whose mean
    is large against its spread loses no digits to cancellation (bn.train.statistics).
    """
    count = x.size // x.shape[axis]
    if count == 0:
        raise ValueError(f"empty batch: x of shape {x.shape} has no values per feature")
    first = np.mean(x, axis=axes)
    centered = x - per_feature(first, x.ndim, axis)
    correction = np.sum(centered, axis=axes) / count
    sum_squares = np.sum(np.square(centered), axis=axes)
    var = np.maximum(sum_squares - correction * correction * count, 0.0) / count
    finite_input = np.isfinite(first) & np.isfinite(correction)
    if np.any(np.isinf(var) & finite_input):
        raise ValueError("x: the squared deviations of a feature overflow float64")
    centered -= per_feature(correction, x.ndim, axis)
    return BatchStatistics(first + correction, var, count), centered


def batch_statistics(x: Any, feature_axis: int = 1) -> BatchStatistics:
    """Per-feature mean and biased variance over every axis but ``feature_axis``.

    Clauses: bn.train.statistics, bn.degenerate.empty_batch (an empty batch raises).
    """
    array, axis, axes = _inputs(x, feature_axis)
    return _centered_statistics(array, axis, axes)[0]


def inverse_std(var: FloatArray, eps: float) -> FloatArray:
    """``1 / sqrt(var + eps)``: eps inside the square root (bn.train.output)."""
    result: FloatArray = 1.0 / np.sqrt(var + eps)
    return result


def train_forward(
    x: Any, gamma: Any = None, beta: Any = None, *, eps: float = 1e-5, feature_axis: int = 1
) -> tuple[FloatArray, BatchStatistics]:
    """Training-mode output ``gamma * (x - mu_B) / sqrt(var_B + eps) + beta`` and the batch stats.

    Clauses: bn.train.output, bn.train.affine, bn.degenerate.single_value,
    bn.degenerate.zero_variance, bn.degenerate.nonfinite_isolated.
    """
    eps = check_eps(eps)
    array, axis, axes = _inputs(x, feature_axis)
    scale, shift = _affine(gamma, beta, array.shape[axis])
    stats, y = _centered_statistics(array, axis, axes)
    y *= per_feature(scale * inverse_std(stats.var, eps), y.ndim, axis)
    y += per_feature(shift, y.ndim, axis)
    return y, stats


def inference_forward(
    x: Any,
    mean: Any,
    var: Any,
    gamma: Any = None,
    beta: Any = None,
    *,
    eps: float = 1e-5,
    feature_axis: int = 1,
) -> FloatArray:
    """Inference-mode output ``gamma * (x - mean) / sqrt(var + eps) + beta`` (bn.infer.output).

    ``mean`` and ``var`` are the running statistics, or the batch statistics for a layer that
    does not track them (bn.infer.untracked).
    """
    eps = check_eps(eps)
    array, axis, _ = _inputs(x, feature_axis)
    features = array.shape[axis]
    center = check_vector("running mean", mean, features)
    spread = check_vector("running variance", var, features)
    if np.any(spread < 0):
        raise ValueError("running variance must be non-negative")
    scale, shift = _affine(gamma, beta, features)
    y = array - per_feature(center, array.ndim, axis)
    y *= per_feature(scale * inverse_std(spread, eps), y.ndim, axis)
    y += per_feature(shift, y.ndim, axis)
    return y


def train_backward(
    dy: Any, x: Any, gamma: Any = None, *, eps: float = 1e-5, feature_axis: int = 1
) -> Gradients:
    """Gradients of the training forward, through the batch statistics.

    ``dx = gamma / sqrt(var_B + eps) * (dy - mean(dy) - xhat * mean(dy * xhat))``, the
    closed form of the paper's chain rule; ``dgamma = sum(dy * xhat)``, ``dbeta = sum(dy)``.
    Clauses: bn.backward.train.dx, bn.backward.train.dparams.
    """
    eps = check_eps(eps)
    array, axis, axes = _inputs(x, feature_axis)
    upstream = as_float64("dy", dy)
    if upstream.shape != array.shape:
        raise ValueError(f"dy must have the shape of x {array.shape}, got {upstream.shape}")
    features = array.shape[axis]
    scale, _ = _affine(gamma, None, features)
    stats, xhat = _centered_statistics(array, axis, axes)
    inv_std = inverse_std(stats.var, eps)
    xhat *= per_feature(inv_std, xhat.ndim, axis)
    dbeta = np.sum(upstream, axis=axes)
    dgamma = np.sum(upstream * xhat, axis=axes)
    dx = xhat
    dx *= per_feature(-dgamma / stats.count, dx.ndim, axis)
    dx += upstream
    dx -= per_feature(dbeta / stats.count, dx.ndim, axis)
    dx *= per_feature(scale * inv_std, dx.ndim, axis)
    return Gradients(dx, dgamma, dbeta)


def inference_backward(
    dy: Any,
    x: Any,
    mean: Any,
    var: Any,
    gamma: Any = None,
    *,
    eps: float = 1e-5,
    feature_axis: int = 1,
) -> Gradients:
    """Gradients of the inference forward, the statistics being constants (bn.backward.infer)."""
    eps = check_eps(eps)
    array, axis, axes = _inputs(x, feature_axis)
    upstream = as_float64("dy", dy)
    if upstream.shape != array.shape:
        raise ValueError(f"dy must have the shape of x {array.shape}, got {upstream.shape}")
    features = array.shape[axis]
    center = check_vector("running mean", mean, features)
    spread = check_vector("running variance", var, features)
    scale, _ = _affine(gamma, None, features)
    inv_std = inverse_std(spread, eps)
    xhat = (array - per_feature(center, array.ndim, axis)) * per_feature(inv_std, array.ndim, axis)
    dgamma = np.sum(upstream * xhat, axis=axes)
    dbeta = np.sum(upstream, axis=axes)
    dx = upstream * per_feature(scale * inv_std, array.ndim, axis)
    return Gradients(dx, dgamma, dbeta)
