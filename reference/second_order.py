"""The derivative of the training backward (double backward): bn.backward.second_order.

For cotangents ``v`` (shape of ``x``), ``v_gamma`` and ``v_beta`` (shape ``(C,)``) of the
training backward's ``dx``, ``dgamma`` and ``dbeta`` (:func:`batchnorm.train_backward`),

    S = sum(v * dx) + sum(v_gamma * dgamma) + sum(v_beta * dbeta)

and the second-order vector-Jacobian product is the gradient of ``S`` in ``x``, ``gamma``
and ``dy``. Two evaluations:

- :func:`train_second_order_differences`: central differences of the reference's own
  training backward with an error estimate, the expected values of the conformance check
  (independent of any derivation of the formulas);
- :func:`train_double_backward`: the closed form of batchnorm.md (per feature, with
  ``A = mean(dy)``, ``B = mean(dy * xhat)``, ``V = mean(v * xhat)``,
  ``dyc = dy - A - xhat * B``, ``vc = v - mean(v) - xhat * V``, ``C = mean(v * dyc)``):
  ``d_x = -gamma s^2 (xhat C + dyc V + B vc) + v_gamma s dyc``, ``d_gamma = n s C``,
  ``d_dy = gamma s vc + v_gamma xhat + v_beta``. It is what the reference adapter offers;
  its accuracy is not stated beyond the clause's bound.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from normspec.reference._arrays import FloatArray, as_float64, check_input, check_vector
from normspec.reference.batchnorm import batch_statistics, inverse_std, train_backward

#: Unit roundoff of float64, the reference's precision.
_U = 2.0**-53
#: The relative step of the central differences: cbrt(u), which balances the truncation
#: error (h^2) against the cancellation (u / h).
STEP = float(np.cbrt(_U))
#: The relative step in ``gamma`` and ``dy``: ``S`` is linear in them (no truncation error),
#: so a large step keeps the cancellation small.
LINEAR_STEP = 0.25
#: The step multipliers evaluated: +-h for the differences, +-2h for the error estimate.
_MULTIPLIERS = (1.0, -1.0, 2.0, -2.0)


@dataclass(frozen=True)
class SecondOrderGradients:
    """The gradient of ``S`` in ``x`` (shape of x), ``gamma`` (``(C,)``) and ``dy`` (shape of x)."""

    dx: FloatArray
    dgamma: FloatArray
    ddy: FloatArray


@dataclass(frozen=True)
class SecondOrderEstimate:
    """Finite-difference values and an elementwise estimate of their error (same shapes)."""

    values: SecondOrderGradients
    error: SecondOrderGradients


@dataclass(frozen=True)
class _Rows:
    """The arguments one feature per row (``(C, n)``), with how to put results back."""

    x: FloatArray
    dy: FloatArray
    v: FloatArray
    gamma: FloatArray
    v_gamma: FloatArray
    v_beta: FloatArray
    shape: tuple[int, ...]
    axis: int

    def back(self, rows: FloatArray) -> FloatArray:
        """A ``(C, n)`` array in the input's shape and feature axis."""
        moved = [self.shape[self.axis]] + [s for d, s in enumerate(self.shape) if d != self.axis]
        result: FloatArray = np.moveaxis(rows.reshape(moved), 0, self.axis).copy()
        return result


def _rows(
    x: Any, dy: Any, v: Any, v_gamma: Any, v_beta: Any, gamma: Any, feature_axis: int
) -> _Rows:
    array = as_float64("x", x)
    axis = check_input(array, feature_axis)
    features = array.shape[axis]
    if array.size == 0:
        raise ValueError(f"empty batch: x of shape {array.shape} has no values per feature")

    def table(name: str, value: Any) -> FloatArray:
        other = as_float64(name, value)
        if other.shape != array.shape:
            raise ValueError(f"{name} must have the shape of x {array.shape}, got {other.shape}")
        result: FloatArray = np.moveaxis(other, axis, 0).reshape(features, -1)
        return result

    def vector(name: str, value: Any, default: float) -> FloatArray:
        if value is None:
            return np.full(features, default)
        return check_vector(name, value, features)

    return _Rows(
        x=table("x", array),
        dy=table("dy", dy),
        v=table("v", v),
        gamma=vector("gamma", gamma, 1.0),
        v_gamma=vector("v_gamma", v_gamma, 0.0),
        v_beta=vector("v_beta", v_beta, 0.0),
        shape=array.shape,
        axis=axis,
    )


def train_double_backward(
    x: Any,
    dy: Any,
    v: Any,
    v_gamma: Any = None,
    v_beta: Any = None,
    gamma: Any = None,
    *,
    eps: float = 1e-5,
    feature_axis: int = 1,
) -> SecondOrderGradients:
    """The gradient of ``S`` in ``x``, ``gamma``, ``dy`` by the closed form (module docstring).

    ``gamma`` ``None``: a layer without affine parameters (1); ``v_gamma``, ``v_beta``
    ``None``: zero. Clause: bn.backward.second_order.
    """
    rows = _rows(x, dy, v, v_gamma, v_beta, gamma, feature_axis)
    stats = batch_statistics(rows.x, 0)
    n = stats.count
    s = inverse_std(stats.var, eps)[:, None]
    g = rows.gamma[:, None]
    xhat = (rows.x - stats.mean[:, None]) * s
    a = np.mean(rows.dy, axis=1, keepdims=True)
    b = np.mean(rows.dy * xhat, axis=1, keepdims=True)
    vv = np.mean(rows.v * xhat, axis=1, keepdims=True)
    dyc = rows.dy - a - xhat * b
    vc = rows.v - np.mean(rows.v, axis=1, keepdims=True) - xhat * vv
    c = np.mean(rows.v * dyc, axis=1, keepdims=True)
    d_x = -g * s * s * (xhat * c + dyc * vv + b * vc) + rows.v_gamma[:, None] * s * dyc
    d_dy = g * s * vc + rows.v_gamma[:, None] * xhat + rows.v_beta[:, None]
    return SecondOrderGradients(rows.back(d_x), n * (s * c)[:, 0], rows.back(d_dy))


def _changes(
    x: FloatArray,
    dy: FloatArray,
    gamma: FloatArray,
    v: FloatArray,
    v_gamma: FloatArray,
    v_beta: FloatArray,
    eps: float,
) -> tuple[FloatArray, FloatArray]:
    """The changes of ``S`` between the points +-h and between +-2h, per column, with a
    bound of the error of summing them.

    The columns of ``x``, ``dy``, ``v`` (``(n, 4 F)``) are features, in four blocks: the
    points moved by +h, -h, +2h, -2h. The gradients are differenced elementwise before
    they are weighted and summed, so the sum adds an error of the order of the change only.
    """
    grads = train_backward(dy, x, gamma, eps=eps, feature_axis=1)
    width = x.shape[1] // len(_MULTIPLIERS)

    def block(array: FloatArray, k: int) -> FloatArray:
        return array[..., k * width : (k + 1) * width]

    changes, magnitudes = [], []
    for plus, minus in ((0, 1), (2, 3)):
        parts = [
            block(v, plus) * (block(grads.dx, plus) - block(grads.dx, minus)),
            block(v_gamma, plus) * (block(grads.dgamma, plus) - block(grads.dgamma, minus)),
            block(v_beta, plus) * (block(grads.dbeta, plus) - block(grads.dbeta, minus)),
        ]
        changes.append(np.sum(parts[0], axis=0) + parts[1] + parts[2])
        magnitudes.append(np.sum(np.abs(parts[0]), axis=0) + np.abs(parts[1]) + np.abs(parts[2]))
    summation: FloatArray = _U * (x.shape[0] + 2) * magnitudes[0]
    return np.stack(changes), summation


def _columns(rows: FloatArray, steps: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Every element of ``rows`` (``(C, n)``) moved by each multiple of its step in turn.

    Returns the columns (``(n, 4 C n)``: multiplier, feature, element) and the moved
    values (``(4, C, n)``), as rounded.
    """
    features, n = rows.shape
    copies = np.repeat(rows, n, axis=0)  # row c * n + j: feature c
    diagonal = (np.arange(features * n), np.tile(np.arange(n), features))
    blocks, moved = [], []
    for k in _MULTIPLIERS:
        block = copies.copy()
        block[diagonal] = (rows + k * steps).reshape(-1)
        moved.append(block[diagonal].reshape(features, n))
        blocks.append(block)
    return np.concatenate(blocks, axis=0).T, np.stack(moved)


def train_second_order_differences(
    x: Any,
    dy: Any,
    v: Any,
    v_gamma: Any = None,
    v_beta: Any = None,
    gamma: Any = None,
    *,
    eps: float = 1e-5,
    feature_axis: int = 1,
) -> SecondOrderEstimate:
    """The gradient of ``S`` in ``x``, ``gamma``, ``dy`` by central differences of
    :func:`batchnorm.train_backward`, with an error estimate per element.

    The step in ``x`` is ``cbrt(u) * sqrt(var_B + eps)`` (the length scale of the
    normalization), taken on ``x - mu_B`` (the backward is invariant under a shift of a
    feature; the rounding of the subtraction moves the point by ``u * |x_i - mu_B|``,
    a relative ``u`` of the length scale for a drawn case); ``S`` is linear in ``gamma`` and ``dy``, whose steps are a quarter of
    ``max(|gamma|, 1)`` and of the feature's ``max_j |dy_j|`` (1 if zero). The
    value is the difference with step ``h``; the error estimate is ``|D(h) - D(2h)|``
    (three times the Richardson estimate of the truncation error of ``D(h)``) plus the
    cancellation: twice a bound of the rounding error of ``S`` over the step taken. A case
    should be small (each element costs four evaluations of the backward of its feature).
    Clause: bn.backward.second_order.
    """
    given = _rows(x, dy, v, v_gamma, v_beta, gamma, feature_axis)
    features, n = given.x.shape
    stats = batch_statistics(given.x, 0)
    # The backward depends on x - mu_B only: the differences are taken on x - mu_B (as
    # rounded), where a step of a small fraction of the spread is representable however
    # large the mean.
    rows = replace(given, x=given.x - stats.mean[:, None])
    s = inverse_std(stats.var, eps)
    dy_scale = np.max(np.abs(rows.dy), axis=1)
    dy_scale[dy_scale == 0] = 1.0
    gamma_steps = LINEAR_STEP * np.maximum(np.abs(rows.gamma), 1.0)
    # (C,): a bound of the error of the change of S between two moved points
    reach = 2 * LINEAR_STEP * dy_scale[:, None]
    noise = _rounding(rows, np.abs(rows.dy) + reach, np.abs(rows.gamma) + 2 * gamma_steps, s)

    def derivative(
        changes: FloatArray, summation: FloatArray, moved: FloatArray, noise: FloatArray
    ) -> tuple[FloatArray, FloatArray]:
        """D(h) and its error estimate, from the changes and the points as rounded."""
        first = changes[0] / (moved[0] - moved[1])
        second = changes[1] / (moved[2] - moved[3])
        return first, np.abs(first - second) + (noise + summation) / np.abs(moved[0] - moved[1])

    def tile(vector: FloatArray, per: int) -> FloatArray:
        result: FloatArray = np.tile(np.repeat(vector, per), len(_MULTIPLIERS))
        return result

    def wide(table: FloatArray) -> FloatArray:
        result: FloatArray = np.tile(np.repeat(table, n, axis=0), (len(_MULTIPLIERS), 1)).T
        return result

    def element_derivative(
        which: str, steps: FloatArray
    ) -> tuple[FloatArray, FloatArray]:  # (C, n) values and errors
        moved_table = rows.x if which == "x" else rows.dy
        columns, moved = _columns(moved_table, steps)
        xs = columns if which == "x" else wide(rows.x)
        dys = columns if which == "dy" else wide(rows.dy)
        changes, summation = _changes(
            xs, dys, tile(rows.gamma, n), wide(rows.v), tile(rows.v_gamma, n),
            tile(rows.v_beta, n), eps,
        )  # fmt: skip
        shape = (2, features, n)
        return derivative(
            changes.reshape(shape), summation.reshape(shape[1:]), moved, noise[:, None]
        )

    d_x, e_x = element_derivative("x", STEP / s[:, None] * np.ones((1, n)))
    d_dy, e_dy = element_derivative("dy", LINEAR_STEP * dy_scale[:, None] * np.ones((1, n)))

    moved_gamma = np.stack([rows.gamma + k * gamma_steps for k in _MULTIPLIERS])
    blocks = len(_MULTIPLIERS)
    changes, summation = _changes(
        np.tile(rows.x.T, blocks), np.tile(rows.dy.T, blocks), moved_gamma.reshape(-1),
        np.tile(rows.v.T, blocks), np.tile(rows.v_gamma, blocks), np.tile(rows.v_beta, blocks),
        eps,
    )  # fmt: skip
    d_gamma, e_gamma = derivative(changes, summation, moved_gamma, noise)
    return SecondOrderEstimate(
        SecondOrderGradients(rows.back(d_x), d_gamma, rows.back(d_dy)),
        SecondOrderGradients(rows.back(e_x), e_gamma, rows.back(e_dy)),
    )


def _rounding(rows: _Rows, abs_dy: FloatArray, abs_gamma: FloatArray, s: FloatArray) -> FloatArray:
    """A bound of the error of the change of ``S`` between two points, per feature, for
    centred ``rows.x`` and at most the magnitudes ``abs_dy``, ``abs_gamma``: twice the
    reference's error of each gradient (batchnorm.md, reference accuracy: at most 6 ulps,
    each at most ``2 u``, of its natural scale, for n <= 64) weighted by ``|v_i|``,
    ``|v_gamma|``, ``|v_beta|``. (The sum of the weighted changes is bounded apart.)
    """
    n = rows.x.shape[1]
    xhat = np.abs(rows.x) * s[:, None]
    r = np.sqrt(np.mean(xhat * xhat, axis=1, keepdims=True))
    m1 = np.mean(abs_dy, axis=1, keepdims=True)
    weighted = np.mean(abs_dy * (xhat + r), axis=1, keepdims=True)
    natural_dx = abs_gamma[:, None] * s[:, None] * (abs_dy + m1 + (xhat + r) * weighted)
    magnitude = (
        np.sum(np.abs(rows.v) * natural_dx, axis=1)
        + np.abs(rows.v_gamma) * n * weighted[:, 0]
        + np.abs(rows.v_beta) * n * m1[:, 0]
    )
    result: FloatArray = 24 * _U * magnitude + float(np.finfo(np.float64).tiny)
    return result
