"""The normalization family in float64: one core over a set of reduced axes (spec: family.md).

Every member normalizes *slices* of its input: the values a slice holds are reduced to a
mean and a biased variance (or, without centering, a mean square), and each value is
normalized by them. Only the reduced axes differ:

=============  ===========================================================  =============
layer          reduced axes (per slice)                                     centered
=============  ===========================================================  =============
BatchNorm      every axis but the feature axis                              yes
LayerNorm      the trailing ``normalized_shape`` axes, per sample           yes
RMSNorm        as LayerNorm                                                 no
GroupNorm      per sample, each group of ``C / G`` consecutive channels     yes
               and every spatial axis
InstanceNorm   per sample and channel, the spatial axes (GroupNorm, G = C)  yes
=============  ===========================================================  =============

The core lays ``x`` out as a matrix whose columns are the slices and evaluates the centered
forms with the batch-normalization reference's own algorithms (:mod:`batchnorm`: the
corrected two-pass statistics with blocked pairwise sums, the rescaled evaluation of
untrustworthy slices, the closed-form backward), the columns being its features; so BN is
one configuration of it, and every accuracy statement of batchnorm.md ("Reference accuracy")
holds per slice. The uncentered form (RMSNorm) scales each slice by a power of two so that
``|x| < 1`` (exact), sums the squares by the same blocked pairwise summation and scales back.

Affine parameters are applied after the normalization, ``y = w * xhat + b``, with ``w``
broadcast as the layer applies it (elementwise over ``normalized_shape`` for LayerNorm and
RMSNorm, per channel for GroupNorm and InstanceNorm); RMSNorm's ``scale_offset`` dialect
multiplies by ``offset + w`` (Gemma's ``1 + w``). Every function returns new arrays and never
writes into its arguments.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from normspec.reference._arrays import FloatArray, check_eps, real_number, whole_number
from normspec.reference.batchnorm import (
    Gradients,
    _as_input,
    _total,
    batch_statistics,
    inference_forward,
    train_backward,
    train_forward,
)
from normspec.reference.running import VarianceEstimator
from normspec.reference.state import RunningStatistics


@dataclass(frozen=True)
class Reduction:
    """Which axes of the input one slice reduces over, and whether it is centered."""

    axes: tuple[int, ...]
    centered: bool = True

    def of(self, ndim: int) -> tuple[int, ...]:
        """The reduced axes made non-negative and sorted; an invalid axis raises."""
        found = sorted({axis + ndim if axis < 0 else axis for axis in self.axes})
        if not found or found[0] < 0 or found[-1] >= ndim:
            raise ValueError(f"reduced axes {self.axes} do not fit an input of rank {ndim}")
        return tuple(found)


@dataclass(frozen=True)
class SliceStatistics:
    """Per-slice statistics, shaped like the input with each reduced axis of size 1.

    ``var`` is the biased variance of a centered reduction and the mean square of an
    uncentered one (whose ``mean`` is then 0); ``count`` the values per slice.
    """

    mean: FloatArray
    var: FloatArray
    count: int


@dataclass(frozen=True)
class _Columns:
    """``x`` laid out as a matrix ``(count, slices)`` and the way back to ``x``'s shape."""

    matrix: FloatArray
    moved_shape: tuple[int, ...]
    reduced: tuple[int, ...]

    @classmethod
    def of(cls, x: FloatArray, reduced: tuple[int, ...]) -> _Columns:
        moved = np.moveaxis(x, reduced, tuple(range(len(reduced))))
        count = math.prod(x.shape[a] for a in reduced)
        matrix = np.ascontiguousarray(moved).reshape(count, -1)
        return cls(matrix, moved.shape, reduced)

    def back(self, matrix: FloatArray) -> FloatArray:
        """A ``(count, slices)`` matrix in the input's shape."""
        moved = matrix.reshape(self.moved_shape)
        result: FloatArray = np.moveaxis(moved, tuple(range(len(self.reduced))), self.reduced)
        return result

    def per_slice(self, vector: FloatArray) -> FloatArray:
        """A per-slice vector shaped like the input with each reduced axis of size 1."""
        kept = self.moved_shape[len(self.reduced) :]
        shaped = vector.reshape((1,) * len(self.reduced) + kept)
        result: FloatArray = np.moveaxis(shaped, tuple(range(len(self.reduced))), self.reduced)
        return result


def _input(x: Any, reduction: Reduction) -> tuple[FloatArray, tuple[int, ...], int]:
    """The input, its reduced axes and the values per slice; a slice without values is an
    error (an input without slices, an empty batch, is not)."""
    array = _as_input("x", x)
    reduced = reduction.of(array.ndim)
    count = math.prod(array.shape[a] for a in reduced)
    if count == 0:
        raise ValueError(f"x of shape {array.shape} has no values to reduce over axes {reduced}")
    return array, reduced, count


def _empty(array: FloatArray, reduced: tuple[int, ...]) -> tuple[FloatArray, FloatArray]:
    """The results for an input without slices (an empty batch): empty arrays."""
    kept = [1 if axis in reduced else size for axis, size in enumerate(array.shape)]
    return np.empty_like(array), np.empty(kept)


def _mean_square(columns: FloatArray, eps: float = 0.0) -> tuple[FloatArray, FloatArray]:
    """Per column: the exponents ``k`` with ``|x| * 2^-k < 1`` and ``sqrt(eps) * 2^-k < 1``
    and the mean square of the scaled values (``mean(x^2) = ms_scaled * 4^k``); powers of
    two scale exactly. With ``eps`` in the scale, ``eps * 4^-k`` cannot overflow where the
    values are tiny (``x = 4.5e-187``, ``eps = 1e-5``: ``y = x / sqrt(eps)``, not 0); a
    square that underflows then is below ``eps`` by the float64 range."""
    count = columns.shape[0]
    with np.errstate(invalid="ignore"):
        largest = np.max(np.abs(columns), axis=0)
    k = np.where(np.isfinite(largest) & (largest > 0), np.frexp(largest)[1], 0)
    if eps > 0:
        k_eps = np.frexp(math.sqrt(eps))[1]
        k = np.where(np.isfinite(largest) & (largest > 0), np.maximum(k, k_eps), k_eps)
    scaled = np.ldexp(columns, k[np.newaxis, :] * -1)
    return k, _total(scaled, 1, scaled) / count


def statistics(x: Any, reduction: Reduction) -> SliceStatistics:
    """Per-slice mean and biased variance (centered) or mean square (uncentered).

    Clauses: ln.train.statistics, rms.train.statistics, gn.train.statistics,
    in.train.statistics. A statistic beyond the float64 range raises ``ValueError``.
    """
    array, reduced, count = _input(x, reduction)
    if array.size == 0:
        _, empty = _empty(array, reduced)
        return SliceStatistics(empty, empty.copy(), count)
    columns = _Columns.of(array, reduced)
    if reduction.centered:
        stats = batch_statistics(columns.matrix, 1)
        return SliceStatistics(columns.per_slice(stats.mean), columns.per_slice(stats.var), count)
    k, scaled = _mean_square(columns.matrix)
    with np.errstate(over="ignore"):
        square = np.ldexp(scaled, 2 * k)
    if np.any(np.isinf(square) & np.isfinite(scaled)):
        raise ValueError("x: a mean square exceeds the float64 range")
    zeros = np.zeros_like(square)
    return SliceStatistics(columns.per_slice(zeros), columns.per_slice(square), count)


def normalize(x: Any, reduction: Reduction, *, eps: float) -> tuple[FloatArray, FloatArray]:
    """``xhat`` and ``s = 1 / sqrt(var + eps)`` per slice (shaped as :class:`SliceStatistics`).

    Centered: ``xhat = (x - mu) * s`` by batch normalization's training forward on the
    slices; uncentered: ``xhat = x * s`` with ``s = 1 / sqrt(mean(x^2) + eps)``, eps inside
    the root in both.
    """
    eps = check_eps(eps)
    array, reduced, _ = _input(x, reduction)
    if array.size == 0:
        return _empty(array, reduced)
    columns = _Columns.of(array, reduced)
    if reduction.centered:
        xhat, stats = train_forward(columns.matrix, eps=eps, feature_axis=1)
        inv_std = 1.0 / np.sqrt(stats.var + eps)
        return columns.back(xhat), columns.per_slice(inv_std)
    k, scaled = _mean_square(columns.matrix, eps)
    with np.errstate(all="ignore"):
        inv_scaled = 1.0 / np.sqrt(scaled + np.ldexp(eps, -2 * k))
        xhat = np.ldexp(columns.matrix, -k[np.newaxis, :]) * inv_scaled
        inv_std = np.ldexp(inv_scaled, -k)
    return columns.back(xhat), columns.per_slice(inv_std)


def normalize_backward(
    g: Any, x: Any, reduction: Reduction, *, eps: float
) -> tuple[FloatArray, FloatArray]:
    """``dx`` for the cotangent ``g`` of ``xhat``, through the slice statistics, and ``xhat``.

    Centered: ``dx = s * (g - mean(g) - xhat * mean(g * xhat))`` (batch normalization's
    closed form, per slice); uncentered: ``dx = s * (g - xhat * mean(g * xhat))``.
    """
    eps = check_eps(eps)
    array, reduced, count = _input(x, reduction)
    upstream = _as_input("cotangent", g)
    if upstream.shape != array.shape:
        raise ValueError(f"the cotangent must have the shape of x {array.shape}")
    xhat, _ = normalize(array, reduction, eps=eps)
    if array.size == 0:
        return np.empty_like(array), xhat
    columns = _Columns.of(array, reduced)
    g_columns = _Columns.of(upstream, reduced).matrix
    if reduction.centered:
        dx = train_backward(g_columns, columns.matrix, eps=eps, feature_axis=1).dx
        return columns.back(dx), xhat
    k, scaled = _mean_square(columns.matrix, eps)
    xhat_columns = _Columns.of(xhat, reduced).matrix
    with np.errstate(all="ignore"):
        inv_scaled = 1.0 / np.sqrt(scaled + np.ldexp(eps, -2 * k))
        inv_std = np.ldexp(inv_scaled, -k)
        projection = _total(g_columns, 1, xhat_columns) / count
        dx = (g_columns - xhat_columns * projection) * inv_std
    return columns.back(dx), xhat


# -- the affine parameters --------------------------------------------------------------------


def _parameter(name: str, value: Any, shape: tuple[int, ...], default: float) -> FloatArray:
    """A weight or bias of the given shape; ``None`` is the layer without it."""
    if value is None:
        return np.full(shape, default)
    array = _as_input(name, value)
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {array.shape}")
    return np.array(array, copy=True)


def _sum_outside(values: FloatArray, kept: tuple[int, ...]) -> FloatArray:
    """Sums over every axis of ``values`` but ``kept`` (accurately, blocked and pairwise),
    shaped as the kept axes."""
    moved = np.moveaxis(values, kept, tuple(range(len(kept))))
    shape = moved.shape[: len(kept)]
    if values.size == 0:
        return np.zeros(shape)
    matrix = np.ascontiguousarray(moved).reshape(math.prod(shape), -1).T
    return _total(np.ascontiguousarray(matrix), 1).reshape(shape)


@dataclass(frozen=True)
class Affine:
    """Where the weight and bias of a layer live: their shape, and the axes of the input
    they span (the trailing ``normalized_shape`` axes, or the channel axis 1)."""

    shape: tuple[int, ...]
    axes: tuple[int, ...]

    def broadcast(self, values: FloatArray, ndim: int) -> FloatArray:
        """A parameter shaped to multiply an input of rank ``ndim``."""
        shape = [1] * ndim
        for axis, size in zip(self.axes, self.shape, strict=True):
            shape[axis] = size
        return values.reshape(shape)


def _affine_forward(
    xhat: FloatArray, affine: Affine, weight: Any, bias: Any, offset: float
) -> FloatArray:
    w = _parameter("weight", weight, affine.shape, 1.0 - offset)
    b = _parameter("bias", bias, affine.shape, 0.0)
    with np.errstate(all="ignore"):
        y: FloatArray = xhat * affine.broadcast(offset + w, xhat.ndim)
        y += affine.broadcast(b, xhat.ndim)
    return y


def _affine_backward(
    dy: Any, x: Any, reduction: Reduction, affine: Affine, weight: Any, eps: float, offset: float
) -> Gradients:
    upstream = _as_input("dy", dy)
    array = _as_input("x", x)
    if upstream.shape != array.shape:
        raise ValueError(f"dy must have the shape of x {array.shape}, got {upstream.shape}")
    w = _parameter("weight", weight, affine.shape, 1.0 - offset)
    with np.errstate(all="ignore"):
        g = upstream * affine.broadcast(offset + w, array.ndim)
        dx, xhat = normalize_backward(g, array, reduction, eps=eps)
        dweight = _sum_outside(upstream * xhat, affine.axes)
    return Gradients(dx, dweight, _sum_outside(upstream, affine.axes))


# -- LayerNorm and RMSNorm ----------------------------------------------------------------------


def _trailing(x: Any, normalized_shape: Sequence[int]) -> tuple[Reduction, Affine]:
    shape = tuple(whole_number("normalized_shape", s, minimum=1) for s in normalized_shape)
    ndim = np.ndim(x)
    if not shape or len(shape) >= ndim + 1 or tuple(np.shape(x)[ndim - len(shape) :]) != shape:
        raise ValueError(
            f"normalized_shape {shape} must be the trailing axes of x of shape {np.shape(x)}"
        )
    axes = tuple(range(ndim - len(shape), ndim))
    return Reduction(axes), Affine(shape, axes)


def layer_norm(
    x: Any,
    normalized_shape: Sequence[int],
    weight: Any = None,
    bias: Any = None,
    *,
    eps: float = 1e-5,
) -> FloatArray:
    """``w * (x - mu) / sqrt(var + eps) + b`` over the trailing ``normalized_shape`` axes,
    the weight and bias elementwise over them (ln.train.output)."""
    reduction, affine = _trailing(x, normalized_shape)
    xhat, _ = normalize(x, reduction, eps=eps)
    return _affine_forward(xhat, affine, weight, bias, 0.0)


def layer_norm_backward(
    dy: Any, x: Any, normalized_shape: Sequence[int], weight: Any = None, *, eps: float = 1e-5
) -> Gradients:
    """``dx`` through the statistics, ``dweight = sum(dy * xhat)`` and ``dbias = sum(dy)``
    over every axis but the normalized ones (ln.backward.dx, ln.backward.dparams)."""
    reduction, affine = _trailing(x, normalized_shape)
    return _affine_backward(dy, x, reduction, affine, weight, eps, 0.0)


def rms_norm(
    x: Any,
    normalized_shape: Sequence[int],
    weight: Any = None,
    bias: Any = None,
    *,
    eps: float = 1e-6,
    scale_offset: float = 0.0,
) -> FloatArray:
    """``(scale_offset + w) * x / sqrt(mean(x^2) + eps) + b`` over the trailing axes
    (rms.train.output; ``scale_offset`` 1: Gemma's ``1 + w``, whose default ``w`` is 0)."""
    offset = real_number("scale_offset", scale_offset)
    reduction, affine = _trailing(x, normalized_shape)
    xhat, _ = normalize(x, Reduction(reduction.axes, centered=False), eps=eps)
    return _affine_forward(xhat, affine, weight, bias, offset)


def rms_norm_backward(
    dy: Any,
    x: Any,
    normalized_shape: Sequence[int],
    weight: Any = None,
    *,
    eps: float = 1e-6,
    scale_offset: float = 0.0,
) -> Gradients:
    """``dx = s * (g - xhat * mean(g * xhat))`` with ``g = (offset + w) * dy``,
    ``dweight = sum(dy * xhat)``, ``dbias = sum(dy)`` (rms.backward.dx, rms.backward.dparams)."""
    offset = real_number("scale_offset", scale_offset)
    reduction, affine = _trailing(x, normalized_shape)
    uncentered = Reduction(reduction.axes, centered=False)
    return _affine_backward(dy, x, uncentered, affine, weight, eps, offset)


# -- GroupNorm and InstanceNorm -----------------------------------------------------------------


def _grouped(x: Any, groups: int) -> tuple[FloatArray, int]:
    """``x`` (N, C, *spatial) as (N, G, C / G, *spatial): groups of consecutive channels."""
    array = _as_input("x", x)
    if array.ndim < 2:
        raise ValueError(f"x must have a batch and a channel axis, got shape {array.shape}")
    count = whole_number("num_groups", groups, minimum=1)
    channels = array.shape[1]
    if channels % count:
        raise ValueError(f"num_groups {count} must divide the {channels} channels")
    return array.reshape(array.shape[0], count, channels // count, *array.shape[2:]), count


def _group_reduction(grouped: FloatArray) -> Reduction:
    return Reduction(tuple(range(2, grouped.ndim)))


def group_norm(
    x: Any, num_groups: int, weight: Any = None, bias: Any = None, *, eps: float = 1e-5
) -> FloatArray:
    """Per sample, each group of ``C / G`` consecutive channels normalized over its channels
    and the spatial axes; weight and bias per channel (gn.train.output)."""
    grouped, _ = _grouped(x, num_groups)
    xhat, _ = normalize(grouped, _group_reduction(grouped), eps=eps)
    array = xhat.reshape(np.shape(x))
    return _affine_forward(array, Affine((array.shape[1],), (1,)), weight, bias, 0.0)


def group_norm_backward(
    dy: Any, x: Any, num_groups: int, weight: Any = None, *, eps: float = 1e-5
) -> Gradients:
    """``dx`` through each group's statistics; ``dweight``, ``dbias`` per channel, summed
    over the batch and spatial axes (gn.backward.dx, gn.backward.dparams)."""
    array = _as_input("x", x)
    upstream = _as_input("dy", dy)
    if upstream.shape != array.shape:
        raise ValueError(f"dy must have the shape of x {array.shape}, got {upstream.shape}")
    grouped, _ = _grouped(array, num_groups)
    affine = Affine((array.shape[1],), (1,))
    w = _parameter("weight", weight, affine.shape, 1.0)
    with np.errstate(all="ignore"):
        g = (upstream * affine.broadcast(w, array.ndim)).reshape(grouped.shape)
        dx, xhat = normalize_backward(g, grouped, _group_reduction(grouped), eps=eps)
        xhat = xhat.reshape(array.shape)
        dweight = _sum_outside(upstream * xhat, (1,))
    return Gradients(dx.reshape(array.shape), dweight, _sum_outside(upstream, (1,)))


def instance_norm(x: Any, weight: Any = None, bias: Any = None, *, eps: float = 1e-5) -> FloatArray:
    """Per sample and channel, normalized over the spatial axes with the instance's own
    statistics: GroupNorm with one group per channel (in.train.output)."""
    return group_norm(x, np.shape(x)[1], weight, bias, eps=eps)


def instance_norm_backward(dy: Any, x: Any, weight: Any = None, *, eps: float = 1e-5) -> Gradients:
    """The gradients of :func:`instance_norm` (in.backward.dx, in.backward.dparams)."""
    return group_norm_backward(dy, x, np.shape(x)[1], weight, eps=eps)


def instance_running_update(
    state: RunningStatistics, x: Any, rate: float, estimator: VarianceEstimator = "unbiased"
) -> RunningStatistics:
    """InstanceNorm's running statistics after a training step (in.running.update).

    Each channel moves towards the mean over the batch of its instances' statistics:
    ``mean + alpha * (mean_N(mu_nc) - mean)`` and ``var + alpha * (mean_N(v_nc) - var)``,
    ``v_nc`` the biased or the unbiased (``n / (n - 1)``, ``n`` the spatial size) variance of
    instance ``n`` in channel ``c`` (PyTorch's ``track_running_stats``).
    """
    array = _as_input("x", x)
    if array.ndim < 3:
        raise ValueError(f"x must have a batch, a channel and a spatial axis, got {array.shape}")
    stats = statistics(array, Reduction(tuple(range(2, array.ndim))))
    n = stats.count
    correction = n / (n - 1) if estimator == "unbiased" and n > 1 else 1.0
    means = stats.mean.reshape(array.shape[:2])
    variances = stats.var.reshape(array.shape[:2]) * correction
    alpha = real_number("update rate alpha", rate)
    batch_mean = _total(np.ascontiguousarray(means), 1) / array.shape[0]
    batch_var = _total(np.ascontiguousarray(variances), 1) / array.shape[0]
    return RunningStatistics(
        state.mean + alpha * (batch_mean - state.mean),
        state.var + alpha * (batch_var - state.var),
        state.steps + 1,
    )


def instance_norm_inference(
    x: Any,
    mean: Any,
    var: Any,
    weight: Any = None,
    bias: Any = None,
    *,
    eps: float = 1e-5,
) -> FloatArray:
    """InstanceNorm in inference with running statistics: each value normalized by its
    channel's running mean and variance, as batch normalization's inference (in.infer.output)."""
    return inference_forward(x, mean, var, weight, bias, eps=eps, feature_axis=1)


__all__ = [
    "Affine",
    "Reduction",
    "SliceStatistics",
    "group_norm",
    "group_norm_backward",
    "instance_norm",
    "instance_norm_backward",
    "instance_norm_inference",
    "instance_running_update",
    "layer_norm",
    "layer_norm_backward",
    "normalize",
    "normalize_backward",
    "rms_norm",
    "rms_norm_backward",
    "statistics",
]
