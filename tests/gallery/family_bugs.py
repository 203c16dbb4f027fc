"""Known-bad LayerNorm and RMSNorm implementations: the correct one with one realistic bug.

Each class overrides one hook of :class:`~gallery.family_base.NumpyLayerNorm` (or its
RMSNorm variants) and declares ``expected_clauses``, the first being the clause the bug is
attributed to. ``FAMILY_BUGS`` lists them all.
"""

from __future__ import annotations

import math

import numpy as np

from gallery.bugs import raw_memory
from gallery.family_base import (
    FamilyNumpyLayer,
    GemmaNumpyRMSNorm,
    NumpyLayerNorm,
    NumpyRMSNorm,
    Work,
)
from normspec.adapters.protocol import Array, DTypeName, FamilyConfig, LayerConfig
from normspec.conformance.dtypes import round_to


class OnePassVariance(NumpyLayerNorm):
    """``var = E[x^2] - E[x]^2`` (clamped at 0): every digit lost on a slice whose mean is
    large against its spread (flax.linen.LayerNorm's default ``use_fast_variance``)."""

    expected_clauses = ("ln.accuracy.forward",)

    def statistics(self, rows: Work, dtype: DTypeName) -> tuple[Work, Work]:
        mean = np.mean(rows, axis=1, keepdims=True)
        var = np.maximum(np.mean(rows * rows, axis=1, keepdims=True) - mean * mean, 0)
        return mean, var


class LastAxisOnly(NumpyLayerNorm):
    """Statistics over the last axis only, whatever ``normalized_shape`` says (a kernel
    written for the common ``normalized_shape = (hidden,)``)."""

    expected_clauses = ("ln.train.statistics",)

    def rows(self, x: Array, family: FamilyConfig, dtype: DTypeName) -> Work:
        super().rows(x, family, dtype)  # the shape check
        return self.read(x).reshape(-1, x.shape[-1]).astype(self.working(dtype))


class BackwardMissingMeanTerm(NumpyLayerNorm):
    """``dx = s * (g - xhat * mean(g * xhat))``: the term through the mean is dropped (the
    RMSNorm backward reused for LayerNorm)."""

    expected_clauses = ("ln.backward.dx",)

    def dxhat(self, g: Work, xhat: Work, s: Work) -> Work:
        result: Work = s * (g - xhat * np.mean(g * xhat, axis=1, keepdims=True))
        return result


class IgnoresCotangentStrides(NumpyLayerNorm):
    """The backward kernel takes ``dy``'s data pointer and assumes C-contiguous memory: a
    strided or transposed cotangent is read in memory order."""

    expected_clauses = ("ln.backward.dx",)

    def read_cotangent(self, values: Array) -> Array:
        array = np.asarray(values, dtype=np.float64)
        return array if array.flags.c_contiguous else raw_memory(array)


class ReshapesToFit(NumpyLayerNorm):
    """Any input is cut into rows of ``n`` values (``x.reshape(-1, n)``), its trailing
    sizes never compared with ``normalized_shape``."""

    expected_clauses = ("ln.params.shape",)

    def rows(self, x: Array, family: FamilyConfig, dtype: DTypeName) -> Work:
        n = math.prod(family.normalized_shape)
        return self.read(x).reshape(-1, n).astype(self.working(dtype))


class AcceptsAnyEps(NumpyRMSNorm):
    """eps is never validated: 0, a negative number, NaN or infinity is used as given."""

    expected_clauses = ("rms.params.eps",)

    def build(self, config: LayerConfig) -> FamilyNumpyLayer:
        assert config.family is not None
        return FamilyNumpyLayer(self, config, config.family)


class GlobalMaxRescale(NumpyRMSNorm):
    """To keep the squares from overflowing, the whole input is divided by its largest
    magnitude first: one infinity or NaN anywhere turns every slice into NaN."""

    expected_clauses = ("rms.degenerate.nonfinite_isolated",)

    def statistics(self, rows: Work, dtype: DTypeName) -> tuple[Work, Work]:
        top = np.max(np.abs(rows))
        top = top if top > 0 else rows.dtype.type(1)
        scaled = rows / top
        return np.zeros_like(rows[:, :1]), np.mean(scaled * scaled, axis=1, keepdims=True) * (
            top * top
        )


class EpsOutsideRoot(NumpyRMSNorm):
    """``x / (sqrt(mean(x^2)) + eps)``: eps added to the root mean square."""

    expected_clauses = ("rms.train.statistics",)

    def inverse_std(self, var: Work, eps: float) -> Work:
        result: Work = 1.0 / (np.sqrt(var) + var.dtype.type(eps))
        return result


class WeightWithoutOffset(GemmaNumpyRMSNorm):
    """A Gemma-style layer (zero-centred weights) that multiplies by ``w`` where its dialect
    says ``1 + w`` (a Llama RMSNorm kernel reused for Gemma)."""

    expected_clauses = ("rms.train.output",)

    def scale(self, weight: Work | None) -> Work | float:
        return 1.0 if weight is None else weight


class HalfPrecisionAccumulation(NumpyRMSNorm):
    """The mean square of a float16 or bfloat16 input summed in the input's own precision,
    one value after another."""

    expected_clauses = ("rms.accuracy.forward",)

    def statistics(self, rows: Work, dtype: DTypeName) -> tuple[Work, Work]:
        if dtype not in ("float16", "bfloat16"):
            return super().statistics(rows, dtype)
        squares = round_to(rows * rows, dtype)
        total = np.zeros(rows.shape[0])
        for column in squares.T:
            total = round_to(total + column, dtype)
        mean_square = round_to(total / rows.shape[1], dtype)
        return np.zeros_like(rows[:, :1]), mean_square.reshape(-1, 1).astype(rows.dtype)


FAMILY_BUGS: tuple[type[NumpyLayerNorm], ...] = (
    OnePassVariance,
    LastAxisOnly,
    BackwardMissingMeanTerm,
    IgnoresCotangentStrides,
    ReshapesToFit,
    AcceptsAnyEps,
    GlobalMaxRescale,
    EpsOutsideRoot,
    WeightWithoutOffset,
    HalfPrecisionAccumulation,
)
