"""Double backward of the normalization family: ln.backward.second_order,
rms.backward.second_order, gn.backward.second_order, in.backward.second_order.

For cotangents ``v`` (shape of ``x``), ``v_weight`` and ``v_bias`` (shape of the weight) of
the backward's ``dx``, ``dweight`` and ``dbias``,

    S = sum(v * dx) + sum(v_weight * dweight) + sum(v_bias * dbias)

and the second-order vector-Jacobian product is the gradient of ``S`` in ``x``, the weight
and ``dy``. Each slice is one problem of :mod:`second_order` (:class:`~second_order.SliceTable`),
the weight applied per element (LayerNorm's and RMSNorm's elementwise, GroupNorm's per
channel spread over its slices; RMSNorm's ``c + w``) and ``dweight``, ``dbias`` the sums of
the per-element ``dy * xhat`` and ``dy`` over the elements each parameter scales: so
``v_weight * dweight`` is the sum of ``v_w * dy * xhat`` with ``v_w`` spread like the weight.
The gradient in a parameter is the sum of the per-element gradients over its elements.

- :func:`family_second_order_differences`: central differences of the reference's own
  backward with an error estimate (the expected values of the checks), for every dialect
  (RMSNorm's eps outside the root included);
- :func:`family_double_backward`: the closed form of layernorm.md / groupnorm.md
  (:func:`second_order.slice_double_backward`), eps inside the root.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from normspec.reference import family
from normspec.reference._arrays import FloatArray, as_float64, check_eps
from normspec.reference.family_dialect import rms_norm_outside, rms_norm_outside_backward
from normspec.reference.second_order import (
    SecondOrderEstimate,
    SecondOrderGradients,
    SliceBackward,
    SliceTable,
    slice_backward,
    slice_double_backward,
    slice_second_order_differences,
)


@dataclass(frozen=True)
class FamilySlices:
    """How a layer cuts an input of ``shape`` into slices of ``n`` values (runs of ``n``
    in C order) and where its weight lives (``param_axes``); ``centered`` (LayerNorm,
    GroupNorm, InstanceNorm) or not (RMSNorm, whose scale is ``offset + w`` and whose eps
    may sit ``outside_root``)."""

    shape: tuple[int, ...]
    n: int
    param_axes: tuple[int, ...]
    centered: bool = True
    offset: float = 0.0
    outside_root: bool = False

    @classmethod
    def layer_norm(cls, shape: Sequence[int], normalized_shape: Sequence[int]) -> FamilySlices:
        """LayerNorm's slices: the trailing ``normalized_shape`` axes of each leading index."""
        _, affine = family._trailing(np.empty(tuple(shape)), normalized_shape)
        return cls(tuple(shape), math.prod(affine.shape), affine.axes)

    @classmethod
    def rms_norm(
        cls,
        shape: Sequence[int],
        normalized_shape: Sequence[int],
        *,
        offset: float = 0.0,
        outside_root: bool = False,
    ) -> FamilySlices:
        """RMSNorm's slices (as LayerNorm's), uncentred, the scale ``offset + w``."""
        base = cls.layer_norm(shape, normalized_shape)
        return cls(base.shape, base.n, base.param_axes, False, float(offset), outside_root)

    @classmethod
    def group_norm(cls, shape: Sequence[int], num_groups: int) -> FamilySlices:
        """GroupNorm's slices (one group of consecutive channels of one sample; InstanceNorm:
        ``num_groups = C``), the weight per channel."""
        grouped, _ = family._grouped(np.empty(tuple(shape)), num_groups)
        return cls(tuple(shape), math.prod(grouped.shape[2:]), (1,))

    @property
    def param_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[a] for a in self.param_axes)

    def rows(self, name: str, values: Any) -> FloatArray:
        """An input-shaped array as ``(slices, n)`` rows."""
        array = as_float64(name, values)
        if array.shape != self.shape:
            raise ValueError(f"{name} must have the shape {self.shape}, got {array.shape}")
        return array.reshape(-1, self.n)

    def spread(self, name: str, values: Any, default: float) -> FloatArray:
        """A parameter-shaped array (``None``: ``default``) as ``(slices, n)`` rows, each
        element the value of the parameter that scales it."""
        if values is None:
            return np.full((math.prod(self.shape) // self.n, self.n), default)
        array = as_float64(name, values)
        if array.shape != self.param_shape:
            raise ValueError(f"{name} must have the shape {self.param_shape}, got {array.shape}")
        shape = [1] * len(self.shape)
        for axis in self.param_axes:
            shape[axis] = self.shape[axis]
        return np.broadcast_to(array.reshape(shape), self.shape).reshape(-1, self.n)

    def table(self, x: Any, dy: Any, v: Any, v_weight: Any, v_bias: Any, weight: Any) -> SliceTable:
        """The problem of :mod:`second_order` on the slices."""
        w = self.spread("weight", weight, 1.0 - self.offset) + self.offset
        return SliceTable(
            self.rows("x", x),
            self.rows("dy", dy),
            w,
            self.rows("v", v),
            self.spread("v_weight", v_weight, 0.0),
            self.spread("v_bias", v_bias, 0.0),
            self.centered,
        )

    def backward(self, eps: float) -> SliceBackward:
        """The reference's backward of the layer's normalization on rows."""
        if not self.outside_root:
            return slice_backward(self.centered, eps)
        n = self.n

        def outside(g: FloatArray, x: FloatArray) -> tuple[FloatArray, FloatArray]:
            dx = rms_norm_outside_backward(g, x, (n,), eps=eps).dx
            return dx, rms_norm_outside(x, (n,), eps=eps)

        return outside

    def gradients(self, per_element: SecondOrderGradients) -> SecondOrderGradients:
        """Per-element results in the input's shape, the weight's summed per parameter."""
        others = tuple(a for a in range(len(self.shape)) if a not in self.param_axes)
        d_weight = np.sum(per_element.dgamma.reshape(self.shape), axis=others)
        return SecondOrderGradients(
            per_element.dx.reshape(self.shape),
            d_weight.reshape(self.param_shape),
            per_element.ddy.reshape(self.shape),
        )


def family_double_backward(
    x: Any,
    dy: Any,
    v: Any,
    v_weight: Any,
    v_bias: Any,
    weight: Any,
    slices: FamilySlices,
    *,
    eps: float,
) -> SecondOrderGradients:
    """The gradient of ``S`` in ``x``, the weight and ``dy`` by the closed form, per slice
    (:func:`second_order.slice_double_backward`: ``g = (c + w) * dy``, ``h = v_w * dy``):

        d_x  = -s^2 (xhat C + gc V + B vc) + s P(h)
        d_dy = (c + w) s vc + v_w xhat + v_b
        d_w  = sum over the elements of each parameter of dy s vc

    ``weight``, ``v_weight``, ``v_bias`` ``None``: no weight (1), zero cotangents.
    RMSNorm's eps outside the root has no closed form here (``ValueError``). Clauses:
    ln/rms/gn/in.backward.second_order.
    """
    if slices.outside_root:
        raise ValueError("the closed form is eps inside the root's; use the differences")
    table = slices.table(x, dy, v, v_weight, v_bias, weight)
    return slices.gradients(slice_double_backward(table, check_eps(eps)))


def family_second_order_differences(
    x: Any,
    dy: Any,
    v: Any,
    v_weight: Any,
    v_bias: Any,
    weight: Any,
    slices: FamilySlices,
    *,
    eps: float,
) -> SecondOrderEstimate:
    """The gradient of ``S`` in ``x``, the weight and ``dy`` by central differences of the
    reference's backward (:func:`second_order.slice_second_order_differences`), with an
    error estimate per element (summed per parameter for the weight). A case should be
    small: each element costs twelve evaluations of its slice's backward."""
    eps = check_eps(eps)
    table = slices.table(x, dy, v, v_weight, v_bias, weight)
    found = slice_second_order_differences(table, slices.backward(eps), eps)
    return SecondOrderEstimate(slices.gradients(found.values), slices.gradients(found.error))


__all__ = ["FamilySlices", "family_double_backward", "family_second_order_differences"]
