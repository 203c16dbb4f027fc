"""The family reference (reference/family.py) verified three ways: hand-worked cases, the
independent mpmath evaluation (tests/reference/family_oracle.py) with its finite differences,
and the reductions that make BN, LayerNorm, GroupNorm and InstanceNorm one core."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
from family_oracle import backward_slice, difference_slice, forward_slice, slices
from hypothesis import given, settings
from hypothesis import strategies as st

from normspec.reference import (
    RunningStatistics,
    inference_forward,
    train_backward,
    train_forward,
)
from normspec.reference import family as f

ULP = 2.0**-52


def ulps(actual: np.ndarray, exact: np.ndarray, scale: np.ndarray) -> float:
    """The largest error in ulps of the natural scale (2^(e - 52) for 2^e <= scale)."""
    spacing = np.ldexp(ULP, np.frexp(np.maximum(scale, np.finfo(np.float64).tiny))[1] - 1)
    return float(np.max(np.abs(actual - exact) / spacing))


# -- hand-worked cases --------------------------------------------------------------------------


def test_layer_norm_of_two_values() -> None:
    # mean 2, biased variance 1: xhat = -+1 / sqrt(1 + eps)
    y = f.layer_norm(
        np.array([[1.0, 3.0]]), (2,), np.array([2.0, 3.0]), np.array([0.5, -1]), eps=0.25
    )
    root = math.sqrt(1.25)
    np.testing.assert_allclose(y, [[-2 / root + 0.5, 3 / root - 1]], rtol=1e-15)


def test_rms_norm_of_three_and_four() -> None:
    # mean square (9 + 16) / 2 = 12.5, no centering; Gemma's 1 + w with w = 0 is the identity
    x = np.array([[3.0, 4.0]])
    expected = x / math.sqrt(12.5 + 0.5)
    np.testing.assert_allclose(f.rms_norm(x, (2,), eps=0.5), expected, rtol=1e-15)
    gemma = f.rms_norm(x, (2,), np.zeros(2), eps=0.5, scale_offset=1.0)
    np.testing.assert_array_equal(gemma, f.rms_norm(x, (2,), eps=0.5))


def test_group_norm_takes_consecutive_channels() -> None:
    # channels (0, 1) and (2, 3) form the groups: [1, 3 | 10, 30]
    x = np.array([[[1.0], [3.0], [10.0], [30.0]]])
    y = f.group_norm(x, 2, eps=1e-300)
    np.testing.assert_allclose(y.ravel(), [-1, 1, -1, 1], rtol=1e-15)
    strided = f.group_norm(x[:, [0, 2, 1, 3]], 2, eps=1e-300)  # (1, 10 | 3, 30) differ
    assert not np.allclose(strided.ravel(), [-1, -1, 1, 1])


def test_rms_backward_has_no_mean_term() -> None:
    # x = (3, 4), g = (1, 1): dx = s * (g - xhat * mean(g * xhat)), eps 0
    x = np.array([[3.0, 4.0]])
    grads = f.rms_norm_backward(np.ones((1, 2)), x, (2,), eps=1e-300)
    s = 1 / math.sqrt(12.5)
    xhat = x[0] * s
    projection = float(np.mean(xhat))
    np.testing.assert_allclose(grads.dx[0], s * (1 - xhat * projection), rtol=1e-14)
    np.testing.assert_allclose(grads.dgamma, xhat, rtol=1e-15)
    np.testing.assert_array_equal(grads.dbeta, [1.0, 1.0])


def test_instance_running_update_by_hand() -> None:
    # two instances of one channel: means 1 and 3, unbiased variances 2 and 8 (n = 2)
    x = np.array([[[0.0, 2.0]], [[1.0, 5.0]]])
    after = f.instance_running_update(RunningStatistics(np.zeros(1), np.ones(1)), x, 0.5)
    np.testing.assert_allclose(after.mean, [0.5 * (1 + 3) / 2])
    np.testing.assert_allclose(after.var, [1 + 0.5 * ((2 + 8) / 2 - 1)])
    assert after.steps == 1
    biased = f.instance_running_update(RunningStatistics(np.zeros(1), np.ones(1)), x, 1.0, "biased")
    np.testing.assert_allclose(biased.var, [(1 + 4) / 2])


# -- one core ------------------------------------------------------------------------------------


def test_the_reductions_are_configurations_of_one_core() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 5, 2)) * 3 + 7
    w, b = rng.standard_normal(4), rng.standard_normal(4)
    # GroupNorm with one group is LayerNorm over (C, spatial), the affine per channel
    xhat_ln, _ = f.normalize(x, f.Reduction((1, 2, 3)), eps=1e-5)
    one_group = f.group_norm(x, 1, w, b)
    np.testing.assert_allclose(one_group, xhat_ln * w[:, None, None] + b[:, None, None], atol=1e-14)
    np.testing.assert_allclose(f.group_norm(x, 1), f.layer_norm(x, (4, 5, 2)), atol=1e-14)
    # GroupNorm with C groups is InstanceNorm
    np.testing.assert_array_equal(f.group_norm(x, 4, w, b), f.instance_norm(x, w, b))
    # BatchNorm reduces every axis but the feature axis
    core, _ = f.normalize(x, f.Reduction((0, 2, 3)), eps=1e-5)
    bn, _ = train_forward(x, eps=1e-5, feature_axis=1)
    np.testing.assert_allclose(core, bn, atol=1e-14)
    dy = rng.standard_normal(x.shape)
    dx, _ = f.normalize_backward(dy, x, f.Reduction((0, 2, 3)), eps=1e-5)
    np.testing.assert_allclose(dx, train_backward(dy, x, eps=1e-5).dx, atol=1e-13)
    # InstanceNorm in inference is batch norm's inference per channel
    mean, var = rng.standard_normal(4), rng.random(4) + 0.5
    np.testing.assert_array_equal(
        f.instance_norm_inference(x, mean, var, w, b), inference_forward(x, mean, var, w, b)
    )


# -- against mpmath ------------------------------------------------------------------------------

SHAPES = st.sampled_from([(2, 3), (3, 4), (2, 3, 4), (1, 6), (4, 2, 3)])
OFFSETS = st.sampled_from([0.0, 3.0, 1e4, 1e8, -1e12])
SCALES = st.sampled_from([1.0, 2.0**-40, 2.0**40, 1e-150, 1e150])


@st.composite
def inputs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, float]:
    shape = draw(SHAPES)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scale, offset = draw(SCALES), draw(OFFSETS)
    x = (rng.standard_normal(shape) + offset) * scale
    dy = rng.standard_normal(shape)
    eps = draw(st.sampled_from([1e-5, 1e-12, 1.0])) * scale**2
    return x, dy, max(eps, 1e-300)


def _check_core(
    x: np.ndarray, dy: np.ndarray, eps: float, axes: tuple[int, ...], centered: bool
) -> None:
    reduction = f.Reduction(axes, centered)
    xhat, _ = f.normalize(x, reduction, eps=eps)
    dx, _ = f.normalize_backward(dy, x, reduction, eps=eps)
    rows_x, back = slices(x, axes)
    rows_g, _ = slices(dy, axes)
    exact_xhat, exact_dx, scale_xhat, scale_dx = (np.empty(rows_x.shape) for _ in range(4))
    for i, (values, g) in enumerate(zip(rows_x, rows_g, strict=True)):
        slice_ = forward_slice(list(values), eps, centered)
        r = float(mpmath.sqrt(slice_.var) * slice_.s)
        exact_xhat[i] = [float(v) for v in slice_.xhat]
        abs_xhat = np.abs(exact_xhat[i])
        scale_xhat[i] = abs_xhat + r
        exact_dx[i] = [float(v) for v in backward_slice(slice_, list(g), centered)]
        projection = float(np.mean(np.abs(g) * (abs_xhat + r)))
        scale_dx[i] = float(slice_.s) * (
            np.abs(g) + np.mean(np.abs(g)) + (abs_xhat + r) * projection
        )
    assert ulps(xhat, back(exact_xhat), back(scale_xhat)) <= 4
    assert ulps(dx, back(exact_dx), back(scale_dx)) <= 8


@settings(max_examples=60, deadline=None)
@given(inputs(), st.booleans())
def test_the_core_is_accurate_against_mpmath(
    case: tuple[np.ndarray, np.ndarray, float], centered: bool
) -> None:
    x, dy, eps = case
    _check_core(x, dy, eps, (x.ndim - 1,), centered)
    if x.ndim == 3:
        _check_core(x, dy, eps, (1, 2), centered)  # two reduced axes
        _check_core(x, dy, eps, (0, 2), centered)  # a batch-norm-like reduction


@pytest.mark.parametrize("magnitude", [1e-300, 4.5e-187, 1e-160, 1e-20])
@pytest.mark.parametrize("eps", [1e-5, 1e-12])
@pytest.mark.parametrize("centered", [True, False])
def test_values_far_below_sqrt_eps_keep_their_digits(
    magnitude: float, eps: float, centered: bool
) -> None:
    """``x / sqrt(eps)`` where the squares underflow: the scale includes ``sqrt(eps)`` (an
    uncentred slice of 4.5e-187 with eps 1e-5 was 0 while 1.4e-184 is right)."""
    x = magnitude * np.array([[0.75, -0.5, 1.0], [1.0, 0.25, -0.125]])
    dy = np.array([[1.0, -2.0, 0.5], [0.25, 1.0, -1.0]])
    _check_core(x, dy, eps, (1,), centered)


@pytest.mark.parametrize("centered", [True, False])
def test_the_closed_form_backward_is_the_derivative(centered: bool) -> None:
    rng = np.random.default_rng(3)
    for offset in (0.0, 100.0):
        values = list(rng.standard_normal(5) + offset)
        g = list(rng.standard_normal(5))
        closed = backward_slice(forward_slice(values, 1e-3, centered), g, centered)
        differences = difference_slice(values, g, 1e-3, centered)
        for a, b in zip(closed, differences, strict=True):
            assert abs(a - b) <= mpmath.mpf(10) ** -40 * (1 + abs(b))


LAYERS = {
    "layer_norm": (
        lambda x, w, b: f.layer_norm(x, (4, 3), w, b),
        lambda dy, x, w: f.layer_norm_backward(dy, x, (4, 3), w),
        (4, 3),
    ),
    "rms_norm (1 + w)": (
        lambda x, w, b: f.rms_norm(x, (3,), w, b, scale_offset=1.0),
        lambda dy, x, w: f.rms_norm_backward(dy, x, (3,), w, scale_offset=1.0),
        (3,),
    ),
    "group_norm": (
        lambda x, w, b: f.group_norm(x, 2, w, b),
        lambda dy, x, w: f.group_norm_backward(dy, x, 2, w),
        (4,),
    ),
}


@pytest.mark.parametrize("name", LAYERS)
def test_affine_gradients_against_finite_differences(name: str) -> None:
    """dweight, dbias and dx through the affine, as central differences of ``sum(dy * y)``
    (float64, step 1e-6: agreement to 1e-6 relative)."""
    forward, backward, shape = LAYERS[name]
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 4, 3)) + 2
    dy = rng.standard_normal(x.shape)
    w, b = rng.standard_normal(shape), rng.standard_normal(shape)
    grads = backward(dy, x, w)
    h = 1e-6
    for target, got in ((x, grads.dx), (w, grads.dgamma), (b, grads.dbeta)):
        numeric = np.zeros_like(target)
        for index in np.ndindex(target.shape):
            original = target[index]
            target[index] = original + h
            up = float(np.sum(dy * forward(x, w, b)))
            target[index] = original - h
            down = float(np.sum(dy * forward(x, w, b)))
            target[index] = original
            numeric[index] = (up - down) / (2 * h)
        np.testing.assert_allclose(got, numeric, rtol=1e-6, atol=1e-7)


# -- degenerate inputs ---------------------------------------------------------------------------


def test_a_non_finite_value_stays_in_its_slice() -> None:
    x = np.arange(12.0).reshape(3, 4)
    x[1, 2] = np.nan
    for y in (f.layer_norm(x, (4,)), f.rms_norm(x, (4,))):
        assert np.all(np.isnan(y[1])) and np.all(np.isfinite(y[[0, 2]]))
    grouped = f.group_norm(x.reshape(3, 4, 1), 2)
    assert np.all(np.isnan(grouped[1, 2:])) and np.all(np.isfinite(grouped[1, :2]))


def test_an_empty_batch_gives_empty_results() -> None:
    x = np.zeros((0, 3))
    assert f.layer_norm(x, (3,)).shape == (0, 3)
    assert f.layer_norm_backward(x, x, (3,)).dx.shape == (0, 3)
    assert f.group_norm(np.zeros((0, 4, 2)), 2).shape == (0, 4, 2)


def test_a_constant_slice_gives_the_bias_exactly() -> None:
    x = np.full((2, 5), 1e9 + 0.5)
    b = np.linspace(-1, 1, 5)
    np.testing.assert_array_equal(f.layer_norm(x, (5,), np.ones(5), b), np.broadcast_to(b, x.shape))


def test_invalid_settings_are_rejected_naming_them() -> None:
    x = np.ones((2, 6, 3))
    with pytest.raises(ValueError, match="num_groups 4 must divide the 6 channels"):
        f.group_norm(x, 4)
    with pytest.raises(ValueError, match="normalized_shape"):
        f.layer_norm(x, (6,))
    with pytest.raises(ValueError, match="weight must have shape"):
        f.layer_norm(x, (3,), np.ones(6))
    with pytest.raises(ValueError, match="eps must be a positive"):
        f.rms_norm(x, (3,), eps=0.0)
    with pytest.raises(ValueError, match="num_groups must be a positive integer"):
        f.group_norm(x, True)


# -- GroupNorm and InstanceNorm (groupnorm.md) ---------------------------------------------------


def test_group_norm_weight_and_bias_are_per_channel_by_hand() -> None:
    # one group of channels (0, 1): values 1, 3 | 5, 7, mean 4, biased variance 5
    x = np.array([[[1.0, 3.0], [5.0, 7.0]]])
    w, b = np.array([2.0, -1.0]), np.array([0.5, 10.0])
    s = 1 / math.sqrt(5 + 0.25)
    xhat = (x[0] - 4) * s
    expected = xhat * w[:, None] + b[:, None]
    np.testing.assert_allclose(f.group_norm(x, 1, w, b, eps=0.25)[0], expected, rtol=1e-15)
    grads = f.group_norm_backward(np.ones_like(x), x, 1, w, eps=0.25)
    np.testing.assert_allclose(grads.dgamma, xhat.sum(axis=1), atol=1e-15)
    np.testing.assert_array_equal(grads.dbeta, [2.0, 2.0])


def test_instance_norm_inference_by_hand() -> None:
    # running mean 1, variance 3, eps 1: (x - 1) / 2, then w = 4, b = -1
    x = np.array([[[1.0, 5.0]]])
    y = f.instance_norm_inference(x, [1.0], [3.0], [4.0], [-1.0], eps=1.0)
    np.testing.assert_array_equal(y, [[[-1.0, 7.0]]])


GROUPED = st.sampled_from([((2, 4, 3), 2), ((1, 6, 2, 2), 3), ((2, 3, 4), 3), ((3, 2), 1)])


@settings(max_examples=30, deadline=None)
@given(GROUPED, st.integers(0, 2**32 - 1), OFFSETS, SCALES)
def test_group_and_instance_norm_against_mpmath(
    layout: tuple[tuple[int, ...], int], seed: int, offset: float, scale: float
) -> None:
    """Through the public functions: every (sample, group) slice of ``xhat`` and ``dx``
    within a few ulps of the mpmath slice (groups of consecutive channels)."""
    shape, groups = layout
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) + offset) * scale
    dy = rng.standard_normal(shape)
    eps = max(1e-5 * scale**2, 1e-300)
    y = f.group_norm(x, groups, eps=eps)
    dx = f.group_norm_backward(dy, x, groups, eps=eps).dx
    n = x.size // (shape[0] * groups)
    for row, (values, g, got_y, got_dx) in enumerate(
        zip(*(a.reshape(-1, n) for a in (x, dy, y, dx)), strict=True)
    ):
        exact = forward_slice(list(values), eps, True)
        r = float(mpmath.sqrt(exact.var) * exact.s)
        xhat = np.array([float(v) for v in exact.xhat])
        scale_y = np.abs(xhat) + r
        assert ulps(got_y, xhat, scale_y) <= 4, row
        exact_dx = np.array([float(v) for v in backward_slice(exact, list(g), True)])
        projection = float(np.mean(np.abs(g) * scale_y))
        scale_dx = float(exact.s) * (np.abs(g) + np.mean(np.abs(g)) + scale_y * projection)
        assert ulps(got_dx, exact_dx, scale_dx) <= 8, row
    if groups == shape[1] and len(shape) > 2:
        np.testing.assert_array_equal(f.instance_norm(x, eps=eps), y)


@pytest.mark.parametrize(("shape", "groups"), [((1, 4, 2), 2), ((2, 2, 3), 2)])
def test_group_norm_second_order_against_mpmath_differences(
    shape: tuple[int, ...], groups: int
) -> None:
    """The derivative of the reference's ``dx`` (central differences in float64, step 1e-5)
    is the Hessian of ``sum(dy * y)``, second differences of the loss at 80 digits: the
    backward is right to second order (double backward, groupnorm.md)."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal(shape) + 1.5
    dy = rng.standard_normal(shape)
    w, eps = rng.standard_normal(shape[1]), 1e-3
    size, n = x.size, x.size // (shape[0] * groups)
    channel = np.broadcast_to(np.arange(shape[1]).reshape(1, -1, *([1] * (len(shape) - 2))), shape)
    weights = [w[c] for c in channel.ravel()]

    def loss(flat: list[mpmath.mpf]) -> mpmath.mpf:
        total = mpmath.mpf(0)
        for start in range(0, size, n):
            values = flat[start : start + n]
            mean = mpmath.fsum(values) / n
            var = mpmath.fsum((v - mean) ** 2 for v in values) / n
            s = 1 / mpmath.sqrt(var + mpmath.mpf(eps))
            for i, v in enumerate(values):
                total += mpmath.mpf(dy.ravel()[start + i]) * weights[start + i] * (v - mean) * s
        return total

    h = 1e-5
    numeric = np.empty((size, size))
    for j in range(size):
        step = np.zeros(size)
        step[j] = h
        up = f.group_norm_backward(dy, x + step.reshape(shape), groups, w, eps=eps).dx
        down = f.group_norm_backward(dy, x - step.reshape(shape), groups, w, eps=eps).dx
        numeric[:, j] = (up - down).ravel() / (2 * h)
    with mpmath.workdps(80):
        base = [mpmath.mpf(v) for v in x.ravel()]
        k = mpmath.mpf(10) ** -20
        for i, j in [(0, 0), (0, 1), (1, 0), (0, n - 1), (size - 1, size - 2), (0, size - 1)]:
            corners = []
            for a, b in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
                point = list(base)
                point[i] += a * k
                point[j] += b * k
                corners.append(loss(point))
            exact = (corners[0] - corners[1] - corners[2] + corners[3]) / (4 * k * k)
            assert abs(numeric[i, j] - float(exact)) <= 1e-6 * (1 + abs(float(exact))), (i, j)
    np.testing.assert_allclose(numeric, numeric.T, atol=1e-6)  # a Hessian is symmetric
