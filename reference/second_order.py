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

Both are configurations of one engine over *slices* (:class:`SliceTable`: rows of values
normalized together, the weight per element, centred or not): :func:`slice_double_backward`
and :func:`slice_second_order_differences`, which the normalization family shares
(:mod:`family_second_order`: ln/rms/gn/in.backward.second_order).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from normspec.reference import family
from normspec.reference._arrays import FloatArray, as_float64, check_input, check_vector
from normspec.reference.batchnorm import batch_statistics, inverse_std

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


@dataclass(frozen=True)
class SliceTable:
    """A second-order problem on ``m`` slices of ``n`` values, every argument an ``(m, n)``
    table: the input ``x``, the cotangent ``dy``, the weight ``w`` *per element* (as the
    layer applies it: BN's per-feature gamma, LayerNorm's elementwise weight, GroupNorm's
    per-channel weight spread over each slice; RMSNorm's ``c + w``), and the cotangents
    ``v``, ``v_w``, ``v_b`` of ``dx`` and of the per-element terms ``dy * xhat`` and ``dy``
    whose sums are the parameter gradients. ``centered``: LayerNorm-like statistics (a mean
    and a variance), else RMSNorm's mean square.

    ``S = sum(v * dx) + sum(v_w * dy * xhat) + sum(v_b * dy)`` is the objective of every
    layer's double backward; the gradient in a parameter is the sum of the per-element
    gradients in ``w`` over the elements it scales."""

    x: FloatArray
    dy: FloatArray
    w: FloatArray
    v: FloatArray
    v_w: FloatArray
    v_b: FloatArray
    centered: bool = True


#: A layer's backward on slices: ``(g, x)`` (``(m, n)`` rows, ``g = w * dy`` the cotangent
#: of ``xhat``) to ``dx`` and ``xhat``.
SliceBackward = Callable[[FloatArray, FloatArray], tuple[FloatArray, FloatArray]]


def slice_backward(centered: bool, eps: float) -> SliceBackward:
    """The reference's backward of the normalization per row (:func:`family.normalize_backward`:
    BN's closed form on the rows, or RMSNorm's uncentred one)."""
    reduction = family.Reduction((1,), centered)

    def backward(g: FloatArray, x: FloatArray) -> tuple[FloatArray, FloatArray]:
        return family.normalize_backward(g, x, reduction, eps=eps)

    return backward


def slice_double_backward(table: SliceTable, eps: float) -> SecondOrderGradients:
    """The closed form per element (``(m, n)`` each; the third field is the gradient in the
    per-element weight ``w``). With ``g = w * dy``, ``h = v_w * dy`` and the projection
    ``P(z) = z - mean(z) - xhat * mean(z * xhat)`` (without ``mean(z)`` uncentred):
    ``gc = P(g)``, ``vc = P(v)``, ``B = mean(g * xhat)``, ``V = mean(v * xhat)``,
    ``C = mean(v * gc)``:

        d_x  = -s^2 (xhat C + gc V + B vc) + s P(h)
        d_dy = w s vc + v_w xhat + v_b
        d_w  = dy s vc
    """
    xhat, s = family.normalize(table.x, family.Reduction((1,), table.centered), eps=eps)

    def mean(z: FloatArray) -> FloatArray:
        result: FloatArray = np.mean(z, axis=1, keepdims=True)
        return result

    def project(z: FloatArray) -> FloatArray:
        centre = mean(z) if table.centered else 0.0
        result: FloatArray = z - centre - xhat * mean(z * xhat)
        return result

    g = table.w * table.dy
    gc, vc = project(g), project(table.v)
    b, vv, c = mean(g * xhat), mean(table.v * xhat), mean(table.v * gc)
    d_x = -s * s * (xhat * c + gc * vv + b * vc) + s * project(table.v_w * table.dy)
    d_dy = table.w * s * vc + table.v_w * xhat + table.v_b
    return SecondOrderGradients(d_x, table.dy * s * vc, d_dy)


def _changes(
    backward: SliceBackward,
    blocks: tuple[FloatArray, FloatArray, FloatArray],
    weights: tuple[FloatArray, FloatArray, FloatArray],
) -> tuple[FloatArray, FloatArray]:
    """The changes of ``S`` between the points +-h and between +-2h, per row of a block,
    with a bound of the error of summing them.

    ``blocks`` (``x``, ``dy``, ``w``: ``(4 R, n)``) hold the rows moved by +h, -h, +2h,
    -2h in four blocks, ``weights`` (``v``, ``v_w``, ``v_b``: ``(R, n)``) their rows'
    cotangents. The gradients are differenced elementwise before they are weighted and
    summed, so the sum adds an error of the order of the change only.
    """
    x, dy, w = blocks
    outputs = backward(w * dy, x)
    terms = (outputs[0], dy * outputs[1], dy)
    width = x.shape[0] // len(_MULTIPLIERS)

    def block(array: FloatArray, k: int) -> FloatArray:
        return array[k * width : (k + 1) * width]

    changes, magnitudes = [], []
    for plus, minus in ((0, 1), (2, 3)):
        parts = [
            c * (block(t, plus) - block(t, minus)) for c, t in zip(weights, terms, strict=True)
        ]
        changes.append(np.sum(sum(parts), axis=1))
        magnitudes.append(np.sum(sum(np.abs(p) for p in parts), axis=1))
    summation: FloatArray = _U * (3 * x.shape[1] + 2) * magnitudes[0]
    return np.stack(changes), summation


def _moved(rows: FloatArray, steps: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Every element of ``rows`` (``(m, n)``) moved by each multiple of its step in turn.

    Returns the moved rows (``(4 m n, n)``: multiplier, row, element) and the moved values
    (``(4, m, n)``), as rounded.
    """
    m, n = rows.shape
    copies = np.repeat(rows, n, axis=0)  # row k * n + j: row k with element j moved
    diagonal = (np.arange(m * n), np.tile(np.arange(n), m))
    blocks, moved = [], []
    for k in _MULTIPLIERS:
        block = copies.copy()
        block[diagonal] = (rows + k * steps).reshape(-1)
        moved.append(block[diagonal].reshape(m, n))
        blocks.append(block)
    return np.concatenate(blocks, axis=0), np.stack(moved)


def slice_second_order_differences(
    table: SliceTable, backward: SliceBackward, eps: float
) -> SecondOrderEstimate:
    """The gradient of ``S`` in ``x``, ``w`` and ``dy``, per element (``(m, n)`` each; the
    second field is the gradient in the per-element weight ``w``), by central differences
    of ``backward`` with an error estimate per element.

    The step in ``x`` is ``cbrt(u) / s`` (the length scale of the normalization), taken
    on ``x - mu`` where centred (the backward is invariant under a shift of a slice; the
    rounding of the subtraction moves the point by ``u * |x_i - mu|``, a relative ``u``
    of the length scale for a drawn case); ``S`` is linear in ``w`` and ``dy``, whose
    steps are a quarter of ``max(|w_i|, 1)`` and of the row's ``max_j |dy_j|`` (1 if
    zero). The value is the difference with step ``h``; the error estimate is ``|D(h) -
    D(2h)|`` (three times the Richardson estimate of the truncation error of ``D(h)``)
    plus the cancellation: twice a bound of the rounding error of ``S`` over the step
    taken. A table should be small (each element costs twelve evaluations of its row's
    backward).
    """
    m, n = table.x.shape
    stats = batch_statistics(table.x, 0)
    if table.centered:
        # The backward depends on x - mu only: the differences are taken on x - mu (as
        # rounded), where a step of a small fraction of the spread is representable
        # however large the mean.
        table = replace(table, x=table.x - stats.mean[:, None])
        s = inverse_std(stats.var, eps)
    else:
        s = inverse_std(np.mean(table.x * table.x, axis=1), eps)
    dy_scale = np.max(np.abs(table.dy), axis=1) if n else np.ones(m)
    dy_scale[dy_scale == 0] = 1.0
    w_steps = LINEAR_STEP * np.maximum(np.abs(table.w), 1.0)
    reach = np.abs(table.dy) + 2 * LINEAR_STEP * dy_scale[:, None]
    noise = _rounding(table, reach, np.abs(table.w) + 2 * w_steps, s)
    weights = (table.v, table.v_w, table.v_b)
    four = len(_MULTIPLIERS)

    def derivative(which: str, steps: FloatArray) -> tuple[FloatArray, FloatArray]:
        """D(h) per element of the table ``which`` and its error estimate."""
        tables = {"x": table.x, "dy": table.dy, "w": table.w}
        rows, moved = _moved(tables[which], steps)
        blocks = tuple(
            rows if name == which else np.tile(np.repeat(values, n, axis=0), (four, 1))
            for name, values in tables.items()
        )
        repeated = tuple(np.repeat(c, n, axis=0) for c in weights)
        changes, summation = _changes(backward, blocks, repeated)  # type: ignore[arg-type]
        changes = changes.reshape(2, m, n)
        first = changes[0] / (moved[0] - moved[1])
        second = changes[1] / (moved[2] - moved[3])
        cancellation = (noise[:, None] + summation.reshape(m, n)) / np.abs(moved[0] - moved[1])
        return first, np.abs(first - second) + cancellation

    d_x, e_x = derivative("x", STEP / s[:, None] * np.ones((1, n)))
    d_dy, e_dy = derivative("dy", LINEAR_STEP * dy_scale[:, None] * np.ones((1, n)))
    d_w, e_w = derivative("w", w_steps)
    return SecondOrderEstimate(
        SecondOrderGradients(d_x, d_w, d_dy), SecondOrderGradients(e_x, e_w, e_dy)
    )


def _rounding(
    table: SliceTable, abs_dy: FloatArray, abs_w: FloatArray, s: FloatArray
) -> FloatArray:
    """A bound of the error of the change of ``S`` between two points, per row, for
    ``table.x`` centred (or uncentred) and at most the magnitudes ``abs_dy``, ``abs_w``:
    twice the reference's error of each gradient (batchnorm.md, reference accuracy: at
    most 6 ulps, each at most ``2 u``, of its natural scale, for n <= 64) weighted by
    ``|v_i|``, ``|v_w|``, ``|v_b|``. (The sum of the weighted changes is bounded apart.)
    """
    xhat = np.abs(table.x) * s[:, None]
    r = np.sqrt(np.mean(xhat * xhat, axis=1, keepdims=True))
    abs_g = abs_w * abs_dy
    m1 = np.mean(abs_g, axis=1, keepdims=True)
    weighted = np.mean(abs_g * (xhat + r), axis=1, keepdims=True)
    natural_dx = s[:, None] * (abs_g + m1 + (xhat + r) * weighted)
    magnitude = (
        np.sum(np.abs(table.v) * natural_dx, axis=1)
        + np.sum(np.abs(table.v_w) * abs_dy * (xhat + r), axis=1)
        + np.sum(np.abs(table.v_b) * abs_dy, axis=1)
    )
    result: FloatArray = 24 * _U * magnitude + float(np.finfo(np.float64).tiny)
    return result


# -- batch normalization: one slice per feature -----------------------------------------------


def _table(rows: _Rows) -> SliceTable:
    """BN's features as slices, gamma and its cotangents spread over each."""

    def spread(vector: FloatArray) -> FloatArray:
        result: FloatArray = np.broadcast_to(vector[:, None], rows.x.shape).copy()
        return result

    return SliceTable(
        rows.x, rows.dy, spread(rows.gamma), rows.v, spread(rows.v_gamma), spread(rows.v_beta)
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
    """The gradient of ``S`` in ``x``, ``gamma``, ``dy`` by the closed form (module docstring;
    :func:`slice_double_backward` on the features).

    ``gamma`` ``None``: a layer without affine parameters (1); ``v_gamma``, ``v_beta``
    ``None``: zero. Clause: bn.backward.second_order.
    """
    rows = _rows(x, dy, v, v_gamma, v_beta, gamma, feature_axis)
    found = slice_double_backward(_table(rows), eps)
    return SecondOrderGradients(
        rows.back(found.dx), np.sum(found.dgamma, axis=1), rows.back(found.ddy)
    )


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
    """The gradient of ``S`` in ``x``, ``gamma``, ``dy`` by central differences of the
    reference's training backward (:func:`slice_second_order_differences` on the
    features; the gradient in ``gamma`` the sum of those in its feature's elements), with
    an error estimate per element. Clause: bn.backward.second_order.
    """
    rows = _rows(x, dy, v, v_gamma, v_beta, gamma, feature_axis)
    found = slice_second_order_differences(_table(rows), slice_backward(True, eps), eps)
    values, error = found.values, found.error
    return SecondOrderEstimate(
        SecondOrderGradients(
            rows.back(values.dx), np.sum(values.dgamma, axis=1), rows.back(values.ddy)
        ),
        SecondOrderGradients(
            rows.back(error.dx), np.sum(error.dgamma, axis=1), rows.back(error.ddy)
        ),
    )
