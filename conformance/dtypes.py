"""Floating-point formats: unit roundoff, ranges, and exact rounding of float64 values to them.

NumPy has no bfloat16, so values are carried as float64 arrays holding exactly the values
the format can represent (conventions: accuracy model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from normspec.adapters.protocol import DTypeName


@dataclass(frozen=True)
class FloatFormat:
    """One IEEE-style binary format."""

    name: DTypeName
    mantissa_bits: int  # including the implicit bit
    smallest_normal: float
    max: float

    @property
    def unit_roundoff(self) -> float:
        """``u = 2^-p``: the relative error bound of one rounding to nearest."""
        return 2.0**-self.mantissa_bits

    @property
    def overflow_threshold(self) -> float:
        """The least magnitude that rounds to infinity: ``max`` plus half its ulp
        (``inf`` for float64, whose exact values a float64 cannot exceed)."""
        half_ulp = math.ldexp(1.0, math.frexp(self.max)[1] - self.mantissa_bits - 1)
        return self.max + half_ulp if self.name != "float64" else math.inf

    @property
    def working_unit_roundoff(self) -> float:
        """``u_w``: accumulation in float32 at least (conventions: accuracy model)."""
        return min(self.unit_roundoff, FORMATS["float32"].unit_roundoff)


FORMATS: dict[str, FloatFormat] = {
    "float64": FloatFormat("float64", 53, float(np.finfo(np.float64).tiny), 1.7976931348623157e308),
    "float32": FloatFormat("float32", 24, float(np.finfo(np.float32).tiny), 3.4028234663852886e38),
    "float16": FloatFormat("float16", 11, float(np.finfo(np.float16).tiny), 65504.0),
    "bfloat16": FloatFormat("bfloat16", 8, float(np.finfo(np.float32).tiny), 3.3895313892515355e38),
}


def float_format(name: str) -> FloatFormat:
    """The format called ``name``; ``KeyError`` naming the known ones otherwise."""
    try:
        return FORMATS[name]
    except KeyError:
        raise KeyError(f"unknown dtype {name!r} (known: {', '.join(FORMATS)})") from None


def _round_bfloat16(values: NDArray[np.float64]) -> NDArray[np.float64]:
    single = np.asarray(values, dtype=np.float32)
    bits = single.view(np.uint32).astype(np.uint64)
    rounding = np.uint64(0x7FFF) + ((bits >> np.uint64(16)) & np.uint64(1))
    rounded = ((bits + rounding) >> np.uint64(16)) << np.uint64(16)
    result = rounded.astype(np.uint32).view(np.float32).astype(np.float64)
    return np.where(np.isnan(single), np.nan, result)


def round_to(values: NDArray[np.float64] | float, name: str) -> NDArray[np.float64]:
    """``values`` rounded to nearest-even in format ``name``, returned as float64."""
    array = np.asarray(values, dtype=np.float64)
    if name == "float64":
        return array.copy()
    if name == "bfloat16":
        return _round_bfloat16(array)
    with np.errstate(over="ignore"):
        return array.astype(name).astype(np.float64)


def round_to_normal(values: NDArray[np.float64] | float, name: str) -> NDArray[np.float64]:
    """:func:`round_to`, with results below the smallest normal number of ``name`` set to
    zero: values that a machine treating subnormal operands as zero (TensorFlow's and XLA's
    CPU kernels) holds as they are."""
    rounded = round_to(values, name)
    rounded[np.abs(rounded) < float_format(name).smallest_normal] = 0.0
    return rounded


def ulp(values: NDArray[np.float64], name: str) -> NDArray[np.float64]:
    """The spacing of format ``name`` at ``values`` (at least the smallest subnormal spacing)."""
    fmt = float_format(name)
    magnitude = np.maximum(np.abs(values), fmt.smallest_normal)
    exponent = np.floor(np.log2(magnitude))
    result: NDArray[np.float64] = np.exp2(exponent - (fmt.mantissa_bits - 1))
    return result


@dataclass(frozen=True)
class Ulps:
    """An error in units in the last place of ``dtype`` at the value it was made on: the
    figure a reader computes from the numbers printed beside it (error / spacing of the
    dtype at the expected value). Printed with its dtype, ``19 float16 ulps``."""

    value: float
    dtype: str

    @classmethod
    def of(cls, error: float, expected: float, dtype: str) -> Ulps:
        """``error`` at ``expected`` (a non-finite expected value: 0 if exact, else inf)."""
        if not math.isfinite(expected):
            return cls(0.0 if error == 0 else math.inf, dtype)
        spacing = float(ulp(np.asarray(expected), dtype))
        with np.errstate(over="ignore"):
            return cls(float(np.float64(error) / spacing), dtype)

    def __str__(self) -> str:
        value = self.value
        if math.isnan(value):
            number = "NaN"
        elif math.isinf(value):
            number = "∞"
        elif value == 0 or value >= 1e6:
            number = "0" if value == 0 else f"{value:.2e}"
        else:
            number = f"{value:.2g}" if value < 10 else f"{value:.0f}"
        return f"{number} {self.dtype} ulp{'' if value == 1 else 's'}"
