"""Hypothesis strategies for LayerNorm, RMSNorm, GroupNorm and InstanceNorm cases
(layernorm.md, groupnorm.md).

:func:`family_cases` draws a whole situation, a :class:`FamilyCase`: the leading axes (none,
or up to two, batch size 1 often), a ``normalized_shape`` of one to three trailing axes (sizes
1 included, so one value per slice is reachable; long slices with ``long_reductions``), each
slice with its own spread and mean (``ill``: a mean many spreads from zero, where a one-pass
variance loses its digits), elementwise weight and bias, eps, a cotangent, and one memory
layout for both ``x`` and ``dy``; the family checks draw through it (the RMSNorm scale is
the profile's: ``checks.family.draw``). Every array value is exactly representable in the
drawn dtype.

:func:`group_cases` draws a GroupNorm or InstanceNorm case the same way: ``(N, C, *spatial)``
with ``G`` groups of consecutive channels (``G = C`` for InstanceNorm), each (sample, group)
slice with its own spread and mean, per-channel weight and bias, the channels-last layout
beside the others, and for InstanceNorm with running statistics a state and a rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
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
from normspec.conformance.menu_family import FamilyEntry
from normspec.conformance.menu_group import GroupEntry
from normspec.conformance.reuse import inline_composite, sampled
from normspec.conformance.strategies import (
    PARAMETER_VALUES,
    Case,
    Conditioning,
    Layout,
    arrange,
    feature_values,
    listed,
    running_statistics,
    standard_values,
    values_of,
)
from normspec.reference.dialects import Dialect

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

    @property
    def grouped(self) -> bool:
        """A GroupNorm or InstanceNorm case (channel axis 1, parameters per channel)."""
        return self.family.kind in GROUPED

    @property
    def slice_size(self) -> int:
        """The values of one slice; a slice is a run of that many in the input's C order."""
        if not self.grouped:
            return int(np.prod(self.normalized_shape, dtype=np.int64))
        channels = self.config.num_features // self.family.num_groups
        return channels * int(np.prod(self.x.shape[2:], dtype=np.int64))

    @property
    def param_shape(self) -> tuple[int, ...]:
        """The shape of the weight and the bias."""
        return (self.config.num_features,) if self.grouped else self.normalized_shape

    @property
    def param_axes(self) -> tuple[int, ...]:
        """The input axes the weight and the bias span."""
        if self.grouped:
            return (1,)
        return tuple(range(self.x.ndim - len(self.normalized_shape), self.x.ndim))

    def broadcast(self, values: Array) -> Array:
        """A parameter shaped to multiply the input."""
        shape = [1] * self.x.ndim
        for axis in self.param_axes:
            shape[axis] = self.x.shape[axis]
        return np.asarray(values, dtype=np.float64).reshape(shape)

    def summary(self) -> dict[str, Any]:
        if self.grouped:
            return self._grouped_summary()
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

    def _grouped_summary(self) -> dict[str, Any]:
        small = self.x.size <= 64
        family = self.family
        return {
            "layer": family.kind,
            "dtype": self.config.dtype,
            "shape": list(self.x.shape),
            "num_groups": family.num_groups,
            "layout": self.layout,
            "eps": self.config.eps,
            "affine": self.config.affine,
            "weight": listed(self.params[0]) if self.params else None,
            "bias_values": listed(self.params[1]) if self.params and family.bias else None,
            **self.state_summary(),
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


@inline_composite
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
    matrix = feature_values.inline(draw, (n, slices), 1, dtype, conditioning)
    return np.ascontiguousarray(matrix.T).reshape(shape)


def held_eps(capabilities: Capabilities, eps: float) -> float:
    """The eps a layer holds: the drawn one as a value of ``Capabilities.setting_dtype`` (an
    ONNX model's float32 attribute), as BN's cases round theirs."""
    return float(round_to(eps, capabilities.setting_dtype))


def _free_shapes(
    draw: st.DrawFn, long_reductions: bool, min_slices: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``normalized_shape`` and the input shape, drawn freely."""
    axes = draw(st.integers(1, 3))
    sizes = _LONG_SIZES if long_reductions else _SIZES
    normalized = [draw(sizes)] + [draw(_SIZES) for _ in range(axes - 1)]
    if long_reductions:
        draw(st.randoms()).shuffle(normalized)
    normalized_shape = tuple(normalized)
    leading = [draw(_LEADING_SIZES) for _ in range(draw(st.integers(0, 2)))]
    while int(np.prod(leading, dtype=np.int64)) < min_slices:
        leading.append(min_slices)
    return normalized_shape, (*leading, *normalized_shape)


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
    fixed_eps: float | None = None,
    entries: Sequence[FamilyEntry] | None = None,
) -> FamilyCase:
    """A whole LayerNorm or RMSNorm case within the capabilities.

    ``affine``: with elementwise weight and bias, without, or ``None`` to draw it (where the
    implementation supports both); the bias is drawn on or off where there are parameters
    and the implementation offers one (``Capabilities.elementwise_bias``).
    ``layout``: the memory layout of ``x`` and ``dy``, else drawn. ``min_slices``: the
    fewest slices (leading indices) of the input. ``fixed_eps``: that eps, else drawn.
    ``entries``: draw the configuration (shape, eps, affine, bias) from these entries of a
    run's :class:`~normspec.conformance.menu_family.FamilyMenu` (chosen for the options
    above), the values freely. eps is the one the layer holds (:func:`held_eps`).
    """
    dtype = draw(sampled(allowed_dtypes))
    if entries is not None:
        entry: FamilyEntry = draw(sampled(entries))
        normalized_shape, shape = entry.normalized_shape, entry.shape
        with_affine, bias, eps = entry.affine, entry.bias and entry.affine, entry.eps
    else:
        normalized_shape, shape = _free_shapes(draw, long_reductions, min_slices)
        with_affine = (
            draw(st.booleans())
            if affine is None and capabilities.without_affine
            else (affine is not False)
        )
        bias = with_affine and capabilities.elementwise_bias and draw(st.booleans())
        eps = draw(EPS_VALUES) if fixed_eps is None else fixed_eps
    config = family_config(
        kind,
        dtype,
        shape,
        normalized_shape,
        held_eps(capabilities, eps),
        affine=with_affine,
        bias=bias,
    )
    params = None
    if with_affine:
        n = config.num_features
        weight = round_to_normal(values_of(draw, PARAMETER_VALUES, n), dtype)
        shift = round_to_normal(values_of(draw, PARAMETER_VALUES, n), dtype) if bias else 0 * weight
        params = (weight.reshape(normalized_shape), shift.reshape(normalized_shape))
    x = slice_values.inline(draw, shape, normalized_shape, dtype, conditioning)
    dy = round_to(standard_values.inline(draw, shape, stream=1), dtype)
    chosen: Layout = draw(sampled(LAYOUTS)) if layout is None else layout
    last = len(shape) - 1
    return FamilyCase(
        config, None, params, None, arrange(x, chosen, last), arrange(dy, chosen, last), chosen
    )


def layer_cases(
    capabilities: Capabilities,
    dialect: Dialect,
    allowed_dtypes: Sequence[DTypeName],
    kind: FamilyKind,
    **options: Any,
) -> st.SearchStrategy[FamilyCase]:
    """:func:`family_cases` called as a chapter's strategy (``CheckContext.draw``: the
    dialect first, which a LayerNorm or RMSNorm case does not use)."""
    return family_cases(capabilities, allowed_dtypes, kind, **options)


#: The members whose slices are groups of channels (groupnorm.md).
GROUPED: tuple[FamilyKind, ...] = ("groupnorm", "instancenorm")
#: The layouts of a grouped case's ``x`` and ``dy``.
GROUPED_LAYOUTS: tuple[Layout, ...] = (*LAYOUTS, "channels_last")
_GROUPS = st.integers(1, 4)
_GROUP_WIDTHS = st.one_of(st.just(1), st.integers(1, 3))
_RATES = st.sampled_from([0.1, 0.5, 1.0])


@st.composite
def group_cases(
    draw: st.DrawFn,
    capabilities: Capabilities,
    dialect: Dialect,
    allowed_dtypes: Sequence[DTypeName],
    kind: FamilyKind,
    *,
    conditioning: Conditioning = "well",
    long_reductions: bool = False,
    layout: Layout | None = None,
    affine: bool | None = True,
    min_slices: int = 1,
    batch: int | None = None,
    track: bool = False,
    min_group_values: int = 2,
    fixed_eps: float | None = None,
    entries: Sequence[GroupEntry] | None = None,
) -> FamilyCase:
    """A whole GroupNorm or InstanceNorm case within the capabilities.

    ``(N, C, *spatial)``: ``N`` from 1 to 3 (``batch`` fixes it, 0 included), ``G`` groups
    of ``C / G`` consecutive channels (InstanceNorm: ``G = C``), zero to three spatial axes
    (InstanceNorm: one to three, at least two spatial values; one of 64 to 512 values with
    ``long_reductions``). ``affine`` and ``layout`` as :func:`family_cases`; ``min_slices``:
    the fewest (sample, group) slices. ``track``: an InstanceNorm layer with running
    statistics, drawn near the batch's, and the profile's rate (``Case.rate``).
    ``min_group_values``: the fewest values of a slice (1: one value per group, a
    degenerate input of its own clause; InstanceNorm draws two at least). ``fixed_eps``:
    that eps, else drawn; eps is the one the layer holds (:func:`held_eps`). ``entries``:
    draw the configuration (shape but an empty ``batch``, groups, eps, parameters) from these
    entries of a run's :func:`~normspec.conformance.menu_group.group_menu`, the values freely.
    """
    dtype = draw(sampled(allowed_dtypes))
    if entries is not None:
        entry: GroupEntry = draw(sampled(entries))
        if batch is not None:
            entry = replace(entry, batch=batch)
        rate = None  # drawn with the values
    else:
        entry, rate = _free_group_entry(
            draw,
            capabilities,
            kind,
            track,
            long_reductions,
            min_group_values,
            min_slices,
            affine,
            fixed_eps,
            batch,
        )
    return _grouped(
        draw,
        capabilities,
        dialect,
        dtype,
        kind,
        entry,
        conditioning=conditioning,
        track=track,
        layout=layout,
        rate=rate,
    )


def _free_group_entry(
    draw: st.DrawFn,
    capabilities: Capabilities,
    kind: FamilyKind,
    track: bool,
    long_reductions: bool,
    min_group_values: int,
    min_slices: int,
    affine: bool | None,
    fixed_eps: float | None,
    batch: int | None,
) -> tuple[GroupEntry, float | None]:
    """A configuration drawn freely within the options of :func:`group_cases`, and the
    rate of its running statistics where they are tracked."""
    instance = kind == "instancenorm"
    groups = draw(_GROUPS)
    channels = groups * (1 if instance else draw(_GROUP_WIDTHS))
    ranks = sorted(r - 2 for r in capabilities.ranks if r >= (3 if instance else 2))
    spatial = [draw(_SIZES) for _ in range(draw(sampled(ranks)))]
    if long_reductions and spatial:
        spatial[draw(st.integers(0, len(spatial) - 1))] = draw(_LONG_SIZES)
    width = channels // groups
    if width * int(np.prod(spatial)) < (2 if instance else min_group_values):
        if spatial:
            spatial[-1] = 2
        else:
            width, channels = 2, 2 * groups
    rate = draw(_RATES) if track else None
    n = draw(_LEADING_SIZES) if batch is None else batch
    while batch is None and n * groups < min_slices:
        n += 1
    with_affine = (
        draw(st.booleans())
        if affine is None and capabilities.without_affine
        else (affine is not False)
    )
    eps = draw(EPS_VALUES) if fixed_eps is None else fixed_eps
    return GroupEntry(n, groups, width, tuple(spatial), eps, with_affine), rate


def _grouped(
    draw: st.DrawFn,
    capabilities: Capabilities,
    dialect: Dialect,
    dtype: DTypeName,
    kind: FamilyKind,
    entry: GroupEntry,
    *,
    conditioning: Conditioning,
    track: bool,
    layout: Layout | None,
    rate: float | None = None,
) -> FamilyCase:
    """The case of a configuration, its values (and without ``rate`` the rate) drawn."""
    if track and rate is None:
        rate = draw(_RATES)
    shape = entry.shape
    channels, with_affine = shape[1], entry.affine
    config = LayerConfig(
        num_features=channels,
        rank=len(shape),
        feature_axis=1,
        dtype=dtype,
        eps=held_eps(capabilities, entry.eps),
        momentum=dialect.momentum_from_rate(rate) if track else None,
        affine=with_affine,
        track_running_stats=track,
        family=FamilyConfig(kind, (), with_affine, num_groups=entry.groups),
    )
    params = None
    if with_affine:
        weight = round_to_normal(values_of(draw, PARAMETER_VALUES, channels), dtype)
        params = (weight, round_to_normal(values_of(draw, PARAMETER_VALUES, channels), dtype))
    slice_shape = (entry.width, *entry.spatial)
    x = slice_values.inline(draw, shape, slice_shape, dtype, conditioning)
    dy = round_to(standard_values.inline(draw, shape, stream=1), dtype)
    state = draw(running_statistics(channels, dtype)) if track else None
    usable = GROUPED_LAYOUTS if len(shape) > 2 else LAYOUTS
    chosen: Layout = draw(sampled(usable)) if layout is None else layout
    return FamilyCase(
        config,
        rate,
        params,
        state,
        arrange(x, chosen, 1),
        arrange(dy, chosen, 1),
        chosen,
    )


__all__ = [
    "EPS_VALUES",
    "GROUPED",
    "GROUPED_LAYOUTS",
    "LAYOUTS",
    "FamilyCase",
    "family_cases",
    "family_config",
    "group_cases",
    "held_eps",
    "layer_cases",
    "slice_values",
]
