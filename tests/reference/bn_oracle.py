"""An independent high-precision evaluation of Batch Normalization, for the reference's tests.

Written from the paper's formulas as restated in shared/papers.md (Ioffe and Szegedy 2015:
Algorithm 1, Algorithm 2, the backward equations of section 3) and the running-statistics
update of batchnorm.md, not from the reference: plain sums in mpmath at 60 significant digits,
one feature at a time, on the float64 inputs as given (every float64 is an exact mpf).
Results are mpf values (nothing is rounded back to float64 here), so an error measured against
them is the reference's own error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import mpmath
import numpy as np

DPS = 60
MPF = mpmath.mpf


def precision() -> Any:
    """At least DPS digits: a caller's higher working precision (finite differences) holds."""
    return mpmath.workdps(max(DPS, mpmath.mp.dps))


def rows(array: Any, axis: int) -> np.ndarray:
    """The values of each feature, one row per feature (bookkeeping only, no arithmetic)."""
    a = np.asarray(array)
    return np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1)


def exact(values: Sequence[float]) -> list[mpmath.mpf]:
    return [MPF(float(v)) for v in values]


@dataclass
class FeatureForward:
    """Algorithm 1 for one feature: mu_B, var_B (biased), xhat_i, y_i; s = 1/sqrt(var_B+eps)."""

    x: list[mpmath.mpf]
    mu: mpmath.mpf
    var: mpmath.mpf
    s: mpmath.mpf
    xhat: list[mpmath.mpf]
    y: list[mpmath.mpf]


def feature_forward(
    x: list[mpmath.mpf], gamma: mpmath.mpf, beta: mpmath.mpf, eps: mpmath.mpf
) -> FeatureForward:
    """mu_B = (1/m) sum x_i; var_B = (1/m) sum (x_i - mu_B)^2; xhat_i; y_i = gamma xhat_i + beta."""
    with precision():
        m = len(x)
        mu = mpmath.fsum(x) / m
        var = mpmath.fsum((xi - mu) ** 2 for xi in x) / m
        root = mpmath.sqrt(var + eps)
        xhat = [(xi - mu) / root for xi in x]
        y = [gamma * xh + beta for xh in xhat]
        return FeatureForward(x, mu, var, 1 / root, xhat, y)


def _params(value: Any, count: int, default: float) -> list[float]:
    if value is None:
        return [default] * count
    return [float(v) for v in np.asarray(value, dtype=np.float64)]


def train_forward(x: Any, gamma: Any, beta: Any, eps: float, axis: int) -> list[FeatureForward]:
    """Training forward, one :class:`FeatureForward` per feature (rows in the feature order)."""
    table = rows(x, axis)
    count = table.shape[0]
    g = _params(gamma, count, 1.0)
    b = _params(beta, count, 0.0)
    return [feature_forward(exact(table[f]), MPF(g[f]), MPF(b[f]), MPF(eps)) for f in range(count)]


@dataclass
class FeatureInference:
    """Algorithm 2 with the running statistics: y = gamma (x - E[x]) / sqrt(Var[x] + eps) + beta."""

    s: mpmath.mpf
    xhat: list[mpmath.mpf]
    y: list[mpmath.mpf]


def inference_forward(
    x: Any, mean: Any, var: Any, gamma: Any, beta: Any, eps: float, axis: int
) -> list[FeatureInference]:
    table = rows(x, axis)
    count = table.shape[0]
    g = _params(gamma, count, 1.0)
    b = _params(beta, count, 0.0)
    mu = _params(mean, count, 0.0)
    sigma2 = _params(var, count, 1.0)
    out = []
    with precision():
        for f in range(count):
            root = mpmath.sqrt(MPF(sigma2[f]) + MPF(eps))
            xhat = [(xi - MPF(mu[f])) / root for xi in exact(table[f])]
            out.append(FeatureInference(1 / root, xhat, [MPF(g[f]) * v + MPF(b[f]) for v in xhat]))
    return out


@dataclass
class FeatureGradients:
    dx: list[mpmath.mpf]
    dgamma: mpmath.mpf
    dbeta: mpmath.mpf


def backward_closed(
    fwd: FeatureForward, dy: list[mpmath.mpf], gamma: mpmath.mpf
) -> FeatureGradients:
    """dx_i = gamma s (dy_i - mean(dy) - xhat_i mean(dy xhat)) (batchnorm.md, Backward)."""
    with precision():
        m = len(dy)
        mean_dy = mpmath.fsum(dy) / m
        mean_dy_xhat = mpmath.fsum(d * xh for d, xh in zip(dy, fwd.xhat, strict=True)) / m
        dx = [
            gamma * fwd.s * (d - mean_dy - xh * mean_dy_xhat)
            for d, xh in zip(dy, fwd.xhat, strict=True)
        ]
        return FeatureGradients(dx, mean_dy_xhat * m, mpmath.fsum(dy))


def backward_chain(
    fwd: FeatureForward, dy: list[mpmath.mpf], gamma: mpmath.mpf, eps: mpmath.mpf
) -> FeatureGradients:
    """The paper's step-by-step chain rule (section 3), term by term as papers.md writes it."""
    with precision():
        m = len(dy)
        x, mu, var = fwd.x, fwd.mu, fwd.var
        dxhat = [d * gamma for d in dy]
        dvar = mpmath.fsum(
            dxhat[i] * (x[i] - mu) * MPF(-0.5) * (var + eps) ** MPF(-1.5) for i in range(m)
        )
        dmu = mpmath.fsum(dxhat[i] * (-1 / mpmath.sqrt(var + eps)) for i in range(m)) + dvar * (
            mpmath.fsum(-2 * (x[i] - mu) for i in range(m)) / m
        )
        dx = [
            dxhat[i] / mpmath.sqrt(var + eps) + dvar * 2 * (x[i] - mu) / m + dmu / m
            for i in range(m)
        ]
        dgamma = mpmath.fsum(dy[i] * fwd.xhat[i] for i in range(m))
        return FeatureGradients(dx, dgamma, mpmath.fsum(dy))


def train_backward(
    dy: Any,
    x: Any,
    gamma: Any,
    eps: float,
    axis: int,
    *,
    chain: bool = False,
    fwds: list[FeatureForward] | None = None,
) -> tuple[list[FeatureForward], list[FeatureGradients]]:
    """Forward and gradients per feature, by the closed form or the paper's chain rule."""
    if fwds is None:
        fwds = train_forward(x, gamma, None, eps, axis)
    table = rows(dy, axis)
    g = _params(gamma, table.shape[0], 1.0)
    grads = []
    for f, fwd in enumerate(fwds):
        up = exact(table[f])
        if chain:
            grads.append(backward_chain(fwd, up, MPF(g[f]), MPF(eps)))
        else:
            grads.append(backward_closed(fwd, up, MPF(g[f])))
    return fwds, grads


def inference_backward(
    dy: Any, x: Any, mean: Any, var: Any, gamma: Any, eps: float, axis: int
) -> tuple[list[FeatureInference], list[FeatureGradients]]:
    """Statistics constant: dx = gamma dy / sqrt(var + eps), dgamma = sum dy xhat, dbeta = sum dy.

    (Algorithm 2 is affine in x, so these are its exact derivatives.)
    """
    fwds = inference_forward(x, mean, var, gamma, None, eps, axis)
    table = rows(dy, axis)
    g = _params(gamma, table.shape[0], 1.0)
    grads = []
    with precision():
        for f, fwd in enumerate(fwds):
            up = exact(table[f])
            dx = [MPF(g[f]) * d * fwd.s for d in up]
            dgamma = mpmath.fsum(d * xh for d, xh in zip(up, fwd.xhat, strict=True))
            grads.append(FeatureGradients(dx, dgamma, mpmath.fsum(up)))
    return fwds, grads


def running_update(
    mean: float,
    var: float,
    steps: int,
    mu_b: mpmath.mpf,
    var_b: mpmath.mpf,
    n: int,
    rate: float | None,
    estimator: str,
) -> tuple[mpmath.mpf, mpmath.mpf, mpmath.mpf]:
    """(new mean, new var, alpha): stat + alpha (batch stat - stat), alpha = rate or 1/(t+1).

    The unbiased estimate is n/(n-1) var_B with n every value of the feature.
    """
    with precision():
        alpha = MPF(1) / (steps + 1) if rate is None else MPF(rate)
        v = var_b * n / (n - 1) if estimator == "unbiased" else var_b
        return MPF(mean) + alpha * (mu_b - MPF(mean)), MPF(var) + alpha * (v - MPF(var)), alpha


def loss(
    x: list[mpmath.mpf], gamma: mpmath.mpf, beta: mpmath.mpf, dy: list[mpmath.mpf], eps: mpmath.mpf
) -> mpmath.mpf:
    """L = sum_i dy_i y_i: its gradient is the vector-Jacobian product for cotangent dy."""
    fwd = feature_forward(x, gamma, beta, eps)
    with precision():
        return mpmath.fsum(d * yi for d, yi in zip(dy, fwd.y, strict=True))


FD_DPS = 100
FD_STEP = MPF("1e-30")


def central_difference(function: Callable[[mpmath.mpf], mpmath.mpf], h: mpmath.mpf) -> mpmath.mpf:
    """(f(h) - f(-h)) / 2h at FD_DPS digits: error O(h^2) of the function's own scale."""
    with mpmath.workdps(FD_DPS):
        return (function(h) - function(-h)) / (2 * h)


def finite_difference_gradients(
    x: list[mpmath.mpf], gamma: mpmath.mpf, beta: mpmath.mpf, dy: list[mpmath.mpf], eps: mpmath.mpf
) -> FeatureGradients:
    """The gradient of :func:`loss` in x_i, gamma and beta by central differences.

    At 100 digits with a step of 1e-30 of the feature's length scale sqrt(var_B + eps) in
    ``x_i`` (1e-30 in gamma and beta): the truncation error is of order 1e-60 and the
    cancellation of order 1e-70 kappa of the derivative's scale (kappa = max |x_j| s, the
    digits that ``x_j - mu_B`` cancels), both far below float64's resolution for any kappa
    below 1e40. L is ``gamma sum(dy xhat) + beta sum(dy)``: the derivatives in ``x_i`` and
    gamma are taken with beta = 0 and the one in beta with gamma = 0, so that neither term's
    size limits the resolution of the other's derivative.
    """
    with mpmath.workdps(FD_DPS):
        base = feature_forward(x, gamma, beta, eps)
        h = FD_STEP / base.s
        zero = MPF(0)
        dx = []
        for i in range(len(x)):

            def shifted(t: mpmath.mpf, i: int = i) -> mpmath.mpf:
                moved = list(x)
                moved[i] = moved[i] + t
                return loss(moved, gamma, zero, dy, eps)

            dx.append(central_difference(shifted, h))
        dgamma = central_difference(lambda t: loss(x, gamma + t, zero, dy, eps), FD_STEP)
        dbeta = central_difference(lambda t: loss(x, zero, beta + t, dy, eps), FD_STEP)
        return FeatureGradients(dx, dgamma, dbeta)
