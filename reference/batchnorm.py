"""Batch Normalization in float64: training and inference forward, backward (spec: batchnorm.md).

Every function takes plain arrays, returns new arrays, and never writes into its arguments.

Evaluation. The batch statistics use the corrected two-pass algorithm (Chan, Golub and
LeVeque; Higham, *Accuracy and Stability of Numerical Algorithms*, sec. 1.9): the first pass
gives a mean ``m``, the second the sums of ``c = x - m`` and of ``c^2``, and
``var_B = (sum c^2 - (sum c)^2 / n) / n``. Sums are blocked (:func:`_total`): runs of at most
128 consecutive values, pairwise summation of the run totals, so their error does not grow
with n in any memory layout. Where the evaluation cannot be trusted for a feature (a sum
overflows, squares of deviations underflow, the first mean is off by more than a standard
deviation, or the feature is constant and ``m`` is not exactly its value), the feature is
evaluated again on a copy rescaled by powers of two, centred twice and rescaled by its
spread (:func:`_careful`). Where ``gamma * s`` leaves the normal range the output is
multiplied by ``s`` and ``gamma`` in turn (:func:`_factor`). So every finite input gets the
accuracy stated in batchnorm.md ("Reference accuracy"), and a constant feature gives
``y = beta`` exactly.

Memory: a training forward allocates ``y`` and a backward ``dx`` (plus per-feature vectors
and run totals); the sums of products are contractions (``np.einsum``) that make no
full-size temporaries. A ``dy`` laid out otherwise than ``x`` is copied once.
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
#: The longest run of values summed one after the other (see :func:`_total`), and the size
#: up to which arrays are summed pairwise throughout.
_RUN = 128
_SMALL = 1 << 12
_TINY = float(np.finfo(np.float64).tiny)
_HUGE = float(np.finfo(np.float64).max)


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


def _dense(
    array: FloatArray, axis: int, order: list[int] | None = None
) -> tuple[FloatArray, list[int]]:
    """A view ``(A, C, B)`` of ``array`` in memory order, ``C`` along the feature axis.

    ``order`` lists the axes by decreasing stride magnitude (computed when not given). An
    array that is not dense in that order (strided, broadcast, reversed, or laid out
    otherwise than the array it is paired with) is copied first.
    """
    if order is None:
        order = sorted(range(array.ndim), key=lambda dim: abs(array.strides[dim]), reverse=True)
    moved = array.transpose(order)
    if not moved.flags.c_contiguous:
        moved = np.ascontiguousarray(moved)
    place = order.index(axis)
    shape = moved.shape
    view: FloatArray = moved.reshape(
        math.prod(shape[:place]), array.shape[axis], math.prod(shape[place + 1 :])
    )
    return view, order


def _total(a: FloatArray, axis: int, b: FloatArray | None = None) -> FloatArray:
    """Per-feature ``sum(a)`` or ``sum(a * b)`` over every axis but ``axis``, accurately.

    Blocked summation: contractions (``np.einsum``, no temporaries) over runs of at most
    ``_RUN`` consecutive values of a feature, then pairwise summation of the run totals, so
    the rounding error grows like ``_RUN + log2(n)`` rather than ``n`` in the worst case, for
    every memory layout. Arrays of at most ``_SMALL`` values are summed pairwise throughout.
    """
    a3, order = _dense(a, axis)
    operands = [a3] if b is None else [a3, _dense(b, axis, order)[0]]
    outer, features, inner = a3.shape
    if a3.size <= _SMALL:
        terms = a3 * operands[1] if b is not None else a3
        return _pairwise(np.array(np.moveaxis(terms, 1, 0).reshape(features, -1)))
    # the run totals of each feature, feature by feature: (features, number of runs)
    if inner >= _RUN:
        runs = inner // _RUN
        extra = 1 if inner % _RUN else 0
        totals = np.empty((features, outer, runs + extra))
        main = [op[:, :, : runs * _RUN].reshape(outer, features, runs, _RUN) for op in operands]
        out = np.moveaxis(totals[:, :, :runs], 0, 1)
        np.einsum(",".join(["acqr"] * len(main)) + "->acq", *main, out=out)
        if extra:
            rest = [op[:, :, runs * _RUN :] for op in operands]
            np.einsum(",".join(["acr"] * len(rest)) + "->ca", *rest, out=totals[:, :, runs])
    else:
        rows = max(1, _RUN // inner)
        runs = outer // rows
        extra = 1 if outer % rows else 0
        totals = np.empty((features, runs + extra))
        if runs:
            main = [op[: runs * rows].reshape(runs, rows, features, inner) for op in operands]
            np.einsum(",".join(["qrcb"] * len(main)) + "->cq", *main, out=totals[:, :runs])
        if extra:
            rest = [op[runs * rows :] for op in operands]
            np.einsum(",".join(["acb"] * len(rest)) + "->c", *rest, out=totals[:, runs])
    return _pairwise(totals.reshape(features, -1))


def _pairwise(work: FloatArray) -> FloatArray:
    """Row sums of ``work`` by pairwise (tree) summation: error ``O(log2 K)`` for K columns.

    (``np.add.reduce`` along the rows of a 2-d array does not always sum pairwise.) The
    columns are added in place, halving their number each round: ``work`` is overwritten.
    """
    count = work.shape[1]
    while count > 1:
        half = count // 2
        np.add(work[:, :half], work[:, half : 2 * half], out=work[:, :half])
        if count % 2:
            work[:, half] = work[:, count - 1]
        count = half + count % 2
    result: FloatArray = work[:, 0]
    return result


def _take(array: FloatArray, index: IntArray, axis: int) -> tuple[Any, ...]:
    """The index that selects the features ``index`` of ``array`` along ``axis``."""
    return (slice(None),) * axis + (index,) + (slice(None),) * (array.ndim - axis - 1)


def _factor(scale: FloatArray, inv_std: FloatArray) -> tuple[FloatArray, IntArray]:
    """``gamma * s`` per feature, and the features where that product leaves the normal range
    (overflows, or underflows to a subnormal or zero) although gamma and s are finite and
    nonzero: for those the factor returned is ``s`` alone, and the caller multiplies by
    gamma afterwards, so that ``gamma * xhat`` is as accurate as its own range allows."""
    factor = scale * inv_std
    magnitude = np.abs(factor)
    lost = (
        np.isfinite(scale)
        & np.isfinite(inv_std)
        & (scale != 0)
        & (inv_std != 0)
        & ~((magnitude >= _TINY) & (magnitude <= _HUGE))
    )
    return np.where(lost, inv_std, factor), np.flatnonzero(lost)


def _times(array: FloatArray, axis: int, scale: FloatArray, inv_std: FloatArray) -> None:
    """``array *= gamma * s`` per feature, in place, in the order :func:`_factor` chooses."""
    factor, lost = _factor(scale, inv_std)
    array *= per_feature(factor, array.ndim, axis)
    if lost.size:
        array[_take(array, lost, axis)] *= per_feature(scale[lost], array.ndim, axis)


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
        step = _total(centered, axis) / count
        centered -= per_feature(step, ndim, axis)
        mean += step
    spread = np.max(np.abs(centered), axis=axes)
    k2 = np.where(spread > 0, np.frexp(spread)[1], 0)
    if eps is not None:
        k_eps = np.frexp(math.sqrt(eps))[1] - k1
        k2 = np.where(spread > 0, np.maximum(k2, k_eps), k_eps)
    centered = np.ldexp(centered, per_feature(-k2, ndim, axis))
    sum1 = _total(centered, axis)
    sum2 = _total(centered, axis, centered)
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
        sum1 = _total(work, axis)
        sum2 = _total(work, axis, work)
        corr = sum1 / count
        var = np.maximum(sum2 - sum1 * corr, 0.0) / count
        total = var + floor
        trusted = (
            np.isfinite(shift)
            & np.isfinite(sum1)
            & np.isfinite(sum2)
            & np.isfinite(total)
            & (np.abs(corr) <= np.sqrt(var))
        )
        if eps is not None:
            # the statistics alone may lose relative accuracy below 2^-1000 (the clauses
            # allow an absolute error of tiny there); the normalization may not
            trusted &= total >= _SAFE_FLOOR
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
    inv_std, corr = moments.inv_std, moments.corr
    with np.errstate(all="ignore"):
        factor, lost = _factor(scale, inv_std)
        y *= per_feature(factor, y.ndim, axis)
        offset = shift - corr * factor
        offset[lost] = 0.0
        y += per_feature(offset, y.ndim, axis)
        if lost.size:
            # ((x - m) * s - corr * s) * gamma + beta where gamma * s leaves the normal range
            select = _take(y, lost, axis)
            part = y[select]
            part -= per_feature(corr[lost] * inv_std[lost], y.ndim, axis)
            part *= per_feature(scale[lost], y.ndim, axis)
            part += per_feature(shift[lost], y.ndim, axis)
            y[select] = part
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
        _times(y, axis, scale, inverse_std(spread, eps))
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
        dbeta = _total(upstream, axis)
        # sum(dy * (x - mu_B)) = sum(dy * (x - shift)) - corr * sum(dy); |corr| <= std.
        dgamma = (_total(dx, axis, upstream) - corr * dbeta) * inv_std
        # dx = gamma * s * ((x - shift) * p - (corr * p + mean(dy)) + dy), p = -s * mean(dy * xhat)
        slope = -inv_std * dgamma / count
        dx *= per_feature(slope, ndim, axis)
        dx -= per_feature(corr * slope + dbeta / count, ndim, axis)
        dx += upstream
        _times(dx, axis, scale, inv_std)
        careful = moments.careful
        if careful is not None:
            index = careful.index
            select = _take(dx, index, axis)
            xhat = careful.centered * per_feature(careful.inv_scaled, ndim, axis)
            part = upstream[select]
            dgamma[index] = _total(xhat, axis, part)
            xhat *= per_feature(dgamma[index] / count, ndim, axis)
            part -= xhat
            part -= per_feature(dbeta[index] / count, ndim, axis)
            _times(part, axis, scale[index], inv_std[index])
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
    array, axis, _ = _inputs(x, feature_axis)
    upstream = _upstream(dy, array)
    features = array.shape[axis]
    center, spread = _running(mean, var, features)
    scale, _ = _affine(gamma, None, features)
    ndim = array.ndim
    inv_std = inverse_std(spread, eps)
    with np.errstate(all="ignore"):
        dx: FloatArray = np.subtract(array, per_feature(center, ndim, axis))
        dgamma = _total(dx, axis, upstream) * inv_std
        dbeta = _total(upstream, axis)
        np.copyto(dx, upstream)
        _times(dx, axis, scale, inv_std)
    return Gradients(dx, dgamma, dbeta)
