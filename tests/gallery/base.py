"""A correct batch normalization in NumPy, written the way a library author would.

It is independent of :mod:`normspec.reference`'s arithmetic (only the protocol's value types
``RunningStatistics`` and ``Gradients`` are shared) and really computes in the layer's dtype:

* float64 and float32 natively (statistics, normalization and gradients in that dtype);
* float16 stored as ``numpy.float16``, with every statistic and the elementwise work done
  in float32 and the results rounded back to float16 (PyTorch's CPU kernels do the same);
* bfloat16 emulated: float32 arithmetic on values that are exactly bfloat16, results
  rounded to bfloat16 with :func:`normspec.conformance.dtypes.round_to`.

Parameters and running statistics are kept in the working precision (float32 for the
reduced-precision dtypes, as in mixed-precision training).

The computation is split into small hooks (dtype handling, layout handling, batch
statistics, inverse standard deviation, normalization, running-statistics update, the
backward pieces, inference) so that each known-bad implementation in :mod:`bugs` is a
subclass overriding one of them. The kernel works on a channels-first ``(N, C, S)`` array
(batch, features, flattened spatial axes), as a cuDNN-style NCHW kernel does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from normspec.adapters.protocol import (
    ALL_DTYPES,
    Array,
    Capabilities,
    DTypeName,
    LayerConfig,
    UnsupportedConfig,
    WrongOutput,
)
from normspec.conformance.dtypes import round_to
from normspec.reference import Gradients, RunningStatistics
from normspec.reference.renorm import RenormStatistics

#: An array in the layer's storage or working dtype (float16, float32 or float64).
Work = NDArray[Any]

#: The kernel's reduction axes in the (N, C, S) layout.
REDUCE = (0, 2)


@dataclass
class Buffers:
    """The running statistics as the layer keeps them (working precision, mutable)."""

    mean: Work
    var: Work
    steps: int


def column(vector: Work) -> Work:
    """A (C,) vector shaped (1, C, 1), to broadcast against an (N, C, S) array."""
    return vector.reshape(1, -1, 1)


class NumpyBatchNorm:
    """The correct implementation, PyTorch dialect: momentum is alpha, unbiased running
    variance, ``momentum=None`` averages cumulatively, a step counter is kept."""

    #: the profile this implementation claims (the one it is checked under)
    profile: ClassVar[str] = "torch"
    #: the clauses a conformance run must report failed; the first is the primary one
    expected_clauses: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self.name = f"gallery.{type(self).__name__} ({self.profile} dialect)"

    # ------------------------------------------------------------------ protocol
    def capabilities(self) -> Capabilities:
        return Capabilities(
            dtypes=frozenset(ALL_DTYPES),
            ranks=frozenset({2, 3, 4, 5}),
            feature_axes=("first", "last"),
            backward=True,
            cumulative_average=self.supports_cumulative_average(),
            untracked=True,
            without_affine=True,
            step_counter=True,
        )

    def versions(self) -> Mapping[str, str]:
        return {"numpy": np.__version__}

    def build(self, config: LayerConfig) -> NumpyLayer:
        self.validate_config(config)
        return NumpyLayer(self, config)

    # ------------------------------------------------------------- configuration
    def supports_cumulative_average(self) -> bool:
        return True

    def validate_config(self, config: LayerConfig) -> None:
        """Reject what the layer cannot mean (bn.params.invalid)."""
        if config.num_features < 1:
            raise ValueError(f"num_features must be positive, got {config.num_features}")
        if not (math.isfinite(config.eps) and config.eps > 0):
            raise ValueError(f"eps must be a positive finite number, got {config.eps!r}")
        if config.momentum is None:
            if not self.supports_cumulative_average():
                raise ValueError("momentum=None (cumulative average) is not supported")
        elif not 0.0 <= config.momentum <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1], got {config.momentum!r}")
        if config.dtype not in ALL_DTYPES:
            raise ValueError(f"unsupported dtype {config.dtype!r}")

    # ------------------------------------------------------------ dtype handling
    def storage_dtype(self, dtype: DTypeName) -> np.dtype[Any]:
        """The NumPy dtype tensors of the layer are stored in (bfloat16: emulated in float32)."""
        return np.dtype({"float64": np.float64, "float16": np.float16}.get(dtype, np.float32))

    def working_dtype(self, dtype: DTypeName) -> np.dtype[Any]:
        """The dtype statistics and elementwise work are computed in: float32 at least."""
        return np.dtype(np.float64 if dtype == "float64" else np.float32)

    def import_array(self, values: Array, dtype: DTypeName) -> Work:
        """A protocol array (float64 values exact in ``dtype``) as a tensor of the layer."""
        result: Work = (
            round_to(values, "bfloat16").astype(np.float32)
            if dtype == "bfloat16"
            else values.astype(self.storage_dtype(dtype))
        )
        return result

    def to_output(self, values: Work, dtype: DTypeName) -> Work:
        """A working-precision result rounded to the layer's dtype."""
        result: Work = (
            round_to(values, "bfloat16").astype(np.float32)
            if dtype == "bfloat16"
            else values.astype(self.storage_dtype(dtype))
        )
        return result

    def export_array(self, name: str, values: Work, dtype: DTypeName) -> Array:
        """The adapter's side: check the tensor's dtype, hand it back as float64."""
        expected = self.storage_dtype(dtype)
        if values.dtype != expected:
            raise WrongOutput(f"{name} has dtype {values.dtype}, expected {expected}")
        result = values.astype(np.float64)
        if dtype == "bfloat16" and not np.array_equal(
            round_to(result, "bfloat16"), result, equal_nan=True
        ):
            raise WrongOutput(f"{name} has values that are not bfloat16")
        return result

    def read_input(self, values: Array) -> Array:
        """How the kernel receives an input array (it honours the array's strides)."""
        return np.asarray(values, dtype=np.float64)

    # ----------------------------------------------------------- layout handling
    def to_kernel_layout(self, x: Work, feature_axis: int) -> Work:
        """The input as (N, C, S): features moved to axis 1, spatial axes flattened."""
        channels_first = x if feature_axis == 1 else np.moveaxis(x, feature_axis, 1)
        batch, features = channels_first.shape[:2]
        spatial = int(np.prod(channels_first.shape[2:], dtype=np.int64))
        return channels_first.reshape(batch, features, spatial)

    def from_kernel_layout(self, y: Work, shape: tuple[int, ...], feature_axis: int) -> Work:
        """The inverse of :meth:`to_kernel_layout` for an output of the input's ``shape``."""
        channels_first_shape = list(shape)
        features = channels_first_shape.pop(feature_axis)
        channels_first_shape.insert(1, features)
        channels_first = y.reshape(channels_first_shape)
        return channels_first if feature_axis == 1 else np.moveaxis(channels_first, 1, feature_axis)

    # -------------------------------------------------------------- the kernel
    def batch_statistics(self, x: Work, dtype: DTypeName) -> tuple[Work, Work]:
        """Mean and biased variance of an (N, C, S) tensor, two-pass, shaped (1, C, 1)."""
        values = x.astype(self.working_dtype(dtype))
        mean = values.mean(axis=REDUCE, keepdims=True)
        var = np.square(values - mean).mean(axis=REDUCE, keepdims=True)
        return mean, var

    def feature_vector(self, statistic: Work) -> Work:
        """A statistic of the kernel's shape as the (C,) vector the buffers hold."""
        return statistic.reshape(-1)

    def inverse_std(self, var: Work, eps: float) -> Work:
        """``1 / sqrt(var + eps)``."""
        result: Work = 1.0 / np.sqrt(var + var.dtype.type(eps))
        return result

    def inference_inverse_std(self, var: Work, eps: float) -> Work:
        """The inverse standard deviation of the inference path (running variance)."""
        return self.inverse_std(var, eps)

    def normalize(self, x: Work, mean: Work, inv_std: Work, gamma: Work, beta: Work) -> Work:
        """``(x - mean) * (gamma * inv_std) + beta`` in working precision.

        ``mean`` and ``inv_std`` broadcast against ``x``; ``gamma``, ``beta`` are (C,).
        """
        values = x.astype(inv_std.dtype)
        result: Work = (values - mean) * (column(gamma) * inv_std) + column(beta)
        return result

    # --------------------------------------------------------- running statistics
    def initial_parameters(self, num_features: int, dtype: np.dtype[Any]) -> tuple[Work, Work]:
        """gamma = 1, beta = 0."""
        return np.ones(num_features, dtype), np.zeros(num_features, dtype)

    def initial_buffers(self, num_features: int, dtype: np.dtype[Any]) -> Buffers:
        """Running mean 0, running variance 1, no steps."""
        return Buffers(np.zeros(num_features, dtype), np.ones(num_features, dtype), 0)

    def values_per_feature(self, x: Work) -> int:
        """n: batch size times spatial size."""
        return int(x.shape[0] * x.shape[2])

    def running_variance(self, var: Work, count: int) -> Work:
        """The unbiased estimate ``n / (n - 1) * var`` (PyTorch); undefined for n = 1."""
        if count < 2:
            raise ValueError("expected more than 1 value per channel when training")
        result: Work = var * (count / (count - 1))
        return result

    def update_rate(self, momentum: float | None, steps: int) -> float:
        """alpha: the momentum itself, or ``1 / (steps + 1)`` for the cumulative average."""
        return 1.0 / (steps + 1) if momentum is None else momentum

    def next_step_count(self, steps: int, momentum: float | None) -> int:
        return steps + 1

    def update_running(
        self, buffers: Buffers, mean: Work, var: Work, x: Work, momentum: float | None
    ) -> Buffers:
        """``stat <- (1 - alpha) * stat + alpha * batch_stat`` for mean and variance."""
        estimate = self.running_variance(var, self.values_per_feature(x))
        alpha = float(self.update_rate(momentum, buffers.steps))
        dtype = buffers.mean.dtype
        keep, take = dtype.type(1.0 - alpha), dtype.type(alpha)
        batch_mean = self.feature_vector(mean).astype(dtype)
        batch_var = self.feature_vector(estimate).astype(dtype)
        return Buffers(
            keep * buffers.mean + take * batch_mean,
            keep * buffers.var + take * batch_var,
            self.next_step_count(buffers.steps, momentum),
        )

    # ------------------------------------------------------------------ inference
    def trains_with_batch_statistics(self, layer: NumpyLayer, x: Work) -> bool:
        """Whether a training step normalizes with the batch statistics: always."""
        return True

    def inference_statistics(self, layer: NumpyLayer, x: Work) -> tuple[Work, Work]:
        """The running statistics, or the batch statistics for an untracked layer."""
        if layer.buffers is None:
            return layer.batch_statistics(x)
        return self.inference_buffers(layer.buffers, layer.config)

    def inference_buffers(self, buffers: Buffers, config: LayerConfig) -> tuple[Work, Work]:
        """The running mean and variance inference reads from the buffers: themselves."""
        return column(buffers.mean), column(buffers.var)

    def after_inference(self, layer: NumpyLayer, x: Work) -> None:
        """Anything the inference path does besides computing the output: nothing."""

    # ------------------------------------------------------------------- backward
    def backward_uses_batch_statistics(self, training: bool, tracked: bool) -> bool:
        return training or not tracked

    def backward_dx(self, dy: Work, xhat: Work, inv_std: Work, gamma: Work) -> Work:
        """``gamma * s * (dy - mean(dy) - xhat * mean(dy * xhat))``: through the statistics."""
        mean_dy = dy.mean(axis=REDUCE, keepdims=True)
        mean_dy_xhat = (dy * xhat).mean(axis=REDUCE, keepdims=True)
        result: Work = column(gamma) * inv_std * (dy - mean_dy - xhat * mean_dy_xhat)
        return result

    def backward_dx_inference(self, dy: Work, inv_std: Work, gamma: Work) -> Work:
        """``gamma * s * dy``: the running statistics are constants."""
        result: Work = column(gamma) * inv_std * dy
        return result

    def backward_dparams(self, dy: Work, xhat: Work, x: Work) -> tuple[Work, Work]:
        """``dgamma = sum(dy * xhat)``, ``dbeta = sum(dy)``."""
        return (dy * xhat).sum(axis=REDUCE), dy.sum(axis=REDUCE)


class LayerBase:
    """What every layer has: configuration, affine parameters, input and output handling."""

    def __init__(self, impl: NumpyBatchNorm, config: LayerConfig) -> None:
        self.impl = impl
        self.config = config
        self.param_dtype = impl.working_dtype(config.dtype)
        self.gamma, self.beta = impl.initial_parameters(config.num_features, self.param_dtype)

    # ----------------------------------------------------------------- helpers
    def _vector(self, name: str, value: Any) -> Work:
        vector = np.array(value, dtype=self.param_dtype)
        if vector.shape != (self.config.num_features,):
            raise ValueError(
                f"{name} must have shape ({self.config.num_features},), got {vector.shape}"
            )
        return vector

    def _affine(self) -> tuple[Work, Work]:
        if self.config.affine:
            return self.gamma, self.beta
        ones = np.ones(self.config.num_features, self.param_dtype)
        return ones, np.zeros(self.config.num_features, self.param_dtype)

    def _input(self, name: str, values: Array) -> Work:
        """A protocol input as an (N, C, S) tensor of the layer's dtype, after checks."""
        array = self.impl.read_input(values)
        cfg = self.config
        if array.ndim != cfg.rank:
            raise ValueError(f"{name} must have rank {cfg.rank}, got shape {array.shape}")
        if array.shape[cfg.feature_axis] != cfg.num_features:
            raise ValueError(
                f"{name} has {array.shape[cfg.feature_axis]} features on axis "
                f"{cfg.feature_axis}, the layer {cfg.num_features}"
            )
        tensor = self.impl.import_array(array, cfg.dtype)
        return self.impl.to_kernel_layout(tensor, cfg.feature_axis)

    def _output(self, name: str, y: Work, shape: tuple[int, ...]) -> Array:
        cfg = self.config
        arranged = self.impl.from_kernel_layout(y, shape, cfg.feature_axis)
        return self.impl.export_array(name, self.impl.to_output(arranged, cfg.dtype), cfg.dtype)

    def batch_statistics(self, x: Work) -> tuple[Work, Work]:
        """The batch statistics of an (N, C, S) tensor; an empty batch is an error."""
        if x.shape[0] * x.shape[2] == 0:
            raise ValueError(f"empty batch: no values per feature in an input of shape {x.shape}")
        return self.impl.batch_statistics(x, self.config.dtype)

    def set_parameters(self, gamma: Array, beta: Array) -> None:
        self.gamma, self.beta = self._vector("gamma", gamma), self._vector("beta", beta)


class NumpyLayer(LayerBase):
    """A batch-normalization layer: parameters, buffers and the protocol's operations."""

    def __init__(self, impl: NumpyBatchNorm, config: LayerConfig) -> None:
        super().__init__(impl, config)
        self.buffers: Buffers | None = (
            impl.initial_buffers(config.num_features, self.param_dtype)
            if config.track_running_stats
            else None
        )

    def set_state(self, state: RunningStatistics) -> None:
        if not self.config.track_running_stats:
            raise ValueError("this layer does not track running statistics")
        self.buffers = Buffers(
            self._vector("running mean", state.mean),
            self._vector("running variance", state.var),
            int(state.steps),
        )

    def state(self) -> RunningStatistics | None:
        if self.buffers is None:
            return None
        return RunningStatistics(
            self.buffers.mean.astype(np.float64),
            self.buffers.var.astype(np.float64),
            self.buffers.steps,
        )

    def train_step(self, x: Array) -> Array:
        impl, cfg = self.impl, self.config
        tensor = self._input("x", x)
        if not impl.trains_with_batch_statistics(self, tensor):
            return self.infer(x)
        mean, var = self.batch_statistics(tensor)
        gamma, beta = self._affine()
        y = impl.normalize(tensor, mean, impl.inverse_std(var, cfg.eps), gamma, beta)
        if self.buffers is not None:
            self.buffers = impl.update_running(self.buffers, mean, var, tensor, cfg.momentum)
        return self._output("y", y, x.shape)

    def infer(self, x: Array) -> Array:
        impl, cfg = self.impl, self.config
        tensor = self._input("x", x)
        mean, var = impl.inference_statistics(self, tensor)
        gamma, beta = self._affine()
        y = impl.normalize(tensor, mean, impl.inference_inverse_std(var, cfg.eps), gamma, beta)
        impl.after_inference(self, tensor)
        return self._output("y", y, x.shape)

    def vjp(self, x: Array, dy: Array, *, training: bool) -> Gradients:
        impl, cfg = self.impl, self.config
        tensor = self._input("x", x)
        upstream = self._input("dy", dy)
        if upstream.shape != tensor.shape:
            raise ValueError(f"dy must have the shape of x {x.shape}, got {dy.shape}")
        work = impl.working_dtype(cfg.dtype)
        values, grad = tensor.astype(work), upstream.astype(work)
        gamma, _ = self._affine()
        if impl.backward_uses_batch_statistics(training, self.buffers is not None):
            mean, var = self.batch_statistics(tensor)
            inv_std = impl.inverse_std(var, cfg.eps)
            xhat = (values - mean) * inv_std
            dx = impl.backward_dx(grad, xhat, inv_std, gamma)
        else:
            assert self.buffers is not None
            mean, var = impl.inference_buffers(self.buffers, cfg)
            inv_std = impl.inference_inverse_std(var, cfg.eps)
            xhat = (values - mean) * inv_std
            dx = impl.backward_dx_inference(grad, inv_std, gamma)
        dgamma, dbeta = impl.backward_dparams(grad, xhat, values)
        return Gradients(
            self._output("dx", dx, x.shape),
            dgamma.astype(np.float64),
            dbeta.astype(np.float64),
        )


class KerasNumpyBatchNorm(NumpyBatchNorm):
    """The correct implementation in the Keras dialect: momentum is 1 - alpha, biased moving
    variance, no cumulative-average mode."""

    profile: ClassVar[str] = "keras"

    def supports_cumulative_average(self) -> bool:
        return False

    def running_variance(self, var: Work, count: int) -> Work:
        """Keras keeps the biased batch variance."""
        return var

    def update_rate(self, momentum: float | None, steps: int) -> float:
        """``moving = moving * momentum + batch * (1 - momentum)``."""
        if momentum is None:
            raise ValueError("momentum=None (cumulative average) is not supported")
        return 1.0 - momentum


class ZeroDebiasedNumpyBatchNorm(KerasNumpyBatchNorm):
    """The correct implementation of a zero-debiased dialect (haiku's ``BatchNorm``):
    momentum is the decay ``1 - alpha``, documented in ``[0, 1)``; the buffers are hidden
    averages that start from 0 (mean and variance) and move as Keras' do; inference reads
    them divided by ``1 - decay^t`` (as they are at ``t = 0``), a scalar it computes from
    the decay as given, in double precision, and rounds to the working precision: a decay
    such as ``1 - 1e-9`` is 1 in float32, where ``1 - decay^t`` would be 0."""

    profile: ClassVar[str] = str(Path(__file__).with_name("zero_debiased.toml"))

    def validate_config(self, config: LayerConfig) -> None:
        super().validate_config(config)
        if config.momentum is not None and not config.momentum < 1.0:
            raise ValueError(f"momentum (the decay) must lie in [0, 1), got {config.momentum!r}")

    def initial_buffers(self, num_features: int, dtype: np.dtype[Any]) -> Buffers:
        """Hidden mean 0, hidden variance 0, no steps."""
        return Buffers(np.zeros(num_features, dtype), np.zeros(num_features, dtype), 0)

    def debias_factor(self, decay: float, steps: int) -> float:
        """``1 - decay^t``, the weight the ``t`` batches received."""
        return 1.0 - decay**steps

    def inference_buffers(self, buffers: Buffers, config: LayerConfig) -> tuple[Work, Work]:
        if buffers.steps == 0:
            return column(buffers.mean), column(buffers.var)
        assert config.momentum is not None
        factor = buffers.mean.dtype.type(self.debias_factor(config.momentum, buffers.steps))
        return column(buffers.mean / factor), column(buffers.var / factor)


# ------------------------------------------------------------------------ Batch Renormalization


@dataclass
class MovingStatistics:
    """A renorm layer's moving statistics as it keeps them (working precision, mutable).

    ``spread`` is the moving standard deviation or a moving variance (the config's
    ``average``); the correction set is ``None`` when one set serves both purposes.
    """

    mean: Work
    spread: Work
    steps: int
    correction_mean: Work | None = None
    correction_spread: Work | None = None


@dataclass(frozen=True)
class Correction:
    """What a renorm training step computes before its output, all shaped (1, C, 1)."""

    mean: Work  # mu_B
    var: Work  # var_B (biased)
    std: Work  # sigma_B = sqrt(var_B + eps)
    sigma: Work  # the moving standard deviation the correction divides by
    r: Work
    d: Work
    r_active: Work  # r is not clipped: where autograd would differentiate through it
    d_active: Work


class NumpyBatchRenorm(NumpyBatchNorm):
    """The correct implementation with Batch Renormalization (Ioffe 2017) as well.

    A renorm layer is built for ``config.renorm``: it follows the renorm dialect parameters
    the config names (what the moving statistics average, one or two sets, the floor on
    sigma, the schedule of bounds). ``momentum`` is the rate of the moving statistics in
    this implementation's convention (PyTorch's: alpha itself), the correction set moves
    with ``config.renorm.correction_rate``. Its batch normalization is the PyTorch dialect,
    which the "paper" profile shares; the paper profile is the one with renorm.
    """

    profile: ClassVar[str] = "paper"

    def capabilities(self) -> Capabilities:
        return replace(super().capabilities(), renorm=True)

    def build(self, config: LayerConfig) -> NumpyLayer | RenormLayer:  # type: ignore[override]
        self.validate_config(config)
        if config.renorm is None:
            return NumpyLayer(self, config)
        if not config.track_running_stats:
            raise UnsupportedConfig("a renorm layer always keeps moving statistics")
        if config.momentum is None:
            raise UnsupportedConfig("renorm has no cumulative-average mode")
        self.validate_renorm(config.renorm)
        return RenormLayer(self, config)

    def validate_renorm(self, renorm: Any) -> None:
        """Reject what a renorm layer cannot mean (renorm.params.invalid)."""
        if not (math.isfinite(renorm.eps) and renorm.eps > 0):
            raise ValueError(f"eps must be a positive finite number, got {renorm.eps!r}")
        for name, rate in (("rate", renorm.rate), ("correction_rate", renorm.correction_rate)):
            if rate is not None and not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {rate!r}")
        self.check_bounds(renorm.schedule.bounds(0))

    def check_bounds(self, bounds: Any) -> Any:
        """Clipping bounds must be numbers with ``0 <= r_min <= r_max`` and ``d_max >= 0``."""
        r_min, r_max, d_max = bounds.r_min, bounds.r_max, bounds.d_max
        if any(math.isnan(value) for value in (r_min, r_max, d_max)):
            raise ValueError(f"clipping bounds must not be NaN, got {bounds}")
        if not 0.0 <= r_min <= r_max:
            raise ValueError(f"r_min and r_max must satisfy 0 <= r_min <= r_max, got {bounds}")
        if d_max < 0:
            raise ValueError(f"d_max must be non-negative, got {bounds}")
        return bounds

    # ------------------------------------------------------------------- renorm hooks
    def initial_moving(self, num_features: int, dtype: np.dtype[Any], separate: bool) -> Any:
        """Mean 0 and spread 1 in every set, no steps."""
        zeros, ones = np.zeros(num_features, dtype), np.ones(num_features, dtype)
        if separate:
            return MovingStatistics(zeros, ones, 0, zeros.copy(), ones.copy())
        return MovingStatistics(zeros, ones, 0)

    def batch_std(self, var: Work, eps: float) -> Work:
        """``sigma_B = sqrt(var_B + eps)``."""
        result: Work = np.sqrt(var + var.dtype.type(eps))
        return result

    def moving_sigma(self, spread: Work, average: str, eps: float, floor: str) -> Work:
        """The moving standard deviation a spread stands for (floored where asked)."""
        sigma: Work = spread if average == "std" else np.sqrt(spread + spread.dtype.type(eps))
        if floor == "sqrt_eps":
            sigma = np.maximum(sigma, spread.dtype.type(math.sqrt(eps)))
        if np.any(sigma <= 0):
            raise ValueError("the moving standard deviation sigma must be positive")
        return sigma

    def inference_sigma(self, spread: Work, average: str, eps: float, floor: str) -> Work:
        """The moving standard deviation inference divides by."""
        return self.moving_sigma(spread, average, eps, floor)

    def step_bounds(self, schedule: Any, steps: int) -> Any:
        """The clipping bounds of the step that starts with the counter at ``steps``."""
        return self.check_bounds(schedule.bounds(steps))

    def correction(
        self, batch: tuple[Work, Work, Work], mu: Work, sigma: Work, bounds: Any
    ) -> Correction:
        """``r = clip(sigma_B / sigma, r_min, r_max)``, ``d = clip((mu_B - mu) / sigma, +-d_max)``."""
        mean, var, std = batch
        dtype = std.dtype.type
        r_raw, d_raw = std / sigma, (mean - mu) / sigma
        r = np.clip(r_raw, dtype(bounds.r_min), dtype(bounds.r_max))
        d = np.clip(d_raw, dtype(-bounds.d_max), dtype(bounds.d_max))
        return Correction(mean, var, std, sigma, r, d, r == r_raw, d == d_raw)

    def correction_set(self, moving: MovingStatistics) -> tuple[Work, Work]:
        """The (mean, spread) the correction is computed from: its own set if it has one."""
        if moving.correction_mean is not None and moving.correction_spread is not None:
            return moving.correction_mean, moving.correction_spread
        return moving.mean, moving.spread

    def corrects_before_update(self) -> bool:
        """The correction uses the moving statistics from before the step's update."""
        return True

    def renorm_normalize(self, x: Work, corr: Correction, gamma: Work, beta: Work) -> Work:
        """``gamma * ((x - mu_B) / sigma_B * r + d) + beta`` as batch norm with scale
        ``gamma * r`` and shift ``gamma * d + beta``."""
        values = x.astype(corr.std.dtype)
        scale = column(gamma) * corr.r / corr.std
        result: Work = (values - corr.mean) * scale + (column(gamma) * corr.d + column(beta))
        return result

    def spread_target(self, corr: Correction, count: int, average: str) -> Work:
        """What the moving spread moves towards: sigma_B, var_B or the unbiased variance."""
        if average == "std":
            return corr.std
        if average == "variance_biased":
            return corr.var
        if count < 2:
            raise ValueError("the unbiased variance needs more than 1 value per feature")
        result: Work = corr.var * corr.var.dtype.type(count / (count - 1))
        return result

    def update_moving(
        self,
        moving: MovingStatistics,
        corr: Correction,
        x: Work,
        momentum: float,
        correction_rate: float | None,
        average: str,
    ) -> MovingStatistics:
        """Every set moves towards this batch with its rate; the counter gains one."""
        target = self.feature_vector(self.spread_target(corr, self.values_per_feature(x), average))
        batch_mean = self.feature_vector(corr.mean)
        dtype = moving.mean.dtype

        def move(stat: Work, towards: Work, alpha: float) -> Work:
            result: Work = dtype.type(1.0 - alpha) * stat + dtype.type(alpha) * towards.astype(
                dtype
            )
            return result

        alpha = float(self.update_rate(momentum, moving.steps))
        updated = MovingStatistics(
            move(moving.mean, batch_mean, alpha),
            move(moving.spread, target, alpha),
            self.next_step_count(moving.steps, momentum),
        )
        if moving.correction_mean is not None and moving.correction_spread is not None:
            assert correction_rate is not None
            updated.correction_mean = move(moving.correction_mean, batch_mean, correction_rate)
            updated.correction_spread = move(moving.correction_spread, target, correction_rate)
        return updated

    def renorm_backward_dx(self, dy: Work, zhat: Work, corr: Correction, gamma: Work) -> Work:
        """``r`` times batch norm's dx: ``r`` and ``d`` are constants (stop-gradient)."""
        return self.backward_dx(dy, zhat, corr.r / corr.std, gamma)

    def renorm_dparams(self, dy: Work, zhat: Work, corr: Correction) -> tuple[Work, Work]:
        """``dgamma = sum(dy * (zhat * r + d))``, ``dbeta = sum(dy)``."""
        return (dy * (zhat * corr.r + corr.d)).sum(axis=REDUCE), dy.sum(axis=REDUCE)


class RenormLayer(LayerBase):
    """A batch-renormalization layer: parameters, moving statistics, the operations."""

    impl: NumpyBatchRenorm

    def __init__(self, impl: NumpyBatchRenorm, config: LayerConfig) -> None:
        super().__init__(impl, config)
        assert config.renorm is not None
        self.renorm = config.renorm
        separate = self.renorm.statistics == "separate"
        self.moving = impl.initial_moving(config.num_features, self.param_dtype, separate)

    # ---------------------------------------------------------------- protocol
    def set_state(self, state: RenormStatistics) -> None:
        if state.separate != (self.renorm.statistics == "separate"):
            raise ValueError("the state's sets of moving statistics do not match the layer's")
        correction = (
            (
                self._vector("correction mean", state.correction_mean),
                self._vector("correction spread", state.correction_spread),
            )
            if state.separate
            else (None, None)
        )
        self.moving = MovingStatistics(
            self._vector("moving mean", state.mean),
            self._vector("moving spread", state.spread),
            int(state.steps),
            *correction,
        )

    def state(self) -> RenormStatistics:
        moving = self.moving

        def export(value: Work | None) -> Array | None:
            return None if value is None else value.astype(np.float64)

        return RenormStatistics(
            moving.mean.astype(np.float64),
            moving.spread.astype(np.float64),
            moving.steps,
            export(moving.correction_mean),
            export(moving.correction_spread),
        )

    def _correction(self, tensor: Work, steps: int | None = None) -> Correction:
        """The correction of a step on ``tensor``; the bounds are those at ``steps``
        (default: the counter now)."""
        impl, cfg, renorm = self.impl, self.config, self.renorm
        mean, var = self.batch_statistics(tensor)
        std = impl.batch_std(var, cfg.eps)
        mu, spread = impl.correction_set(self.moving)
        sigma = impl.moving_sigma(spread, renorm.average, cfg.eps, renorm.sigma_floor)
        counter = self.moving.steps if steps is None else steps
        bounds = impl.step_bounds(renorm.schedule, counter)
        return impl.correction((mean, var, std), column(mu), column(sigma), bounds)

    def _update(self, corr: Correction, tensor: Work) -> None:
        assert self.config.momentum is not None
        self.moving = self.impl.update_moving(
            self.moving,
            corr,
            tensor,
            self.config.momentum,
            self.renorm.correction_rate,
            self.renorm.average,
        )

    def train_step(self, x: Array) -> Array:
        tensor = self._input("x", x)
        gamma, beta = self._affine()
        steps = self.moving.steps
        corr = self._correction(tensor)
        self._update(corr, tensor)
        if not self.impl.corrects_before_update():
            corr = self._correction(tensor, steps)
        return self._output("y", self.impl.renorm_normalize(tensor, corr, gamma, beta), x.shape)

    def _inference_sigma(self) -> Work:
        return self.impl.inference_sigma(
            self.moving.spread, self.renorm.average, self.config.eps, self.renorm.sigma_floor
        )

    def infer(self, x: Array) -> Array:
        tensor = self._input("x", x)
        gamma, beta = self._affine()
        inv_sigma = 1.0 / column(self._inference_sigma())
        y = self.impl.normalize(tensor, column(self.moving.mean), inv_sigma, gamma, beta)
        return self._output("y", y, x.shape)

    def vjp(self, x: Array, dy: Array, *, training: bool) -> Gradients:
        impl, cfg = self.impl, self.config
        tensor, upstream = self._input("x", x), self._input("dy", dy)
        if upstream.shape != tensor.shape:
            raise ValueError(f"dy must have the shape of x {x.shape}, got {dy.shape}")
        work = impl.working_dtype(cfg.dtype)
        values, grad = tensor.astype(work), upstream.astype(work)
        gamma, _ = self._affine()
        if training:
            corr = self._correction(tensor)
            zhat = (values - corr.mean) / corr.std
            dx = impl.renorm_backward_dx(grad, zhat, corr, gamma)
            dgamma, dbeta = impl.renorm_dparams(grad, zhat, corr)
        else:
            inv_sigma = 1.0 / column(self._inference_sigma())
            xhat = (values - column(self.moving.mean)) * inv_sigma
            dx = impl.backward_dx_inference(grad, inv_sigma, gamma)
            dgamma, dbeta = impl.backward_dparams(grad, xhat, values)
        return Gradients(
            self._output("dx", dx, x.shape), dgamma.astype(np.float64), dbeta.astype(np.float64)
        )


class TfKerasNumpyBatchRenorm(NumpyBatchRenorm):
    """The correct implementation in the tf_keras dialect: momentum is 1 - alpha, biased
    moving variance, no cumulative average; renorm with a separate correction set."""

    profile: ClassVar[str] = "tf_keras"

    def supports_cumulative_average(self) -> bool:
        return False

    def running_variance(self, var: Work, count: int) -> Work:
        return var

    def update_rate(self, momentum: float | None, steps: int) -> float:
        if momentum is None:
            raise ValueError("momentum=None (cumulative average) is not supported")
        return 1.0 - momentum
