"""Tolerances derived from the accuracy clauses (conventions: accuracy model; bn.accuracy.*,
renorm.accuracy.*).

Every bound is the spec's first-order error bound for the implementation's precision plus
the same bound for the float64 reference, so the reference's own error is never charged to
the implementation. Nothing here is a fixed atol/rtol.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from normspec.conformance.dtypes import FORMATS, Ulps, float_format, ulp
from normspec.reference import batch_statistics, train_backward
from normspec.reference._arrays import per_feature, reduction_axes
from normspec.reference.schedules import RenormBounds
from normspec.reference.second_order import SecondOrderEstimate

Array = NDArray[np.float64]

#: The safety factor K of the accuracy model.
SAFETY_FACTOR = 4.0


@dataclass(frozen=True)
class Precision:
    """Unit roundoffs of an evaluation: output format ``u_o``, working precision ``u_w``.

    ``raw_moments``: the batch variance may be evaluated from raw moments, ``E[x^2] -
    E[x]^2``, whose error is first order in ``kappa^2`` (value clauses: a one-pass variance
    is an accuracy matter, bn.accuracy.*, not a wrong value).
    """

    u_o: float
    u_w: float
    tiny: float
    raw_moments: bool = False
    #: the error every result is allowed at its natural scale whatever the bound:
    #: ``sqrt(u)`` for bn.accuracy.no_gross_error (conventions: gross error), else 0
    floor: float = 0.0

    @classmethod
    def of(cls, dtype: str) -> Precision:
        """The accuracy clauses' precision: statistics accumulated in float32 at least."""
        fmt = float_format(dtype)
        return cls(fmt.unit_roundoff, fmt.working_unit_roundoff, fmt.smallest_normal)

    @classmethod
    def storage(cls, dtype: str) -> Precision:
        """The value clauses' precision: any accumulation at least as precise as ``dtype``,
        the variance from raw moments included."""
        fmt = float_format(dtype)
        return cls(fmt.unit_roundoff, fmt.unit_roundoff, fmt.smallest_normal, raw_moments=True)

    @classmethod
    def gross(cls, dtype: str) -> Precision:
        """bn.accuracy.no_gross_error's precision: the value clauses' centred bounds in the
        dtype's own precision, or half its digits at the natural scale, the larger."""
        fmt = float_format(dtype)
        u = fmt.unit_roundoff
        return cls(u, u, fmt.smallest_normal, floor=float(np.sqrt(u)))

    def floored(self, bound: Array, scale: Array) -> Array:
        """``bound``, raised to ``floor * scale`` where that is larger (``scale``: the
        natural scale of the result, batchnorm.md: reference accuracy)."""
        return np.maximum(bound, self.floor * scale) if self.floor else bound

    def variance_error(self, n: int, kappa: Array) -> Array | float:
        """The relative error of ``var_B + eps`` a raw-moment evaluation may add: ``u_w (n +
        3) (1 + kappa^2)`` (``E[x^2] s^2 <= 1 + kappa^2``); 0 for a centred evaluation,
        whose error the bounds already hold."""
        return self.u_w * (n + 3) * (1 + kappa**2) if self.raw_moments else 0.0


REFERENCE_PRECISION = Precision(2.0**-53, 2.0**-53, FORMATS["float64"].smallest_normal)


@dataclass(frozen=True)
class FeatureTerms:
    """The exact per-feature quantities the bounds are written in (conventions notation)."""

    n: int
    s: Array  # 1 / sqrt(var + eps), broadcastable to x
    xhat: Array  # (x - center) * s
    kappa: Array  # s * mean|x|, broadcastable to x
    a: Array  # s * (|x_i| + mean|x|)
    mean_abs: Array  # (C,)
    rms_xhat: Array  # sqrt(var) * s, broadcastable to x: the root mean square of xhat

    @classmethod
    def of(
        cls,
        x: Array,
        feature_axis: int,
        eps: float,
        center: Array | None = None,
        var: Array | None = None,
    ) -> FeatureTerms:
        """Terms for batch statistics, or for given (running) ``center`` and ``var``."""
        axes = reduction_axes(x.ndim, feature_axis)
        if center is None or var is None:
            stats = batch_statistics(x, feature_axis)
            center, var = stats.mean, stats.var
        mean_abs = np.mean(np.abs(x), axis=axes)
        s = per_feature(1.0 / np.sqrt(var + eps), x.ndim, feature_axis)
        m = per_feature(mean_abs, x.ndim, feature_axis)
        xhat = (x - per_feature(center, x.ndim, feature_axis)) * s
        return cls(
            n=x.size // x.shape[feature_axis],
            s=s,
            xhat=xhat,
            kappa=s * m,
            a=s * (np.abs(x) + m),
            mean_abs=mean_abs,
            rms_xhat=np.sqrt(per_feature(var, x.ndim, feature_axis)) * s,
        )


@dataclass(frozen=True)
class Debias:
    """A zero-debiased average read in inference (dialects.md: ``running_average``): the
    rate alpha and the step counter ``t`` of its debias factor ``c_t = 1 - (1 - alpha)^t``."""

    rate: float
    steps: int

    def error(self, u: float) -> float:
        """The relative error ``e_c = u * ((t + 2) * (1 - alpha)^t / c_t + 3)`` of the
        debiased statistics in a precision of unit roundoff ``u`` (bn.accuracy.inference);
        0 for ``t = 0``, where nothing is divided."""
        if self.steps == 0:
            return 0.0
        if self.rate >= 1.0:
            return 3 * u
        log_decay = self.steps * math.log1p(-self.rate)
        return u * ((self.steps + 2) * math.exp(log_decay) / -math.expm1(log_decay) + 3)


def _both(bound: Any, *args: Any) -> Array:
    """The implementation's bound plus the reference's own, times the safety factor."""
    precision, *rest = args
    result: Array = SAFETY_FACTOR * (bound(precision, *rest) + bound(REFERENCE_PRECISION, *rest))
    return result


def _gamma(gamma: Array | None, x: Array, feature_axis: int) -> Array:
    if gamma is None:
        return np.ones([1] * x.ndim)
    return per_feature(np.abs(gamma), x.ndim, feature_axis)


def _beta(beta: Array | None, x: Array, feature_axis: int) -> Array:
    if beta is None:
        return np.zeros([1] * x.ndim)
    return per_feature(np.abs(beta), x.ndim, feature_axis)


def train_output_bound(
    precision: Precision,
    x: Array,
    gamma: Array | None,
    beta: Array | None,
    eps: float,
    feature_axis: int,
) -> Array:
    """Elementwise bound of bn.accuracy.forward for the training output."""
    terms = FeatureTerms.of(x, feature_axis, eps)
    g, b = _gamma(gamma, x, feature_axis), _beta(beta, x, feature_axis)
    return normalized_output_bound(precision, terms, g, b)


def normalized_output_bound(precision: Precision, terms: FeatureTerms, g: Array, b: Array) -> Array:
    """bn.accuracy.forward's bound of ``g * xhat + b`` for the batch-statistics ``terms``
    of each feature, ``g`` and ``b`` the absolute scale and shift broadcastable to ``x``
    (per feature for BN, elementwise per slice for LayerNorm, ln.train.output)."""

    def bound(p: Precision, t: FeatureTerms, g: Array, b: Array) -> Array:
        ax = np.abs(t.xhat)
        return (
            p.u_w * g * ((t.n + 1) * t.kappa + t.a + (t.n + 3) * ax)
            + g * ax * (p.u_w * (t.n + 1) * t.kappa) ** 2
            + g * ax * p.variance_error(t.n, t.kappa)
            + p.u_o * (g * ax + b)
            + p.tiny * (1 + g * t.s + t.a / t.s)
        )

    scale = g * (np.abs(terms.xhat) + terms.rms_xhat) + b
    return precision.floored(_both(bound, precision, terms, g, b), scale)


def inference_output_bound(
    precision: Precision,
    x: Array,
    mean: Array,
    var: Array,
    gamma: Array | None,
    beta: Array | None,
    eps: float,
    feature_axis: int,
    debias: Debias | None = None,
) -> Array:
    """Elementwise bound of bn.accuracy.inference; ``mean`` and ``var`` are the statistics
    inference reads, ``debias`` their debias factor where they are zero-debiased."""
    center = per_feature(np.abs(mean), x.ndim, feature_axis)

    def bound(p: Precision, t: FeatureTerms, g: Array, b: Array) -> Array:
        ax = np.abs(t.xhat)
        debiased = 0.0 if debias is None else debias.error(p.u_w) * g * (t.s * center + ax)
        return (
            p.u_w * g * (t.a + 3 * ax)
            + debiased
            + p.u_o * (g * ax + b)
            + p.tiny * (1 + g * t.s + t.a / t.s)
        )

    terms = FeatureTerms.of(x, feature_axis, eps, mean, var)
    return _both(
        bound, precision, terms, _gamma(gamma, x, feature_axis), _beta(beta, x, feature_axis)
    )


@dataclass(frozen=True)
class GradientBounds:
    dx: Array
    dgamma: Array
    dbeta: Array


def backward_bounds(
    precision: Precision,
    x: Array,
    dy: Array,
    gamma: Array | None,
    eps: float,
    feature_axis: int,
    expected: Any,
    *,
    mean: Array | None = None,
    var: Array | None = None,
    debias: Debias | None = None,
) -> GradientBounds:
    """Bounds of bn.accuracy.backward; with ``mean``/``var`` given, the inference-mode form
    (``debias``: their debias factor where they are zero-debiased, bn.accuracy.inference).

    The underflow term of ``dx`` is ``tiny * (1 + g * s + a_i / s + s * (2 + |xhat_i|))``;
    it admits two products flushed to zero where they are subnormal (XLA's CPU kernels flush
    subnormal results): ``gamma * dy_j``, the cotangent of ``xhat_j``, which is multiplied
    by ``s`` and reduced as ``dy`` is (``s * (2 + |xhat_i|)``), and the cotangent of
    ``var_B`` per value, ``-g * s^2 * mean(dy * xhat) / 2``, which multiplies
    ``2 * (x_i - mu_B)`` (``a_i / s = |x_i| + mean_j |x_j|``).
    """
    axes = reduction_axes(x.ndim, feature_axis)
    terms = FeatureTerms.of(x, feature_axis, eps, mean, var)
    g = _gamma(gamma, x, feature_axis)
    training = mean is None
    reductions = terms.n + 3 if training else 3
    abs_dy = np.abs(dy)
    m1 = per_feature(np.mean(abs_dy, axis=axes), x.ndim, feature_axis)
    weight = 1 + terms.kappa + np.abs(terms.xhat)
    m2_vector = np.mean(abs_dy * weight, axis=axes)
    m2 = per_feature(m2_vector, x.ndim, feature_axis)
    ax = np.abs(terms.xhat)

    def raw(p: Precision) -> Array | float:
        return p.variance_error(terms.n, terms.kappa) if training else 0.0

    def debiased(p: Precision) -> float:
        return 0.0 if debias is None or training else debias.error(p.u_w)

    centre = 0.0 if mean is None else per_feature(np.abs(mean), x.ndim, feature_axis)

    def dx_bound(p: Precision) -> Array:
        spread = m1 + (1 + terms.kappa + terms.a + ax) * m2 if training else 0.0
        return (
            p.u_w * reductions * g * terms.s * (abs_dy + spread)
            + raw(p) * g * terms.s * (abs_dy + m1 + ax * m2)
            + debiased(p) * g * terms.s * abs_dy
            + p.u_o * np.abs(expected.dx)
            + p.tiny * (1 + g * terms.s + terms.a / terms.s + terms.s * (2 + ax))
        )

    def dgamma_bound(p: Precision) -> Array:
        raw_vector = np.max(np.broadcast_to(raw(p), x.shape), axis=axes)
        sensitivity = np.sum(abs_dy * (terms.s * centre + ax), axis=axes)
        return (
            (p.u_w * (terms.n + 3) + raw_vector) * terms.n * m2_vector
            + debiased(p) * sensitivity
            + p.u_o * np.abs(expected.dgamma)
            + p.tiny
        )

    def dbeta_bound(p: Precision) -> Array:
        m1_vector = np.mean(abs_dy, axis=axes)
        return p.u_w * terms.n * terms.n * m1_vector + p.u_o * np.abs(expected.dbeta) + p.tiny

    # natural scales (batchnorm.md: reference accuracy), for the floor of the gross line
    spread = ax + terms.rms_xhat if training else ax
    weighted = abs_dy * spread
    dgamma_scale = np.sum(weighted, axis=axes)
    dx_scale = g * terms.s * abs_dy
    if training:
        mean_weighted = per_feature(np.mean(weighted, axis=axes), x.ndim, feature_axis)
        dx_scale = dx_scale + g * terms.s * (m1 + spread * mean_weighted)
    return GradientBounds(
        dx=precision.floored(_both(dx_bound, precision), dx_scale),
        dgamma=precision.floored(_both(dgamma_bound, precision), dgamma_scale),
        dbeta=precision.floored(_both(dbeta_bound, precision), np.sum(abs_dy, axis=axes)),
    )


@dataclass(frozen=True)
class SecondOrderBounds:
    dx: Array
    dgamma: Array
    ddy: Array


def second_order_bounds(
    precision: Precision,
    x: Array,
    dy: Array,
    v: Array,
    v_gamma: Array,
    v_beta: Array,
    gamma: Array | None,
    eps: float,
    feature_axis: int,
    expected: SecondOrderEstimate,
) -> SecondOrderBounds:
    """Bounds of bn.backward.second_order: ``K * (u_w (n + 3)^2 * T + u_o |d*| + tiny (1 +
    T))`` with the term scales ``T`` of the clause, plus the finite differences' own error
    estimate (``expected.error``)."""
    axes = reduction_axes(x.ndim, feature_axis)
    terms = FeatureTerms.of(x, feature_axis, eps)
    n, s = terms.n, terms.s
    g = _gamma(gamma, x, feature_axis)
    vg = per_feature(np.abs(v_gamma), x.ndim, feature_axis)
    vb = per_feature(np.abs(v_beta), x.ndim, feature_axis)
    w = 1 + terms.kappa + np.abs(terms.xhat)
    abs_dy, abs_v = np.abs(dy), np.abs(v)
    dy_w = np.mean(abs_dy * w, axis=axes, keepdims=True)
    v_w = np.mean(abs_v * w, axis=axes, keepdims=True)
    p_term = abs_dy + dy_w * w  # the magnitude of dy_i - mean(dy) - xhat_i mean(dy xhat)
    q_term = abs_v + v_w * w  # the same of v
    c_term = np.mean(abs_v * p_term, axis=axes, keepdims=True)
    scales = {
        "dx": g * s * s * (w * c_term + p_term * v_w + dy_w * q_term) + vg * s * p_term,
        "dgamma": (n * s * c_term).reshape(-1),
        "ddy": g * s * q_term + vg * w + vb,
    }
    # kappa is per feature (broadcastable to x): so is the relative error
    relative = precision.u_w * (n + 3) ** 2 + 3 * precision.variance_error(n, terms.kappa)

    def bound(name: str) -> Array:
        scale = scales[name]
        rel = np.reshape(relative, -1) if name == "dgamma" and np.ndim(relative) else relative
        value = np.abs(getattr(expected.values, name))
        error = getattr(expected.error, name)
        result: Array = (
            SAFETY_FACTOR * (rel * scale + precision.u_o * value + precision.tiny * (1 + scale))
            + error
        )
        return result

    return SecondOrderBounds(dx=bound("dx"), dgamma=bound("dgamma"), ddy=bound("ddy"))


@dataclass(frozen=True)
class StateBounds:
    """Elementwise bounds of a per-feature mean and spread."""

    mean: Array
    var: Array


@dataclass(frozen=True)
class Moments:
    """A per-feature mean and spread (a variance, or renorm's moving standard deviation)."""

    mean: Array
    var: Array


@dataclass(frozen=True)
class StatisticsUpdate:
    """One update of running (or moving) statistics, as the accuracy clauses bound it: the
    batch ``x`` and its feature axis, the canonical rate ``alpha`` (the weight of the batch),
    the statistics before it and those expected after it."""

    x: Array
    feature_axis: int
    alpha: float
    before: Moments
    after: Moments


def running_bounds(
    precision: Precision, update: StatisticsUpdate, *, unbiased: bool
) -> StateBounds:
    """Bounds of bn.accuracy.running for one ``update``; ``unbiased``: the running variance
    moves towards the unbiased batch variance."""
    x, feature_axis, alpha = update.x, update.feature_axis, update.alpha
    before_mean, before_var = update.before.mean, update.before.var
    after_mean, after_var = update.after.mean, update.after.var
    stats = batch_statistics(x, feature_axis)
    n = stats.count
    c = n / (n - 1) if unbiased and n > 1 else 1.0
    mean_abs = np.mean(np.abs(x), axis=reduction_axes(x.ndim, feature_axis))

    def mean_bound(p: Precision) -> Array:
        return (
            alpha * p.u_w * (n + 1) * mean_abs
            + p.u_w * np.abs(stats.mean - before_mean)
            + p.u_o * (np.abs(before_mean) + np.abs(after_mean))
            + p.tiny
        )

    def var_bound(p: Precision) -> Array:
        raw = p.u_w * (n + 3) * (stats.var + stats.mean**2) if p.raw_moments else 0.0
        return (
            alpha * c * (p.u_w * (n + 3) * stats.var + (p.u_w * (n + 1) * mean_abs) ** 2 + raw)
            + p.u_w * np.abs(c * stats.var - before_var)
            + p.u_o * (np.abs(before_var) + np.abs(after_var))
            + p.tiny
        )

    mean_scale = np.abs(before_mean) + np.abs(after_mean) + alpha * mean_abs
    var_scale = np.abs(before_var) + np.abs(after_var) + alpha * c * stats.var
    return StateBounds(
        mean=precision.floored(_both(mean_bound, precision), mean_scale),
        var=precision.floored(_both(var_bound, precision), var_scale),
    )


@dataclass(frozen=True)
class Comparison:
    """How an actual array compares with the expected one under an elementwise bound.

    The values ``*_at_worst`` are those of the element that most exceeds its bound;
    ``ulps`` is its error in ulps of the compared dtype at its expected value (what a reader
    computes from the printed numbers); the ``max_*`` errors are over every element.
    """

    quantity: str
    ok: bool
    reason: str
    max_abs_error: float
    max_rel_error: float
    ulps: Ulps
    worst_index: tuple[int, ...] | None
    expected_at_worst: float | None
    actual_at_worst: float | None
    bound_at_worst: float | None
    #: the worst error in ulps over the elements that matter (:func:`significant_ulps`),
    #: the figure the matrix shows for a clause that passed; ``None``: no element counts
    significant: Ulps | None = None

    @property
    def nonfinite(self) -> bool:
        """Whether it failed on a NaN or an infinity where the reference is finite."""
        return not self.ok and self.reason.startswith("non-finite")

    def describe(self) -> str:
        if self.worst_index is None:
            return f"{self.quantity}: {self.reason}"
        return (
            f"{self.quantity}: {self.reason}; at index {self.worst_index} expected "
            f"{self.expected_at_worst!r}, got {self.actual_at_worst!r}: {self._error()} "
            f"(bound {self.bound_at_worst:.3g}); max abs error {self.max_abs_error:.3g}, "
            f"max rel error {self.max_rel_error:.3g}"
        )

    def _error(self) -> str:
        """The worst element's error, absolute and in ulps of the dtype at its value."""
        assert self.expected_at_worst is not None and self.actual_at_worst is not None
        error = abs(self.actual_at_worst - self.expected_at_worst)
        if not math.isfinite(error):
            return "a non-finite error"
        return f"error {error:.3g} = {self.ulps} at {self.expected_at_worst:.4g}"


def compare(
    quantity: str,
    actual: Array,
    expected: Array,
    bound: Array,
    dtype: str,
    mask: Array | None = None,
) -> Comparison:
    """Compare elementwise; NaN or infinity where the expected value is finite fails, but
    for an infinity of the sign of an exact value that lies beyond the range of ``dtype``
    (conv.io.finite: a value within the bound would round to it; it counts as no error).

    The error in ulps is the worst element's, against the spacing of ``dtype`` at its
    expected value.

    ``mask`` selects the elements that are compared (all by default).
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return Comparison(
            quantity,
            False,
            f"shape {actual.shape}, expected {expected.shape}",
            np.inf,
            np.inf,
            Ulps(np.inf, dtype),
            None,
            None,
            None,
            None,
        )
    bound = _shaped(bound, expected.shape)
    finite = np.isfinite(expected)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        # an infinity that is the rounded result (conv.io.finite) is left out, as no error
        selected = ~(finite & rounds_to_infinity(actual, expected, bound, dtype))
        if mask is not None:
            selected &= _shaped(np.asarray(mask, dtype=bool), expected.shape)
        error = np.abs(actual - expected)
        if not (finite.all() and np.isfinite(actual).all()):
            error = np.where(finite, error, np.where(actual == expected, 0.0, np.inf))
            error = np.where(np.isnan(error), np.inf, error)
        error = np.where(selected, error, 0.0)
        excess = np.where(selected, error - bound, -np.inf)
        if excess.size == 0:
            return Comparison(
                quantity, True, "empty", 0.0, 0.0, Ulps(0.0, dtype), None, None, None, None
            )
        worst = np.unravel_index(int(np.argmax(excess)), expected.shape)
        # an exact value is no relative error, also at zero (where 0 / 0 would be NaN)
        relative = np.where(selected & finite & (error > 0), error / np.abs(expected), 0.0)
    ok = bool(np.all(excess <= 0))
    nonfinite = not ok and bool(np.any(selected & finite & ~np.isfinite(actual)))
    reason = (
        "within bound"
        if ok
        else (
            "non-finite where the reference is finite" if nonfinite else "error exceeds the bound"
        )
    )
    figure = significant_ulps(actual, expected, bound, dtype, selected)
    return Comparison(
        quantity=quantity,
        ok=ok,
        reason=reason,
        max_abs_error=float(np.max(error)),
        max_rel_error=float(np.max(relative)),
        ulps=Ulps.of(float(error[worst]), float(expected[worst]), dtype),
        worst_index=tuple(int(i) for i in worst),
        expected_at_worst=float(expected[worst]),
        actual_at_worst=float(actual[worst]),
        bound_at_worst=float(bound[worst]),
        significant=None if figure is None else Ulps(figure, dtype),
    )


def rounds_to_infinity(
    actual: Array, expected: Array, bound: Array, dtype: str
) -> NDArray[np.bool_]:
    """Where ``actual`` is the infinity that a value within ``bound`` of ``expected`` rounds
    to in ``dtype``: one of its sign, at least :attr:`~normspec.conformance.dtypes.
    FloatFormat.overflow_threshold` in magnitude (conv.io.finite)."""
    infinite = np.isinf(actual)
    if not infinite.any():
        return infinite
    threshold = float_format(dtype).overflow_threshold
    with np.errstate(invalid="ignore", over="ignore"):
        beyond = np.where(actual > 0, expected + bound >= threshold, expected - bound <= -threshold)
    return beyond & infinite


def _shaped(values: Any, shape: tuple[int, ...]) -> Any:
    """``values`` broadcast to ``shape`` (as they are where they have it)."""
    return values if np.shape(values) == shape else np.broadcast_to(values, shape)


#: Elements whose bound allows more ulps of their value than this are left out of the figure.
SIGNIFICANT_BOUND_ULPS = 2.0**20


def significant_ulps(
    actual: Array,
    expected: Array,
    bound: Array,
    dtype: str,
    mask: NDArray[np.bool_] | None = None,
) -> float | None:
    """The worst elementwise error in ulps of the dtype at each expected value (as a failure's
    comparison counts them, :class:`~normspec.conformance.dtypes.Ulps`), over the values that
    matter.

    Only elements whose error bound is at most :data:`SIGNIFICANT_BOUND_ULPS` ulps of their
    reference value count: where the bound is far larger than the value (a gradient that
    cancels to zero, an output equal to a zero beta, a statistic recovered from a state
    update by cancellation) its absolute terms allow errors that are any number of ulps of
    that value, and a figure such as 1e14 ulps would say nothing. ``None`` when no element
    counts; infinity for a non-finite result where the expected value is finite.
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    b = _shaped(np.asarray(bound, dtype=np.float64), expected.shape)
    with np.errstate(invalid="ignore", over="ignore"):
        finite = np.isfinite(expected)
        if mask is not None:
            finite &= _shaped(mask, expected.shape)
        units = ulp(np.where(finite, expected, 0.0), dtype)
        counted = finite & (b <= SIGNIFICANT_BOUND_ULPS * units)
    if not np.any(counted):
        return None
    if not np.all(np.isfinite(actual[counted])):
        return math.inf
    error = np.abs(actual[counted] - expected[counted])
    return float(np.max(error / units[counted]))


# --------------------------------------------------------------------------------------
# Batch renormalization (renorm.accuracy.*)


@dataclass(frozen=True)
class RenormTerms:
    """The exact per-feature quantities of renorm.accuracy.* for one training step.

    Vectors have the shape ``(C,)``; ``zhat``, ``xhat`` and ``a`` have the shape of ``x``.
    ``sigma`` is the moving standard deviation of the set the correction uses (the
    dialect's ``sigma``, see :func:`normspec.reference.renorm.moving_std`).
    """

    n: int
    feature_axis: int
    ndim: int
    s: Array  # 1 / sigma_B
    kappa: Array  # s * mean|x|
    kappa_m: Array  # mean|x| / sigma
    r_u: Array  # sigma_B / sigma, before clipping
    d_u: Array  # (mu_B - mu) / sigma, before clipping
    r: Array
    d: Array
    r_min: float
    r_max: float
    d_max: float
    zhat: Array
    xhat: Array
    a: Array

    @classmethod
    def of(
        cls,
        x: Array,
        feature_axis: int,
        eps: float,
        moving_mean: Array,
        moving_std: Array,
        bounds: RenormBounds,
    ) -> RenormTerms:
        axis = feature_axis % x.ndim
        stats = batch_statistics(x, axis)
        mean_abs = np.mean(np.abs(x), axis=reduction_axes(x.ndim, axis))
        sigma_b = np.sqrt(stats.var + eps)
        sigma = np.asarray(moving_std, dtype=np.float64)
        mu = np.asarray(moving_mean, dtype=np.float64)
        s = 1.0 / sigma_b
        r_u = sigma_b / sigma
        d_u = (stats.mean - mu) / sigma
        r = np.clip(r_u, bounds.r_min, bounds.r_max)
        d = np.clip(d_u, -bounds.d_max, bounds.d_max)

        def pf(vector: Array) -> Array:
            return per_feature(vector, x.ndim, axis)

        zhat = (x - pf(stats.mean)) * pf(s)
        return cls(
            n=stats.count,
            feature_axis=axis,
            ndim=x.ndim,
            s=s,
            kappa=s * mean_abs,
            kappa_m=mean_abs / sigma,
            r_u=r_u,
            d_u=d_u,
            r=r,
            d=d,
            r_min=bounds.r_min,
            r_max=bounds.r_max,
            d_max=bounds.d_max,
            zhat=zhat,
            xhat=zhat * pf(r) + pf(d),
            a=pf(s) * (np.abs(x) + pf(mean_abs)),
        )

    def per_feature(self, vector: Array) -> Array:
        """A ``(C,)`` vector shaped to broadcast against ``x``."""
        return per_feature(np.asarray(vector), self.ndim, self.feature_axis)

    def correction_errors(self, p: Precision) -> tuple[Array, Array]:
        """``(Dr, Dd)``: the errors of the clipped ``r`` and ``d`` (renorm.md, accuracy)."""
        n, u_w = self.n, p.u_w
        e_r = self.r_u * (u_w * (n + 7) + (u_w * (n + 1) * self.kappa) ** 2)
        e_d = u_w * ((n + 1) * self.kappa_m + 4 * np.abs(self.d_u))
        with np.errstate(invalid="ignore"):
            near_r = (self.r_min - e_r <= self.r_u) & (self.r_u <= self.r_max + e_r)
            near_d = np.abs(self.d_u) <= self.d_max + e_d
        dr = u_w * self.r + np.where(near_r, e_r, 0.0)
        dd = 2 * u_w * np.abs(self.d) + np.where(near_d, e_d, 0.0)
        return dr, dd

    def flushed_gradients(self, dy: Array, gamma: Array | None) -> tuple[Array, Array]:
        """The training gradients' underflow terms, in units of ``tiny`` (renorm.md,
        accuracy): ``1 + (1 + g) * (1 + s) * w_i`` for ``dx_i``, with ``w_i = |dy_i| +
        mean|dy| + |zhat_i| * mean|dy * zhat|``, and ``1 + sum_i |dy_i| * (2 + |zhat_i|)``
        for ``dgamma``. A machine that flushes subnormal results may zero ``r``, ``d``, a
        corrected ``xhat_i`` or a product of them; the batch-norm terms, scaled by ``r``,
        do not hold that loss where ``r`` itself is about ``tiny``."""
        axes = reduction_axes(self.ndim, self.feature_axis)
        abs_dy, az = np.abs(dy), np.abs(self.zhat)
        g = _gamma(gamma, dy, self.feature_axis)
        w = (
            abs_dy
            + np.mean(abs_dy, axis=axes, keepdims=True)
            + az * np.mean(abs_dy * az, axis=axes, keepdims=True)
        )
        dx = 1 + (1 + g) * (1 + self.per_feature(self.s)) * w
        return dx, 1 + np.sum(abs_dy * (2 + az), axis=axes)

    def zhat_error(self, p: Precision) -> Array:
        """``E_i``: the error of ``zhat_i`` (bn.accuracy.forward's bound divided by g)."""
        n = self.n
        kappa = self.per_feature(self.kappa)
        az = np.abs(self.zhat)
        return (
            p.u_w * ((n + 1) * kappa + self.a + (n + 3) * az) + az * (p.u_w * (n + 1) * kappa) ** 2
        )


def renorm_train_output_bound(
    precision: Precision,
    x: Array,
    gamma: Array | None,
    beta: Array | None,
    eps: float,
    feature_axis: int,
    moving_mean: Array,
    moving_std: Array,
    bounds: RenormBounds,
) -> Array:
    """Elementwise bound of renorm.accuracy.forward for the training output.

    ``moving_mean`` and ``moving_std`` are the ``mu`` and ``sigma`` the correction is
    computed from (the correction set under ``statistics = separate``), ``bounds`` the
    clipping bounds of the step.
    """
    t = RenormTerms.of(x, feature_axis, eps, moving_mean, moving_std, bounds)
    g, b = _gamma(gamma, x, feature_axis), _beta(beta, x, feature_axis)
    r, s = t.per_feature(t.r), t.per_feature(t.s)

    def bound(p: Precision) -> Array:
        dr, dd = t.correction_errors(p)
        return (
            g * (r * t.zhat_error(p) + np.abs(t.zhat) * t.per_feature(dr) + t.per_feature(dd))
            + p.u_o * (g * np.abs(t.xhat) + b)
            + p.tiny * (1 + g * r * s)
        )

    return _both(bound, precision)


def renorm_inference_output_bound(
    precision: Precision,
    x: Array,
    moving_mean: Array,
    moving_std: Array,
    gamma: Array | None,
    beta: Array | None,
    feature_axis: int,
) -> Array:
    """Elementwise bound of renorm.accuracy.inference (``s = 1 / sigma``, ``a_i`` with ``|mu|``)."""
    s = per_feature(1.0 / np.asarray(moving_std, dtype=np.float64), x.ndim, feature_axis)
    mu = per_feature(np.asarray(moving_mean, dtype=np.float64), x.ndim, feature_axis)
    xhat = (x - mu) * s
    a = s * (np.abs(x) + np.abs(mu))
    g, b = _gamma(gamma, x, feature_axis), _beta(beta, x, feature_axis)

    def bound(p: Precision) -> Array:
        ax = np.abs(xhat)
        return p.u_w * g * (a + 3 * ax) + p.u_o * (g * ax + b) + p.tiny * (1 + g * s)

    return _both(bound, precision)


def renorm_backward_bounds(
    precision: Precision,
    x: Array,
    dy: Array,
    gamma: Array | None,
    eps: float,
    feature_axis: int,
    expected: Any,
    moving_mean: Array,
    moving_std: Array,
    bounds: RenormBounds,
) -> GradientBounds:
    """Bounds of renorm.accuracy.backward for the training-mode gradients.

    ``expected`` holds the exact renorm gradients (``dgamma*``); the batch-norm terms
    ``B_dx``, ``B_dgamma``, ``B_dbeta`` are those of :func:`backward_bounds` for the same
    input, with batch norm's own gradients (``dxbn* = dx* / r``).
    """
    t = RenormTerms.of(x, feature_axis, eps, moving_mean, moving_std, bounds)
    bn_expected = train_backward(dy, x, gamma, eps=eps, feature_axis=feature_axis)
    bn = backward_bounds(precision, x, dy, gamma, eps, feature_axis, bn_expected)
    dxbn = np.abs(bn_expected.dx)
    sum_dy_zhat = np.abs(bn_expected.dgamma)
    sum_dy = np.abs(bn_expected.dbeta)
    dgamma_star = np.abs(np.asarray(expected.dgamma, dtype=np.float64))
    extra_dx = np.zeros_like(dxbn)
    extra_dgamma = np.zeros_like(sum_dy)
    flushed_dx, flushed_dgamma = t.flushed_gradients(dy, gamma)
    for p in (precision, REFERENCE_PRECISION):
        dr, dd = t.correction_errors(p)
        extra_dx = extra_dx + t.per_feature(dr) * dxbn + p.tiny * flushed_dx
        extra_dgamma = (
            extra_dgamma
            + dr * sum_dy_zhat
            + dd * sum_dy
            + p.u_o * dgamma_star
            + p.tiny * flushed_dgamma
        )
    return GradientBounds(
        dx=t.per_feature(t.r) * bn.dx + SAFETY_FACTOR * extra_dx,
        dgamma=t.r * bn.dgamma + np.abs(t.d) * bn.dbeta + SAFETY_FACTOR * extra_dgamma,
        dbeta=bn.dbeta,
    )


def renorm_inference_backward_bounds(
    precision: Precision,
    x: Array,
    dy: Array,
    gamma: Array | None,
    feature_axis: int,
    expected: Any,
    moving_mean: Array,
    moving_std: Array,
) -> GradientBounds:
    """renorm.accuracy.backward in inference mode: bn.accuracy.backward with ``s = 1 / sigma``."""
    sigma = np.asarray(moving_std, dtype=np.float64)
    return backward_bounds(
        precision,
        x,
        dy,
        gamma,
        0.0,  # s = 1 / sqrt(sigma^2 + 0) = 1 / sigma
        feature_axis,
        expected,
        mean=np.asarray(moving_mean, dtype=np.float64),
        var=sigma * sigma,
    )


def renorm_moving_bounds(
    precision: Precision, update: StatisticsUpdate, *, eps: float, average: str
) -> StateBounds:
    """Bounds of renorm.accuracy.moving for one set of moving statistics and its rate.

    ``StateBounds.var`` is the bound of the moving spread: a standard deviation when
    ``average = "std"``, else a variance (the bound of bn.accuracy.running, biased or
    unbiased as ``average`` says).
    """
    running = running_bounds(precision, update, unbiased=average == "variance_unbiased")
    if average != "std":
        return running
    x, feature_axis, alpha = update.x, update.feature_axis, update.alpha
    before_spread, after_spread = update.before.var, update.after.var
    axis = feature_axis % x.ndim
    stats = batch_statistics(x, axis)
    n = stats.count
    sigma_b = np.sqrt(stats.var + eps)
    kappa = np.mean(np.abs(x), axis=reduction_axes(x.ndim, axis)) / sigma_b
    before = np.asarray(before_spread, dtype=np.float64)
    after = np.asarray(after_spread, dtype=np.float64)

    def std_bound(p: Precision) -> Array:
        return (
            alpha * sigma_b * (p.u_w * (n + 5) + (p.u_w * (n + 1) * kappa) ** 2)
            + p.u_w * np.abs(sigma_b - before)
            + p.u_o * (np.abs(before) + np.abs(after))
            + p.tiny
        )

    return StateBounds(mean=running.mean, var=_both(std_bound, precision))
