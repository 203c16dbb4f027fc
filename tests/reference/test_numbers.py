"""The reference takes every real number, Python's or NumPy's, as a setting, and no boolean."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from normspec import reference
from normspec.reference import BatchNormConfig, RunningStatistics
from normspec.reference.renorm import RenormConfig, RenormStatistics
from normspec.reference.schedules import ConstantSchedule, RenormBounds, check_step

REALS = [0.25, np.float16(0.25), np.float32(0.25), np.float64(0.25), Fraction(1, 4)]
INTEGERS = [3, np.int8(3), np.int32(3), np.int64(3), np.uint16(3)]
BOOLEANS = [True, False, np.True_, np.False_]


@pytest.mark.parametrize("value", REALS, ids=repr)
def test_real_numbers_are_settings(value: object) -> None:
    config = BatchNormConfig(num_features=2, eps=value, rate=value)  # type: ignore[arg-type]
    assert (config.eps, config.rate) == (0.25, 0.25)
    assert type(config.eps) is float and type(config.rate) is float
    x = np.arange(6.0).reshape(3, 2)
    y, _ = reference.train_forward(x, eps=value)  # type: ignore[arg-type]
    expected, _ = reference.train_forward(x, eps=0.25)
    np.testing.assert_array_equal(y, expected)
    renorm = RenormConfig(num_features=2, eps=value, rate=value)  # type: ignore[arg-type]
    assert renorm.num_features == 2
    assert RenormBounds(r_min=value, r_max=1.0, d_max=value).d_max == 0.25  # type: ignore[arg-type]


@pytest.mark.parametrize("value", INTEGERS, ids=repr)
def test_integers_are_counts(value: object) -> None:
    assert BatchNormConfig(num_features=value).num_features == 3  # type: ignore[arg-type]
    state = RunningStatistics(np.zeros(1), np.ones(1), value)  # type: ignore[arg-type]
    assert state.steps == 3 and type(state.steps) is int
    assert RenormStatistics.initial(value).mean.shape == (3,)  # type: ignore[arg-type]
    assert check_step(value) == 3


@pytest.mark.parametrize("value", BOOLEANS, ids=repr)
def test_booleans_are_rejected(value: object) -> None:
    for make in (
        lambda: BatchNormConfig(num_features=2, rate=value),  # type: ignore[arg-type]
        lambda: BatchNormConfig(num_features=2, eps=value),  # type: ignore[arg-type]
        lambda: BatchNormConfig(num_features=value),  # type: ignore[arg-type]
        lambda: reference.train_forward(np.ones((2, 1)), eps=value),  # type: ignore[arg-type]
        lambda: RunningStatistics(np.zeros(1), np.ones(1), value),  # type: ignore[arg-type]
        lambda: RenormConfig(num_features=2, rate=value),  # type: ignore[arg-type]
        lambda: ConstantSchedule(RenormBounds(0.0, 1.0, value)),  # type: ignore[arg-type]
    ):
        with pytest.raises(ValueError, match="must be"):
            make()


@pytest.mark.parametrize("value", ["0.1", None, np.array([0.1]), 1j])
def test_other_values_are_rejected_naming_the_setting(value: object) -> None:
    if value is not None:  # a rate of None is the cumulative average
        with pytest.raises(ValueError, match="update rate alpha must be a real number"):
            BatchNormConfig(num_features=2, rate=value)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="eps must be a real number"):
        reference.train_forward(np.ones((2, 1)), eps=value)  # type: ignore[arg-type]
