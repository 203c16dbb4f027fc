"""Batch Normalization in float64: training and inference forward, backward (spec: batchnorm.md).

Every function takes plain arrays, returns new arrays, and never writes into its arguments.

Evaluation. The batch statistics use the corrected two-pass algorithm (Chan, Golub and
LeVeque; Higham, *Accuracy and Stability of Numerical Algorithms*, sec. 1.9): the first pass
gives a mean ``m``, the second the sums of ``c = x - m`` and of ``c^2``, and
``var_B = (sum c^2 - (sum c)^2 / n) / n``. Where that evaluation cannot be trusted for a
feature (a sum overflows, squares of deviations underflow, the first mean is off by more
than a standard deviation, or the feature is constant and ``m`` is not exactly its value),
the feature is evaluated again on a copy rescaled by powers of two, centred twice and
rescaled by its spread (:func:`_careful`), so every finite input gets the accuracy stated in
batchnorm.md ("Reference accuracy"), and a constant feature gives ``y = beta`` exactly.

Memory: a training forward allocates ``y`` and a backward ``dx`` (plus vectors); the sums
of products are contractions (``np.einsum``) that make no full-size temporaries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from normspec.reference._arrays import (
    FloatArray,
    check_eps,
    check_input,
    check_vector,
    per_feature,
    reduction_axes,
)
from normspec.reference.state import BatchStatistics

IntArray = NDArray[np.intp]

#: The fast evaluation of a feature is kept only where ``var_B + eps`` is at least this:
#: below it, squared deviations may be subnormal and lose relative accuracy.
_SAFE_FLOOR = 2.0**-1000


@dataclass(frozen=True)
class Gradients:
    """The vector-Jacobian product of a forward pass: dx, dgamma, dbeta."""

    dx: FloatArray
    dgamma: FloatArray
    dbeta: FloatArray


@dataclass(frozen=True)
class _Careful:
    """Features evaluated by :func:`_careful`, with what the outputs need of them.

    ``centered`` holds ``(x - mu_B) * 2**-k`` for these features only (``index`` along the
    feature axis) and ``xhat = centered * inv_scaled``.
    """

    index: IntArray
    centered: FloatArray
    inv_scaled: FloatArray


@dataclass(frozen=True)
class _Moments:
    """Batch statistics with the quantities the forward and backward passes reuse.

    For the features not in ``careful`` the work array holds ``x - shift`` and
    ``mu_B = shift + corr``; ``inv_std`` is ``1 / sqrt(var_B + eps)`` for every feature.
    """

    stats: BatchStatistics
    shift: FloatArray
    corr: FloatArray
    inv_std: FloatArray
    careful: _Careful | None


def _as_input(name: str, value: Any) -> FloatArray:
    """``value`` as float64, without copying a float64 array: the reference only reads it."""
    array = np.asarray(value)
    if array.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be a real numeric array, got dtype {array.dtype}")
    result: FloatArray = np.asarray(array, dtype=np.float64)
    return result


def _inputs(x: Any, feature_axis: int) -> tuple[FloatArray, int, tuple[int, ...]]:
    array = _as_input("x", x)
    axis = check_input(array, feature_axis)
    return array, axis, reduction_axes(array.ndim, axis)


def _count(x: FloatArray, axis: int) -> int:
    """Values per feature; an empty batch or no features at all is an error."""
    count = int(math.prod(size for dim, size in enumerate(x.shape) if dim != axis))
    if count == 0:
        raise ValueError(f"empty batch: x of shape {x.shape} has no values per feature")
    if x.shape[axis] == 0:
        raise ValueError(f"x of shape {x.shape} has no features (feature axis {axis})")
    return count


def _upstream(dy: Any, x: FloatArray) -> FloatArray:
    upstream = _as_input("dy", dy)
    if upstream.shape != x.shape:
        raise ValueError(f"dy must have the shape of x {x.shape}, got {upstream.shape}")
    return upstream


def _affine(gamma: Any, beta: Any, num_features: int) -> tuple[FloatArray, FloatArray]:
    """gamma and beta as vectors; ``None`` means the layer has no affine parameters (1 and 0)."""
    scale = np.ones(num_features) if gamma is None else check_vector("gamma", gamma, num_features)
    shift = np.zeros(num_features) if beta is None else check_vector("beta", beta, num_features)
    return scale, shift


def _running(mean: Any, var: Any, num_features: int) -> tuple[FloatArray, FloatArray]:
    center = check_vector("running mean", mean, num_features)
    spread = check_vector("running variance", var, num_features)
    if np.any(spread < 0):
        raise ValueError("running variance must be non-negative")
    return center, spread


def _contraction(ndim: int, axis: int) -> str:
    """``np.einsum`` subscripts of ``sum(a * b)`` over every axis but ``axis``."""
    letters = "abcdefghijklmnopqrstuvwxyz"[:ndim]
    return f"{letters},{letters}->{letters[axis]}"


def _take(array: FloatArray, index: IntArray, axis: int) -> tuple[Any, ...]:
    """The index that selects the features ``index`` of ``array`` along ``axis``."""
    return (slice(None),) * axis + (index,) + (slice(None),) * (array.ndim - axis - 1)


def _careful(
    xs: FloatArray, axis: int, eps: float | None
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """Statistics of finite features that the fast evaluation cannot be trusted with.

    The values are scaled by ``2**-k1`` so that ``|x| < 1`` (no sum overflows), centred by the
    corrected two-pass algorithm twice, and scaled by ``2**-k2`` so that the larger of the
    deviations and ``sqrt(eps)`` is of order 1 (no square underflows or overflows). Powers
    of two scale exactly. Returns ``mean``, ``var`` (``inf`` where the variance exceeds the
    float64 range), ``centered = (x - mu_B) * 2**-k``, ``inv_scaled`` with
    ``xhat = centered * inv_scaled``, and ``inv_std = 1 / sqrt(var_B + eps)``.
    """
    ndim = xs.ndim
    axes = reduction_axes(ndim, axis)
    count = xs.size // xs.shape[axis]
    k1 = np.frexp(np.max(np.abs(xs), axis=axes))[1]
    centered: FloatArray = np.ldexp(xs, per_feature(-k1, ndim, axis))
    mean = np.zeros(xs.shape[axis])
    for _ in range(2):
        step = np.mean(centered, axis=axes)
        centered -= per_feature(step, ndim, axis)
        mean += step
    spread = np.max(np.abs(centered), axis=axes)
    k2 = np.where(spread > 0, np.frexp(spread)[1], 0)
    if eps is not None:
        k_eps = np.frexp(math.sqrt(eps))[1] - k1
        k2 = np.where(spread > 0, np.maximum(k2, k_eps), k_eps)
    centered = np.ldexp(centered, per_feature(-k2, ndim, axis))
    sum1 = np.sum(centered, axis=axes)
    sum2 = np.einsum(_contraction(ndim, axis), centered, centered)
    step = sum1 / count
    var_scaled = np.maximum(sum2 - sum1 * step, 0.0) / count
    centered -= per_feature(step, ndim, axis)
    mean += np.ldexp(step, k2)
    k = k1 + k2
    floor = 0.0 if eps is None else eps
    inv_scaled: FloatArray = 1.0 / np.sqrt(var_scaled + np.ldexp(floor, -2 * k))
    inv_std: FloatArray = np.ldexp(inv_scaled, -k)
    return np.ldexp(mean, k1), np.ldexp(var_scaled, 2 * k), centered, inv_scaled, inv_std


def _moments(
    x: FloatArray, axis: int, axes: tuple[int, ...], work: FloatArray, eps: float | None
) -> _Moments:
    """Batch statistics of ``x``; ``work`` (shaped like ``x``) receives ``x - shift``.

    Clause: bn.train.statistics. ``eps`` (``None`` for the statistics alone) enters the
    choice of the features that :func:`_careful` evaluates and ``inv_std``.
    """
    count = _count(x, axis)
    floor = 0.0 if eps is None else eps
    with np.errstate(all="ignore"):
        shift = np.mean(x, axis=axes)
        np.subtract(x, per_feature(shift, x.ndim, axis), out=work)
        sum1 = np.sum(work, axis=axes)
        sum2 = np.einsum(_contraction(x.ndim, axis), work, work)
        corr = sum1 / count
        var = np.maximum(sum2 - sum1 * corr, 0.0) / count
        total = var + floor
        trusted = (
            np.isfinite(shift)
            & np.isfinite(sum1)
            & np.isfinite(sum2)
            & np.isfinite(total)
            & (total >= _SAFE_FLOOR)
            & (np.abs(corr) <= np.sqrt(var))
        )
        inv_std: FloatArray = 1.0 / np.sqrt(total)
        mean = shift + corr
        careful = None
        suspect = np.flatnonzero(~trusted)
        if suspect.size:
            xs = x[_take(x, suspect, axis)]
            finite = np.all(np.isfinite(xs), axis=axes)
            if np.any(finite):
                index = suspect[finite]
                if not np.all(finite):
                    xs = np.compress(finite, xs, axis=axis)
                mean_c, var_c, centered, inv_scaled, inv_c = _careful(xs, axis, eps)
                if np.any(np.isinf(var_c)):
                    features = index[np.isinf(var_c)].tolist()
                    raise ValueError(
                        f"x: the batch variance of feature(s) {features} exceeds the float64 range"
                    )
                mean[index] = mean_c
                var[index] = var_c
                inv_std[index] = inv_c
                careful = _Careful(index, centered, inv_scaled)
    return _Moments(BatchStatistics(mean, var, count), shift, corr, inv_std, careful)


def batch_statistics(x: Any, feature_axis: int = 1) -> BatchStatistics:
    """Per-feature mean and biased variance over every axis but ``feature_axis``.

    Clauses: bn.train.statistics, bn.degenerate.empty_batch (an empty batch raises).
    A variance beyond the float64 range raises ``ValueError``.
    """
    array, axis, axes = _inputs(x, feature_axis)
    _count(array, axis)
    return _moments(array, axis, axes, np.empty_like(array), None).stats


def inverse_std(var: FloatArray, eps: float) -> FloatArray:
    """``1 / sqrt(var + eps)``: eps inside the square root (bn.train.output)."""
    result: FloatArray = 1.0 / np.sqrt(var + eps)
    return result


def train_forward(
    x: Any, gamma: Any = None, beta: Any = None, *, eps: float = 1e-5, feature_axis: int = 1
) -> tuple[FloatArray, BatchStatistics]:
    """Training-mode output ``gamma * (x - mu_B) / sqrt(var_B + eps) + beta`` and the batch stats.

    Evaluated as ``(x - m) * f + (beta - corr * f)`` with ``f = gamma / sqrt(var_B + eps)``
    and ``mu_B = m + corr``; a constant feature gives ``beta`` exactly.
    Clauses: bn.train.output, bn.train.affine, bn.degenerate.single_value,
    bn.degenerate.zero_variance, bn.degenerate.nonfinite_isolated.
    """
    eps = check_eps(eps)
    array, axis, axes = _inputs(x, feature_axis)
    _count(array, axis)
    scale, shift = _affine(gamma, beta, array.shape[axis])
    y = np.empty_like(array)
    moments = _moments(array, axis, axes, y, eps)
    with np.errstate(all="ignore"):
        factor = scale * moments.inv_std
        y *= per_feature(factor, y.ndim, axis)
        y += per_feature(shift - moments.corr * factor, y.ndim, axis)
        careful = moments.careful
        if careful is not None:
            index = careful.index
            part = careful.centered * per_feature(careful.inv_scaled, y.ndim, axis)
            part *= per_feature(scale[index], y.ndim, axis)
            part += per_feature(shift[index], y.ndim, axis)
            y[_take(y, index, axis)] = part
    return y, moments.stats


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
    center, spread = _running(mean, var, features)
    scale, shift = _affine(gamma, beta, features)
    with np.errstate(all="ignore"):
        y: FloatArray = np.subtract(array, per_feature(center, array.ndim, axis))
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
    upstream = _upstream(dy, array)
    count = _count(array, axis)
    scale, _ = _affine(gamma, None, array.shape[axis])
    ndim = array.ndim
    dx = np.empty_like(array)
    moments = _moments(array, axis, axes, dx, eps)
    inv_std, corr = moments.inv_std, moments.corr
    with np.errstate(all="ignore"):
        dbeta = np.sum(upstream, axis=axes)
        # sum(dy * (x - mu_B)) = sum(dy * (x - shift)) - corr * sum(dy); |corr| <= std.
        dgamma = (np.einsum(_contraction(ndim, axis), upstream, dx) - corr * dbeta) * inv_std
        # dx = gamma * s * ((x - shift) * p - (corr * p + mean(dy)) + dy), p = -s * mean(dy * xhat)
        slope = -inv_std * dgamma / count
        dx *= per_feature(slope, ndim, axis)
        dx -= per_feature(corr * slope + dbeta / count, ndim, axis)
        dx += upstream
        dx *= per_feature(scale * inv_std, ndim, axis)
        careful = moments.careful
        if careful is not None:
            index = careful.index
            select = _take(dx, index, axis)
            xhat = careful.centered * per_feature(careful.inv_scaled, ndim, axis)
            part = upstream[select]
            dgamma[index] = np.einsum(_contraction(ndim, axis), part, xhat)
            xhat *= per_feature(dgamma[index] / count, ndim, axis)
            part -= xhat
            part -= per_feature(dbeta[index] / count, ndim, axis)
            part *= per_feature(scale[index] * inv_std[index], ndim, axis)
            dx[select] = part
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
    upstream = _upstream(dy, array)
    features = array.shape[axis]
    center, spread = _running(mean, var, features)
    scale, _ = _affine(gamma, None, features)
    ndim = array.ndim
    inv_std = inverse_std(spread, eps)
    with np.errstate(all="ignore"):
        dx: FloatArray = np.subtract(array, per_feature(center, ndim, axis))
        dgamma = np.einsum(_contraction(ndim, axis), upstream, dx) * inv_std
        dbeta = np.sum(upstream, axis=axes)
        np.multiply(upstream, per_feature(scale * inv_std, ndim, axis), out=dx)
    return Gradients(dx, dgamma, dbeta)
