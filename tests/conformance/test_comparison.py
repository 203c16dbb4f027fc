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
