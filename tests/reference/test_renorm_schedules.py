"""Clipping bounds and schedules (renorm.schedule.*, renorm.train.correction, renorm.params.invalid)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from normspec.reference import (
    BN_BOUNDS,
    PAPER_SCHEDULE,
    Affine,
    ConstantSchedule,
    LinearRamp,
    RenormBounds,
    SwitchSchedule,
    renorm,
    train_forward,
)
from normspec.reference.schedules import check_step


@pytest.mark.parametrize(
    ("step", "r_max", "d_max"),
    [
        (0, 1.0, 0.0),
        (4_999, 1.0, 0.0),
        (5_000, 1.0, 0.0),
        (5_001, 1.0 + 2.0 / 35_000, 5.0 / 20_000),
        (22_500, 2.0, 4.375),
        (25_000, 15.0 / 7.0, 5.0),
        (40_000, 3.0, 5.0),
        (40_001, 3.0, 5.0),
        (10**9, 3.0, 5.0),
    ],
)
def test_paper_schedule_values(step: int, r_max: float, d_max: float) -> None:
    """renorm.schedule.paper: the table of the chapter."""
    bounds = PAPER_SCHEDULE.bounds(step)
    assert bounds.r_max == pytest.approx(r_max, rel=1e-15)
    assert bounds.d_max == pytest.approx(d_max, rel=1e-15, abs=1e-300)
    assert bounds.r_min == pytest.approx(1.0 / r_max, rel=1e-15)


def test_paper_schedule_is_batch_norm_until_step_5000_and_full_from_40000() -> None:
    for step in (0, 1, 2_500, 4_999, 5_000):
        assert PAPER_SCHEDULE.bounds(step).is_batchnorm
    assert PAPER_SCHEDULE.bounds(40_000) == RenormBounds.symmetric(3.0, 5.0)
    assert PAPER_SCHEDULE.bounds(25_000).d_max == 5.0
    assert PAPER_SCHEDULE.bounds(24_999).d_max < 5.0


@given(st.integers(0, 60_000), st.integers(0, 60_000))
def test_paper_schedule_is_monotone_and_linear(a: int, b: int) -> None:
    """The ramps are non-decreasing, linear between 5,000 and their ends."""
    lo, hi = sorted((a, b))
    assert PAPER_SCHEDULE.r_max_at(lo) <= PAPER_SCHEDULE.r_max_at(hi)
    assert PAPER_SCHEDULE.d_max_at(lo) <= PAPER_SCHEDULE.d_max_at(hi)
    t = min(max(lo, 5_000), 40_000)
    assert PAPER_SCHEDULE.r_max_at(t) == pytest.approx(1 + 2 * (t - 5_000) / 35_000, rel=1e-14)
    t = min(max(lo, 5_000), 25_000)
    assert PAPER_SCHEDULE.d_max_at(t) == pytest.approx(
        5 * (t - 5_000) / 20_000, rel=1e-14, abs=1e-300
    )


def test_the_paper_schedule_agrees_with_the_batchrenorm_package_formula() -> None:
    """The same real function as ludvb/batchrenorm's clamp(2/35000 t + 25/35, 1, 3) and
    clamp(5/20000 t - 25/20, 0, 5)."""
    for step in range(0, 50_001, 125):
        r = min(max(2 / 35_000 * step + 25 / 35, 1.0), 3.0)
        d = min(max(5 / 20_000 * step - 25 / 20, 0.0), 5.0)
        assert PAPER_SCHEDULE.r_max_at(step) == pytest.approx(r, rel=1e-13)
        assert PAPER_SCHEDULE.d_max_at(step) == pytest.approx(d, rel=1e-13, abs=1e-12)


def test_constant_and_switch_schedules() -> None:
    """renorm.schedule.constant, renorm.schedule.switch."""
    fixed = RenormBounds.symmetric(3.0, 5.0)
    constant = ConstantSchedule(fixed)
    assert all(constant.bounds(t) == fixed for t in (0, 1, 10**6))
    switch = SwitchSchedule(100, fixed)
    assert switch.bounds(0) == BN_BOUNDS
    assert switch.bounds(99) == BN_BOUNDS
    assert switch.bounds(100) == fixed
    assert switch.bounds(101) == fixed
    assert SwitchSchedule(0, fixed).bounds(0) == fixed


def test_a_short_ramp_has_jumps_where_start_equals_end() -> None:
    ramp = LinearRamp(start=3, r_max=2.0, r_max_step=3, d_max=1.0, d_max_step=5)
    assert ramp.bounds(3).r_max == 2.0
    assert ramp.bounds(2).r_max == 1.0
    assert ramp.d_max_at(4) == 0.5


def test_the_step_counter_selects_the_bounds_before_the_step() -> None:
    """renorm.schedule.step: the step taken with t completed steps uses bounds(t)."""
    schedule = LinearRamp(start=2, r_max=3.0, r_max_step=4, d_max=2.0, d_max_step=3)
    config = renorm.RenormConfig(2, schedule=schedule, eps=1e-3, rate=0.5)
    params = Affine(np.array([1.5, -0.5]), np.array([0.1, 0.2]))
    rng = np.random.default_rng(0)
    state = config.initial_state()
    for t in range(6):
        x = rng.normal(3.0, 4.0, size=(5, 2))
        corr = renorm.correction_for(config, state, x)
        assert corr.bounds == schedule.bounds(t)
        y, new_state = renorm.training_step(config, params, state, x)
        y_bn, _ = train_forward(x, params.gamma, params.beta, eps=1e-3)
        if t <= 2:
            np.testing.assert_array_equal(y, y_bn)  # plain batch norm until the ramp starts
        else:
            assert not np.allclose(y, y_bn)  # the moving statistics lag the batch's
        assert new_state.steps == t + 1
        state = new_state


def test_keras_clipping_dict() -> None:
    """clipping = independent: missing keys mean no clipping; unknown keys are rejected."""
    assert RenormBounds.from_keras(None) == RenormBounds(0.0, math.inf, math.inf)
    assert RenormBounds.from_keras({}) == RenormBounds(0.0, math.inf, math.inf)
    assert RenormBounds.from_keras({"rmax": 2.0}) == RenormBounds(0.0, 2.0, math.inf)
    assert RenormBounds.from_keras({"rmin": 0.5, "dmax": 1.0}) == RenormBounds(0.5, math.inf, 1.0)
    with pytest.raises(ValueError, match="unknown keys"):
        RenormBounds.from_keras({"r_max": 3.0})


def test_clipping_applies_the_bounds() -> None:
    """renorm.train.correction: r clipped to [r_min, r_max], d to [-d_max, d_max]."""
    r, d = renorm.correction(
        [0.0, 10.0, 0.0],
        [4.0, 0.1, 1.0],
        [1.0, 0.0, 0.0],
        [1.0, 1.0, 1.0],
        RenormBounds(0.5, 2.0, 3.0),
    )
    np.testing.assert_array_equal(r, [2.0, 0.5, 1.0])
    np.testing.assert_array_equal(d, [-1.0, 3.0, 0.0])
    r, d = renorm.correction([5.0], [9.0], [1.0], [2.0], RenormBounds.from_keras(None))
    np.testing.assert_array_equal(r, [4.5])
    np.testing.assert_array_equal(d, [2.0])


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: RenormBounds.symmetric(0.99, 1.0), "r_max"),
        (lambda: RenormBounds.symmetric(2.0, -0.1), "d_max"),
        (lambda: RenormBounds.symmetric(math.nan, 1.0), "r_max"),
        (lambda: RenormBounds.symmetric(2.0, math.nan), "d_max"),
        (lambda: RenormBounds(-0.1, 2.0, 1.0), "r_min"),
        (lambda: RenormBounds(2.0, 1.0, 1.0), "r_max"),
        (lambda: RenormBounds(0.5, 2.0, -1.0), "d_max"),
        (lambda: RenormBounds(math.inf, math.inf, 1.0), "r_min"),
        (lambda: RenormBounds.from_keras({"rmin": -1.0}), "rmin"),
        (lambda: RenormBounds.from_keras({"rmin": 2.0, "rmax": 1.0}), "rmax"),
        (lambda: RenormBounds.from_keras({"dmax": -1.0}), "dmax"),
        (lambda: RenormBounds.from_keras({"dmax": math.nan}), "dmax"),
        (lambda: RenormBounds.from_keras({"rmax": "3"}), "rmax"),
        (lambda: LinearRamp(r_max=0.5), "r_max"),
        (lambda: LinearRamp(d_max=-5.0), "d_max"),
        (lambda: LinearRamp(start=10, r_max_step=5), "r_max_step"),
        (lambda: LinearRamp(start=10, d_max_step=5, r_max_step=20), "d_max_step"),
        (lambda: LinearRamp(start=-1), "start"),
        (lambda: SwitchSchedule(-5, BN_BOUNDS), "switch step"),
        (lambda: PAPER_SCHEDULE.bounds(-1), "step"),
        (lambda: PAPER_SCHEDULE.bounds(1.5), "step"),  # type: ignore[arg-type]
        (lambda: check_step(True), "step"),
    ],
)
def test_invalid_bounds_raise_naming_the_parameter(make, name: str) -> None:
    """renorm.params.invalid."""
    with pytest.raises(ValueError, match=name):
        make()


def test_numpy_scalars_are_accepted() -> None:
    assert RenormBounds.symmetric(np.float32(2.0), np.float64(1.0)).r_max == 2.0
    assert PAPER_SCHEDULE.bounds(np.int64(40_000)).r_max == 3.0
