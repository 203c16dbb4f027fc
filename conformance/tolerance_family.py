"""Tolerances of the family's clauses (layernorm.md, groupnorm.md), derived like BN's.

A LayerNorm input is batch normalization's on a matrix: its slices (the trailing
``normalized_shape`` values of one leading index) are the columns of a ``(n, slices)``
matrix, so the LayerNorm bounds are the BN ones (:mod:`tolerance`) evaluated per column, the
weight and bias elementwise along a column. GroupNorm's and InstanceNorm's slices (one group
of consecutive channels of one sample) are runs of the input in C order too: the same
bounds, with the per-channel weight and bias spread over the column. RMSNorm's uncentred
bounds are written here (rms.train.output, rms.backward.dx), and InstanceNorm's running
statistics' (in.running.update). Nothing here is a fixed atol/rtol.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from normspec.conformance.tolerance import (
    SAFETY_FACTOR,
    Array,
    FeatureTerms,
    GradientBounds,
    Moments,
    Precision,
    SecondOrderBounds,
    StateBounds,
    _both,
    backward_bounds,
    normalized_output_bound,
)
from normspec.reference import Gradients
from normspec.reference.second_order import SecondOrderEstimate


@dataclass(frozen=True)
class Slices:
    """An input of shape ``shape`` cut into slices of ``n`` values, each a run of ``n``
    values in C order (the trailing ``normalized_shape`` values of one leading index, or one
    group of consecutive channels of one sample), its parameters spanning ``param_axes``."""

    shape: tuple[int, ...]
    n: int
    param_axes: tuple[int, ...]

    @classmethod
    def of(cls, shape: tuple[int, ...], normalized_shape: tuple[int, ...]) -> Slices:
        """LayerNorm's and RMSNorm's slices: the trailing ``normalized_shape`` axes."""
        n = int(np.prod(normalized_shape, dtype=np.int64))
        return cls(tuple(shape), n, tuple(range(len(shape) - len(normalized_shape), len(shape))))

    @classmethod
    def grouped(cls, shape: tuple[int, ...], num_groups: int) -> Slices:
        """GroupNorm's slices (InstanceNorm: one group per channel), parameters per channel."""
        n = int(np.prod(shape, dtype=np.int64)) // max(shape[0] * num_groups, 1)
        return cls(tuple(shape), n, (1,))

    @property
    def param_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[a] for a in self.param_axes)

    def columns(self, values: Array) -> Array:
        """``values`` (broadcastable to the input) as the ``(n, slices)`` matrix of its
        slices."""
        full = np.broadcast_to(np.asarray(values, dtype=np.float64), self.shape)
        return full.reshape(-1, self.n).T

    def parameter(self, values: Array | None, default: float) -> Array:
        """A parameter (shaped ``param_shape``, or ``None``) as ``(n, slices)`` absolute
        values."""
        if values is None:
            return np.full((self.n, 1), default)
        return np.abs(self.columns(self.spread(values)))

    def spread(self, values: Array) -> Array:
        """A parameter of shape ``param_shape`` shaped to multiply the input."""
        shape = [1] * len(self.shape)
        for axis in self.param_axes:
            shape[axis] = self.shape[axis]
        return np.asarray(values, dtype=np.float64).reshape(shape)

    def back(self, matrix: Array) -> Array:
        """A ``(n, slices)`` matrix in the input's shape."""
        return np.ascontiguousarray(matrix.T).reshape(self.shape)

    def outside(self, values: Array) -> Array:
        """Sums of input-shaped ``values`` over every axis but ``param_axes``."""
        others = tuple(a for a in range(len(self.shape)) if a not in self.param_axes)
        return np.sum(values, axis=others).reshape(self.param_shape)


@dataclass(frozen=True)
class RmsTerms:
    """The exact per-slice quantities of RMSNorm's bounds, on the ``(n, slices)`` matrix."""

    n: int
    s: Array  # (1, slices): 1 / sqrt(mean(x^2) + eps), or 1 / (sqrt(mean(x^2)) + eps)
    xhat: Array  # (n, slices)

    @classmethod
    def of(cls, matrix: Array, eps: float, *, outside_root: bool = False) -> RmsTerms:
        """``outside_root``: the dialect rmsnorm.eps = outside_root (dialects.md)."""
        mean_square = np.mean(matrix * matrix, axis=0, keepdims=True)
        with np.errstate(invalid="ignore"):
            root = np.sqrt(mean_square) + eps if outside_root else np.sqrt(mean_square + eps)
        s = 1.0 / root
        return cls(matrix.shape[0], s, matrix * s)


def layernorm_output_bound(
    precision: Precision,
    x: Array,
    view: Slices,
    weight: Array | None,
    bias: Array | None,
    eps: float,
) -> Array:
    """Elementwise bound of ln.train.output / ln.accuracy.forward and of gn.* / in.*
    (bn.accuracy.forward per slice, ``|w|`` and ``|b|`` as the layer applies them)."""
    terms = FeatureTerms.of(view.columns(x), 1, eps)
    g, b = view.parameter(weight, 1.0), view.parameter(bias, 0.0)
    return view.back(normalized_output_bound(precision, terms, g, b))


def rms_output_bound(
    precision: Precision,
    x: Array,
    view: Slices,
    scale: Array | None,
    bias: Array | None,
    eps: float,
    *,
    outside_root: bool = False,
    roundings: int = 2,
) -> Array:
    """Elementwise bound of rms.train.output: ``K * (u_w (n + 3) g |xhat| + u_o (r g |xhat|
    + |b|) + tiny (1 + g s))``, ``scale`` the factor ``c + w`` (``None``: 1), ``r`` the
    ``roundings`` of the product in the output dtype (dialects.md: rmsnorm.cast, 2 for
    ``before_weight``, 1 for ``after_weight``)."""
    t = RmsTerms.of(view.columns(x), eps, outside_root=outside_root)
    g, b = view.parameter(scale, 1.0), view.parameter(bias, 0.0)

    def bound(p: Precision) -> Array:
        ax = np.abs(t.xhat)
        return (
            p.u_w * (t.n + 3) * g * ax + p.u_o * (roundings * g * ax + b) + p.tiny * (1 + g * t.s)
        )

    return view.back(_both(bound, precision))


def _dparams_bounds(
    precision: Precision,
    view: Slices,
    dy: Array,
    xhat: Array,
    xhat_bound: Array,
    expected: Gradients,
) -> tuple[Array, Array]:
    """ln.backward.dparams (gn.backward.dparams): sums of ``dy * xhat`` and of ``dy`` over
    the ``m`` values each parameter sees; ``dy``, ``xhat``, ``xhat_bound`` ``(n, slices)``."""
    m = int(np.prod(view.shape, dtype=np.int64)) // max(int(np.prod(view.param_shape)), 1)
    weighted = view.outside(view.back(np.abs(dy * xhat)))
    totals = view.outside(view.back(np.abs(dy)))
    propagated = view.outside(view.back(np.abs(dy) * xhat_bound))
    dw_star = np.abs(np.asarray(expected.dgamma)).reshape(view.param_shape)
    db_star = np.abs(np.asarray(expected.dbeta)).reshape(view.param_shape)

    def dw(p: Precision) -> Array:
        return p.u_w * (m + 1) * weighted + p.u_o * dw_star + p.tiny

    def db(p: Precision) -> Array:
        return p.u_w * (m + 1) * totals + p.u_o * db_star + p.tiny

    return _both(dw, precision) + propagated, _both(db, precision)


def layernorm_backward_bounds(
    precision: Precision,
    x: Array,
    dy: Array,
    view: Slices,
    weight: Array | None,
    eps: float,
    expected: Gradients,
) -> GradientBounds:
    """Bounds of ln.backward.dx (bn.accuracy.backward per slice, ``w * dy`` the cotangent
    of ``xhat``) and ln.backward.dparams (gn.*, in.* alike), shaped as ``dx``, ``dw``,
    ``db``."""
    columns = view.columns(x)
    w = view.parameter(weight, 1.0)
    g = view.columns(dy) * (1.0 if weight is None else view.columns(view.spread(weight)))
    dx_star = view.columns(expected.dx)
    zeros = np.zeros(columns.shape[1])
    dx = backward_bounds(precision, columns, g, None, eps, 1, Gradients(dx_star, zeros, zeros)).dx
    terms = FeatureTerms.of(columns, 1, eps)
    xhat_bound = normalized_output_bound(precision, terms, np.ones_like(w), np.zeros_like(w))
    dw, db = _dparams_bounds(precision, view, view.columns(dy), terms.xhat, xhat_bound, expected)
    return GradientBounds(view.back(dx), dw, db)


def rms_backward_bounds(
    precision: Precision,
    x: Array,
    dy: Array,
    view: Slices,
    scale: Array | None,
    eps: float,
    expected: Gradients,
    *,
    outside_root: bool = False,
) -> GradientBounds:
    """Bounds of rms.backward.dx and rms.backward.dparams, ``scale`` the factor ``c + w``."""
    t = RmsTerms.of(view.columns(x), eps, outside_root=outside_root)
    g = np.abs(view.columns(dy)) * view.parameter(scale, 1.0)
    ax = np.abs(t.xhat)
    spread = np.mean(g * (1 + ax), axis=0, keepdims=True)
    dx_star = np.abs(view.columns(expected.dx))

    def dx(p: Precision) -> Array:
        return (
            p.u_w * (t.n + 3) * t.s * (g + (1 + ax) * spread)
            + p.u_o * dx_star
            + p.tiny * (1 + t.s * (2 + ax))
        )

    def xhat(p: Precision) -> Array:
        return p.u_w * (t.n + 3) * ax + p.u_o * ax + p.tiny * (1 + t.s)

    dw, db = _dparams_bounds(
        precision, view, view.columns(dy), t.xhat, _both(xhat, precision), expected
    )
    return GradientBounds(view.back(_both(dx, precision)), dw, db)


@dataclass(frozen=True)
class SecondOrderArguments:
    """The arguments of one double backward (layernorm.md: ``*.backward.second_order``):
    ``x``, ``dy`` and ``v`` input-shaped; ``scale`` the factor ``c + w`` and the cotangents
    ``v_weight``, ``v_bias`` parameter-shaped (``None``: 1, zero)."""

    x: Array
    dy: Array
    v: Array
    scale: Array | None
    v_weight: Array | None
    v_bias: Array | None


def second_order_family_bounds(
    precision: Precision,
    args: SecondOrderArguments,
    view: Slices,
    eps: float,
    expected: SecondOrderEstimate,
    *,
    centered: bool = True,
    outside_root: bool = False,
) -> SecondOrderBounds:
    """Bounds of ln/rms/gn/in.backward.second_order: bn.backward.second_order's per slice
    with the weight per element. With ``w_i = 1 + kappa + |xhat_i|``, ``|g_i| = |c + w_i|
    |dy_i|``, ``|h_i| = |v_w_i| |dy_i|``, ``D``, ``W``, ``H`` the means of ``|g| w``, ``|v|
    w``, ``|h| w``, ``P_i = |g_i| + D w_i``, ``Q_i = |v_i| + W w_i``, ``R_i = |h_i| + H w_i``
    and ``M = mean |v| P``, the term scales are ``T_x = s^2 (w M + P W + D Q) + s R``,
    ``T_dy = |c + w| s Q + |v_w| w + |v_b|`` and ``T_w`` the sum of ``|dy| s Q`` over the
    elements of each parameter; each bound is ``K (rel T + u_o |d*| + tiny (1 + T_1)) + E``
    (``T_1``: ``T`` with unit ``|dy|`` and ``|v|``, how an underflow propagates),
    ``rel = u_w (n + 3)^2`` (plus the raw-moment allowance where centred, plus ``u_w (m +
    1)`` for the ``m`` summed terms of the weight's) and ``E`` the differences' own
    error estimate."""
    columns = view.columns(args.x)
    if centered:
        terms = FeatureTerms.of(columns, 1, eps)
        s, xhat, kappa = terms.s, terms.xhat, terms.kappa
    else:
        rms = RmsTerms.of(columns, eps, outside_root=outside_root)
        s, xhat = rms.s, rms.xhat
        kappa = s * np.mean(np.abs(columns), axis=0, keepdims=True)
    n = view.n
    w = 1 + kappa + np.abs(xhat)
    abs_scale = view.parameter(args.scale, 1.0)
    abs_vw, abs_vb = view.parameter(args.v_weight, 0.0), view.parameter(args.v_bias, 0.0)

    def mean(values: Array) -> Array:
        result: Array = np.mean(values, axis=0, keepdims=True)
        return result

    def term_scales(abs_dy: Array, abs_v: Array) -> dict[str, Array]:
        """The term scales (``dx``, ``ddy`` as columns) for these magnitudes of ``dy``, ``v``."""
        abs_g, abs_h = abs_dy * abs_scale, abs_dy * abs_vw
        d, ww, hh = mean(abs_g * w), mean(abs_v * w), mean(abs_h * w)
        p, q, r = abs_g + d * w, abs_v + ww * w, abs_h + hh * w
        return {
            "dx": s * s * (w * mean(abs_v * p) + p * ww + d * q) + s * r,
            "ddy": abs_scale * s * q + abs_vw * w + abs_vb,
            "dgamma": view.outside(view.back(abs_dy * s * q)),
        }

    scales = term_scales(np.abs(view.columns(args.dy)), np.abs(view.columns(args.v)))
    # an underflow in a product of dy or v (an absolute error of tiny) propagates as the
    # terms of unit dy and v do
    units = term_scales(np.ones_like(columns), np.ones_like(columns))
    # per slice (1, slices); the weight's sums span slices: their largest
    variance = 3 * precision.variance_error(n, kappa) if centered else 0.0
    relative = precision.u_w * (n + 3) ** 2 + np.asarray(variance) * np.ones_like(s)
    summed = int(np.prod(view.shape, dtype=np.int64)) // max(int(np.prod(view.param_shape)), 1)
    relatives: dict[str, Array] = {
        "dx": relative,
        "ddy": relative,
        "dgamma": np.asarray(np.max(relative) + precision.u_w * (summed + 1)),
    }

    def bound(name: str) -> Array:
        scale, rel = scales[name], relatives[name]
        value = np.abs(getattr(expected.values, name))
        if name != "dgamma":
            value = view.columns(value)
        result: Array = SAFETY_FACTOR * (
            rel * scale + precision.u_o * value + precision.tiny * (1 + units[name])
        )
        if name != "dgamma":
            result = view.back(result)
        return result + getattr(expected.error, name)

    return SecondOrderBounds(dx=bound("dx"), dgamma=bound("dgamma"), ddy=bound("ddy"))


def instance_running_bounds(
    precision: Precision,
    x: Array,
    alpha: float,
    before: Moments,
    after: Moments,
    *,
    unbiased: bool,
) -> StateBounds:
    """Bounds of in.running.update per channel: bn.running.*'s (:func:`tolerance.running_bounds`)
    with each of the ``N`` averaged terms one instance's statistic over its ``S`` values."""
    samples, channels = x.shape[0], x.shape[1]
    rows = np.asarray(x, dtype=np.float64).reshape(samples, channels, -1)
    size = rows.shape[2]
    c = size / (size - 1) if unbiased and size > 1 else 1.0
    means = np.mean(rows, axis=2)
    variances = np.mean((rows - means[..., np.newaxis]) ** 2, axis=2)
    mean_abs = np.mean(np.abs(rows), axis=(0, 2))
    top_abs = np.max(np.mean(np.abs(rows), axis=2), axis=0)
    var, mean = np.mean(variances, axis=0), np.mean(means, axis=0)
    terms = size + samples

    def mean_bound(p: Precision) -> Array:
        return (
            alpha * p.u_w * (terms + 1) * mean_abs
            + p.u_w * np.abs(mean - before.mean)
            + p.u_o * (np.abs(before.mean) + np.abs(after.mean))
            + p.tiny
        )

    def var_bound(p: Precision) -> Array:
        raw = p.u_w * (size + 3) * np.mean(variances + means**2, axis=0) if p.raw_moments else 0
        return (
            alpha * c * (p.u_w * (terms + 3) * var + (p.u_w * (size + 1) * top_abs) ** 2 + raw)
            + p.u_w * np.abs(c * var - before.var)
            + p.u_o * (np.abs(before.var) + np.abs(after.var))
            + p.tiny
        )

    mean_scale = np.abs(before.mean) + np.abs(after.mean) + alpha * mean_abs
    var_scale = np.abs(before.var) + np.abs(after.var) + alpha * c * var
    return StateBounds(
        mean=precision.floored(_both(mean_bound, precision), mean_scale),
        var=precision.floored(_both(var_bound, precision), var_scale),
    )


__all__ = [
    "RmsTerms",
    "SecondOrderArguments",
    "Slices",
    "instance_running_bounds",
    "layernorm_backward_bounds",
    "layernorm_output_bound",
    "rms_backward_bounds",
    "rms_output_bound",
    "second_order_family_bounds",
]
