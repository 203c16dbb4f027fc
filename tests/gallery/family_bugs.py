"""Known-bad LayerNorm, RMSNorm, GroupNorm and InstanceNorm implementations: the correct one
with one realistic bug.

Each class overrides one hook of :class:`~gallery.family_base.NumpyLayerNorm` (or its
RMSNorm variants) and declares ``expected_clauses``, the first being the clause the bug is
attributed to. ``FAMILY_BUGS`` lists the LayerNorm and RMSNorm ones, ``GROUP_BUGS`` the
GroupNorm and InstanceNorm ones, ``ALL_FAMILY_BUGS`` both.
"""

from __future__ import annotations

import math

import numpy as np

from gallery.bugs import raw_memory
from gallery.family_base import (
    FamilyNumpyLayer,
    GemmaNumpyRMSNorm,
    GroupNumpyLayer,
    NumpyGroupNorm,
    NumpyInstanceNorm,
    NumpyLayerNorm,
    NumpyRMSNorm,
    Work,
)
from normspec.adapters.protocol import Array, DTypeName, FamilyConfig, LayerConfig
from normspec.conformance.dtypes import round_to
from normspec.reference import RunningStatistics


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


# -- GroupNorm and InstanceNorm (groupnorm.md) ------------------------------------------------


class StridedGroups(NumpyGroupNorm):
    """Channel ``c`` is put in group ``c % G`` (a reshape to ``(N, C / G, G, ...)`` where
    ``(N, G, C / G, ...)`` was meant): each group gathers every G-th channel."""

    expected_clauses = ("gn.train.statistics",)

    def group_rows(self, x: Array, groups: int, dtype: DTypeName) -> Work:
        n, c = x.shape[0], x.shape[1]
        values = self.read(x).reshape(n, c // groups, groups, -1).swapaxes(1, 2)
        return values.reshape(n * groups, -1).astype(self.working(dtype))

    def ungroup(self, rows: Work, shape: tuple[int, ...], groups: int) -> Work:
        n, c = shape[0], shape[1]
        return rows.reshape(n, groups, c // groups, -1).swapaxes(1, 2).reshape(shape)


class PerChannelStatistics(NumpyGroupNorm):
    """Each channel normalized over the spatial axes on its own, the groups ignored (an
    InstanceNorm kernel reused for GroupNorm)."""

    expected_clauses = ("gn.train.statistics",)

    def group_rows(self, x: Array, groups: int, dtype: DTypeName) -> Work:
        return super().group_rows(x, x.shape[1], dtype)


class BatchStatisticsInstanceNorm(NumpyInstanceNorm):
    """Statistics over the batch and the spatial axes per channel: batch normalization
    where instance normalization was meant."""

    expected_clauses = ("in.train.statistics",)

    def group_rows(self, x: Array, groups: int, dtype: DTypeName) -> Work:
        per_channel = np.moveaxis(self.read(x), 1, 0).reshape(x.shape[1], -1)
        return per_channel.astype(self.working(dtype))

    def ungroup(self, rows: Work, shape: tuple[int, ...], groups: int) -> Work:
        moved = (shape[1], shape[0], *shape[2:])
        return np.moveaxis(rows.reshape(moved), 0, 1)


class GroupEpsOutsideRoot(NumpyGroupNorm):
    """``(x - mu) / (sqrt(var) + eps)``: eps added to the standard deviation."""

    expected_clauses = ("gn.train.statistics",)

    def inverse_std(self, var: Work, eps: float) -> Work:
        result: Work = 1.0 / (np.sqrt(var) + var.dtype.type(eps))
        return result


class GroupHalfAccumulation(NumpyGroupNorm):
    """The mean and variance of a float16 or bfloat16 input summed in the input's own
    precision, one value after another."""

    expected_clauses = ("gn.accuracy.forward",)

    def statistics(self, rows: Work, dtype: DTypeName) -> tuple[Work, Work]:
        if dtype not in ("float16", "bfloat16"):
            return super().statistics(rows, dtype)

        def mean(values: Work) -> Work:
            total = np.zeros(values.shape[0])
            for column in round_to(values, dtype).T:
                total = round_to(total + column, dtype)
            return round_to(total / values.shape[1], dtype).reshape(-1, 1)

        mu = mean(rows)
        var = mean(np.square(round_to(rows - mu, dtype)))
        return mu.astype(rows.dtype), var.astype(rows.dtype)


class GroupBackwardMissingVarianceTerm(NumpyGroupNorm):
    """``dx = s * (g - mean(g))``: the term through the variance is dropped (the variance
    treated as a constant in a hand-written backward)."""

    expected_clauses = ("gn.backward.dx",)

    def dxhat(self, g: Work, xhat: Work, s: Work) -> Work:
        result: Work = s * (g - np.mean(g, axis=1, keepdims=True))
        return result


class InstanceIgnoresCotangentStrides(NumpyInstanceNorm):
    """The backward kernel takes ``dy``'s data pointer and assumes C-contiguous memory: a
    strided, transposed or channels-last cotangent is read in memory order."""

    expected_clauses = ("in.backward.dx",)

    def read_cotangent(self, values: Array) -> Array:
        array = np.asarray(values, dtype=np.float64)
        return array if array.flags.c_contiguous else raw_memory(array)


class FirstSampleParameterGradients(NumpyGroupNorm):
    """``dw`` and ``db`` reduced over the spatial axes of the first sample only: the
    reduction over the batch forgotten (one thread block per sample, one of them written)."""

    expected_clauses = ("gn.backward.dparams",)

    def parameter_gradients(self, upstream: Work, xhat: Work) -> tuple[Work, Work]:
        return super().parameter_gradients(upstream[:1], xhat[:1])


class BiasPerGroup(NumpyGroupNorm):
    """The bias indexed by group instead of by channel, ``b[c // (C / G)]``: a kernel that
    loads one bias per (sample, group) block."""

    expected_clauses = ("gn.train.output",)

    def affine(self, xhat: Work, weight: Work | None, bias: Work | float, groups: int) -> Work:
        if not isinstance(bias, float):
            channels = bias.shape[0]
            bias = bias[np.arange(channels) // (channels // groups)]
        return super().affine(xhat, weight, bias, groups)


class GroupsNotValidated(NumpyGroupNorm):
    """``C % G`` is never checked: the channels are cut by ``np.array_split`` into ``G``
    groups of unequal size, each normalized on its own."""

    expected_clauses = ("gn.params.groups",)

    def validate_groups(self, channels: int, groups: int) -> None:
        pass

    def build(self, config: LayerConfig) -> GroupNumpyLayer:  # type: ignore[override]
        layer = super().build(config)
        return _UnequalGroups(self, layer.config, layer.family)


class _UnequalGroups(GroupNumpyLayer):
    """:class:`GroupsNotValidated`'s layer: any number of groups, split unequally."""

    def _forward(self, x: Array) -> tuple[Work, Work, Work, Work]:
        dtype, eps = self.config.dtype, self.config.eps
        values = self.impl.read(x).astype(self.impl.working(dtype))
        xhat = np.empty_like(values)
        for part in np.array_split(np.arange(x.shape[1]), self.family.num_groups):
            block = values[:, part]
            rows = block.reshape(x.shape[0], -1)
            mean, var = self.impl.statistics(rows, dtype)
            xhat[:, part] = ((rows - mean) * self.impl.inverse_std(var, eps)).reshape(block.shape)
        empty = np.empty(0)
        return xhat, empty, empty, empty


class EpsInHalfPrecision(NumpyGroupNorm):
    """The backward's saved ``rstd = 1 / sqrt(var + eps)`` kept in the input's dtype: a
    float16 eps of 1e-12 is 0, and a constant group's gradient is ``0 * inf`` (PyTorch's
    float16 GroupNorm and LayerNorm keep ``rstd`` in float16)."""

    expected_clauses = ("gn.degenerate.constant",)

    def backward_inverse_std(self, var: Work, eps: float, dtype: DTypeName) -> Work:
        if dtype not in ("float16", "bfloat16"):
            return super().backward_inverse_std(var, eps, dtype)
        total = round_to(round_to(var, dtype) + round_to(np.full_like(var, eps), dtype), dtype)
        with np.errstate(divide="ignore"):
            return round_to(1.0 / np.sqrt(total), dtype).astype(var.dtype)


class RunningVarianceBiased(NumpyInstanceNorm):
    """The running variance moves towards the instances' biased variances where the
    profile (PyTorch) says unbiased."""

    expected_clauses = ("in.running.update",)

    def running_update(
        self, state: RunningStatistics, mean: Work, var: Work, count: int, rate: float
    ) -> RunningStatistics:
        return super().running_update(state, mean, var, 1, rate)


class RunningStatisticsNotUpdated(NumpyInstanceNorm):
    """``track_running_stats`` keeps the statistics but a training step never updates
    them (the update written only for the batch-norm path)."""

    expected_clauses = ("in.running.update",)

    def running_update(
        self, state: RunningStatistics, mean: Work, var: Work, count: int, rate: float
    ) -> RunningStatistics:
        return state


class MomentumInverted(NumpyInstanceNorm):
    """The momentum used as the weight of the old statistics (Keras's convention) under
    PyTorch's profile, where it is the weight of the batch."""

    expected_clauses = ("in.running.update",)

    def running_update(
        self, state: RunningStatistics, mean: Work, var: Work, count: int, rate: float
    ) -> RunningStatistics:
        return super().running_update(state, mean, var, count, 1.0 - rate)


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
#: The GroupNorm and InstanceNorm ones (groupnorm.md).
GROUP_BUGS: tuple[type[NumpyGroupNorm], ...] = (
    StridedGroups,
    PerChannelStatistics,
    BatchStatisticsInstanceNorm,
    GroupEpsOutsideRoot,
    GroupHalfAccumulation,
    GroupBackwardMissingVarianceTerm,
    InstanceIgnoresCotangentStrides,
    FirstSampleParameterGradients,
    BiasPerGroup,
    GroupsNotValidated,
    EpsInHalfPrecision,
    RunningVarianceBiased,
    RunningStatisticsNotUpdated,
    MomentumInverted,
)
ALL_FAMILY_BUGS: tuple[type[NumpyLayerNorm], ...] = FAMILY_BUGS + GROUP_BUGS
