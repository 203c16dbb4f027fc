"""Batch Renormalization in float64 (Ioffe 2017; spec: renorm.md).

Per feature, with the batch statistics ``mu_B``, ``var_B`` of ``bn.train.statistics`` and
``sigma_B = sqrt(var_B + eps)``, a training step computes, from the moving statistics
``mu`` and ``sigma`` *before* they are updated,

    r = clip(sigma_B / sigma, r_min, r_max)          # [1 / r_max, r_max] in the paper
    d = clip((mu_B - mu) / sigma, -d_max, d_max)
    y = gamma * ((x - mu_B) / sigma_B * r + d) + beta

with ``r`` and ``d`` constants for differentiation, so that every gradient is batch norm's
scaled by ``r`` (``dgamma`` gains ``d * dbeta``). Inference computes
``gamma * (x - mu) / sigma + beta``.

The low-level functions (:func:`train_forward`, :func:`inference_forward`,
:func:`train_backward`, :func:`inference_backward`) take the moving mean and the moving
*standard deviation* ``sigma`` directly. The layer-level functions (:func:`training_step`,
:func:`inference`, :func:`backward`) take a :class:`RenormConfig` and a
:class:`RenormStatistics` state and apply the dialect parameters: what the state averages
(``sigma`` or a variance), one set of moving statistics or two, and a floor on ``sigma``.

Every function is pure and never writes into its arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from normspec.reference import batchnorm
from normspec.reference._arrays import (
    FloatArray,
    as_float64,
    check_eps,
    check_input,
    check_rate,
    check_vector,
    frozen,
    per_feature,
    reduction_axes,
    whole_number,
)
from normspec.reference.batchnorm import Gradients
from normspec.reference.layer import Affine
from normspec.reference.running import variance_estimate
from normspec.reference.schedules import PAPER_SCHEDULE, RenormBounds, Schedule
from normspec.reference.state import BatchStatistics

#: What the moving statistics average (dialect parameter ``average``): the standard
#: deviation ``sigma_B`` itself (the paper, tf_keras), or the biased or unbiased batch
#: variance, ``sigma`` then being ``sqrt(var + eps)``.
RenormAverage = Literal["std", "variance_biased", "variance_unbiased"]
#: One set of moving statistics for the correction and for inference (the paper), or two
#: with their own update rates (tf_keras: ``renorm_mean``/``renorm_stddev`` with
#: ``renorm_momentum`` for the correction, ``moving_mean``/``moving_variance`` with
#: ``momentum`` for inference). Dialect parameter ``statistics``.
StatisticsSets = Literal["shared", "separate"]
#: ``none``: ``sigma`` is used as it is (it must be positive); ``sqrt_eps``: ``sigma`` is
#: replaced by ``max(sigma, sqrt(eps))`` (tf_keras). Dialect parameter ``sigma_floor``.
SigmaFloor = Literal["none", "sqrt_eps"]
#: How a library takes the bounds (dialect parameter ``clipping``): ``symmetric`` r_max and
#: d_max (the paper), or ``independent`` rmin, rmax, dmax (tf_keras ``renorm_clipping``).
ClippingForm = Literal["symmetric", "independent"]
#: How a library moves from batch norm to renorm (dialect parameter ``warmup``): a ``ramp``
#: of the bounds (the paper), a hard ``switch`` at a step, or ``none`` (fixed bounds).
WarmupForm = Literal["ramp", "switch", "none"]

_AVERAGES = ("std", "variance_biased", "variance_unbiased")
_SETS = ("shared", "separate")
_FLOORS = ("none", "sqrt_eps")
_CLIPPINGS = ("symmetric", "independent")
_WARMUPS = ("ramp", "switch", "none")


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


@dataclass(frozen=True)
class RenormDialect:
    """The renorm dialect parameters of a library (spec: dialects.md, renorm dialects).

    ``default_renorm_momentum`` is the library's default momentum of the correction set,
    in the library's own update-rate convention; ``None`` when there is one set.
    """

    average: RenormAverage
    statistics: StatisticsSets
    clipping: ClippingForm
    sigma_floor: SigmaFloor
    warmup: WarmupForm
    default_renorm_momentum: float | None = None

    def __post_init__(self) -> None:
        _choice("average", self.average, _AVERAGES)
        _choice("statistics", self.statistics, _SETS)
        _choice("clipping", self.clipping, _CLIPPINGS)
        _choice("sigma_floor", self.sigma_floor, _FLOORS)
        _choice("warmup", self.warmup, _WARMUPS)
        separate = self.statistics == "separate"
        if separate != (self.default_renorm_momentum is not None):
            raise ValueError(
                "default_renorm_momentum is given exactly when the statistics are separate"
            )
        if self.default_renorm_momentum is not None:
            check_rate(self.default_renorm_momentum)


@dataclass(frozen=True)
class RenormStatistics:
    """The moving statistics of a renorm layer and its step counter (renorm.moving.*).

    ``spread`` is the moving standard deviation ``sigma`` when the layer averages the
    standard deviation, the moving variance otherwise (the config's ``average``). With two
    sets of statistics (``statistics="separate"``), ``mean``/``spread`` are the inference
    set and ``correction_mean``/``correction_spread`` the set the correction uses; with one
    set both are ``None``. Never mutated; the arrays are read-only copies.

    Like :class:`~normspec.reference.RunningStatistics` it holds whatever a library reports
    (a negative spread, NaN): the clauses judge it, and the reference refuses a negative
    spread where it computes sigma from one.
    """

    mean: FloatArray
    spread: FloatArray
    steps: int = 0
    correction_mean: FloatArray | None = None
    correction_spread: FloatArray | None = None

    def __post_init__(self) -> None:
        mean = frozen(as_float64("moving mean", self.mean))
        spread = frozen(as_float64("moving spread", self.spread))
        if mean.ndim != 1 or mean.shape != spread.shape:
            raise ValueError(
                f"moving mean and spread must be vectors of one shape, got {mean.shape} "
                f"and {spread.shape}"
            )
        if (self.correction_mean is None) != (self.correction_spread is None):
            raise ValueError("correction_mean and correction_spread are given together or not")
        if self.correction_mean is not None and self.correction_spread is not None:
            c_mean = frozen(as_float64("correction mean", self.correction_mean))
            c_spread = frozen(as_float64("correction spread", self.correction_spread))
            if c_mean.shape != mean.shape or c_spread.shape != mean.shape:
                raise ValueError(
                    f"correction statistics must have the shape {mean.shape} of the moving "
                    f"statistics, got {c_mean.shape} and {c_spread.shape}"
                )
            object.__setattr__(self, "correction_mean", c_mean)
            object.__setattr__(self, "correction_spread", c_spread)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "spread", spread)
        object.__setattr__(self, "steps", whole_number("steps", self.steps, minimum=0))

    @classmethod
    def initial(cls, num_features: int, *, separate: bool = False) -> RenormStatistics:
        """Mean 0, spread 1 (sigma or variance), no steps, in every set (renorm.moving.initial)."""
        count = whole_number("num_features", num_features, minimum=1)
        zeros, ones = np.zeros(count), np.ones(count)
        if separate:
            return cls(zeros, ones, 0, zeros, ones)
        return cls(zeros, ones, 0)

    @property
    def num_features(self) -> int:
        return int(self.mean.shape[0])

    @property
    def separate(self) -> bool:
        """True when the correction has its own set of moving statistics."""
        return self.correction_mean is not None

    def correction_statistics(self) -> tuple[FloatArray, FloatArray]:
        """The (mean, spread) the correction ``(r, d)`` is computed from."""
        if self.correction_mean is not None and self.correction_spread is not None:
            return self.correction_mean, self.correction_spread
        return self.mean, self.spread

    def replace(self, **changes: Any) -> RenormStatistics:
        """A copy with some fields changed."""
        fields = {
            "mean": self.mean,
            "spread": self.spread,
            "steps": self.steps,
            "correction_mean": self.correction_mean,
            "correction_spread": self.correction_spread,
            **changes,
        }
        return RenormStatistics(**fields)


@dataclass(frozen=True)
class RenormCorrection:
    """What a training forward computed besides its output (renorm.train.*).

    ``batch`` holds ``mu_B``, the biased ``var_B`` and the count ``n``; ``std`` is
    ``sigma_B = sqrt(var_B + eps)``; ``r`` and ``d`` the clipped correction; ``bounds`` the
    clipping bounds it used.
    """

    batch: BatchStatistics
    std: FloatArray
    r: FloatArray
    d: FloatArray
    bounds: RenormBounds


@dataclass(frozen=True)
class RenormConfig:
    """The spec's parameters of one renorm layer, rates in canonical form.

    ``rate`` is alpha in ``stat <- stat + alpha * (batch_stat - stat)`` for the moving
    statistics used in inference (and for the correction when there is one set);
    ``correction_rate`` the rate of the correction set when ``statistics="separate"`` (and
    ``None`` otherwise). ``schedule`` gives the clipping bounds of each step; the default is
    the paper's (renorm.schedule.paper). ``rate = 0.01`` is a default of this reference, not
    a value from the paper.
    """

    num_features: int
    schedule: Schedule = PAPER_SCHEDULE
    feature_axis: int = 1
    eps: float = 1e-5
    rate: float = 0.01
    average: RenormAverage = "std"
    statistics: StatisticsSets = "shared"
    correction_rate: float | None = None
    sigma_floor: SigmaFloor = "none"
    affine: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "num_features", whole_number("num_features", self.num_features, minimum=1)
        )
        if not isinstance(self.schedule, Schedule):
            raise ValueError(f"schedule must be a Schedule, got {self.schedule!r}")
        check_eps(self.eps)
        check_rate(self.rate)
        _choice("average", self.average, _AVERAGES)
        _choice("statistics", self.statistics, _SETS)
        _choice("sigma_floor", self.sigma_floor, _FLOORS)
        if self.statistics == "separate":
            if self.correction_rate is None:
                raise ValueError("correction_rate is required when the statistics are separate")
            check_rate(self.correction_rate)
        elif self.correction_rate is not None:
            raise ValueError("correction_rate is only used when the statistics are separate")

    def initial_state(self) -> RenormStatistics:
        """The state of a new layer (renorm.moving.initial)."""
        return RenormStatistics.initial(self.num_features, separate=self.statistics == "separate")


# --------------------------------------------------------------------------------------
# The operations on plain arrays


def batch_std(var: FloatArray, eps: float) -> FloatArray:
    """``sigma_B = sqrt(var_B + eps)``: eps inside the square root (renorm.train.statistics)."""
    result: FloatArray = np.sqrt(var + check_eps(eps))
    return result


def _check_sigma(name: str, value: Any, num_features: int) -> FloatArray:
    """A moving standard deviation: shape (C,), positive where not NaN (renorm.params.sigma)."""
    sigma = check_vector(name, value, num_features)
    if np.any(sigma <= 0):
        raise ValueError(f"{name} must be positive, got {sigma}")
    return sigma


def correction(
    batch_mean: Any, batch_std_: Any, moving_mean: Any, moving_std: Any, bounds: RenormBounds
) -> tuple[FloatArray, FloatArray]:
    """``r = clip(sigma_B / sigma, r_min, r_max)`` and ``d = clip((mu_B - mu) / sigma, +-d_max)``.

    Clauses: renorm.train.correction, renorm.train.pre_update.
    """
    if not isinstance(bounds, RenormBounds):
        raise ValueError(f"bounds must be RenormBounds, got {bounds!r}")
    center = as_float64("batch mean", batch_mean)
    spread = as_float64("batch standard deviation", batch_std_)
    features = center.shape[0] if center.ndim == 1 else -1
    if center.ndim != 1 or spread.shape != center.shape:
        raise ValueError(
            f"batch mean and standard deviation must be vectors of one shape, got "
            f"{center.shape} and {spread.shape}"
        )
    mu = check_vector("moving mean", moving_mean, features)
    sigma = _check_sigma("moving standard deviation sigma", moving_std, features)
    r: FloatArray = np.clip(spread / sigma, bounds.r_min, bounds.r_max)
    d: FloatArray = np.clip((center - mu) / sigma, -bounds.d_max, bounds.d_max)
    return r, d


def _affine(gamma: Any, beta: Any, num_features: int) -> tuple[FloatArray, FloatArray]:
    scale = np.ones(num_features) if gamma is None else check_vector("gamma", gamma, num_features)
    shift = np.zeros(num_features) if beta is None else check_vector("beta", beta, num_features)
    return scale, shift


def train_forward(
    x: Any,
    moving_mean: Any,
    moving_std: Any,
    gamma: Any = None,
    beta: Any = None,
    *,
    bounds: RenormBounds,
    eps: float = 1e-5,
    feature_axis: int = 1,
) -> tuple[FloatArray, RenormCorrection]:
    """Training output ``gamma * ((x - mu_B) / sigma_B * r + d) + beta`` and the correction.

    ``moving_mean`` and ``moving_std`` are the moving statistics ``mu`` and ``sigma`` the
    correction is computed from, before this step updates them. The output is evaluated as
    batch norm with scale ``gamma * r`` and shift ``gamma * d + beta``, so that with
    ``r = 1, d = 0`` it is batch norm's output bit for bit.
    Clauses: renorm.train.statistics, renorm.train.correction, renorm.train.output,
    renorm.train.affine, renorm.train.reduces_to_bn, renorm.degenerate.*.
    """
    eps = check_eps(eps)
    stats = batchnorm.batch_statistics(x, feature_axis)
    features = stats.mean.shape[0]
    scale, shift = _affine(gamma, beta, features)
    std = batch_std(stats.var, eps)
    r, d = correction(stats.mean, std, moving_mean, moving_std, bounds)
    y, _ = batchnorm.train_forward(
        x, scale * r, scale * d + shift, eps=eps, feature_axis=feature_axis
    )
    return y, RenormCorrection(stats, std, r, d, bounds)


def inference_forward(
    x: Any,
    moving_mean: Any,
    moving_std: Any,
    gamma: Any = None,
    beta: Any = None,
    *,
    feature_axis: int = 1,
) -> FloatArray:
    """Inference output ``gamma * (x - mu) / sigma + beta`` (renorm.infer.output).

    ``sigma`` is the moving standard deviation itself: no ``eps`` is added here (a dialect
    that averages the variance passes ``sqrt(var + eps)``, see :func:`moving_std`).
    """
    array = as_float64("x", x)
    axis = check_input(array, feature_axis)
    features = array.shape[axis]
    mu = check_vector("moving mean", moving_mean, features)
    sigma = _check_sigma("moving standard deviation sigma", moving_std, features)
    scale, shift = _affine(gamma, beta, features)
    y = array - per_feature(mu, array.ndim, axis)
    y *= per_feature(scale / sigma, y.ndim, axis)
    y += per_feature(shift, y.ndim, axis)
    return y


def train_backward(
    dy: Any,
    x: Any,
    r: Any,
    d: Any,
    gamma: Any = None,
    *,
    eps: float = 1e-5,
    feature_axis: int = 1,
) -> Gradients:
    """Gradients of the training forward with ``r`` and ``d`` held constant.

    The paper's equations reduce to ``dx_i = gamma * r / sigma_B * (dy_i - mean(dy) -
    zhat_i * mean(dy * zhat))`` with ``zhat = (x - mu_B) / sigma_B``, that is ``r`` times
    batch norm's ``dx``; ``dgamma = sum(dy * (zhat * r + d)) = r * sum(dy * zhat) +
    d * sum(dy)`` and ``dbeta = sum(dy)``. ``r`` and ``d`` are those of the forward pass.
    Clauses: renorm.backward.train.dx, renorm.backward.train.dparams.
    """
    base = batchnorm.train_backward(dy, x, gamma, eps=eps, feature_axis=feature_axis)
    ndim = base.dx.ndim
    axis = feature_axis % ndim
    features = base.dbeta.shape[0]
    ratio = check_vector("r", r, features)
    shift = check_vector("d", d, features)
    dx = base.dx * per_feature(ratio, ndim, axis)
    dgamma = ratio * base.dgamma + shift * base.dbeta
    return Gradients(dx, dgamma, base.dbeta)


def inference_backward(
    dy: Any,
    x: Any,
    moving_mean: Any,
    moving_std: Any,
    gamma: Any = None,
    *,
    feature_axis: int = 1,
) -> Gradients:
    """Gradients of the inference forward, the moving statistics being constants.

    ``dx = gamma * dy / sigma``, ``dgamma = sum(dy * (x - mu) / sigma)``, ``dbeta = sum(dy)``
    (renorm.backward.infer).
    """
    array = as_float64("x", x)
    axis = check_input(array, feature_axis)
    upstream = as_float64("dy", dy)
    if upstream.shape != array.shape:
        raise ValueError(f"dy must have the shape of x {array.shape}, got {upstream.shape}")
    features = array.shape[axis]
    axes = reduction_axes(array.ndim, axis)
    mu = check_vector("moving mean", moving_mean, features)
    sigma = _check_sigma("moving standard deviation sigma", moving_std, features)
    scale, _ = _affine(gamma, None, features)
    xhat = (array - per_feature(mu, array.ndim, axis)) / per_feature(sigma, array.ndim, axis)
    dgamma = np.sum(upstream * xhat, axis=axes)
    dbeta = np.sum(upstream, axis=axes)
    dx = upstream * per_feature(scale / sigma, array.ndim, axis)
    return Gradients(dx, dgamma, dbeta)


# --------------------------------------------------------------------------------------
# Moving statistics under the dialects


def moving_std(
    spread: Any, *, average: RenormAverage, eps: float, sigma_floor: SigmaFloor = "none"
) -> FloatArray:
    """The moving standard deviation ``sigma`` a state's ``spread`` stands for.

    ``average="std"``: the spread itself; otherwise ``sqrt(var + eps)``. With
    ``sigma_floor="sqrt_eps"``, ``max(sigma, sqrt(eps))``. Without a floor a ``sigma <= 0``
    raises ``ValueError`` naming sigma (renorm.params.sigma).
    Clauses: renorm.moving.average, renorm.infer.output.
    """
    _choice("average", average, _AVERAGES)
    _choice("sigma_floor", sigma_floor, _FLOORS)
    eps = check_eps(eps)
    value = as_float64("moving spread", spread)
    if np.any(value < 0):
        raise ValueError("moving spread (sigma or variance) must be non-negative")
    sigma: FloatArray = value if average == "std" else np.sqrt(value + eps)
    if sigma_floor == "sqrt_eps":
        sigma = np.maximum(sigma, math.sqrt(eps))
    if np.any(sigma <= 0):
        raise ValueError(
            "the moving standard deviation sigma must be positive (a state with sigma <= 0 "
            "is invalid without a floor on sigma)"
        )
    return sigma


def spread_target(corr: RenormCorrection, average: RenormAverage) -> FloatArray:
    """The batch value the moving spread moves towards (renorm.moving.average).

    ``std``: ``sigma_B = sqrt(var_B + eps)``; ``variance_biased``: ``var_B``;
    ``variance_unbiased``: ``n / (n - 1) * var_B`` (an error for ``n = 1``).
    """
    _choice("average", average, _AVERAGES)
    if average == "std":
        return corr.std
    if average == "variance_biased":
        return corr.batch.var
    return variance_estimate(corr.batch, "unbiased").var


def update_moving_statistics(
    state: RenormStatistics,
    corr: RenormCorrection,
    *,
    average: RenormAverage,
    rate: float,
    correction_rate: float | None = None,
) -> RenormStatistics:
    """``stat <- stat + alpha * (batch_stat - stat)`` for every set; the counter gains one.

    The inference set (``mean``, ``spread``) moves with ``rate``; the correction set of a
    state with two sets with ``correction_rate``. Called after the correction was computed
    from the old state (renorm.train.pre_update).
    Clauses: renorm.moving.mean, renorm.moving.average, renorm.moving.separate,
    renorm.moving.steps.
    """
    alpha = check_rate(rate)
    if corr.batch.mean.shape != state.mean.shape:
        raise ValueError(
            f"batch statistics have {corr.batch.mean.shape[0]} features, the state "
            f"{state.num_features}"
        )
    target = spread_target(corr, average)
    mean = state.mean + alpha * (corr.batch.mean - state.mean)
    # The spread as a convex combination: a positive sigma stays positive (renorm.params.sigma)
    # and alpha = 1 gives the batch's value exactly; S + alpha * (sigma_B - S) rounds to 0
    # for alpha = 1 when S >> sigma_B, an invalid state without a floor on sigma.
    spread = (1.0 - alpha) * state.spread + alpha * target
    if not state.separate:
        if correction_rate is not None:
            raise ValueError("correction_rate is given but the state has one set of statistics")
        return RenormStatistics(mean, spread, state.steps + 1)
    if correction_rate is None:
        raise ValueError("a state with a separate correction set needs correction_rate")
    beta = check_rate(correction_rate)
    c_mean, c_spread = state.correction_statistics()
    new_c_mean = c_mean + beta * (corr.batch.mean - c_mean)
    new_c_spread = (1.0 - beta) * c_spread + beta * target
    return RenormStatistics(mean, spread, state.steps + 1, new_c_mean, new_c_spread)


# --------------------------------------------------------------------------------------
# The whole layer


def _parameters(config: RenormConfig, params: Affine | None) -> tuple[Any, Any]:
    if not config.affine or params is None:
        return None, None
    gamma = check_vector("gamma", params.gamma, config.num_features)
    beta = check_vector("beta", params.beta, config.num_features)
    return gamma, beta


def _check_state(config: RenormConfig, state: RenormStatistics) -> None:
    if not isinstance(state, RenormStatistics):
        raise ValueError(f"state must be RenormStatistics, got {type(state).__name__}")
    if state.num_features != config.num_features:
        raise ValueError(
            f"the state has {state.num_features} features, the config {config.num_features}"
        )
    if state.separate != (config.statistics == "separate"):
        raise ValueError(
            f"the config says statistics={config.statistics!r} but the state has "
            f"{'two sets' if state.separate else 'one set'} of moving statistics"
        )


def _sigma(config: RenormConfig, spread: FloatArray) -> FloatArray:
    return moving_std(
        spread, average=config.average, eps=config.eps, sigma_floor=config.sigma_floor
    )


def correction_for(config: RenormConfig, state: RenormStatistics, x: Any) -> RenormCorrection:
    """The correction a training step on ``x`` from ``state`` uses (renorm.schedule.step)."""
    return _train(config, None, state, x)[1]


def _train(
    config: RenormConfig, params: Affine | None, state: RenormStatistics, x: Any
) -> tuple[FloatArray, RenormCorrection]:
    _check_state(config, state)
    gamma, beta = _parameters(config, params)
    c_mean, c_spread = state.correction_statistics()
    return train_forward(
        x,
        c_mean,
        _sigma(config, c_spread),
        gamma,
        beta,
        bounds=config.schedule.bounds(state.steps),
        eps=config.eps,
        feature_axis=config.feature_axis,
    )


def training_step(
    config: RenormConfig, params: Affine | None, state: RenormStatistics, x: Any
) -> tuple[FloatArray, RenormStatistics]:
    """Training output and the state after the step.

    The bounds are the schedule's at ``state.steps``; ``r`` and ``d`` come from the state
    before the update; then every set of moving statistics moves with its rate and the
    counter gains one. Clauses: renorm.train.*, renorm.moving.*, renorm.schedule.step.
    """
    y, corr = _train(config, params, state, x)
    new_state = update_moving_statistics(
        state,
        corr,
        average=config.average,
        rate=config.rate,
        correction_rate=config.correction_rate,
    )
    return y, new_state


def inference(
    config: RenormConfig, params: Affine | None, state: RenormStatistics, x: Any
) -> FloatArray:
    """Inference output from the (inference set of the) moving statistics (renorm.infer.output)."""
    _check_state(config, state)
    gamma, beta = _parameters(config, params)
    return inference_forward(
        x,
        state.mean,
        _sigma(config, state.spread),
        gamma,
        beta,
        feature_axis=config.feature_axis,
    )


def backward(
    config: RenormConfig,
    params: Affine | None,
    state: RenormStatistics,
    x: Any,
    dy: Any,
    *,
    training: bool,
) -> Gradients:
    """The vector-Jacobian product of :func:`training_step` (from ``state``, before its
    update) or of :func:`inference`.

    Clauses: renorm.backward.train.dx, renorm.backward.train.dparams, renorm.backward.infer.
    """
    gamma, _ = _parameters(config, params)
    if training:
        corr = correction_for(config, state, x)
        return train_backward(
            dy, x, corr.r, corr.d, gamma, eps=config.eps, feature_axis=config.feature_axis
        )
    _check_state(config, state)
    return inference_backward(
        dy,
        x,
        state.mean,
        _sigma(config, state.spread),
        gamma,
        feature_axis=config.feature_axis,
    )
