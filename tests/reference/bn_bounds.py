"""Error measures for the reference's tests: the spec's accuracy clauses and ulps of scale.

Two yardsticks, both evaluated from the exact (mpmath) quantities of :mod:`bn_oracle`:

* the bounds of batchnorm.md's accuracy clauses (bn.accuracy.*) with ``u_o = u_w = 2^-53``,
  ``K = 4``, which the chapter says the reference meets;
* the error in ulps of each output's *natural scale*, the size of the terms that make it
  (the "Reference accuracy" section states these figures):

  - ``y_i`` (training): ``|gamma| (|xhat_i| + r) + |beta|`` with ``r = sqrt(var_B) s``
    (``r`` is the root mean square of ``xhat``: the mean's error moves every ``xhat_i`` by a
    fraction of it);
  - ``dx_i`` (training): ``|gamma| s (|dy_i| + mean|dy| + (|xhat_i| + r) mean(|dy| (|xhat| + r)))``;
  - ``dgamma``: ``sum |dy_j| (|xhat_j| + r)``; ``dbeta``: ``sum |dy_j|``;
  - ``mu_B``: ``mean |x_j|``; ``var_B``: ``var_B`` itself;
  - inference: ``y_i``: ``|gamma xhat_i| + |beta|``; ``dx_i``: ``|gamma s dy_i|``;
    ``dgamma``: ``sum |dy_j xhat_j|``;
  - running mean: ``|mean| + |mean'| + alpha mean |x_j|``; running variance:
    ``|var| + |var'| + alpha c var_B`` (``c = n / (n - 1)`` for the unbiased estimate, else 1).

``ulp(t) = 2^(e - 52)`` for ``2^e <= t < 2^(e + 1)``: the spacing of float64 numbers at ``t``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import mpmath
import numpy as np
from bn_oracle import DPS, MPF, FeatureForward, FeatureGradients, FeatureInference

U = 2.0**-53
K = 4.0
TINY = float(np.finfo(np.float64).tiny)


def ulp(scale: float) -> float:
    """The spacing of float64 numbers at ``scale`` (> 0)."""
    return math.ldexp(1.0, max(math.frexp(scale)[1] - 53, -1074))


def error(computed: float, exact: mpmath.mpf) -> float:
    """``|computed - exact|`` evaluated exactly (NaN when ``computed`` is not finite)."""
    if not math.isfinite(computed):
        return math.nan
    with mpmath.workdps(DPS):
        return float(abs(MPF(computed) - exact))


def ulps(err: float, scale: float) -> float:
    """An error in ulps of ``scale``; an exact result is 0 ulps even at scale 0."""
    if err == 0.0:
        return 0.0
    if not scale > 0 or math.isnan(err):
        return math.inf
    return err / ulp(scale)


@dataclass
class Tally:
    """Errors of one kind of output: ratios to the spec's bounds, and ulps of scale.

    The ulps are counted beyond an underflow allowance ``floor`` (the spec's ``tiny`` term:
    ``tiny (1 + |gamma| s)`` for y and dx, ``tiny`` otherwise), which only matters for
    results within a factor 2^52 or so of the smallest normal number: there float64's
    absolute spacing 2^-1074, not the relative one, limits every evaluation.
    """

    ratios: list[float] = field(default_factory=list)
    ulps: list[float] = field(default_factory=list)
    worst: str = ""
    worst_ulps: str = ""
    _worst_ratio: float = -1.0
    _max_ulps: float = -1.0

    def add(self, err: float, bound: float, scale: float, where: str, floor: float = TINY) -> None:
        if math.isnan(err):
            ratio = math.inf
        elif err == 0 or math.isnan(bound):
            # a NaN bound is inf * 0: a term (kappa = s mean|x|, say) exceeds the float64
            # range, so the clause's bound does too, whatever the other factor
            ratio = 0.0
        else:
            ratio = err / bound if bound > 0 else math.inf
        excess = err if math.isnan(err) else max(err - floor, 0.0)
        count = ulps(excess, scale)
        text = f"{where}: error {err!r}, bound {bound!r}, scale {scale!r}, {count:.3g} ulps"
        if ratio > self._worst_ratio:
            self._worst_ratio, self.worst = ratio, text
        if count > self._max_ulps:
            self._max_ulps, self.worst_ulps = count, text
        self.ratios.append(ratio)
        self.ulps.append(count)


def _f(value: mpmath.mpf) -> float:
    return float(value)


def _mean_abs(values: Sequence[mpmath.mpf]) -> float:
    with mpmath.workdps(DPS):
        return float(mpmath.fsum(abs(v) for v in values) / len(values))


def rms(fwd: FeatureForward) -> float:
    with mpmath.workdps(DPS):
        return float(mpmath.sqrt(fwd.var) * fwd.s)


# ---------------------------------------------------------------------------------------
# bn.accuracy.* with u_o = u_w = 2^-53 (the magnitudes are multiplied before u, so that a
# subnormal gamma or dy does not underflow a term that a large s would have restored)


def forward_bounds(fwd: FeatureForward, gamma: float, beta: float) -> list[float]:
    """bn.accuracy.forward, per value."""
    n = len(fwd.x)
    g = abs(gamma)
    s = _f(fwd.s)
    mean_abs = _mean_abs(fwd.x)
    kappa = s * mean_abs
    second = kappa * (n + 1) * U
    out = []
    for xi, xh in zip(fwd.x, fwd.xhat, strict=True):
        a_i = s * (abs(_f(xi)) + mean_abs)
        z = abs(_f(xh))
        out.append(
            K
            * (
                g * ((n + 1) * kappa + a_i + (n + 3) * z) * U
                + g * z * second * second
                + (g * z + abs(beta)) * U
                + TINY * (1 + g * s)
            )
        )
    return out


def inference_bounds(
    fwd: FeatureInference, x: Sequence[float], mean: float, gamma: float, beta: float
) -> list[float]:
    """bn.accuracy.inference, per value; ``a_i = s (|x_i| + |mean|)`` with the running mean."""
    g = abs(gamma)
    s = _f(fwd.s)
    out = []
    for xi, xh in zip(x, fwd.xhat, strict=True):
        z = abs(_f(xh))
        a_i = s * (abs(xi) + abs(mean))
        out.append(K * (g * (a_i + 3 * z) * U + (g * z + abs(beta)) * U + TINY * (1 + g * s)))
    return out


def backward_bounds(
    x: Sequence[mpmath.mpf],
    s: float,
    xhat: Sequence[mpmath.mpf],
    dy: Sequence[float],
    grads: FeatureGradients,
    gamma: float,
    *,
    inference: bool = False,
    running_mean: float = 0.0,
) -> tuple[list[float], float, float]:
    """bn.accuracy.backward: bounds on dx (per value), dgamma, dbeta.

    In inference mode ``kappa`` and ``a_i`` use the running mean and the dx bound has no
    ``n`` factor (the chapter: "the same bounds hold with the running statistics").
    """
    n = len(x)
    g = abs(gamma)
    mean_abs = abs(running_mean) if inference else _mean_abs(x)
    kappa = s * mean_abs
    z = [abs(_f(v)) for v in xhat]
    a = [s * (abs(_f(v)) + mean_abs) for v in x]
    ady = [abs(v) for v in dy]
    m1 = sum(ady) / n
    m2 = sum(ady[j] * (1 + kappa + z[j]) for j in range(n)) / n
    factor = 1 if inference else n + 3
    dx = [
        K
        * (
            g * s * (ady[i] + m1 + (1 + kappa + a[i] + z[i]) * m2) * factor * U
            + abs(_f(grads.dx[i])) * U
            + TINY * (1 + g * s)
        )
        for i in range(n)
    ]
    # The chapter's dgamma and dbeta bounds have no ``tiny`` term; without one no float64
    # evaluation meets them where the gradient is subnormal, so it is added here as in the
    # other clauses (reported to the spec's maintainers).
    dgamma = K * (m2 * n * (n + 3) * U + abs(_f(grads.dgamma)) * U + TINY)
    dbeta = K * (m1 * n * n * U + abs(_f(grads.dbeta)) * U + TINY)
    return dx, dgamma, dbeta


def running_bounds(
    mean: float,
    var: float,
    new_mean: mpmath.mpf,
    new_var: mpmath.mpf,
    alpha: float,
    x: Sequence[mpmath.mpf],
    var_b: mpmath.mpf,
    c: float,
) -> tuple[float, float]:
    """bn.accuracy.running: bounds on the updated running mean and variance.

    The ``u_w |mu_B - mean|`` and ``u_w |c var_B - var|`` terms allow for a rounded alpha.
    """
    n = len(x)
    mean_abs = _mean_abs(x)
    mu_b = _f(mpmath.fsum(x) / n)
    b_mean = K * (
        mean_abs * (n + 1) * U * alpha
        + abs(mu_b - mean) * U
        + (abs(mean) + abs(_f(new_mean))) * U
        + TINY
    )
    second = mean_abs * (n + 1) * U
    b_var = K * (
        (_f(var_b) * (n + 3) * U + second * second) * c * alpha
        + abs(c * _f(var_b) - var) * U
        + (abs(var) + abs(_f(new_var))) * U
        + TINY
    )
    return b_mean, b_var


# ---------------------------------------------------------------------------------------
# natural scales (see the module docstring)


def forward_scales(fwd: FeatureForward, gamma: float, beta: float) -> list[float]:
    r = rms(fwd)
    return [abs(gamma) * (abs(_f(xh)) + r) + abs(beta) for xh in fwd.xhat]


def backward_scales(
    fwd: FeatureForward, dy: Sequence[float], gamma: float
) -> tuple[list[float], float, float]:
    n = len(dy)
    r = rms(fwd)
    s = _f(fwd.s)
    z = [abs(_f(v)) + r for v in fwd.xhat]
    ady = [abs(v) for v in dy]
    m1 = sum(ady) / n
    m2 = sum(ady[j] * z[j] for j in range(n)) / n
    dx = [abs(gamma) * s * (ady[i] + m1 + z[i] * m2) for i in range(n)]
    return dx, n * m2, n * m1


def inference_scales(fwd: FeatureInference, gamma: float, beta: float) -> list[float]:
    return [abs(gamma * _f(xh)) + abs(beta) for xh in fwd.xhat]


def inference_backward_scales(
    fwd: FeatureInference, dy: Sequence[float], gamma: float
) -> tuple[list[float], float, float]:
    s = _f(fwd.s)
    dx = [abs(gamma * s * d) for d in dy]
    dgamma = sum(abs(d * _f(xh)) for d, xh in zip(dy, fwd.xhat, strict=True))
    return dx, dgamma, sum(abs(d) for d in dy)


def statistics_scales(fwd: FeatureForward) -> tuple[float, float]:
    return _mean_abs(fwd.x), _f(fwd.var)


def running_scales(
    mean: float,
    var: float,
    new_mean: mpmath.mpf,
    new_var: mpmath.mpf,
    alpha: float,
    x: Sequence[mpmath.mpf],
    var_b: mpmath.mpf,
    c: float,
) -> tuple[float, float]:
    b_mean = abs(mean) + abs(_f(new_mean)) + alpha * _mean_abs(x)
    b_var = abs(var) + abs(_f(new_var)) + alpha * c * _f(var_b)
    return b_mean, b_var
