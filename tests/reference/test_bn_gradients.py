"""The reference's backward against finite differences and the paper's chain rule (mpmath).

Three independent routes to the same vector-Jacobian product, all at 60 digits:

* central differences of the loss ``L = sum_i dy_i y_i`` of the high-precision forward, in
  every ``x_i``, ``gamma`` and ``beta`` (bn_oracle.finite_difference_gradients);
* the paper's step-by-step chain rule (``dxhat``, ``dvar``, ``dmu``; papers.md, section 3);
* the closed form of batchnorm.md.

The three must agree to far below float64's resolution, and the reference must be within
the bound of bn.accuracy.backward of them. Clauses: bn.backward.train.dx,
bn.backward.train.dparams, bn.backward.infer.
"""

from __future__ import annotations

import bn_bounds as bounds
import bn_oracle as oracle
import mpmath
from bn_measure import Case
from bn_strategies import cases, fewer
from hypothesis import given

from normspec.reference import inference_backward, train_backward

MPF = oracle.MPF


def close(a: mpmath.mpf, b: mpmath.mpf, scale: float, digits: int = 30) -> bool:
    """``a`` and ``b`` agree to ``digits`` digits of ``scale`` (oracles against each other)."""
    with mpmath.workdps(oracle.FD_DPS):
        return abs(a - b) <= MPF(10) ** -digits * (MPF(scale) + MPF("1e-300"))


def params(case: Case, features: int) -> tuple[list[float], list[float]]:
    gamma = [1.0] * features if case.gamma is None else [float(v) for v in case.gamma]
    beta = [0.0] * features if case.beta is None else [float(v) for v in case.beta]
    return gamma, beta


def check_gradients(
    case: Case, reference: object, fwds: list, exact: list, gamma: list[float]
) -> None:
    """The reference's dx, dgamma, dbeta within bn.accuracy.backward of ``exact``."""
    dy_rows = oracle.rows(case.dy, case.axis)
    dx_rows = oracle.rows(reference.dx, case.axis)  # type: ignore[attr-defined]
    for f, fwd in enumerate(fwds):
        dy = [float(v) for v in dy_rows[f]]
        b_dx, b_dg, b_db = bounds.backward_bounds(
            fwd.x, float(fwd.s), fwd.xhat, dy, exact[f], gamma[f]
        )
        for i, bound in enumerate(b_dx):
            err = bounds.error(float(dx_rows[f, i]), exact[f].dx[i])
            assert err <= bound, f"dx feature {f} value {i}: error {err}, bound {bound}"
        dgamma, dbeta = reference.dgamma, reference.dbeta  # type: ignore[attr-defined]
        err = bounds.error(float(dgamma[f]), exact[f].dgamma)
        assert err <= b_dg, f"dgamma feature {f}: error {err}, bound {b_dg}"
        err = bounds.error(float(dbeta[f]), exact[f].dbeta)
        assert err <= b_db, f"dbeta feature {f}: error {err}, bound {b_db}"


@fewer(0.3)
@given(case=cases(max_elements=16))
def test_training_backward_against_finite_differences(case: Case) -> None:
    """bn.backward.train.dx/dparams: the reference equals the numerical derivative of the
    high-precision forward (within bn.accuracy.backward), through the batch statistics."""
    features = case.x.shape[case.axis]
    gamma, beta = params(case, features)
    fwds, closed = oracle.train_backward(case.dy, case.x, case.gamma, case.eps, case.axis)
    x_rows, dy_rows = oracle.rows(case.x, case.axis), oracle.rows(case.dy, case.axis)
    numeric = []
    for f in range(features):
        fd = oracle.finite_difference_gradients(
            oracle.exact(x_rows[f]),
            MPF(gamma[f]),
            MPF(beta[f]),
            oracle.exact(dy_rows[f]),
            MPF(case.eps),
        )
        # the oracles agree to 30 digits of the scale of the terms of the gradient
        weights = [
            abs(float(d)) * (1 + abs(float(v)))
            for d, v in zip(dy_rows[f], fwds[f].xhat, strict=True)
        ]
        scale = abs(gamma[f]) * float(fwds[f].s) * sum(weights)
        assert all(close(a, b, scale) for a, b in zip(fd.dx, closed[f].dx, strict=True))
        assert close(fd.dgamma, closed[f].dgamma, sum(weights))
        assert close(fd.dbeta, closed[f].dbeta, sum(abs(float(d)) for d in dy_rows[f]))
        numeric.append(fd)
    reference = train_backward(case.dy, case.x, case.gamma, eps=case.eps, feature_axis=case.axis)
    check_gradients(case, reference, fwds, numeric, gamma)


@fewer(0.5)
@given(case=cases(max_elements=32))
def test_training_backward_against_paper_chain_rule(case: Case) -> None:
    """bn.backward.train.dx: the reference equals the paper's dxhat/dvar/dmu chain rule."""
    features = case.x.shape[case.axis]
    gamma, _ = params(case, features)
    fwds, chain = oracle.train_backward(
        case.dy, case.x, case.gamma, case.eps, case.axis, chain=True
    )
    _, closed = oracle.train_backward(case.dy, case.x, case.gamma, case.eps, case.axis, fwds=fwds)
    dy_rows = oracle.rows(case.dy, case.axis)
    for f in range(features):
        scale = abs(gamma[f]) * float(fwds[f].s) * sum(abs(float(v)) for v in dy_rows[f])
        assert all(close(a, b, scale) for a, b in zip(chain[f].dx, closed[f].dx, strict=True))
    reference = train_backward(case.dy, case.x, case.gamma, eps=case.eps, feature_axis=case.axis)
    check_gradients(case, reference, fwds, chain, gamma)


@fewer(0.3)
@given(case=cases(max_elements=16))
def test_inference_backward_against_finite_differences(case: Case) -> None:
    """bn.backward.infer: with the running statistics constant, dx_i = gamma dy_i s; the
    numerical derivative of the high-precision inference forward agrees (each y_j depends on
    x_j alone, so the derivative in x_i is that of dy_i y_i)."""
    features = case.x.shape[case.axis]
    gamma, beta = params(case, features)
    mean, var = case.running_mean, case.running_var
    reference = inference_backward(
        case.dy, case.x, mean, var, case.gamma, eps=case.eps, feature_axis=case.axis
    )
    fwds, exact = oracle.inference_backward(
        case.dy, case.x, mean, var, case.gamma, case.eps, case.axis
    )
    x_rows, dy_rows = oracle.rows(case.x, case.axis), oracle.rows(case.dy, case.axis)
    dx_rows = oracle.rows(reference.dx, case.axis)
    for f in range(features):
        check_inference_feature(
            oracle.exact(x_rows[f]),
            oracle.exact(dy_rows[f]),
            [float(v) for v in dx_rows[f]],
            float(reference.dgamma[f]),
            float(reference.dbeta[f]),
            fwds[f],
            exact[f],
            float(mean[f]),
            gamma[f],
            beta[f],
        )


def check_inference_feature(
    xs: list[mpmath.mpf],
    dys: list[mpmath.mpf],
    dx: list[float],
    dgamma_ref: float,
    dbeta_ref: float,
    fwd: oracle.FeatureInference,
    exact: oracle.FeatureGradients,
    mean: float,
    gamma: float,
    beta: float,
) -> None:
    """One feature of test_inference_backward_against_finite_differences."""
    center = MPF(mean)
    with mpmath.workdps(oracle.FD_DPS):
        root = 1 / fwd.s

    def loss(
        values: list[mpmath.mpf], weights: list[mpmath.mpf], g: mpmath.mpf, b: mpmath.mpf
    ) -> mpmath.mpf:
        with mpmath.workdps(oracle.FD_DPS):
            terms = zip(weights, values, strict=True)
            return mpmath.fsum(d * (g * (v - center) / root + b) for d, v in terms)

    h = oracle.FD_STEP * root
    g0, b0, zero = MPF(gamma), MPF(beta), MPF(0)
    for i in range(len(xs)):

        def moved(t: mpmath.mpf, i: int = i) -> mpmath.mpf:
            return loss([xs[i] + t], [dys[i]], g0, zero)

        numeric = oracle.central_difference(moved, h)
        scale = abs(gamma * float(fwd.s) * float(dys[i]))
        assert close(numeric, exact.dx[i], scale)
        err = bounds.error(dx[i], numeric)
        # roundings of var + eps, the square root, the division, gamma * s and * dy
        assert err <= 4 * bounds.U * scale + bounds.TINY, (i, err, scale)
    step = oracle.FD_STEP
    dgamma = oracle.central_difference(lambda t: loss(xs, dys, g0 + t, zero), step)
    dbeta = oracle.central_difference(lambda t: loss(xs, dys, zero, b0 + t), step)
    s_dg = sum(abs(float(d) * float(v)) for d, v in zip(dys, fwd.xhat, strict=True))
    s_db = sum(abs(float(d)) for d in dys)
    assert close(dgamma, exact.dgamma, s_dg)
    assert close(dbeta, exact.dbeta, s_db)
    n, tiny = len(xs), 4 * bounds.TINY
    assert bounds.error(dgamma_ref, dgamma) <= 4 * bounds.U * (n + 3) * s_dg + tiny
    assert bounds.error(dbeta_ref, dbeta) <= 4 * bounds.U * n * s_db + tiny
