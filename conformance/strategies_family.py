"""Hypothesis strategies for LayerNorm and RMSNorm cases (layernorm.md).

:func:`family_cases` draws a whole situation, a :class:`FamilyCase`: the leading axes (none,
or up to two, batch size 1 often), a ``normalized_shape`` of one to three trailing axes (sizes
1 included, so one value per slice is reachable; long slices with ``long_reductions``), each
slice with its own spread and mean (``ill``: a mean many spreads from zero, where a one-pass
variance loses its digits), elementwise weight and bias, eps, a cotangent, and one memory
layout for both ``x`` and ``dy``. ``strategies.cases(..., family=KIND)`` draws through it
(the RMSNorm scale is the profile's: ``checks.family.draw``). Every array value is exactly
representable in the drawn dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st

from normspec.adapters.protocol import (
    Array,
    Capabilities,
    DTypeName,
    FamilyConfig,
    FamilyKind,
    LayerConfig,
)
from normspec.conformance.dtypes import round_to, round_to_normal
from normspec.conformance.strategies import (
    PARAMETER_VALUES,
    Case,
    Conditioning,
    Layout,
    arrange,
    feature_values,
    listed,
    standard_values,
    values_of,
)

#: eps as users pass it: the libraries' defaults, and values that meet a slice's variance
#: (where eps outside the root or a missing eps shows).
EPS_VALUES = st.sampled_from([1e-5, 1e-6, 1e-3, 0.25, 1.0, 1e-12])
#: The layouts of ``x`` and ``dy`` (channels-last has no meaning without a feature axis).
LAYOUTS: tuple[Layout, ...] = ("contiguous", "strided", "transposed")
_LEADING_SIZES = st.one_of(st.just(1), st.integers(1, 3))
_SIZES = st.integers(1, 4)
_LONG_SIZES = st.sampled_from([64, 100, 257, 512])


@dataclass(frozen=True)
class FamilyCase(Case[Any]):
    """A LayerNorm or RMSNorm case: ``config.family`` holds the kind and normalized shape,
    ``params`` the weight and bias of shape ``normalized_shape`` (bias zero without one),
    ``dy`` is in the case's layout like ``x``."""

    @property
    def family(self) -> FamilyConfig:
        assert self.config.family is not None
        return self.config.family

    @property
    def normalized_shape(self) -> tuple[int, ...]:
        return self.family.normalized_shape

    def summary(self) -> dict[str, Any]:
        small = self.x.size <= 64
        family = self.family
        return {
            "layer": family.kind,
            "dtype": self.config.dtype,
            "shape": list(self.x.shape),
            "normalized_shape": list(family.normalized_shape),
            "layout": self.layout,
            "eps": self.config.eps,
            "elementwise_affine": self.config.affine,
            "bias": family.bias,
            **({"scale_offset": family.scale_offset} if family.kind == "rmsnorm" else {}),
            "weight": listed(self.params[0]) if self.params else None,
            "bias_values": listed(self.params[1]) if self.params and family.bias else None,
            "x": listed(self.x) if small else f"{self.x.size} values, omitted",
            "dy": listed(self.dy) if small else f"{self.dy.size} values, omitted",
        }


def family_config(
    kind: FamilyKind,
    dtype: DTypeName,
    shape: tuple[int, ...],
    normalized_shape: tuple[int, ...],
    eps: float,
    *,
    affine: bool,
    bias: bool,
    scale_offset: float = 0.0,
) -> LayerConfig:
    """The layer configuration of a LayerNorm or RMSNorm case."""
    return LayerConfig(
        num_features=int(np.prod(normalized_shape, dtype=np.int64)),
        rank=len(shape),
        feature_axis=len(shape) - 1,
        dtype=dtype,
        eps=eps,
        momentum=None,
        affine=affine,
        track_running_stats=False,
        family=FamilyConfig(kind, normalized_shape, bias and affine, scale_offset),
    )


@st.composite
def slice_values(
    draw: st.DrawFn,
    shape: tuple[int, ...],
    normalized_shape: tuple[int, ...],
    dtype: DTypeName,
    conditioning: Conditioning = "well",
) -> Array:
    """An input whose slices have their own spread and mean (:func:`strategies.feature_values`
    on the matrix of slices), rounded to ``dtype``."""
    n = int(np.prod(normalized_shape, dtype=np.int64))
    slices = int(np.prod(shape, dtype=np.int64)) // n
    matrix = draw(feature_values((n, slices), 1, dtype, conditioning))
    return np.ascontiguousarray(matrix.T).reshape(shape)


@st.composite
def family_cases(
    draw: st.DrawFn,
    capabilities: Capabilities,
    allowed_dtypes: Sequence[DTypeName],
    kind: FamilyKind,
    *,
    conditioning: Conditioning = "well",
    long_reductions: bool = False,
    layout: Layout | None = None,
    affine: bool | None = True,
    min_slices: int = 1,
) -> FamilyCase:
    """A whole LayerNorm or RMSNorm case within the capabilities.

    ``affine``: with elementwise weight and bias, without, or ``None`` to draw it (where the
    implementation supports both); the bias is drawn on or off where there are parameters
    and the implementation offers one (``Capabilities.elementwise_bias``).
    ``layout``: the memory layout of ``x`` and ``dy``, else drawn. ``min_slices``: the
    fewest slices (leading indices) of the input.
    """
    dtype = draw(st.sampled_from(list(allowed_dtypes)))
    axes = draw(st.integers(1, 3))
    sizes = _LONG_SIZES if long_reductions else _SIZES
    normalized = [draw(sizes)] + [draw(_SIZES) for _ in range(axes - 1)]
    if long_reductions:
        draw(st.randoms()).shuffle(normalized)
    normalized_shape = tuple(normalized)
    leading = [draw(_LEADING_SIZES) for _ in range(draw(st.integers(0, 2)))]
    while int(np.prod(leading, dtype=np.int64)) < min_slices:
        leading.append(min_slices)
    shape = (*leading, *normalized_shape)
    with_affine = (
        draw(st.booleans())
        if affine is None and capabilities.without_affine
        else (affine is not False)
    )
    bias = with_affine and capabilities.elementwise_bias and draw(st.booleans())
    config = family_config(
        kind,
        dtype,
        shape,
        normalized_shape,
        draw(EPS_VALUES),
        affine=with_affine,
        bias=bias,
    )
    params = None
    if with_affine:
        n = config.num_features
        weight = round_to_normal(values_of(draw, PARAMETER_VALUES, n), dtype)
        shift = round_to_normal(values_of(draw, PARAMETER_VALUES, n), dtype) if bias else 0 * weight
        params = (weight.reshape(normalized_shape), shift.reshape(normalized_shape))
    x = draw(slice_values(shape, normalized_shape, dtype, conditioning))
    dy = round_to(draw(standard_values(shape, stream=1)), dtype)
    chosen: Layout = draw(st.sampled_from(LAYOUTS)) if layout is None else layout
    last = len(shape) - 1
    return FamilyCase(
        config, None, params, None, arrange(x, chosen, last), arrange(dy, chosen, last), chosen
    )


__all__ = ["EPS_VALUES", "LAYOUTS", "FamilyCase", "family_cases", "family_config", "slice_values"]
