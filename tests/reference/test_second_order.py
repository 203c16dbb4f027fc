"""The second-order reference (bn.backward.second_order): finite differences and closed form.

Verified independently of both: a hand-worked n = 2 case (where the backward has a closed
form in the difference of the two values, differentiated by hand), and 100-digit mpmath
central differences of the oracle's backward (``bn_oracle.backward_closed``).
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
from bn_oracle import MPF, backward_closed, exact, feature_forward

from normspec.reference import train_backward
from normspec.reference.second_order import (
    train_double_backward,
    train_second_order_differences,
)


def _hand_case() -> dict[str, np.ndarray]:
    """n = 2, x = (0, 2), eps = 3: var_B = 1, s = 1/2, xhat = (-1/2, 1/2)."""
    return {
        "x": np.array([[0.0], [2.0]]),
        "dy": np.array([[1.0], [0.0]]),
        "v": np.array([[0.0], [1.0]]),
        "v_gamma": np.zeros(1),
        "v_beta": np.zeros(1),
        "gamma": np.ones(1),
    }


def test_hand_worked_case_for_two_values() -> None:
    """For n = 2, with d = x_2 - x_1: dx_1 = -dx_2 = gamma eps (d^2/4 + eps)^(-3/2) (dy_1 -
    dy_2) / 2, so S = (v_1 - v_2)(dy_1 - dy_2) gamma eps / 2 (d^2/4 + eps)^(-3/2) and
    dS/dx_2 = -dS/dx_1 = -(3/4) (v_1 - v_2)(dy_1 - dy_2) gamma eps d / 2 (d^2/4 + eps)^(-5/2):
    with d = 2, eps = 3: 9/128; dS/ddy_1 = -dS/ddy_2 = dS/dgamma = -3/16."""
    case = _hand_case()
    closed = train_double_backward(**case, eps=3.0)
    estimate = train_second_order_differences(**case, eps=3.0)
    want = {"dx": [[-9 / 128], [9 / 128]], "dgamma": [-3 / 16], "ddy": [[-3 / 16], [3 / 16]]}
    for name, value in want.items():
        np.testing.assert_allclose(getattr(closed, name), value, rtol=0, atol=1e-16)
        got, error = getattr(estimate.values, name), getattr(estimate.error, name)
        assert np.all(np.abs(got - np.array(value)) <= error)
        assert np.all(error <= 1e-8)


def _mpmath_second_order(
    x: np.ndarray,
    dy: np.ndarray,
    v: np.ndarray,
    gamma: float,
    v_gamma: float,
    v_beta: float,
    eps: float,
) -> tuple[list[mpmath.mpf], mpmath.mpf, list[mpmath.mpf]]:
    """d S / d x_i, d S / d gamma, d S / d dy_i for one feature (n values) by central
    differences of the oracle's closed-form backward at 100 digits, step 1e-30."""
    with mpmath.workdps(100):
        xs, dys, vs = exact(x), exact(dy), exact(v)
        e, h = MPF(float(eps)), MPF("1e-30")

        def objective(xs: list, dys: list, g: mpmath.mpf) -> mpmath.mpf:
            grads = backward_closed(feature_forward(xs, g, MPF(0), e), dys, g)
            return (
                mpmath.fsum(a * b for a, b in zip(vs, grads.dx, strict=True))
                + MPF(float(v_gamma)) * grads.dgamma
                + MPF(float(v_beta)) * grads.dbeta
            )

        def moved(values: list, i: int, t: mpmath.mpf) -> list:
            return [value + t if j == i else value for j, value in enumerate(values)]

        g = MPF(float(gamma))
        n = len(xs)
        d_x = [
            (objective(moved(xs, i, h), dys, g) - objective(moved(xs, i, -h), dys, g)) / (2 * h)
            for i in range(n)
        ]
        d_dy = [
            (objective(xs, moved(dys, i, h), g) - objective(xs, moved(dys, i, -h), g)) / (2 * h)
            for i in range(n)
        ]
        d_gamma = (objective(xs, dys, g + h) - objective(xs, dys, g - h)) / (2 * h)
        return d_x, d_gamma, d_dy


@pytest.mark.parametrize(
    ("n", "offset", "eps", "seed"),
    [
        (2, 0.0, 1e-5, 0),
        (3, 5.0, 1e-3, 1),
        (8, -2.0, 1.0, 2),
        (16, 1e3, 1e-5, 3),
        (64, 0.5, 0.1, 4),
    ],
)
def test_differences_and_closed_form_agree_with_mpmath(
    n: int, offset: float, eps: float, seed: int
) -> None:
    """The finite differences are within their error estimate of a 100-digit evaluation, and
    that estimate is small (a missing term of the clause is of the order of the values)."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, 1)) + offset) * 0.7
    dy, v = rng.standard_normal((n, 1)), rng.standard_normal((n, 1))
    gamma, v_gamma, v_beta = rng.standard_normal(3)
    args = (x, dy, v, np.array([v_gamma]), np.array([v_beta]), np.array([gamma]))
    estimate = train_second_order_differences(*args, eps=eps)
    closed = train_double_backward(*args, eps=eps)
    s = 1 / np.sqrt(np.var(x) + eps)
    d_x, d_gamma, d_dy = _mpmath_second_order(
        x[:, 0], dy[:, 0], v[:, 0], gamma, v_gamma, v_beta, eps
    )
    truth = {
        "dx": np.array([float(t) for t in d_x])[:, None],
        "dgamma": np.array([float(d_gamma)]),
        "ddy": np.array([float(t) for t in d_dy])[:, None],
    }
    for name, want in truth.items():
        got, error = getattr(estimate.values, name), getattr(estimate.error, name)
        scale = np.max(np.abs(want)) + 1.0
        assert np.all(np.abs(got - want) <= error), name
        assert np.max(error) <= 1e-6 * scale, name
        # the closed form, in float64, to a small multiple of u (n + 3)^2 of its terms'
        # scale (those of d_x carry gamma s^2: cancellation for n = 2)
        terms = scale * (1 + abs(gamma) * s * s)
        assert np.max(np.abs(getattr(closed, name) - want)) <= 2.0**-53 * (n + 3) ** 2 * terms


def test_layout_and_feature_axis_are_honoured() -> None:
    """Several features at the last axis of a rank-4 input: each feature on its own, the
    results in the input's shape."""
    rng = np.random.default_rng(7)
    shape = (2, 3, 2, 2)
    x, dy, v = (rng.standard_normal(shape) for _ in range(3))
    gamma, v_gamma, v_beta = (rng.standard_normal(2) for _ in range(3))
    estimate = train_second_order_differences(
        x, dy, v, v_gamma, v_beta, gamma, eps=1e-3, feature_axis=3
    )
    closed = train_double_backward(x, dy, v, v_gamma, v_beta, gamma, eps=1e-3, feature_axis=3)
    assert estimate.values.dx.shape == closed.dx.shape == shape
    assert estimate.values.dgamma.shape == (2,)
    for name in ("dx", "dgamma", "ddy"):
        got, error = getattr(estimate.values, name), getattr(estimate.error, name)
        assert np.all(np.abs(got - getattr(closed, name)) <= error)
    for f in range(2):
        one = train_double_backward(
            x[..., f : f + 1], dy[..., f : f + 1], v[..., f : f + 1], v_gamma[f : f + 1],
            v_beta[f : f + 1], gamma[f : f + 1], eps=1e-3, feature_axis=3,
        )  # fmt: skip
        np.testing.assert_allclose(one.dx, closed.dx[..., f : f + 1], rtol=1e-13, atol=1e-15)


def test_a_large_mean_does_not_swamp_the_step() -> None:
    """A constant feature at 1e9 with eps 1e-5 (a step of about 1.5e-8 is below ulp(1e9)):
    the differences are taken on x - mu_B."""
    x = np.full((2, 1), 1e9)
    zero, one = np.zeros((2, 1)), np.array([[1.0], [-0.5]])
    estimate = train_second_order_differences(x, one, one, np.ones(1), np.ones(1), eps=1e-5)
    closed = train_double_backward(x, one, one, np.ones(1), np.ones(1), eps=1e-5)
    for name in ("dx", "dgamma", "ddy"):
        got = getattr(estimate.values, name)
        assert np.all(np.isfinite(got))
        assert np.all(np.abs(got - getattr(closed, name)) <= getattr(estimate.error, name))
    assert train_second_order_differences(x, zero, zero, eps=1e-5).values.dx.tolist() == [[0.0]] * 2


def test_the_objective_is_the_reference_backward() -> None:
    """S's derivative in dy is (by linearity) S at unit cotangents: the differences agree."""
    rng = np.random.default_rng(11)
    x, v = rng.standard_normal((5, 1)), rng.standard_normal((5, 1))
    estimate = train_second_order_differences(x, np.zeros((5, 1)), v, eps=0.5)
    for i in range(5):
        unit = np.zeros((5, 1))
        unit[i] = 1.0
        direct = float(np.sum(v * train_backward(unit, x, eps=0.5).dx))
        assert abs(estimate.values.ddy[i, 0] - direct) <= estimate.error.ddy[i, 0]
