"""A correct LayerNorm and RMSNorm in NumPy, written the way a kernel author would.

Independent of :mod:`normspec.reference.family`'s arithmetic: each slice is a row of an
``(slices, n)`` matrix, statistics and gradients are computed in the working precision
(float64 for float64, float32 otherwise: float16 and bfloat16 inputs are accumulated in
float32, as PyTorch's CPU kernels do) and results are rounded to the layer's dtype. The
computation is split into hooks (reading the input and the cotangent, the statistics, the
inverse standard deviation, the scale, the backward of ``xhat``) so that each known-bad
implementation in :mod:`family_bugs` overrides one of them.
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
from normspec.reference import Gradients

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


CORRECT: tuple[type[NumpyLayerNorm], ...] = (NumpyLayerNorm, NumpyRMSNorm, GemmaNumpyRMSNorm)
