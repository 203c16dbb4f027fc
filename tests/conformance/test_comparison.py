"""How a comparison reports an error: in ulps of the dtype it names, at the value printed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from normspec.conformance.dtypes import Ulps, round_to
from normspec.conformance.tolerance import compare


def test_a_float16_error_is_counted_in_float16_ulps_at_its_value() -> None:
    """The bn.accuracy.running failure of issue 18: an error of 0.00114 at 0.1216 is 18.7
    float16 ulps (spacing 2^-14 there), not 1.17 ulps of the vector's largest value."""
    expected = np.array([100.5, 0.12159644969995471])
    actual = np.array([100.5, round_to(0.12273718416690826, "float16")])
    found = compare("running variance", actual, expected, np.array([0.01, 0.000654]), "float16")
    assert not found.ok and found.worst_index == (1,)
    error = actual[1] - expected[1]
    assert found.ulps == Ulps(error / 2.0**-14, "float16")
    assert 18 < found.ulps.value < 19
    assert f"error {error:.3g} = 19 float16 ulps at 0.1216 (bound 0.000654)" in found.describe()


@pytest.mark.parametrize(
    ("ulps", "text"),
    [
        (Ulps(0.0, "float32"), "0 float32 ulps"),
        (Ulps(1.0, "bfloat16"), "1 bfloat16 ulp"),
        (Ulps(1.25, "float16"), "1.2 float16 ulps"),
        (Ulps(18.7, "float16"), "19 float16 ulps"),
        (Ulps(2.5e7, "float64"), "2.50e+07 float64 ulps"),
        (Ulps(math.inf, "float32"), "∞ float32 ulps"),
    ],
)
def test_ulps_are_printed_with_their_dtype(ulps: Ulps, text: str) -> None:
    assert str(ulps) == text


def test_ulps_of_an_expected_zero_or_non_finite_value() -> None:
    assert Ulps.of(2.0**-24, 0.0, "float16").value == 1.0  # the subnormal spacing
    assert Ulps.of(0.0, math.inf, "float32").value == 0.0
    assert Ulps.of(1.0, math.nan, "float32").value == math.inf


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_an_infinity_is_the_rounded_result_only_beyond_the_range(dtype: str) -> None:
    """conv.io.finite: an exact value beyond the dtype's range rounds to an infinity of its
    sign, so that infinity passes; below the overflow threshold, or of the other sign, or a
    NaN, it fails."""
    from normspec.conformance.dtypes import float_format

    fmt = float_format(dtype)
    beyond = fmt.overflow_threshold * 1.01
    within = fmt.max  # representable: an infinity is no rounding of it
    expected = np.array([beyond, -beyond, beyond, within, -within])
    bound = np.full(5, fmt.max * fmt.unit_roundoff / 8)  # max + bound rounds to max
    for i, wrong in [(2, -np.inf), (2, np.nan), (3, np.inf), (4, -np.inf)]:
        actual = expected.copy()
        actual[:2] = [np.inf, -np.inf]
        actual[i] = wrong
        failed = compare("y", actual, expected, bound, dtype)
        assert not failed.ok and failed.worst_index == (i,), (i, wrong)
    actual = np.array([np.inf, -np.inf, np.inf, within, -within])
    passed = compare("y", actual, expected, bound, dtype)
    assert passed.ok and passed.max_abs_error == 0.0
    assert passed.significant is None or math.isfinite(passed.significant.value)


def test_an_infinity_within_the_bound_of_the_threshold_passes() -> None:
    """A value just below the float16 overflow threshold whose bound reaches past it may
    round to infinity; one whose bound does not may not."""
    below = 65519.0
    assert compare("y", np.array([np.inf]), np.array([below]), np.array([2.0]), "float16").ok
    assert not compare("y", np.array([np.inf]), np.array([below]), np.array([0.5]), "float16").ok


def test_exact_zeros_are_no_relative_error() -> None:
    """0 where 0 is right is a relative error of 0 (not 0 / 0), an error at 0 an infinite one."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exact = compare("dx", np.zeros(3), np.zeros(3), np.zeros(3), "float32")
        off = compare("dx", np.array([0.0, 1e-9]), np.zeros(2), np.full(2, 1e-8), "float32")
    assert exact.ok and exact.max_rel_error == 0.0
    assert off.ok and off.max_rel_error == math.inf
