"""Tolerances of the LayerNorm and RMSNorm clauses (layernorm.md), derived like BN's.

A LayerNorm input is batch normalization's on a matrix: its slices (the trailing
``normalized_shape`` values of one leading index) are the columns of a ``(n, slices)``
matrix, so the LayerNorm bounds are the BN ones (:mod:`tolerance`) evaluated per column, the
weight and bias elementwise along a column. RMSNorm's uncentred bounds are written here
(rms.train.output, rms.backward.dx). Nothing here is a fixed atol/rtol.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from normspec.conformance.tolerance import (
    Array,
    FeatureTerms,
    GradientBounds,
    Precision,
    _both,
    backward_bounds,
    normalized_output_bound,
)
from normspec.reference import Gradients


@dataclass(frozen=True)
class Slices:
    """An input of shape ``shape`` whose trailing values, ``n`` per slice, are normalized."""

    shape: tuple[int, ...]
    n: int

    @classmethod
    def of(cls, shape: tuple[int, ...], normalized_shape: tuple[int, ...]) -> Slices:
        return cls(tuple(shape), int(np.prod(normalized_shape, dtype=np.int64)))

    def columns(self, values: Array) -> Array:
        """``values`` (shaped as the input) as the ``(n, slices)`` matrix of its slices."""
        return np.asarray(values, dtype=np.float64).reshape(-1, self.n).T

    def elementwise(self, values: Array | None, default: float) -> Array:
        """A parameter of shape ``normalized_shape`` as an ``(n, 1)`` column (absolute)."""
        if values is None:
            return np.full((self.n, 1), default)
        return np.abs(np.asarray(values, dtype=np.float64)).reshape(self.n, 1)

    def back(self, matrix: Array) -> Array:
        """A ``(n, slices)`` matrix in the input's shape."""
        return np.ascontiguousarray(matrix.T).reshape(self.shape)


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
    normalized_shape: tuple[int, ...],
    weight: Array | None,
    bias: Array | None,
    eps: float,
) -> Array:
    """Elementwise bound of ln.train.output / ln.accuracy.forward (bn.accuracy.forward per
    slice, ``|w|`` and ``|b|`` elementwise)."""
    view = Slices.of(x.shape, normalized_shape)
    terms = FeatureTerms.of(view.columns(x), 1, eps)
    g, b = view.elementwise(weight, 1.0), view.elementwise(bias, 0.0)
    return view.back(normalized_output_bound(precision, terms, g, b))


def rms_output_bound(
    precision: Precision,
    x: Array,
    normalized_shape: tuple[int, ...],
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
    view = Slices.of(x.shape, normalized_shape)
    t = RmsTerms.of(view.columns(x), eps, outside_root=outside_root)
    g, b = view.elementwise(scale, 1.0), view.elementwise(bias, 0.0)

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
    """ln.backward.dparams: sums over the ``m`` slices of ``dy * xhat`` and of ``dy``."""
    m = int(np.prod(view.shape, dtype=np.int64)) // view.n
    weighted = np.sum(np.abs(dy * xhat), axis=1)
    totals = np.sum(np.abs(dy), axis=1)
    propagated = np.sum(np.abs(dy) * xhat_bound, axis=1)
    dw_star = np.abs(np.asarray(expected.dgamma)).reshape(-1)
    db_star = np.abs(np.asarray(expected.dbeta)).reshape(-1)

    def dw(p: Precision) -> Array:
        return p.u_w * (m + 1) * weighted + p.u_o * dw_star + p.tiny

    def db(p: Precision) -> Array:
        return p.u_w * (m + 1) * totals + p.u_o * db_star + p.tiny

    return _both(dw, precision) + propagated, _both(db, precision)


def layernorm_backward_bounds(
    precision: Precision,
    x: Array,
    dy: Array,
    normalized_shape: tuple[int, ...],
    weight: Array | None,
    eps: float,
    expected: Gradients,
) -> GradientBounds:
    """Bounds of ln.backward.dx (bn.accuracy.backward per slice, ``w * dy`` the cotangent
    of ``xhat``) and ln.backward.dparams, shaped as ``dx``, ``dw``, ``db``."""
    view = Slices.of(x.shape, normalized_shape)
    columns = view.columns(x)
    w = view.elementwise(None if weight is None else np.asarray(weight), 1.0)
    signed = 1.0 if weight is None else np.asarray(weight, dtype=np.float64).reshape(view.n, 1)
    g = view.columns(dy) * signed
    dx_star = view.columns(expected.dx)
    zeros = np.zeros(columns.shape[1])
    dx = backward_bounds(precision, columns, g, None, eps, 1, Gradients(dx_star, zeros, zeros)).dx
    terms = FeatureTerms.of(columns, 1, eps)
    xhat_bound = normalized_output_bound(precision, terms, np.ones_like(w), np.zeros_like(w))
    dw, db = _dparams_bounds(precision, view, view.columns(dy), terms.xhat, xhat_bound, expected)
    shape = tuple(normalized_shape)
    return GradientBounds(view.back(dx), dw.reshape(shape), db.reshape(shape))


def rms_backward_bounds(
    precision: Precision,
    x: Array,
    dy: Array,
    normalized_shape: tuple[int, ...],
    scale: Array | None,
    eps: float,
    expected: Gradients,
    *,
    outside_root: bool = False,
) -> GradientBounds:
    """Bounds of rms.backward.dx and rms.backward.dparams, ``scale`` the factor ``c + w``."""
    view = Slices.of(x.shape, normalized_shape)
    t = RmsTerms.of(view.columns(x), eps, outside_root=outside_root)
    signed = 1.0 if scale is None else np.asarray(scale, dtype=np.float64).reshape(view.n, 1)
    g = np.abs(view.columns(dy) * signed)
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
    shape = tuple(normalized_shape)
    return GradientBounds(view.back(_both(dx, precision)), dw.reshape(shape), db.reshape(shape))


__all__ = [
    "RmsTerms",
    "Slices",
    "layernorm_backward_bounds",
    "layernorm_output_bound",
    "rms_backward_bounds",
    "rms_output_bound",
]
