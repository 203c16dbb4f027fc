"""The family's second-order reference (ln/rms/gn/in.backward.second_order), verified three
ways: hand-worked cases, 100-digit mpmath central differences of the oracle's backward
(``family_oracle``, written from the formulas, not from the reference) against both the
closed form and the finite differences, and the reductions between the layers.
"""

from __future__ import annotations

from typing import Any

import mpmath
import numpy as np
import pytest
from family_oracle import MPF, backward_slice, forward_slice

from normspec.reference.family_second_order import (
    FamilySlices,
    family_double_backward,
    family_second_order_differences,
)

FIELDS = ("dx", "dgamma", "ddy")


def _both(args: tuple[Any, ...], slices: FamilySlices, eps: float) -> tuple[Any, Any]:
    closed = family_double_backward(*args, slices, eps=eps)
    return closed, family_second_order_differences(*args, slices, eps=eps)


def _agree(closed: Any, estimate: Any, want: dict[str, Any], atol: float) -> None:
    for name, value in want.items():
        np.testing.assert_allclose(getattr(closed, name), value, rtol=0, atol=atol)
        got, error = getattr(estimate.values, name), getattr(estimate.error, name)
        assert np.all(np.abs(got - np.array(value)) <= error), name
        assert np.all(error <= 1e-8), name


def test_hand_worked_layer_norm_with_two_weights() -> None:
    """n = 2, x = (0, 2), eps = 3 (s = 1/2, xhat = -+1/2), w = (2, 1), dy = (1, 1), v = (1, 0):
    with d = x_2 - x_1, dx_1 = -dx_2 = eps (d^2/4 + eps)^(-3/2) (g_1 - g_2) / 2 and g = w dy, so
    S = (v_1 - v_2)(g_1 - g_2) eps / 2 (d^2/4 + eps)^(-3/2) = 3/16; dS/dx_2 = -dS/dx_1 =
    -(3/4)(v_1 - v_2)(g_1 - g_2) eps d / 2 (d^2/4 + eps)^(-5/2) = -9/128; dS/dw_j = +-dy_j 3/16
    and dS/ddy_j = +-w_j 3/16: the weight per element."""
    args = (
        np.array([[0.0, 2.0]]),
        np.array([[1.0, 1.0]]),
        np.array([[1.0, 0.0]]),
        np.zeros(2),
        np.zeros(2),
        np.array([2.0, 1.0]),
    )
    closed, estimate = _both(args, FamilySlices.layer_norm((1, 2), (2,)), 3.0)
    want = {
        "dx": [[9 / 128, -9 / 128]],
        "dgamma": [3 / 16, -3 / 16],
        "ddy": [[3 / 8, -3 / 16]],
    }
    _agree(closed, estimate, want, 1e-16)


def test_hand_worked_rms_norm_of_one_value() -> None:
    """n = 1: s = (x^2 + eps)^(-1/2), dx = g (1 - xhat^2) s = g eps s^3, so S = v w dy eps s^3 +
    v_w dy x s + v_b dy. x = 1, eps = 3 (s = 1/2), w = 2, dy = 1, v = 1, v_w = 1, v_b = 0.5:
    dS/dx = -3 v w dy eps x s^5 + v_w dy eps s^3 = -18/32 + 3/8 = -3/16, dS/dw = v dy eps s^3 =
    3/8, dS/ddy = v w eps s^3 + v_w x s + v_b = 3/4 + 1/2 + 1/2 = 7/4; with Gemma's offset 1 and
    w = 1 the same."""
    for offset, weight in ((0.0, 2.0), (1.0, 1.0)):
        args = (
            np.array([[1.0]]),
            np.array([[1.0]]),
            np.array([[1.0]]),
            np.array([1.0]),
            np.array([0.5]),
            np.array([weight]),
        )
        slices = FamilySlices.rms_norm((1, 1), (1,), offset=offset)
        closed, estimate = _both(args, slices, 3.0)
        _agree(closed, estimate, {"dx": [[-3 / 16]], "dgamma": [3 / 8], "ddy": [[7 / 4]]}, 1e-16)


def _mpmath_truth(
    args: tuple[np.ndarray, ...], slices: FamilySlices, eps: float
) -> dict[str, np.ndarray]:
    """dS/dx, dS/dweight (per parameter), dS/ddy by central differences at 100 digits (step
    1e-30) of ``S`` evaluated with the oracle's closed-form backward per slice."""
    x, dy, v, v_weight, v_bias, weight = args
    spread = slices.spread
    rows_v = v.reshape(-1, slices.n)
    vw, vb = spread("v", v_weight, 0.0), spread("v", v_bias, 0.0)
    params = weight.size

    def objective(xs: list[Any], dys: list[Any], ws: list[Any]) -> Any:
        w_rows = spread("w", np.arange(params).reshape(weight.shape), 0.0).astype(int)
        total = MPF(0)
        for k in range(rows_v.shape[0]):
            cut = slice(k * slices.n, (k + 1) * slices.n)
            forward = forward_slice(xs[cut], eps, slices.centered)
            scale = [MPF(slices.offset) + ws[j] for j in w_rows[k]]
            g = [a * b for a, b in zip(scale, dys[cut], strict=True)]
            dx = backward_slice(forward, g, slices.centered)
            for i in range(slices.n):
                dyi = dys[cut][i]
                total += MPF(rows_v[k, i]) * dx[i] + MPF(vw[k, i]) * dyi * forward.xhat[i]
                total += MPF(vb[k, i]) * dyi
        return total

    with mpmath.workdps(100):
        base = [[MPF(float(t)) for t in a.ravel()] for a in (x, dy, weight)]
        h = MPF("1e-30")
        found = []
        for which in range(3):
            derivative = []
            for i in range(len(base[which])):
                ends = []
                for sign in (1, -1):
                    point = [list(b) for b in base]
                    point[which][i] += sign * h
                    ends.append(objective(*point))
                derivative.append(float((ends[0] - ends[1]) / (2 * h)))
            found.append(np.array(derivative))
    return {
        "dx": found[0].reshape(x.shape),
        "dgamma": found[2].reshape(weight.shape),
        "ddy": found[1].reshape(x.shape),
    }


CASES = {
    "layernorm": (FamilySlices.layer_norm((2, 3), (3,)), (2, 3), (3,)),
    "layernorm_2d": (FamilySlices.layer_norm((2, 2, 2), (2, 2)), (2, 2, 2), (2, 2)),
    "rmsnorm": (FamilySlices.rms_norm((2, 4), (4,)), (2, 4), (4,)),
    "rmsnorm_gemma": (FamilySlices.rms_norm((3, 2), (2,), offset=1.0), (3, 2), (2,)),
    "groupnorm": (FamilySlices.group_norm((2, 4, 2), 2), (2, 4, 2), (4,)),
    "instancenorm": (FamilySlices.group_norm((1, 2, 3), 2), (1, 2, 3), (2,)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_closed_form_and_differences_against_mpmath(name: str) -> None:
    """The differences are within their error estimate of the 100-digit truth, the estimate
    small; the closed form within a small multiple of u (n + 3)^2 of its terms' scale."""
    slices, shape, param_shape = CASES[name]
    rng = np.random.default_rng(sorted(CASES).index(name))
    x = rng.standard_normal(shape) * 0.8 + 0.3
    dy, v = rng.standard_normal(shape), rng.standard_normal(shape)
    weight, v_weight, v_bias = (rng.standard_normal(param_shape) for _ in range(3))
    args = (x, dy, v, v_weight, v_bias, weight)
    eps = 1e-3
    closed, estimate = _both(args, slices, eps)
    truth = _mpmath_truth(args, slices, eps)
    s = 1 / np.sqrt(np.min(np.var(x.reshape(-1, slices.n), axis=1)) + eps)
    for field in FIELDS:
        want = truth[field]
        got, error = getattr(estimate.values, field), getattr(estimate.error, field)
        scale = np.max(np.abs(want)) + 1.0
        assert np.all(np.abs(got - want) <= error), field
        assert np.max(error) <= 1e-6 * scale, field
        terms = scale * (1 + np.max(np.abs(weight) + 1) * s * s)
        bound = 2.0**-53 * (slices.n + 3) ** 2 * terms
        assert np.max(np.abs(getattr(closed, field) - want)) <= bound, field


def test_group_norm_of_one_group_is_layer_norm_over_channels_and_space() -> None:
    """GroupNorm with one group is LayerNorm over ``(C, *spatial)`` with the weight spread over
    the spatial axes (its gradient summed over them); with ``C`` groups InstanceNorm's."""
    rng = np.random.default_rng(3)
    shape = (2, 3, 2)
    x, dy, v = (rng.standard_normal(shape) for _ in range(3))
    w, vw, vb = (rng.standard_normal(3) for _ in range(3))
    grouped = family_double_backward(
        x, dy, v, vw, vb, w, FamilySlices.group_norm(shape, 1), eps=1e-2
    )

    def spatial(values: np.ndarray) -> np.ndarray:
        return np.repeat(values[:, None], 2, axis=1)

    layer = family_double_backward(
        x, dy, v, spatial(vw), spatial(vb), spatial(w), FamilySlices.layer_norm(shape, (3, 2)),
        eps=1e-2,
    )  # fmt: skip
    np.testing.assert_allclose(grouped.dx, layer.dx, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grouped.ddy, layer.ddy, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grouped.dgamma, layer.dgamma.sum(axis=1), rtol=1e-12, atol=1e-14)


def test_rms_norm_eps_outside_the_root_is_differenced_not_closed() -> None:
    """The dialect rmsnorm.eps = outside_root has differences (of its own backward) and no
    closed form; its differences differ from eps inside the root's where eps matters."""
    rng = np.random.default_rng(5)
    x, dy, v = (rng.standard_normal((2, 3)) * 0.1 for _ in range(3))
    args = (x, dy, v, None, None, None)
    outside = FamilySlices.rms_norm((2, 3), (3,), outside_root=True)
    with pytest.raises(ValueError, match="closed form"):
        family_double_backward(*args, outside, eps=0.25)
    estimate = family_second_order_differences(*args, outside, eps=0.25)
    inside = family_double_backward(*args, FamilySlices.rms_norm((2, 3), (3,)), eps=0.25)
    assert np.max(np.abs(estimate.values.dx - inside.dx)) > 1e3 * np.max(estimate.error.dx)
