"""Argument checking and axis bookkeeping shared by the reference functions."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


def as_float64(name: str, value: Any) -> FloatArray:
    """``value`` as a float64 array, never a view that could be written through."""
    array = np.asarray(value)
    if array.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be a real numeric array, got dtype {array.dtype}")
    return np.array(array, dtype=np.float64, copy=True)


def frozen(array: FloatArray) -> FloatArray:
    """Mark an array the reference returns inside an immutable value as read-only."""
    array.setflags(write=False)
    return array


def check_input(x: FloatArray, feature_axis: int) -> int:
    """Validate the input's rank and feature axis; return the feature axis made non-negative."""
    if x.ndim < 2:
        raise ValueError(f"x must have rank 2 or more (batch, features, ...), got shape {x.shape}")
    if not -x.ndim <= feature_axis < x.ndim:
        raise ValueError(
            f"feature_axis {feature_axis} is out of range for an input of rank {x.ndim}"
        )
    return feature_axis % x.ndim


def reduction_axes(ndim: int, feature_axis: int) -> tuple[int, ...]:
    """Every axis but the feature axis: the axes the batch statistics reduce over."""
    return tuple(axis for axis in range(ndim) if axis != feature_axis)


def per_feature(vector: FloatArray, ndim: int, feature_axis: int) -> FloatArray:
    """A (C,) vector reshaped to broadcast along the feature axis of a rank-``ndim`` input."""
    shape = [1] * ndim
    shape[feature_axis] = vector.shape[0]
    return vector.reshape(shape)


def check_vector(name: str, value: Any, num_features: int) -> FloatArray:
    """A per-feature parameter or statistic: float64, shape (num_features,)."""
    vector = as_float64(name, value)
    if vector.shape != (num_features,):
        raise ValueError(f"{name} must have shape ({num_features},), got {vector.shape}")
    return vector


def real_number(name: str, value: object) -> float:
    """A real number, Python's or NumPy's (``np.float32(1e-3)``), as a float; a boolean, a
    string or an array is an error naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    return float(value)


def whole_number(name: str, value: object, *, minimum: int) -> int:
    """An integer, Python's or NumPy's, of at least ``minimum``; a boolean is an error."""
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, numbers.Integral)
        or int(value) < minimum
    ):
        kind = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
        if minimum == 0:
            kind = "a non-negative integer"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return int(value)


def check_eps(eps: object) -> float:
    """``eps`` must be a positive finite number (bn.params.eps)."""
    number = real_number("eps", eps)
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"eps must be a positive finite number, got {eps!r}")
    return number


def check_rate(rate: object) -> float:
    """The canonical update rate alpha must lie in [0, 1] (bn.params.rate)."""
    number = real_number("update rate alpha", rate)
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"update rate alpha must lie in [0, 1], got {rate!r}")
    return number
