"""A correct LayerNorm, RMSNorm, GroupNorm and InstanceNorm in NumPy, written the way a
kernel author would.

Independent of :mod:`normspec.reference.family`'s arithmetic: each slice is a row of an
``(slices, n)`` matrix, statistics and gradients are computed in the working precision
(float64 for float64, float32 otherwise: float16 and bfloat16 inputs are accumulated in
float32, as PyTorch's CPU kernels do) and results are rounded to the layer's dtype. The
computation is split into hooks (reading the input and the cotangent, the statistics, the
inverse standard deviation, the scale, the backward of ``xhat``) so that each known-bad
implementation in :mod:`family_bugs` overrides one of them. GroupNorm and InstanceNorm
(:class:`NumpyGroupNorm`) share the hooks: their rows are groups of consecutive channels of
one sample, their weight and bias per channel, and InstanceNorm may keep running statistics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from normspec.adapters.protocol import (
    ALL_DTYPES,
    Array,
    Capabilities,
    DTypeName,
    FamilyConfig,
    FamilyKind,
    LayerConfig,
    State,
    UnsupportedConfig,
)
from normspec.conformance.dtypes import round_to
from normspec.reference import Gradients, RunningStatistics

Work = NDArray[Any]
#: The profile file of a Gemma-style RMSNorm (``rmsnorm.scale = "1 + w"``, dialects.md).
GEMMA_PROFILE = str(Path(__file__).parents[2] / "examples" / "profiles" / "gemma_rmsnorm.toml")


class NumpyLayerNorm:
    """The correct LayerNorm: two-pass statistics per row, eps inside the root."""

    kind: ClassVar[FamilyKind] = "layernorm"
    #: RMSNorm's scale dialect: the output is multiplied by ``scale_offset + w``
    scale_offset: ClassVar[float] = 0.0
    profile: ClassVar[str] = "torch"
    expected_clauses: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self.name = f"gallery.{type(self).__name__}"

    def capabilities(self) -> Capabilities:
        return Capabilities(
            dtypes=frozenset(ALL_DTYPES),
            batchnorm=False,
            layernorm=self.kind == "layernorm",
            rmsnorm=self.kind == "rmsnorm",
            training=False,
            untracked=True,
        )

    def versions(self) -> Mapping[str, str]:
        return {"numpy": np.__version__}

    def build(self, config: LayerConfig) -> FamilyNumpyLayer:
        family = config.family
        if family is None or family.kind != self.kind:
            raise UnsupportedConfig(f"only {self.kind} layers")
        if not (math.isfinite(config.eps) and config.eps > 0):
            raise ValueError(f"eps must be positive, got {config.eps}")
        return FamilyNumpyLayer(self, config, family)

    # -- hooks -------------------------------------------------------------------------
    def working(self, dtype: DTypeName) -> np.dtype[Any]:
        return np.dtype(np.float64 if dtype == "float64" else np.float32)

    def read(self, values: Array) -> Array:
        """How the kernel receives an array (it honours the strides)."""
        return np.asarray(values, dtype=np.float64)

    def read_cotangent(self, values: Array) -> Array:
        return self.read(values)

    def rows(self, x: Array, family: FamilyConfig, dtype: DTypeName) -> Work:
        """The input as ``(slices, n)`` rows in the working precision; the trailing sizes
        must be ``normalized_shape``."""
        k = len(family.normalized_shape)
        if x.ndim < k or tuple(x.shape[x.ndim - k :]) != family.normalized_shape:
            raise ValueError(f"x of shape {x.shape} does not end in {family.normalized_shape}")
        n = math.prod(family.normalized_shape)
        return self.read(x).reshape(-1, n).astype(self.working(dtype))

    def statistics(self, rows: Work, dtype: DTypeName) -> tuple[Work, Work]:
        """Per row: mean and biased variance (two-pass); RMSNorm: 0 and the mean square
        (``dtype``: the layer's)."""
        if self.kind == "rmsnorm":
            return np.zeros_like(rows[:, :1]), np.mean(rows * rows, axis=1, keepdims=True)
        mean = np.mean(rows, axis=1, keepdims=True)
        return mean, np.mean(np.square(rows - mean), axis=1, keepdims=True)

    def inverse_std(self, var: Work, eps: float) -> Work:
        result: Work = 1.0 / np.sqrt(var + var.dtype.type(eps))
        return result

    def scale(self, weight: Work | None) -> Work | float:
        """The factor ``xhat`` is multiplied by (``weight`` ``None``: no affine parameters)."""
        if weight is None:
            return 1.0
        result: Work = weight + weight.dtype.type(self.scale_offset)
        return result

    def dxhat(self, g: Work, xhat: Work, s: Work) -> Work:
        """``dx`` from the cotangent ``g`` of ``xhat`` (per row)."""
        projection = np.mean(g * xhat, axis=1, keepdims=True)
        if self.kind == "rmsnorm":
            return s * (g - xhat * projection)
        result: Work = s * (g - np.mean(g, axis=1, keepdims=True) - xhat * projection)
        return result


class FamilyNumpyLayer:
    """One layer of a :class:`NumpyLayerNorm` (or RMSNorm) implementation."""

    def __init__(self, impl: NumpyLayerNorm, config: LayerConfig, family: FamilyConfig) -> None:
        self.impl, self.config, self.family = impl, config, family
        self.weight: Work | None = None
        self.bias: Work | float = 0.0

    def set_parameters(self, gamma: Array, beta: Array) -> None:
        work = self.impl.working(self.config.dtype)
        self.weight = np.asarray(gamma, dtype=np.float64).reshape(-1).astype(work)
        if self.family.bias:
            self.bias = np.asarray(beta, dtype=np.float64).reshape(-1).astype(work)

    def set_state(self, state: State) -> None:
        raise UnsupportedConfig("no statistics")

    def state(self) -> State | None:
        return None

    def _forward(self, x: Array) -> tuple[Work, Work]:
        rows = self.impl.rows(x, self.family, self.config.dtype)
        mean, var = self.impl.statistics(rows, self.config.dtype)
        s = self.impl.inverse_std(var, self.config.eps)
        return (rows - mean) * s, s

    def _out(self, values: Work, shape: tuple[int, ...]) -> Array:
        return round_to(np.asarray(values, dtype=np.float64), self.config.dtype).reshape(shape)

    def infer(self, x: Array) -> Array:
        xhat, _ = self._forward(x)
        rows = xhat.reshape(-1, self.config.num_features)
        return self._out(rows * self.impl.scale(self.weight) + self.bias, x.shape)

    train_step = infer

    def vjp(self, x: Array, dy: Array, *, training: bool) -> Gradients:
        xhat, s = self._forward(x)
        upstream = self.impl.read_cotangent(dy).reshape(xhat.shape).astype(xhat.dtype)
        dx = self.impl.dxhat(upstream * self.impl.scale(self.weight), xhat, s)
        shape = self.family.normalized_shape
        return Gradients(
            self._out(dx, x.shape),
            self._out(np.sum(upstream * xhat, axis=0), shape),
            self._out(np.sum(upstream, axis=0), shape),
        )


class NumpyRMSNorm(NumpyLayerNorm):
    """The correct RMSNorm, ``w * xhat`` (torch, flax, keras)."""

    kind = "rmsnorm"


class GemmaNumpyRMSNorm(NumpyRMSNorm):
    """The correct Gemma-style RMSNorm: zero-centred weights, ``(1 + w) * xhat``."""

    scale_offset = 1.0
    profile = GEMMA_PROFILE


class NumpyGroupNorm(NumpyLayerNorm):
    """The correct GroupNorm: ``G`` groups of consecutive channels per sample, two-pass
    statistics in the working precision, weight and bias per channel."""

    kind = "groupnorm"

    def capabilities(self) -> Capabilities:
        return Capabilities(
            dtypes=frozenset(ALL_DTYPES),
            batchnorm=False,
            groupnorm=self.kind == "groupnorm",
            instancenorm=self.kind == "instancenorm",
            instance_running_stats=self.kind == "instancenorm",
            training=False,
            untracked=True,
        )

    def build(self, config: LayerConfig) -> GroupNumpyLayer:  # type: ignore[override]
        family = config.family
        if family is None or family.kind != self.kind:
            raise UnsupportedConfig(f"only {self.kind} layers")
        if not (math.isfinite(config.eps) and config.eps > 0):
            raise ValueError(f"eps must be positive, got {config.eps}")
        self.validate_groups(config.num_features, family.num_groups)
        return GroupNumpyLayer(self, config, family)

    # -- hooks -------------------------------------------------------------------------
    def validate_groups(self, channels: int, groups: int) -> None:
        if channels % groups:
            raise ValueError(f"{groups} groups do not divide {channels} channels")

    def check_channels(self, x: Array, channels: int, config: LayerConfig) -> None:
        """An input of another channel count is refused where the layer needs ``C``."""
        if x.ndim < 2 or (x.shape[1] != channels and (config.affine or config.track_running_stats)):
            raise ValueError(f"x of shape {x.shape} does not have {channels} channels")

    def group_rows(self, x: Array, groups: int, dtype: DTypeName) -> Work:
        """The input as ``(N * G, n)`` rows, one per sample and group of consecutive
        channels, in the working precision."""
        n = x.shape[1] // groups * math.prod(x.shape[2:])
        return self.read(x).reshape(x.shape[0] * groups, n).astype(self.working(dtype))

    def ungroup(self, rows: Work, shape: tuple[int, ...], groups: int) -> Work:
        """Rows of :meth:`group_rows` back in the input's shape."""
        return rows.reshape(shape)

    def affine(self, xhat: Work, weight: Work | None, bias: Work | float, groups: int) -> Work:
        """``w_c * xhat + b_c`` per channel (``xhat`` in the input's shape)."""
        shape = (1, xhat.shape[1]) + (1,) * (xhat.ndim - 2)
        scale = 1.0 if weight is None else weight.reshape(shape)
        shift = bias if isinstance(bias, float) else bias.reshape(shape)
        result: Work = xhat * scale + shift
        return result

    def backward_inverse_std(self, var: Work, eps: float, dtype: DTypeName) -> Work:
        """``s`` as the backward reads it (saved by the forward)."""
        return self.inverse_std(var, eps)

    def parameter_gradients(self, upstream: Work, xhat: Work) -> tuple[Work, Work]:
        """``dw_c = sum dy * xhat`` and ``db_c = sum dy`` over every axis but the channels."""
        axes = (0, *range(2, upstream.ndim))
        return np.sum(upstream * xhat, axis=axes), np.sum(upstream, axis=axes)

    def running_update(
        self, state: RunningStatistics, mean: Work, var: Work, count: int, rate: float
    ) -> RunningStatistics:
        """InstanceNorm: towards the batch mean of the instances' means and unbiased
        variances (``mean``, ``var``: ``(N, C)``, biased), ``rate`` the weight of the batch."""
        unbiased = var * (count / (count - 1)) if count > 1 else var
        batch_mean = np.mean(mean, axis=0)
        batch_var = np.mean(unbiased, axis=0)
        return RunningStatistics(
            state.mean + rate * (batch_mean - state.mean),
            state.var + rate * (batch_var - state.var),
            state.steps + 1,
        )


class NumpyInstanceNorm(NumpyGroupNorm):
    """The correct InstanceNorm: GroupNorm with one group per channel, with PyTorch's
    optional running statistics (``track_running_stats``, unbiased, ``alpha = momentum``)."""

    kind = "instancenorm"


class GroupNumpyLayer:
    """One layer of a :class:`NumpyGroupNorm` (or InstanceNorm) implementation."""

    def __init__(self, impl: NumpyGroupNorm, config: LayerConfig, family: FamilyConfig) -> None:
        self.impl, self.config, self.family = impl, config, family
        self.weight: Work | None = None
        self.bias: Work | float = 0.0
        channels = config.num_features
        self.running = RunningStatistics(np.zeros(channels), np.ones(channels))

    def set_parameters(self, gamma: Array, beta: Array) -> None:
        work = self.impl.working(self.config.dtype)
        self.weight = np.asarray(gamma, dtype=np.float64).reshape(-1).astype(work)
        self.bias = np.asarray(beta, dtype=np.float64).reshape(-1).astype(work)

    def set_state(self, state: State) -> None:
        if not self.config.track_running_stats:
            raise UnsupportedConfig("no statistics")
        assert isinstance(state, RunningStatistics)
        self.running = RunningStatistics(np.array(state.mean), np.array(state.var), state.steps)

    def state(self) -> State | None:
        return self.running if self.config.track_running_stats else None

    def _out(self, values: Work, shape: tuple[int, ...]) -> Array:
        return round_to(np.asarray(values, dtype=np.float64), self.config.dtype).reshape(shape)

    def _forward(self, x: Array) -> tuple[Work, Work, Work, Work]:
        """``xhat`` in the input's shape, and per row ``s``, the mean and the variance."""
        self.impl.check_channels(x, self.config.num_features, self.config)
        groups = self.family.num_groups
        rows = self.impl.group_rows(x, groups, self.config.dtype)
        mean, var = self.impl.statistics(rows, self.config.dtype)
        s = self.impl.inverse_std(var, self.config.eps)
        xhat = self.impl.ungroup((rows - mean) * s, x.shape, groups)
        return xhat, s, mean, var

    def _tracked(self, x: Array) -> Work:
        """Inference by the running statistics (InstanceNorm tracking them)."""
        self.impl.check_channels(x, self.config.num_features, self.config)
        work = self.impl.working(self.config.dtype)
        shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
        mean = self.running.mean.astype(work).reshape(shape)
        var = self.running.var.astype(work).reshape(shape)
        values = self.impl.read(x).astype(work)
        result: Work = (values - mean) * self.impl.inverse_std(var, self.config.eps)
        return result

    def infer(self, x: Array) -> Array:
        xhat = self._tracked(x) if self.config.track_running_stats else self._forward(x)[0]
        groups = self.family.num_groups
        return self._out(self.impl.affine(xhat, self.weight, self.bias, groups), x.shape)

    def train_step(self, x: Array) -> Array:
        xhat, _, mean, var = self._forward(x)
        if self.config.track_running_stats:
            count = x.size // max(x.shape[0] * x.shape[1], 1)
            rate = float(self.config.momentum or 0.0)
            shape = x.shape[:2]
            self.running = self.impl.running_update(
                self.running, mean.reshape(shape), var.reshape(shape), count, rate
            )
        groups = self.family.num_groups
        return self._out(self.impl.affine(xhat, self.weight, self.bias, groups), x.shape)

    def vjp(self, x: Array, dy: Array, *, training: bool) -> Gradients:
        xhat, _, _, var = self._forward(x)
        s = self.impl.backward_inverse_std(var, self.config.eps, self.config.dtype)
        groups = self.family.num_groups
        upstream = self.impl.read_cotangent(dy).reshape(x.shape).astype(xhat.dtype)
        g = self.impl.affine(upstream, self.weight, 0.0, groups)
        rows = (x.shape[0] * groups, x.size // max(x.shape[0] * groups, 1))
        dx = self.impl.dxhat(g.reshape(rows), xhat.reshape(rows), s)
        dweight, dbias = self.impl.parameter_gradients(upstream, xhat)
        channels = (self.config.num_features,)
        return Gradients(
            self._out(dx, x.shape), self._out(dweight, channels), self._out(dbias, channels)
        )


CORRECT: tuple[type[NumpyLayerNorm], ...] = (NumpyLayerNorm, NumpyRMSNorm, GemmaNumpyRMSNorm)
GROUPED_CORRECT: tuple[type[NumpyGroupNorm], ...] = (NumpyGroupNorm, NumpyInstanceNorm)
