"""The renorm reference against an independent mpmath evaluation of the paper's equations.

The oracle below is written from the paper's Algorithm 1 and its backward equations (as
restated in shared/papers.md), not from the reference: it evaluates them at 50 significant
digits on the inputs as given. The reference must stay within the accuracy clauses
(renorm.accuracy.*) evaluated with ``u_o = u_w = 2^-53``; a float32 evaluation must stay
within them at ``2^-24`` (the clauses are achievable) and a 1e-4 relative error must not
(they discriminate). Hand-worked cases check the chapter's example numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mpmath
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from normspec.reference import Affine, ConstantSchedule, RenormBounds, renorm

mpmath.mp.dps = 50
MP = mpmath.mpf

K = 4.0
U64 = 2.0**-53
U32 = 2.0**-24
TINY64 = float(np.finfo(np.float64).tiny)
TINY32 = float(np.finfo(np.float32).tiny)


# ------------------------------------------------------------------------------------
# The oracle (paper's equations, real arithmetic)


@dataclass
class ExactFeature:
    """Exact per-feature quantities of a training forward and backward."""

    x: list[mpmath.mpf]
    mu_b: mpmath.mpf
    var_b: mpmath.mpf
    sigma_b: mpmath.mpf
    r_u: mpmath.mpf
    d_u: mpmath.mpf
    r: mpmath.mpf
    d: mpmath.mpf
    zhat: list[mpmath.mpf]
    xhat: list[mpmath.mpf]
    y: list[mpmath.mpf]
    dx: list[mpmath.mpf]
    dgamma: mpmath.mpf
    dbeta: mpmath.mpf


def clip(value: mpmath.mpf, low: mpmath.mpf, high: mpmath.mpf) -> mpmath.mpf:
    return min(max(value, low), high)


def exact_feature(
    values: list[float],
    dy: list[float],
    *,
    mu: float,
    sigma: float,
    r_lo: mpmath.mpf,
    r_hi: mpmath.mpf,
    d_max: mpmath.mpf,
    eps: float,
    gamma: float,
    beta: float,
) -> ExactFeature:
    """Algorithm 1 of the renorm paper and its backward pass, for one feature."""
    x = [MP(v) for v in values]
    g = [MP(v) for v in dy]
    m = len(x)
    mu_b = mpmath.fsum(x) / m
    var_b = mpmath.fsum((xi - mu_b) ** 2 for xi in x) / m
    sigma_b = mpmath.sqrt(MP(eps) + var_b)
    r_u = sigma_b / MP(sigma)
    d_u = (mu_b - MP(mu)) / MP(sigma)
    r = clip(r_u, r_lo, r_hi)
    d = clip(d_u, -d_max, d_max)
    zhat = [(xi - mu_b) / sigma_b for xi in x]
    xhat = [zi * r + d for zi in zhat]
    y = [MP(gamma) * xi + MP(beta) for xi in xhat]
    # backward with r and d constant, exactly as the paper writes it
    dxhat = [gi * MP(gamma) for gi in g]
    dsigma_b = mpmath.fsum(dxhat[i] * (x[i] - mu_b) * (-r / sigma_b**2) for i in range(m))
    dmu_b = mpmath.fsum(dxhat[i] * (-r / sigma_b) for i in range(m))
    dx = [
        dxhat[i] * r / sigma_b + dsigma_b * (x[i] - mu_b) / (m * sigma_b) + dmu_b / m
        for i in range(m)
    ]
    dgamma = mpmath.fsum(g[i] * xhat[i] for i in range(m))
    dbeta = mpmath.fsum(g)
    return ExactFeature(x, mu_b, var_b, sigma_b, r_u, d_u, r, d, zhat, xhat, y, dx, dgamma, dbeta)


def exact_bounds(kind: str, a: float, b: float, c: float) -> tuple[mpmath.mpf, ...]:
    """(r_lo, r_hi, d_max) in real arithmetic: symmetric uses the exact 1 / r_max."""
    if kind == "symmetric":
        return 1 / MP(a), MP(a), MP(b)
    return MP(a), MP(b), MP(c)


# ------------------------------------------------------------------------------------
# The accuracy clauses, as the chapter writes them


def bn_backward_terms(f: ExactFeature, dy: list[float], u_w: float, u_o: float, tiny: float, g):
    """B_dx (per value), B_dgamma, B_dbeta of bn.accuracy.backward with s = 1 / sigma_B."""
    n = len(f.x)
    s = float(1 / f.sigma_b)
    mean_abs = float(mpmath.fsum(abs(v) for v in f.x) / n)
    kappa = s * mean_abs
    zh = [abs(float(z)) for z in f.zhat]
    ady = [abs(v) for v in dy]
    m1 = sum(ady) / n
    m2 = sum(ady[j] * (1 + kappa + zh[j]) for j in range(n)) / n
    a = [s * (abs(float(v)) + mean_abs) for v in f.x]
    dxbn = [abs(float(v / f.r)) if f.r != 0 else 0.0 for v in f.dx]
    b_dx = [
        u_w * (n + 3) * g * s * (ady[i] + m1 + (1 + kappa + a[i] + zh[i]) * m2)
        + u_o * dxbn[i]
        + tiny * (1 + g * s)
        for i in range(n)
    ]
    dgamma_bn = abs(float(mpmath.fsum(MP(dy[i]) * f.zhat[i] for i in range(n))))
    b_dgamma = u_w * (n + 3) * n * m2 + u_o * dgamma_bn
    b_dbeta = u_w * n * n * m1 + u_o * abs(float(f.dbeta))
    return b_dx, b_dgamma, b_dbeta, dxbn, dgamma_bn


def correction_errors(f: ExactFeature, sigma: float, bounds: tuple, u_w: float):
    """Dr and Dd of the chapter's accuracy section."""
    n = len(f.x)
    s = float(1 / f.sigma_b)
    mean_abs = float(mpmath.fsum(abs(v) for v in f.x) / n)
    kappa = s * mean_abs
    kappa_m = mean_abs / sigma
    r_u, d_u, r, d = float(f.r_u), float(f.d_u), float(f.r), float(f.d)
    r_lo, r_hi, d_max = (float(v) for v in bounds)
    e_r = r_u * (u_w * (n + 7) + (u_w * (n + 1) * kappa) ** 2)
    e_d = u_w * ((n + 1) * kappa_m + 4 * abs(d_u))
    dr = u_w * r + (e_r if r_lo - e_r <= r_u <= r_hi + e_r else 0.0)
    dd = 2 * u_w * abs(d) + (e_d if abs(d_u) <= d_max + e_d else 0.0)
    return dr, dd


def forward_bound(f, sigma, bounds, gamma, beta, u_o, u_w, tiny):
    """renorm.accuracy.forward, per value."""
    n = len(f.x)
    g = abs(gamma)
    s = float(1 / f.sigma_b)
    mean_abs = float(mpmath.fsum(abs(v) for v in f.x) / n)
    kappa = s * mean_abs
    r = float(f.r)
    dr, dd = correction_errors(f, sigma, bounds, u_w)
    out = []
    for i in range(n):
        zh = abs(float(f.zhat[i]))
        a_i = s * (abs(float(f.x[i])) + mean_abs)
        e_i = u_w * ((n + 1) * kappa + a_i + (n + 3) * zh) + zh * (u_w * (n + 1) * kappa) ** 2
        xh = abs(float(f.xhat[i]))
        out.append(
            K * (g * (r * e_i + zh * dr + dd) + u_o * (g * xh + abs(beta)) + tiny * (1 + g * r * s))
        )
    return out


def backward_bounds(f, dy, sigma, bounds, gamma, u_o, u_w, tiny):
    """renorm.accuracy.backward: bounds on dx (per value), dgamma, dbeta."""
    g = abs(gamma)
    r, d = float(f.r), float(f.d)
    dr, dd = correction_errors(f, sigma, bounds, u_w)
    b_dx, b_dgamma, b_dbeta, dxbn, dgamma_bn = bn_backward_terms(f, dy, u_w, u_o, tiny, g)
    dx = [K * (r * b_dx[i] + dr * dxbn[i]) for i in range(len(b_dx))]
    dgamma = K * (
        r * b_dgamma
        + dr * dgamma_bn
        + abs(d) * b_dbeta
        + dd * abs(float(f.dbeta))
        + u_o * abs(float(f.dgamma))
    )
    return dx, dgamma, K * b_dbeta


# ------------------------------------------------------------------------------------
# Inputs


@st.composite
def renorm_cases(draw, *, finite_bounds: bool = False):
    """A small input (rank 2 or 3, any feature axis), a state, bounds, gamma, beta, dy."""
    features = draw(st.integers(1, 3))
    batch = draw(st.integers(1, 4))
    spatial = draw(st.integers(1, 3))
    rank3 = draw(st.booleans())
    shape = (batch, features, spatial) if rank3 else (batch * spatial, features)
    axis = 1
    size = int(np.prod(shape))
    unit = st.floats(-1.0, 1.0, allow_subnormal=False)
    raw = np.array(draw(st.lists(unit, min_size=size, max_size=size))).reshape(shape)
    offsets = np.array(
        draw(
            st.lists(st.sampled_from([0.0, 3.0, -50.0, 1e4]), min_size=features, max_size=features)
        )
    )
    scales = np.array(
        draw(st.lists(st.sampled_from([1.0, 1e-3, 100.0]), min_size=features, max_size=features))
    )
    x = raw * scales.reshape((1, features) + (1,) * (len(shape) - 2)) + offsets.reshape(
        (1, features) + (1,) * (len(shape) - 2)
    )
    if draw(st.booleans()):  # move the feature axis
        target = draw(st.integers(0, x.ndim - 1))
        x = np.moveaxis(x, 1, target)
        axis = target
    eps = draw(st.sampled_from([1e-5, 1e-3, 0.75, 2.0, 1e-8]))
    mu = np.array(draw(st.lists(st.floats(-60.0, 60.0), min_size=features, max_size=features)))
    sigma = np.array(draw(st.lists(st.floats(0.01, 50.0), min_size=features, max_size=features)))
    kind = draw(st.sampled_from(["symmetric", "independent", "bn"]))
    if kind == "symmetric":
        r_max = draw(st.floats(1.0, 5.0))
        d_max = draw(st.floats(0.0, 5.0))
        bounds = RenormBounds.symmetric(r_max, d_max)
        exact = exact_bounds("symmetric", r_max, d_max, 0.0)
    elif kind == "independent":
        inf = math.inf if not finite_bounds else 1e3
        r_min = draw(st.sampled_from([0.0, 0.2, 0.5, 1.0]))
        r_max = draw(st.sampled_from([inf, 1.0, 1.5, 3.0]))
        r_max = max(r_max, r_min)
        d_max = draw(st.sampled_from([inf, 0.0, 0.5, 5.0]))
        bounds = RenormBounds(r_min, r_max, d_max)
        exact = exact_bounds("independent", r_min, r_max, d_max)
    else:
        bounds = RenormBounds.symmetric(1.0, 0.0)
        exact = exact_bounds("symmetric", 1.0, 0.0, 0.0)
    gamma = np.array(draw(st.lists(st.floats(-3.0, 3.0), min_size=features, max_size=features)))
    beta = np.array(draw(st.lists(st.floats(-3.0, 3.0), min_size=features, max_size=features)))
    dy = np.array(draw(st.lists(unit, min_size=size, max_size=size))).reshape(x.shape)
    return x, axis, eps, mu, sigma, bounds, exact, gamma, beta, dy


def per_feature_values(array: np.ndarray, axis: int) -> list[list[float]]:
    moved = np.moveaxis(array, axis, 0)
    return [list(map(float, row.ravel())) for row in moved]


# ------------------------------------------------------------------------------------
# The reference within the bounds at float64


@given(renorm_cases())
def test_train_forward_and_backward_within_the_accuracy_clauses(case) -> None:
    """renorm.train.output, renorm.backward.train.* within renorm.accuracy.forward/backward."""
    x, axis, eps, mu, sigma, bounds, exact_b, gamma, beta, dy = case
    y, corr = renorm.train_forward(
        x, mu, sigma, gamma, beta, bounds=bounds, eps=eps, feature_axis=axis
    )
    grads = renorm.train_backward(dy, x, corr.r, corr.d, gamma, eps=eps, feature_axis=axis)
    xs, dys, ys, dxs = (per_feature_values(a, axis) for a in (x, dy, y, grads.dx))
    for c in range(len(xs)):
        f = exact_feature(
            xs[c],
            dys[c],
            mu=mu[c],
            sigma=sigma[c],
            r_lo=exact_b[0],
            r_hi=exact_b[1],
            d_max=exact_b[2],
            eps=eps,
            gamma=gamma[c],
            beta=beta[c],
        )
        bound_y = forward_bound(f, sigma[c], exact_b, gamma[c], beta[c], U64, U64, TINY64)
        for i, value in enumerate(ys[c]):
            assert abs(MP(value) - f.y[i]) <= bound_y[i], (c, i, value, f.y[i])
        b_dx, b_dgamma, b_dbeta = backward_bounds(
            f, dys[c], sigma[c], exact_b, gamma[c], U64, U64, TINY64
        )
        for i, value in enumerate(dxs[c]):
            assert abs(MP(value) - f.dx[i]) <= b_dx[i], (c, i, value, f.dx[i])
        assert abs(MP(float(grads.dgamma[c])) - f.dgamma) <= b_dgamma
        assert abs(MP(float(grads.dbeta[c])) - f.dbeta) <= b_dbeta
        # the correction itself (renorm.train.correction)
        dr, dd = correction_errors(f, sigma[c], exact_b, U64)
        assert abs(MP(float(corr.r[c])) - f.r) <= K * dr
        assert abs(MP(float(corr.d[c])) - f.d) <= K * dd
        assert abs(MP(float(corr.std[c])) - f.sigma_b) <= 8 * U64 * float(f.sigma_b) * (
            len(xs[c]) + 3
        )


@given(renorm_cases())
def test_inference_within_the_accuracy_clause(case) -> None:
    """renorm.infer.output within renorm.accuracy.inference; renorm.backward.infer."""
    x, axis, _eps, mu, sigma, _bounds, _exact, gamma, beta, dy = case
    y = renorm.inference_forward(x, mu, sigma, gamma, beta, feature_axis=axis)
    grads = renorm.inference_backward(dy, x, mu, sigma, gamma, feature_axis=axis)
    xs, ys, dys, dxs = (per_feature_values(a, axis) for a in (x, y, dy, grads.dx))
    for c in range(len(xs)):
        s = 1 / MP(sigma[c])
        g = abs(gamma[c])
        for i, value in enumerate(xs[c]):
            xh = (MP(value) - MP(mu[c])) * s
            exact = MP(gamma[c]) * xh + MP(beta[c])
            a_i = float(s) * (abs(value) + abs(mu[c]))
            bound = K * (
                U64 * g * (a_i + 3 * abs(float(xh)))
                + U64 * (g * abs(float(xh)) + abs(beta[c]))
                + TINY64 * (1 + g * float(s))
            )
            assert abs(MP(ys[c][i]) - exact) <= bound
            exact_dx = MP(gamma[c]) * MP(dys[c][i]) * s
            assert abs(MP(dxs[c][i]) - exact_dx) <= 4 * U64 * abs(float(exact_dx)) + TINY64
        # bn.accuracy.backward in inference mode, with s = 1 / sigma
        n = len(xs[c])
        xhat = [(MP(v) - MP(mu[c])) * s for v in xs[c]]
        exact_dgamma = mpmath.fsum(MP(dys[c][i]) * xhat[i] for i in range(n))
        kappa = float(s) * sum(abs(v) for v in xs[c]) / n
        m2 = sum(abs(dys[c][i]) * (1 + kappa + abs(float(xhat[i]))) for i in range(n)) / n
        bound = K * (U64 * (n + 3) * n * m2 + U64 * abs(float(exact_dgamma)))
        assert abs(MP(float(grads.dgamma[c])) - exact_dgamma) <= bound


@given(
    renorm_cases(),
    st.floats(0.0, 1.0),
    st.sampled_from(["std", "variance_biased", "variance_unbiased"]),
)
def test_moving_statistics_within_the_accuracy_clause(case, alpha, average) -> None:
    """renorm.moving.mean / renorm.moving.average within renorm.accuracy.moving."""
    x, axis, eps, mu, sigma, bounds, _exact, gamma, beta, _dy = case
    spread = sigma if average == "std" else sigma**2
    state = renorm.RenormStatistics(mu, spread, 3)
    _, corr = renorm.train_forward(
        x, mu, sigma, gamma, beta, bounds=bounds, eps=eps, feature_axis=axis
    )
    n = corr.batch.count
    if average == "variance_unbiased" and n < 2:
        with pytest.raises(ValueError, match="unbiased"):
            renorm.update_moving_statistics(state, corr, average=average, rate=alpha)
        return
    new = renorm.update_moving_statistics(state, corr, average=average, rate=alpha)
    assert new.steps == 4
    xs = per_feature_values(x, axis)
    for c in range(len(xs)):
        vals = [MP(v) for v in xs[c]]
        mu_b = mpmath.fsum(vals) / n
        var_b = mpmath.fsum((v - mu_b) ** 2 for v in vals) / n
        sigma_b = mpmath.sqrt(var_b + MP(eps))
        mean_abs = float(mpmath.fsum(abs(v) for v in vals) / n)
        kappa = mean_abs / float(sigma_b)
        m_exact = MP(mu[c]) + MP(alpha) * (mu_b - MP(mu[c]))
        bound_m = K * (
            alpha * U64 * (n + 1) * mean_abs + U64 * (abs(mu[c]) + abs(float(m_exact))) + TINY64
        )
        assert abs(MP(float(new.mean[c])) - m_exact) <= bound_m
        if average == "std":
            s_exact = MP(spread[c]) + MP(alpha) * (sigma_b - MP(spread[c]))
            bound_s = K * (
                alpha * float(sigma_b) * (U64 * (n + 5) + (U64 * (n + 1) * kappa) ** 2)
                + U64 * (abs(spread[c]) + abs(float(s_exact)))
                + TINY64
            )
        else:
            factor = MP(n) / (n - 1) if average == "variance_unbiased" else MP(1)
            s_exact = MP(spread[c]) + MP(alpha) * (factor * var_b - MP(spread[c]))
            bound_s = K * (
                alpha
                * float(factor)
                * (U64 * (n + 3) * float(var_b) + (U64 * (n + 1) * mean_abs) ** 2)
                + U64 * (abs(spread[c]) + abs(float(s_exact)))
                + TINY64
            )
        assert abs(MP(float(new.spread[c])) - s_exact) <= bound_s


# ------------------------------------------------------------------------------------
# The clauses are achievable in float32, and they discriminate


def float32_renorm(x, mu, sigma, bounds, eps, gamma, beta, dy, axis):
    """A plain float32 implementation (two-pass statistics), as a library would compute."""
    f32 = np.float32
    axes = tuple(a for a in range(x.ndim) if a != axis)
    shape = [1] * x.ndim
    shape[axis] = -1
    mean = x.mean(axis=axes, dtype=f32)
    centered = x - mean.reshape(shape)
    var = np.mean(centered * centered, axis=axes, dtype=f32)
    std = np.sqrt(var + f32(eps))
    r = np.clip(std / sigma, f32(bounds.r_min), f32(bounds.r_max)).astype(f32)
    d = np.clip((mean - mu) / sigma, f32(-bounds.d_max), f32(bounds.d_max)).astype(f32)
    zhat = centered / std.reshape(shape)
    y = (gamma * r).reshape(shape) * zhat + (gamma * d + beta).reshape(shape)
    n = x.size // x.shape[axis]
    mdy = dy.mean(axis=axes, dtype=f32).reshape(shape)
    mdyz = (dy * zhat).mean(axis=axes, dtype=f32).reshape(shape)
    dx = (gamma * r / std).reshape(shape) * (dy - mdy - zhat * mdyz)
    assert n > 0
    return y.astype(f32), dx.astype(f32)


@given(renorm_cases(finite_bounds=True))
def test_a_float32_evaluation_meets_the_clauses_at_float32(case) -> None:
    """renorm.accuracy.forward/backward are achievable: float32 two-pass arithmetic meets them."""
    x, axis, eps, mu, sigma, bounds, _exact, gamma, beta, dy = case
    f32 = np.float32
    x32, dy32 = x.astype(f32), dy.astype(f32)
    mu32, sigma32, g32, b32 = (a.astype(f32) for a in (mu, sigma, gamma, beta))
    eps32 = float(f32(eps))
    b = RenormBounds(float(f32(bounds.r_min)), float(f32(bounds.r_max)), float(f32(bounds.d_max)))
    exact_b = (MP(b.r_min), MP(b.r_max), MP(b.d_max))
    y, dx = float32_renorm(x32, mu32, sigma32, b, eps32, g32, b32, dy32, axis)
    xs, dys, ys, dxs = (per_feature_values(a, axis) for a in (x32, dy32, y, dx))
    for c in range(len(xs)):
        f = exact_feature(
            xs[c],
            dys[c],
            mu=float(mu32[c]),
            sigma=float(sigma32[c]),
            r_lo=exact_b[0],
            r_hi=exact_b[1],
            d_max=exact_b[2],
            eps=eps32,
            gamma=float(g32[c]),
            beta=float(b32[c]),
        )
        bound_y = forward_bound(
            f, float(sigma32[c]), exact_b, float(g32[c]), float(b32[c]), U32, U32, TINY32
        )
        for i, value in enumerate(ys[c]):
            assert abs(MP(value) - f.y[i]) <= bound_y[i], (c, i, value, f.y[i])
        b_dx, _, _ = backward_bounds(
            f, dys[c], float(sigma32[c]), exact_b, float(g32[c]), U32, U32, TINY32
        )
        for i, value in enumerate(dxs[c]):
            assert abs(MP(value) - f.dx[i]) <= b_dx[i], (c, i, value, f.dx[i])


def test_a_relative_error_of_1e_4_fails_the_forward_clause() -> None:
    """renorm.accuracy.forward discriminates: a systematic 1e-4 error is outside it at float32."""
    x = np.array([[0.3, -1.0], [1.7, 2.0], [-0.4, 0.5], [2.2, 1.0]], dtype=np.float32)
    mu, sigma = np.array([0.5, 0.4], np.float32), np.array([1.1, 0.9], np.float32)
    gamma, beta = np.array([1.5, -0.7], np.float32), np.array([0.2, 0.1], np.float32)
    bounds = RenormBounds(float(np.float32(1 / 3)), 3.0, 5.0)
    y, _ = float32_renorm(x, mu, sigma, bounds, 1e-3, gamma, beta, np.ones_like(x), 1)
    wrong = y * np.float32(1 + 1e-4)
    exact_b = (MP(bounds.r_min), MP(bounds.r_max), MP(bounds.d_max))
    violations = 0
    for c in range(2):
        f = exact_feature(
            list(map(float, x[:, c])),
            [1.0] * 4,
            mu=float(mu[c]),
            sigma=float(sigma[c]),
            r_lo=exact_b[0],
            r_hi=exact_b[1],
            d_max=exact_b[2],
            eps=float(np.float32(1e-3)),
            gamma=float(gamma[c]),
            beta=float(beta[c]),
        )
        bound = forward_bound(
            f, float(sigma[c]), exact_b, float(gamma[c]), float(beta[c]), U32, U32, TINY32
        )
        for i in range(4):
            assert abs(MP(float(y[i, c])) - f.y[i]) <= bound[i]
            violations += abs(MP(float(wrong[i, c])) - f.y[i]) > bound[i]
    assert violations >= 4


# ------------------------------------------------------------------------------------
# Hand-worked cases from the chapter (renorm.md)


def chapter_example():
    x = np.array([[1.0], [2.0], [3.0], [4.0]])
    return x, np.array([2.0]), np.array([1.0]), np.array([2.0]), np.array([0.5])


def test_hand_worked_training_output() -> None:
    """renorm.train.output: (1, 2, 3, 4), gamma 2, beta 0.5, eps 0.75, mu 2, sigma 1, r_max 3,
    d_max 0.25 gives r = sqrt(2), d = 0.25 and y = (-2, 0, 2, 4)."""
    x, mu, sigma, gamma, beta = chapter_example()
    y, corr = renorm.train_forward(
        x, mu, sigma, gamma, beta, bounds=RenormBounds.symmetric(3.0, 0.25), eps=0.75
    )
    assert corr.batch.mean[0] == 2.5
    assert corr.batch.var[0] == 1.25
    assert corr.std[0] == pytest.approx(math.sqrt(2), rel=1e-15)
    assert corr.r[0] == pytest.approx(math.sqrt(2), rel=1e-15)
    assert corr.d[0] == 0.25
    np.testing.assert_allclose(y.ravel(), [-2.0, 0.0, 2.0, 4.0], rtol=0, atol=1e-15)


def test_hand_worked_gradients() -> None:
    """renorm.backward.train.*: dy = (1, 0, 0, 0) gives dx = (0.9375, -0.6875, -0.3125,
    0.0625), dgamma = -1.25, dbeta = 1."""
    x, mu, sigma, gamma, _beta = chapter_example()
    dy = np.array([[1.0], [0.0], [0.0], [0.0]])
    _, corr = renorm.train_forward(
        x, mu, sigma, gamma, bounds=RenormBounds.symmetric(3.0, 0.25), eps=0.75
    )
    grads = renorm.train_backward(dy, x, corr.r, corr.d, gamma, eps=0.75)
    np.testing.assert_allclose(grads.dx.ravel(), [0.9375, -0.6875, -0.3125, 0.0625], atol=1e-15)
    assert grads.dgamma[0] == pytest.approx(-1.25, rel=1e-15)
    assert grads.dbeta[0] == 1.0
    # the paper's equations (oracle) give the same numbers
    f = exact_feature(
        [1.0, 2.0, 3.0, 4.0],
        [1.0, 0.0, 0.0, 0.0],
        mu=2.0,
        sigma=1.0,
        r_lo=1 / MP(3),
        r_hi=MP(3),
        d_max=MP(0.25),
        eps=0.75,
        gamma=2.0,
        beta=0.5,
    )
    assert [float(v) for v in f.dx] == pytest.approx([0.9375, -0.6875, -0.3125, 0.0625], abs=1e-40)
    assert float(f.dgamma) == pytest.approx(-1.25, abs=1e-40)


def test_hand_worked_update_and_inference() -> None:
    """renorm.moving.*, renorm.infer.output: after one step with alpha = 0.5, mu = 2.25,
    sigma = 1.2071068 and inference of (1, 2, 3, 4) gives (-1.5710678, 0.0857864,
    1.7426407, 3.3994949)."""
    x, mu, sigma, gamma, beta = chapter_example()
    config = renorm.RenormConfig(
        1, schedule=ConstantSchedule.symmetric(3.0, 0.25), eps=0.75, rate=0.5
    )
    params = Affine(gamma, beta)
    state = renorm.RenormStatistics(mu, sigma, 0)
    y, new = renorm.training_step(config, params, state, x)
    np.testing.assert_allclose(y.ravel(), [-2.0, 0.0, 2.0, 4.0], atol=1e-15)
    assert new.mean[0] == 2.25
    assert new.spread[0] == pytest.approx(1 + 0.5 * (math.sqrt(2) - 1), rel=1e-15)
    assert new.steps == 1
    out = renorm.inference(config, params, new, x)
    np.testing.assert_allclose(
        out.ravel(), [-1.5710678, 0.0857864, 1.7426407, 3.3994949], atol=5e-8
    )


def test_through_r_and_d_example_of_the_chapter() -> None:
    """renorm.backward.train.dx: differentiating through r gives (1.5, -0.5, -0.5, -0.5)
    in the chapter's example (d is clipped, r is not), not the required dx."""
    x, mu, sigma, gamma, beta = chapter_example()
    bounds = RenormBounds.symmetric(3.0, 0.25)
    dy = np.array([1.0, 0.0, 0.0, 0.0])

    def loss(values: np.ndarray) -> float:
        y, _ = renorm.train_forward(
            values.reshape(4, 1), mu, sigma, gamma, beta, bounds=bounds, eps=0.75
        )
        return float(np.dot(dy, y.ravel()))

    h = 1e-6
    through = np.array(
        [(loss(x.ravel() + h * e) - loss(x.ravel() - h * e)) / (2 * h) for e in np.eye(4)]
    )
    np.testing.assert_allclose(through, [1.5, -0.5, -0.5, -0.5], atol=1e-7)
