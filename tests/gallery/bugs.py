"""Known-bad implementations: the correct one with exactly one realistic bug each.

Every class overrides one hook of :class:`~gallery.base.NumpyBatchNorm` (or of its Keras
variant) the way a library author plausibly gets it wrong, and declares
``expected_clauses``: the clauses a conformance run must report failed, the first being the
one the bug is attributed to. ``BUGS`` lists them all.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from numpy.lib.array_utils import byte_bounds

from gallery.base import (
    REDUCE,
    Buffers,
    Correction,
    KerasNumpyBatchNorm,
    MovingStatistics,
    NumpyBatchNorm,
    NumpyBatchRenorm,
    NumpyLayer,
    TfKerasNumpyBatchRenorm,
    Work,
    ZeroDebiasedNumpyBatchNorm,
    column,
)
from normspec.adapters.protocol import Array, DTypeName

# --------------------------------------------------------------------- training forward


class EpsOutsideSqrt(NumpyBatchNorm):
    """``1 / (sqrt(var) + eps)``: eps added to the standard deviation, not the variance."""

    expected_clauses = ("bn.train.output", "bn.infer.output")

    def inverse_std(self, var: Work, eps: float) -> Work:
        result: Work = 1.0 / (np.sqrt(var) + var.dtype.type(eps))
        return result


class EpsIgnored(NumpyBatchNorm):
    """The configured eps never reaches the kernel, which always uses its default 1e-5."""

    expected_clauses = ("bn.train.output", "bn.infer.output")

    def inverse_std(self, var: Work, eps: float) -> Work:
        return super().inverse_std(var, 1e-5)


class UnbiasedNormalization(NumpyBatchNorm):
    """The batch variance is the unbiased one (``var(ddof=1)``, torch.var's default), used to
    normalize; the running update takes it as the unbiased estimate it already is."""

    expected_clauses = ("bn.train.output",)

    def batch_statistics(self, x: Work, dtype: DTypeName) -> tuple[Work, Work]:
        mean, var = super().batch_statistics(x, dtype)
        count = x.shape[0] * x.shape[2]
        factor = count / (count - 1) if count > 1 else float("nan")  # torch.var of one value
        unbiased: Work = var * var.dtype.type(factor)
        return mean, unbiased

    def running_variance(self, var: Work, count: int) -> Work:
        return var


class BatchAxisOnly(NumpyBatchNorm):
    """Statistics reduced over the batch axis only (the dense layer's ``x.mean(axis=0)``
    applied to a convolutional input): one mean and variance per feature *and position*.
    The buffers get their average over the positions."""

    expected_clauses = ("bn.train.output", "bn.train.statistics", "conv.layout.feature_axis")

    def batch_statistics(self, x: Work, dtype: DTypeName) -> tuple[Work, Work]:
        values = x.astype(self.working_dtype(dtype))
        return values.mean(axis=0, keepdims=True), values.var(axis=0, keepdims=True)

    def feature_vector(self, statistic: Work) -> Work:
        result: Work = statistic.mean(axis=REDUCE)
        return result


class ApproximateRsqrt(NumpyBatchNorm):
    """A fast reciprocal square root without its Newton step: relative error 1e-4."""

    expected_clauses = ("bn.train.output", "bn.infer.output")

    def inverse_std(self, var: Work, eps: float) -> Work:
        result: Work = super().inverse_std(var, eps) * var.dtype.type(1.0 + 1e-4)
        return result


class BatchOfOneUsesRunningStatistics(NumpyBatchNorm):
    """A training step on a batch of one sample falls back to inference ("the statistics of
    one sample are unreliable"): right for a single vector, wrong for a sample with spatial
    positions, which has batch statistics."""

    expected_clauses = ("bn.train.output",)

    def trains_with_batch_statistics(self, layer: NumpyLayer, x: Work) -> bool:
        return x.shape[0] > 1 or layer.buffers is None


class FeatureLastReshape(NumpyBatchNorm):
    """Feature-last input (NHWC) is brought to the kernel's NCHW with ``reshape`` instead of
    a transpose, scrambling which values belong to which feature."""

    expected_clauses = ("conv.layout.feature_axis",)

    def to_kernel_layout(self, x: Work, feature_axis: int) -> Work:
        if feature_axis == 1:
            return super().to_kernel_layout(x, feature_axis)
        features = x.shape[feature_axis]
        return x.reshape(x.shape[0], features, -1)

    def from_kernel_layout(self, y: Work, shape: tuple[int, ...], feature_axis: int) -> Work:
        if feature_axis == 1:
            return super().from_kernel_layout(y, shape, feature_axis)
        return y.reshape(shape)


class IgnoresStrides(NumpyBatchNorm):
    """The kernel takes the array's data pointer and assumes C-contiguous memory (a C
    extension using ``PyArray_DATA`` without checking the flags): a strided or permuted
    view is read in memory order."""

    expected_clauses = ("conv.layout.memory",)

    def read_input(self, values: Array) -> Array:
        array = np.asarray(values, dtype=np.float64)
        if array.flags.c_contiguous:
            return array
        return raw_memory(array)


def raw_memory(array: Array) -> Array:
    """The ``array.size`` values at ``array``'s data pointer, read as if C-contiguous.

    Never reads past the memory the array's owner spans (a C kernel would read garbage
    there; this reads zeros).
    """
    owner = array
    while isinstance(owner.base, np.ndarray):
        owner = owner.base
    _, high = byte_bounds(owner)
    start = int(array.__array_interface__["data"][0])
    available = max(0, min(array.size, (high - start) // array.itemsize))
    flat = np.lib.stride_tricks.as_strided(array, shape=(available,), strides=(array.itemsize,))
    result = np.zeros(array.size, dtype=array.dtype)
    result[:available] = flat
    return result.reshape(array.shape)


class GlobalOverflowGuard(NumpyBatchNorm):
    """To keep the sum of squares from overflowing, the input is scaled by a power of two
    before the statistics: exact, but the scale is taken from the whole tensor instead of
    per feature, so a NaN or infinity anywhere poisons every feature."""

    expected_clauses = ("bn.degenerate.nonfinite_isolated",)

    def batch_statistics(self, x: Work, dtype: DTypeName) -> tuple[Work, Work]:
        values = x.astype(self.working_dtype(dtype))
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            largest = np.max(np.abs(values)) if values.size else values.dtype.type(1.0)
            exponent = np.ceil(np.log2(largest)) if largest != 0 else 0.0
            scale = values.dtype.type(np.exp2(exponent))
            mean, var = super().batch_statistics(values / scale, dtype)
        return mean * scale, var * (scale * scale)


# ------------------------------------------------------------------- running statistics


class MomentumAsDecay(NumpyBatchNorm):
    """PyTorch's momentum used as a decay (the Keras convention):
    ``running = momentum * running + (1 - momentum) * batch``."""

    expected_clauses = ("bn.running.mean", "bn.running.var")

    def update_rate(self, momentum: float | None, steps: int) -> float:
        if momentum is None:
            return super().update_rate(momentum, steps)
        return 1.0 - momentum


class BiasedRunningVariance(NumpyBatchNorm):
    """The running variance takes the biased batch variance; the PyTorch dialect says
    unbiased."""

    expected_clauses = ("bn.running.var",)

    def running_variance(self, var: Work, count: int) -> Work:
        return var


class UnbiasedWithBatchSize(NumpyBatchNorm):
    """Bessel's correction ``n / (n - 1)`` with n the batch size instead of batch size times
    spatial size."""

    expected_clauses = ("bn.running.var",)

    def values_per_feature(self, x: Work) -> int:
        return int(x.shape[0]) if x.shape[0] > 1 else super().values_per_feature(x)


class CumulativeOffByOne(NumpyBatchNorm):
    """Cumulative average with ``1 / steps`` read before the counter is incremented (guarded
    against the first step's division by zero)."""

    expected_clauses = ("bn.running.cumulative",)

    def update_rate(self, momentum: float | None, steps: int) -> float:
        if momentum is None:
            return 1.0 / max(steps, 1)
        return super().update_rate(momentum, steps)


class StepsCountedOnlyWhenCumulative(NumpyBatchNorm):
    """The step counter is only advanced in cumulative-average mode, the one that needs it."""

    expected_clauses = ("bn.running.steps",)

    def next_step_count(self, steps: int, momentum: float | None) -> int:
        return steps + 1 if momentum is None else steps


class RunningVarianceStartsAtZero(NumpyBatchNorm):
    """Both buffers are created with zeros (copy-paste of the running mean's line)."""

    expected_clauses = ("bn.running.initial",)

    def initial_buffers(self, num_features: int, dtype: np.dtype[Any]) -> Buffers:
        return Buffers(np.zeros(num_features, dtype), np.zeros(num_features, dtype), 0)


class InferenceUpdatesRunningStatistics(NumpyBatchNorm):
    """The forward updates the running statistics whenever the layer tracks them, in
    inference too (the mode only selects which statistics normalize)."""

    expected_clauses = ("bn.running.no_inference_update",)

    def after_inference(self, layer: NumpyLayer, x: Work) -> None:
        if layer.buffers is not None and x.shape[0] * x.shape[2] > 1:
            mean, var = layer.batch_statistics(x)
            layer.buffers = self.update_running(layer.buffers, mean, var, x, layer.config.momentum)


# ------------------------------------------------------------------------------ inference


class InferenceUsesBatchStatistics(NumpyBatchNorm):
    """Inference normalizes with the batch statistics (the mode switch is ignored)."""

    expected_clauses = ("bn.infer.output",)

    def inference_statistics(self, layer: NumpyLayer, x: Work) -> tuple[Work, Work]:
        return layer.batch_statistics(x)


class InferenceForgetsEps(NumpyBatchNorm):
    """The separately written inference path divides by ``sqrt(running_var)``."""

    expected_clauses = ("bn.infer.output",)

    def inference_inverse_std(self, var: Work, eps: float) -> Work:
        with np.errstate(divide="ignore"):
            result: Work = 1.0 / np.sqrt(var)
        return result


class UntrackedInferenceUsesBuffers(NumpyBatchNorm):
    """A layer created without running statistics still allocates the buffers, and
    inference normalizes with them (mean 0, variance 1) instead of the batch statistics."""

    expected_clauses = ("bn.infer.untracked",)

    def inference_statistics(self, layer: NumpyLayer, x: Work) -> tuple[Work, Work]:
        if layer.buffers is None:
            initial = self.initial_buffers(layer.config.num_features, layer.param_dtype)
            return column(initial.mean), column(initial.var)
        return super().inference_statistics(layer, x)


# ------------------------------------------------------------------------------- backward


class BackwardMissingVarianceTerm(NumpyBatchNorm):
    """dx drops the term through the batch variance: ``gamma * s * (dy - mean(dy))``."""

    expected_clauses = ("bn.backward.train.dx",)

    def backward_dx(self, dy: Work, xhat: Work, inv_std: Work, gamma: Work) -> Work:
        result: Work = column(gamma) * inv_std * (dy - dy.mean(axis=REDUCE, keepdims=True))
        return result


class BackwardMissingMeanTerm(NumpyBatchNorm):
    """dx drops the term through the batch mean:
    ``gamma * s * (dy - xhat * mean(dy * xhat))``."""

    expected_clauses = ("bn.backward.train.dx",)

    def backward_dx(self, dy: Work, xhat: Work, inv_std: Work, gamma: Work) -> Work:
        correction = xhat * (dy * xhat).mean(axis=REDUCE, keepdims=True)
        result: Work = column(gamma) * inv_std * (dy - correction)
        return result


class BackwardStatisticsAsConstants(NumpyBatchNorm):
    """Training-mode dx treats the batch statistics as constants: ``gamma * s * dy``."""

    expected_clauses = ("bn.backward.train.dx",)

    def backward_dx(self, dy: Work, xhat: Work, inv_std: Work, gamma: Work) -> Work:
        return self.backward_dx_inference(dy, inv_std, gamma)


class DgammaFromInput(NumpyBatchNorm):
    """dgamma sums ``dy * x`` instead of ``dy * xhat``."""

    expected_clauses = ("bn.backward.train.dparams", "bn.backward.infer")

    def backward_dparams(self, dy: Work, xhat: Work, x: Work) -> tuple[Work, Work]:
        return (dy * x).sum(axis=REDUCE), dy.sum(axis=REDUCE)


class DbetaAveraged(NumpyBatchNorm):
    """dbeta is the mean of dy over the batch instead of its sum."""

    expected_clauses = ("bn.backward.train.dparams", "bn.backward.infer")

    def backward_dparams(self, dy: Work, xhat: Work, x: Work) -> tuple[Work, Work]:
        return (dy * xhat).sum(axis=REDUCE), dy.mean(axis=REDUCE)


class InferenceBackwardThroughBatchStatistics(NumpyBatchNorm):
    """The inference-mode gradient is computed through the batch statistics, as autograd
    does for a forward that recomputes them."""

    expected_clauses = ("bn.backward.infer",)

    def backward_uses_batch_statistics(self, training: bool, tracked: bool) -> bool:
        return True


# ------------------------------------------------------------------------- accuracy, dtypes


class Float16Accumulation(NumpyBatchNorm):
    """float16 statistics are accumulated in float16 (a sequential sum in the input dtype)."""

    expected_clauses = ("bn.accuracy.forward",)

    def batch_statistics(self, x: Work, dtype: DTypeName) -> tuple[Work, Work]:
        if x.dtype != np.float16:
            return super().batch_statistics(x, dtype)
        count = x.shape[0] * x.shape[2]
        values = np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])  # (n, C)
        with np.errstate(over="ignore", invalid="ignore"):
            mean = np.add.accumulate(values, axis=0, dtype=np.float16)[-1] / np.float16(count)
            squares = np.square(values - mean)
            var = np.add.accumulate(squares, axis=0, dtype=np.float16)[-1] / np.float16(count)
        return column(mean.astype(np.float32)), column(var.astype(np.float32))


class OnePassVariance(NumpyBatchNorm):
    """The variance as ``E[x^2] - E[x]^2`` in one pass (clamped at zero)."""

    expected_clauses = ("bn.accuracy.forward",)

    def batch_statistics(self, x: Work, dtype: DTypeName) -> tuple[Work, Work]:
        values = x.astype(self.working_dtype(dtype))
        mean = values.mean(axis=REDUCE, keepdims=True)
        mean_square = np.square(values).mean(axis=REDUCE, keepdims=True)
        return mean, np.maximum(mean_square - np.square(mean), 0)


class OutputNotCastBack(NumpyBatchNorm):
    """Reduced-precision outputs are left in the float32 working dtype."""

    expected_clauses = ("conv.io.shape_dtype",)

    def to_output(self, values: Work, dtype: DTypeName) -> Work:
        if dtype in ("float16", "bfloat16"):
            return values
        return super().to_output(values, dtype)


class InPlaceCentering(NumpyBatchNorm):
    """``x -= mean`` on the input itself: the float64 input is used without a copy."""

    expected_clauses = ("conv.io.inputs_unmodified",)

    def import_array(self, values: Array, dtype: DTypeName) -> Work:
        if dtype == "float64":
            same: Work = values  # no copy: the kernel below writes into it
            return same
        return super().import_array(values, dtype)

    def normalize(self, x: Work, mean: Work, inv_std: Work, gamma: Work, beta: Work) -> Work:
        if x.dtype != inv_std.dtype:
            return super().normalize(x, mean, inv_std, gamma, beta)
        x -= mean
        x *= column(gamma) * inv_std
        result: Work = x + column(beta)
        return result


# ------------------------------------------------------------------------- initialisation


class GammaInitUniform(NumpyBatchNorm):
    """gamma initialised uniformly in [0, 1) (PyTorch before 1.2 did this)."""

    expected_clauses = ("bn.train.affine",)

    def initial_parameters(self, num_features: int, dtype: np.dtype[Any]) -> tuple[Work, Work]:
        gamma = np.random.default_rng(num_features).uniform(0.0, 1.0, num_features).astype(dtype)
        return gamma, np.zeros(num_features, dtype)


# ---------------------------------------------------------------------------- Keras dialect


class KerasMomentumAsRate(KerasNumpyBatchNorm):
    """Keras' momentum used as the update rate (the PyTorch convention):
    ``moving = (1 - momentum) * moving + momentum * batch``."""

    expected_clauses = ("bn.running.mean", "bn.running.var")

    def update_rate(self, momentum: float | None, steps: int) -> float:
        if momentum is None:
            return super().update_rate(momentum, steps)
        return momentum


class KerasUnbiasedRunningVariance(KerasNumpyBatchNorm):
    """The moving variance takes the unbiased batch variance; the Keras dialect says
    biased."""

    expected_clauses = ("bn.running.var",)

    def running_variance(self, var: Work, count: int) -> Work:
        return NumpyBatchNorm.running_variance(self, var, count)


# ------------------------------------------------------------- zero-debiased running averages


class ZeroDebiasedVarianceStartsAtOne(ZeroDebiasedNumpyBatchNorm):
    """The hidden variance is created with ones, as a plain running variance is (equinox
    0.13.8's ``BatchNorm(mode="batch")``): after the first step inference reads
    ``var_B + decay / (1 - decay)``."""

    expected_clauses = ("bn.running.initial",)

    def initial_buffers(self, num_features: int, dtype: np.dtype[Any]) -> Buffers:
        return Buffers(np.zeros(num_features, dtype), np.ones(num_features, dtype), 0)


class ZeroDebiasedPowerOffByOne(ZeroDebiasedNumpyBatchNorm):
    """Inference divides by ``1 - decay^(t + 1)``: the counter is taken as the number of
    the next step."""

    expected_clauses = ("bn.infer.output", "bn.backward.infer")

    def debias_factor(self, decay: float, steps: int) -> float:
        return super().debias_factor(decay, steps + 1)


BUGS: tuple[type[NumpyBatchNorm], ...] = (
    EpsOutsideSqrt,
    EpsIgnored,
    UnbiasedNormalization,
    BatchAxisOnly,
    ApproximateRsqrt,
    BatchOfOneUsesRunningStatistics,
    FeatureLastReshape,
    IgnoresStrides,
    GlobalOverflowGuard,
    MomentumAsDecay,
    BiasedRunningVariance,
    UnbiasedWithBatchSize,
    CumulativeOffByOne,
    StepsCountedOnlyWhenCumulative,
    RunningVarianceStartsAtZero,
    InferenceUpdatesRunningStatistics,
    InferenceUsesBatchStatistics,
    InferenceForgetsEps,
    UntrackedInferenceUsesBuffers,
    BackwardMissingVarianceTerm,
    BackwardMissingMeanTerm,
    BackwardStatisticsAsConstants,
    DgammaFromInput,
    DbetaAveraged,
    InferenceBackwardThroughBatchStatistics,
    Float16Accumulation,
    OnePassVariance,
    OutputNotCastBack,
    InPlaceCentering,
    GammaInitUniform,
    KerasMomentumAsRate,
    KerasUnbiasedRunningVariance,
    ZeroDebiasedVarianceStartsAtOne,
    ZeroDebiasedPowerOffByOne,
)

#: The correct implementations, one per dialect the gallery covers (the zero-debiased one
#: under its profile file, tests/gallery/zero_debiased.toml).
CORRECT: tuple[type[NumpyBatchNorm], ...] = (
    NumpyBatchNorm,
    KerasNumpyBatchNorm,
    ZeroDebiasedNumpyBatchNorm,
)

#: Bugs that must be caught in float32 as well as in float64, each dtype on its own.
BOTH_PRECISIONS: tuple[type[NumpyBatchNorm], ...] = (
    EpsOutsideSqrt,
    EpsIgnored,
    MomentumAsDecay,
    KerasMomentumAsRate,
    BiasedRunningVariance,
    KerasUnbiasedRunningVariance,
    BackwardMissingVarianceTerm,
    BackwardMissingMeanTerm,
)


# --------------------------------------------------------------------- Batch Renormalization


class RenormWithoutStopGradient(NumpyBatchRenorm):
    """r and d are not wrapped in a stop-gradient: where they are not clipped, autograd
    differentiates through ``r = sigma_B / sigma`` and ``d = (mu_B - mu) / sigma``."""

    expected_clauses = ("renorm.backward.train.dx",)

    def renorm_backward_dx(self, dy: Work, zhat: Work, corr: Correction, gamma: Work) -> Work:
        dx = super().renorm_backward_dx(dy, zhat, corr, gamma)
        count = dy.shape[0] * dy.shape[2]
        through_r = np.where(corr.r_active, (dy * zhat).sum(axis=REDUCE, keepdims=True), 0)
        through_d = np.where(corr.d_active, dy.sum(axis=REDUCE, keepdims=True), 0)
        scale = column(gamma) / (corr.sigma * dy.dtype.type(count))
        result: Work = dx + scale * (through_r * zhat + through_d)
        return result


class RenormRClippedFromZero(NumpyBatchRenorm):
    """r is clipped with ``minimum(r, r_max)`` only: its lower bound is ignored."""

    expected_clauses = ("renorm.train.correction", "renorm.train.output")

    def correction(
        self, batch: tuple[Work, Work, Work], mu: Work, sigma: Work, bounds: Any
    ) -> Correction:
        corr = super().correction(batch, mu, sigma, bounds)
        r_raw = corr.std / corr.sigma
        r = np.minimum(r_raw, r_raw.dtype.type(bounds.r_max))
        return replace(corr, r=r, r_active=r == r_raw)


class RenormDUnclipped(NumpyBatchRenorm):
    """d is never clipped to ``[-d_max, d_max]``."""

    expected_clauses = ("renorm.train.correction", "renorm.train.output")

    def correction(
        self, batch: tuple[Work, Work, Work], mu: Work, sigma: Work, bounds: Any
    ) -> Correction:
        corr = super().correction(batch, mu, sigma, bounds)
        d = (corr.mean - mu) / sigma
        return replace(corr, d=d, d_active=np.ones_like(corr.d_active))


class RenormCorrectionAfterUpdate(NumpyBatchRenorm):
    """The moving statistics are updated first and r, d computed from the new ones."""

    expected_clauses = ("renorm.train.pre_update", "renorm.train.output")

    def corrects_before_update(self) -> bool:
        return False


class RenormAveragesVariance(NumpyBatchRenorm):
    """The moving statistics always average the (biased) variance, sigma being
    ``sqrt(V + eps)``, also where the dialect averages the standard deviation."""

    expected_clauses = ("renorm.moving.average",)

    def spread_target(self, corr: Correction, count: int, average: str) -> Work:
        return super().spread_target(corr, count, "variance_biased")

    def moving_sigma(self, spread: Work, average: str, eps: float, floor: str) -> Work:
        return super().moving_sigma(spread, "variance_biased", eps, floor)


class RenormScheduleAfterIncrement(NumpyBatchRenorm):
    """The bounds are looked up with the step counter of the step being taken (t + 1)."""

    expected_clauses = ("renorm.schedule.step",)

    def step_bounds(self, schedule: Any, steps: int) -> Any:
        return super().step_bounds(schedule, steps + 1)


class RenormInferenceAddsEps(NumpyBatchRenorm):
    """Inference reuses batch norm's path with ``var = sigma^2``, adding eps once more."""

    expected_clauses = ("renorm.infer.output",)

    def inference_sigma(self, spread: Work, average: str, eps: float, floor: str) -> Work:
        sigma = super().inference_sigma(spread, average, eps, floor)
        if average != "std":
            return sigma
        result: Work = np.sqrt(np.square(sigma) + sigma.dtype.type(eps))
        return result


class RenormDgammaWithoutShift(NumpyBatchRenorm):
    """dgamma is ``r * sum(dy * zhat)``: the ``d * sum(dy)`` term is missing."""

    expected_clauses = ("renorm.backward.train.dparams",)

    def renorm_dparams(self, dy: Work, zhat: Work, corr: Correction) -> tuple[Work, Work]:
        dgamma = (dy * zhat * corr.r).sum(axis=REDUCE)
        return dgamma, dy.sum(axis=REDUCE)


class RenormCorrectionFromInferenceSet(TfKerasNumpyBatchRenorm):
    """With two sets of moving statistics, the correction reads the inference set
    (``moving_mean``/``moving_stddev``) instead of its own (``renorm_mean``/``renorm_stddev``)."""

    expected_clauses = ("renorm.moving.separate", "renorm.train.output")

    def correction_set(self, moving: MovingStatistics) -> tuple[Work, Work]:
        return moving.mean, moving.spread


class RenormInferenceSigmaMagnitude(TfKerasNumpyBatchRenorm):
    """Inference reads a negative moving standard deviation as its magnitude,
    ``max(|S|, sqrt(eps))`` where the floor gives ``max(S, sqrt(eps))``: Keras 3 infers
    from ``moving_variance = relu(S^2 - eps)``, derived from ``S``."""

    expected_clauses = ("renorm.params.sigma",)

    def inference_sigma(self, spread: Work, average: str, eps: float, floor: str) -> Work:
        return super().inference_sigma(np.abs(spread), average, eps, floor)


class RenormCorrectionSigmaMagnitude(TfKerasNumpyBatchRenorm):
    """The correction reads a negative moving standard deviation as its magnitude,
    ``max(|S_c|, sqrt(eps))``, where the floor gives ``max(S_c, sqrt(eps))``."""

    expected_clauses = ("renorm.params.sigma",)

    def correction_set(self, moving: MovingStatistics) -> tuple[Work, Work]:
        mean, spread = super().correction_set(moving)
        return mean, np.abs(spread)


#: The correct renorm implementations, one per profile with batch renormalization.
RENORM_CORRECT: tuple[type[NumpyBatchRenorm], ...] = (NumpyBatchRenorm, TfKerasNumpyBatchRenorm)

RENORM_BUGS: tuple[type[NumpyBatchRenorm], ...] = (
    RenormWithoutStopGradient,
    RenormRClippedFromZero,
    RenormDUnclipped,
    RenormCorrectionAfterUpdate,
    RenormAveragesVariance,
    RenormScheduleAfterIncrement,
    RenormInferenceAddsEps,
    RenormDgammaWithoutShift,
    RenormCorrectionFromInferenceSet,
    RenormInferenceSigmaMagnitude,
    RenormCorrectionSigmaMagnitude,
)
