"""Renorm moving statistics under each dialect, degenerate input, invalid parameters, purity.

Clauses: renorm.moving.*, renorm.train.pre_update, renorm.infer.output, renorm.degenerate.*,
renorm.params.*, conv.io.inputs_unmodified; the tf_keras dialect against a NumPy model of
tf_keras' ``_renorm_correction_and_moments`` as read from its source.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from normspec.reference import (
    PAPER_SCHEDULE,
    Affine,
    ConstantSchedule,
    RenormBounds,
    RenormConfig,
    RenormDialect,
    RenormStatistics,
    renorm,
    renorm_config,
)
from normspec.reference.dialects import PROFILES

AVERAGES = ["std", "variance_biased", "variance_unbiased"]


def _moments(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray, int]:
    axes = tuple(a for a in range(x.ndim) if a != axis)
    return x.mean(axis=axes), x.var(axis=axes), x.size // x.shape[axis]


def _bshape(x: np.ndarray, axis: int) -> list[int]:
    shape = [1] * x.ndim
    shape[axis] = -1
    return shape


@st.composite
def runs(draw):
    features = draw(st.integers(1, 3))
    steps = draw(st.integers(1, 6))
    shape = draw(st.sampled_from([(4, features), (2, features, 3), (3, features, 1, 2)]))
    axis = 1
    batches = [
        np.array(
            draw(
                st.lists(
                    st.floats(-5.0, 5.0), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))
                )
            )
        ).reshape(shape)
        * draw(st.sampled_from([0.1, 1.0, 10.0]))
        + draw(st.floats(-20.0, 20.0))
        for _ in range(steps)
    ]
    average = draw(st.sampled_from(AVERAGES))
    separate = draw(st.booleans())
    floor = draw(st.sampled_from(["none", "sqrt_eps"]))
    rate = draw(st.floats(0.0, 1.0))
    c_rate = draw(st.floats(0.0, 1.0)) if separate else None
    eps = draw(st.sampled_from([1e-5, 1e-3, 0.5]))
    r_max = draw(st.floats(1.0, 3.0))
    d_max = draw(st.floats(0.0, 3.0))
    config = RenormConfig(
        features,
        schedule=ConstantSchedule.symmetric(r_max, d_max),
        feature_axis=axis,
        eps=eps,
        rate=rate,
        average=average,
        statistics="separate" if separate else "shared",
        correction_rate=c_rate,
        sigma_floor=floor,
    )
    gamma = np.array(draw(st.lists(st.floats(-2.0, 2.0), min_size=features, max_size=features)))
    beta = np.array(draw(st.lists(st.floats(-2.0, 2.0), min_size=features, max_size=features)))
    return config, Affine(gamma, beta), batches


def _sigma(spread: np.ndarray, config: RenormConfig) -> np.ndarray:
    sigma = spread if config.average == "std" else np.sqrt(spread + config.eps)
    return np.maximum(sigma, math.sqrt(config.eps)) if config.sigma_floor == "sqrt_eps" else sigma


@given(runs())
def test_moving_statistics_over_several_steps(run) -> None:
    """renorm.moving.*, renorm.train.pre_update, renorm.infer.output for every dialect,
    against a recurrence written here with NumPy's mean and var."""
    config, params, batches = run
    state = config.initial_state()
    assert state.steps == 0
    np.testing.assert_array_equal(state.mean, 0.0)
    np.testing.assert_array_equal(state.spread, 1.0)
    mean = np.zeros(config.num_features)
    spread = np.ones(config.num_features)
    c_mean, c_spread = mean.copy(), spread.copy()
    separate = config.statistics == "separate"
    bounds = config.schedule.bounds(0)
    for t, x in enumerate(batches):
        axis = config.feature_axis
        mu_b, var_b, n = _moments(x, axis)
        sigma_b = np.sqrt(var_b + config.eps)
        cm, cs = (c_mean, c_spread) if separate else (mean, spread)
        sigma = _sigma(cs, config)
        r = np.clip(sigma_b / sigma, bounds.r_min, bounds.r_max)
        d = np.clip((mu_b - cm) / sigma, -bounds.d_max, bounds.d_max)
        shape = _bshape(x, axis)
        expected_y = params.gamma.reshape(shape) * (
            (x - mu_b.reshape(shape)) / sigma_b.reshape(shape) * r.reshape(shape) + d.reshape(shape)
        ) + params.beta.reshape(shape)
        if config.average == "variance_unbiased" and n < 2:
            with pytest.raises(ValueError, match="unbiased"):
                renorm.training_step(config, params, state, x)
            return
        y, new_state = renorm.training_step(config, params, state, x)
        np.testing.assert_allclose(y, expected_y, rtol=1e-9, atol=1e-9)
        target = {
            "std": sigma_b,
            "variance_biased": var_b,
            "variance_unbiased": var_b * n / max(n - 1, 1),
        }[config.average]
        mean = mean + config.rate * (mu_b - mean)
        spread = spread + config.rate * (target - spread)
        if separate:
            c_mean = c_mean + config.correction_rate * (mu_b - c_mean)
            c_spread = c_spread + config.correction_rate * (target - c_spread)
        np.testing.assert_allclose(new_state.mean, mean, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(new_state.spread, spread, rtol=1e-10, atol=1e-10)
        if separate:
            np.testing.assert_allclose(new_state.correction_mean, c_mean, rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(
                new_state.correction_spread, c_spread, rtol=1e-10, atol=1e-10
            )
        else:
            assert new_state.correction_mean is None
        assert new_state.steps == t + 1
        # inference reads the inference set only and changes nothing
        before = (new_state.mean.copy(), new_state.spread.copy(), new_state.steps)
        out = renorm.inference(config, params, new_state, x)
        expected_out = params.gamma.reshape(shape) * (x - mean.reshape(shape)) / _sigma(
            spread, config
        ).reshape(shape) + params.beta.reshape(shape)
        np.testing.assert_allclose(out, expected_out, rtol=1e-9, atol=1e-9)
        np.testing.assert_array_equal(new_state.mean, before[0])
        np.testing.assert_array_equal(new_state.spread, before[1])
        assert new_state.steps == before[2]
        state = new_state


def test_the_correction_uses_the_statistics_before_the_update() -> None:
    """renorm.train.pre_update with the chapter's example."""
    x = np.array([[1.0], [2.0], [3.0], [4.0]])
    config = RenormConfig(1, schedule=ConstantSchedule.symmetric(3.0, 0.25), eps=0.75, rate=0.5)
    params = Affine(np.array([2.0]), np.array([0.5]))
    state = RenormStatistics([2.0], [1.0], 0)
    y, new = renorm.training_step(config, params, state, x)
    y_after, _ = renorm.train_forward(
        x,
        new.mean,
        new.spread,
        params.gamma,
        params.beta,
        bounds=config.schedule.bounds(0),
        eps=0.75,
    )
    np.testing.assert_allclose(y.ravel(), [-2.0, 0.0, 2.0, 4.0], atol=1e-15)
    assert np.max(np.abs(y - y_after)) > 0.1


class TfKerasModel:
    """tf_keras BatchNormalization(renorm=True), non-fused, as read in its source
    (``_renorm_correction_and_moments``, ``_assign_moving_average``, ``call``)."""

    def __init__(self, c: int, eps: float, momentum: float, renorm_momentum: float, clipping):
        self.eps, self.momentum, self.renorm_momentum = eps, momentum, renorm_momentum
        self.clipping = clipping or {}
        self.moving_mean, self.moving_variance = np.zeros(c), np.ones(c)
        self.moving_stddev = np.sqrt(self.moving_variance)
        self.renorm_mean, self.renorm_stddev = np.zeros(c), np.sqrt(np.ones(c))

    def train(self, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
        mean, variance = x.mean(axis=0), x.var(axis=0)
        stddev = np.sqrt(variance + self.eps)
        renorm_stddev = np.maximum(self.renorm_stddev, np.sqrt(self.eps))
        r = stddev / renorm_stddev
        d = (mean - self.renorm_mean) / renorm_stddev
        if "rmin" in self.clipping:
            r = np.maximum(r, self.clipping["rmin"])
        if "rmax" in self.clipping:
            r = np.minimum(r, self.clipping["rmax"])
        if "dmax" in self.clipping:
            d = np.minimum(np.maximum(d, -self.clipping["dmax"]), self.clipping["dmax"])
        decay = 1.0 - self.renorm_momentum
        self.renorm_mean = self.renorm_mean - (self.renorm_mean - mean) * decay
        self.renorm_stddev = self.renorm_stddev - (self.renorm_stddev - stddev) * decay
        scale, offset = gamma * r, gamma * d + beta
        out = (x - mean) / np.sqrt(variance + self.eps) * scale + offset
        decay = 1.0 - self.momentum
        self.moving_mean = self.moving_mean - (self.moving_mean - mean) * decay
        self.moving_stddev = self.moving_stddev - (self.moving_stddev - stddev) * decay
        self.moving_variance = np.maximum(self.moving_stddev**2 - self.eps, 0.0)
        return out

    def infer(self, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
        return gamma * (x - self.moving_mean) / np.sqrt(self.moving_variance + self.eps) + beta


@pytest.mark.parametrize("clipping", [None, {"rmin": 0.8, "rmax": 1.5, "dmax": 0.3}, {"rmax": 2.0}])
def test_the_tf_keras_profile_matches_tf_keras_as_read(clipping) -> None:
    """The tf_keras dialect (separate sets, std averaged, sqrt(eps) floor, independent
    clipping, decay convention) reproduces the algorithm of tf_keras' source."""
    rng = np.random.default_rng(7)
    c = 3
    model = TfKerasModel(c, 1e-3, 0.9, 0.6, clipping)
    config = renorm_config("tf_keras", c, momentum=0.9, renorm_momentum=0.6, clipping=clipping)
    state = config.initial_state()
    # a tiny moving standard deviation exercises the floor
    state = state.replace(
        spread=np.array([1.0, 1e-3, 0.5]), correction_spread=np.array([1e-4, 1.0, 2.0])
    )
    model.moving_stddev = np.array([1.0, 1e-3, 0.5])
    model.moving_variance = np.maximum(model.moving_stddev**2 - 1e-3, 0.0)
    model.renorm_stddev = np.array([1e-4, 1.0, 2.0])
    gamma, beta = rng.normal(size=c), rng.normal(size=c)
    params = Affine(gamma, beta)
    np.testing.assert_allclose(
        renorm.inference(config, params, state, np.ones((2, c))),
        model.infer(np.ones((2, c)), gamma, beta),
        rtol=1e-12,
    )
    for _ in range(6):
        x = rng.normal(2.0, 3.0, size=(5, c))
        y, state = renorm.training_step(config, params, state, x)
        np.testing.assert_allclose(y, model.train(x, gamma, beta), rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(state.mean, model.moving_mean, rtol=1e-12)
        np.testing.assert_allclose(state.spread, model.moving_stddev, rtol=1e-12)
        np.testing.assert_allclose(state.correction_mean, model.renorm_mean, rtol=1e-12)
        np.testing.assert_allclose(state.correction_spread, model.renorm_stddev, rtol=1e-12)
        x_test = rng.normal(size=(4, c))
        np.testing.assert_allclose(
            renorm.inference(config, params, state, x_test),
            model.infer(x_test, gamma, beta),
            rtol=1e-10,
        )


def test_profiles_and_renorm_config() -> None:
    """The renorm dialects of the profiles and their translation to a RenormConfig."""
    assert PROFILES["paper"].renorm == RenormDialect("std", "shared", "symmetric", "none", "ramp")
    assert PROFILES["tf_keras"].renorm is not None
    for name in ("torch", "keras", "flax"):
        assert PROFILES[name].renorm is None
        with pytest.raises(ValueError, match="no batch renormalization"):
            renorm_config(name, 2)
    paper = renorm_config("paper", 2)
    assert paper.schedule == PAPER_SCHEDULE
    assert paper.rate == 0.1
    assert paper.statistics == "shared"
    assert paper.correction_rate is None
    keras2 = renorm_config("tf_keras", 2)
    assert keras2.schedule.bounds(0) == RenormBounds.from_keras(None)
    assert keras2.rate == pytest.approx(0.01)
    assert keras2.correction_rate == pytest.approx(0.01)
    assert keras2.eps == 1e-3
    assert keras2.sigma_floor == "sqrt_eps"
    assert keras2.average == "std"
    clipped = renorm_config("tf_keras", 2, clipping={"rmax": 3.0, "rmin": 1 / 3, "dmax": 5.0})
    assert clipped.schedule.bounds(10**6) == RenormBounds(1 / 3, 3.0, 5.0)
    with pytest.raises(ValueError, match="not both"):
        renorm_config("tf_keras", 2, clipping={}, schedule=PAPER_SCHEDULE)
    with pytest.raises(ValueError, match="renorm_momentum"):
        renorm_config("paper", 2, renorm_momentum=0.5)
    with pytest.raises(ValueError, match="average"):
        RenormDialect("mean", "shared", "symmetric", "none", "ramp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="default_renorm_momentum"):
        RenormDialect("std", "separate", "independent", "none", "none")


# ------------------------------------------------------------------------------------
# Degenerate input


def test_single_value_per_feature() -> None:
    """renorm.degenerate.single_value: y = gamma * d + beta, dx = 0, finite state."""
    x = np.array([[3.0, -1.0, 0.5]])
    gamma, beta = np.array([2.0, -1.0, 0.5]), np.array([0.1, 0.2, 0.3])
    mu, sigma = np.array([1.0, 0.0, 0.5]), np.array([1.0, 4.0, 2.0])
    bounds = RenormBounds.symmetric(3.0, 1.5)
    y, corr = renorm.train_forward(x, mu, sigma, gamma, beta, bounds=bounds, eps=1e-3)
    d = np.clip((x[0] - mu) / sigma, -1.5, 1.5)
    np.testing.assert_allclose(y[0], gamma * d + beta, rtol=1e-15)
    np.testing.assert_allclose(corr.std, math.sqrt(1e-3))
    grads = renorm.train_backward(np.array([[1.0, -2.0, 3.0]]), x, corr.r, corr.d, gamma, eps=1e-3)
    np.testing.assert_array_equal(grads.dx, 0.0)
    for average in ("std", "variance_biased"):
        config = RenormConfig(3, schedule=ConstantSchedule(bounds), eps=1e-3, average=average)
        _, state = renorm.training_step(config, Affine(gamma, beta), RenormStatistics(mu, sigma), x)
        assert np.all(np.isfinite(state.mean)) and np.all(np.isfinite(state.spread))
    config = RenormConfig(
        3, schedule=ConstantSchedule(bounds), eps=1e-3, average="variance_unbiased"
    )
    with pytest.raises(ValueError, match="unbiased"):
        renorm.training_step(config, Affine(gamma, beta), RenormStatistics(mu, sigma), x)


def test_zero_variance_feature() -> None:
    """renorm.degenerate.zero_variance."""
    x = np.array([[2.0, 1.0], [2.0, 3.0], [2.0, -1.0]])
    dy = np.array([[1.0, 0.0], [0.5, 1.0], [-2.0, 0.0]])
    gamma, beta = np.array([1.5, 1.0]), np.array([-0.5, 0.0])
    mu, sigma = np.array([1.0, 0.0]), np.array([0.5, 1.0])
    eps = 1e-4
    y, corr = renorm.train_forward(
        x, mu, sigma, gamma, beta, bounds=RenormBounds.symmetric(3.0, 5.0), eps=eps
    )
    assert corr.r[0] == pytest.approx(1 / 3)  # sqrt(eps) / sigma = 0.02, clipped to 1/3
    np.testing.assert_allclose(y[:, 0], gamma[0] * 2.0 + beta[0])  # d = (2 - 1) / 0.5 = 2
    grads = renorm.train_backward(dy, x, corr.r, corr.d, gamma, eps=eps)
    expected = gamma[0] * corr.r[0] / math.sqrt(eps) * (dy[:, 0] - dy[:, 0].mean())
    np.testing.assert_allclose(grads.dx[:, 0], expected, rtol=1e-12)
    assert np.all(np.isfinite(grads.dx)) and np.all(np.isfinite(grads.dgamma))


def test_empty_batch_raises_and_changes_nothing() -> None:
    """renorm.degenerate.empty_batch."""
    config = RenormConfig(3, schedule=ConstantSchedule.symmetric(2.0, 1.0))
    state = config.initial_state()
    with pytest.raises(ValueError, match="empty batch"):
        renorm.training_step(config, None, state, np.zeros((0, 3)))
    assert state.steps == 0
    np.testing.assert_array_equal(state.mean, 0.0)


def test_nonfinite_values_stay_in_their_feature() -> None:
    """renorm.degenerate.nonfinite_isolated: NaN/inf in the input or the state of feature 0."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 3, 2))
    dy = rng.normal(size=x.shape)
    for bad_x, bad_state in ((np.nan, 1.0), (np.inf, 1.0), (0.0, np.nan)):
        for average, separate in (("std", False), ("variance_biased", True)):
            extra = {"statistics": "separate", "correction_rate": 0.2} if separate else {}
            config = RenormConfig(
                3, schedule=ConstantSchedule.symmetric(2.0, 1.0), rate=0.3, average=average, **extra
            )
            sub = RenormConfig(
                2, schedule=ConstantSchedule.symmetric(2.0, 1.0), rate=0.3, average=average, **extra
            )
            params = Affine(np.array([1.0, 2.0, -1.0]), np.array([0.0, 0.5, 1.0]))
            sub_params = Affine(params.gamma[1:], params.beta[1:])
            state = config.initial_state().replace(mean=np.array([0.0, 0.3, -0.2]))
            if bad_state != 1.0:
                state = state.replace(spread=np.array([bad_state, 1.0, 1.0]))
            sub_state = config.initial_state().replace(mean=np.array([0.0, 0.3, -0.2]))
            sub_state = RenormStatistics(
                sub_state.mean[1:],
                sub_state.spread[1:],
                0,
                *((np.zeros(2), np.ones(2)) if separate else ()),
            )
            poisoned = x.copy()
            poisoned[2, 0, 1] = bad_x
            y, new = renorm.training_step(config, params, state, poisoned)
            y_sub, new_sub = renorm.training_step(sub, sub_params, sub_state, x[:, 1:])
            np.testing.assert_allclose(y[:, 1:], y_sub, rtol=1e-14)
            np.testing.assert_allclose(new.mean[1:], new_sub.mean, rtol=1e-14)
            np.testing.assert_allclose(new.spread[1:], new_sub.spread, rtol=1e-14)
            g = renorm.backward(config, params, state, poisoned, dy, training=True)
            g_sub = renorm.backward(sub, sub_params, sub_state, x[:, 1:], dy[:, 1:], training=True)
            np.testing.assert_allclose(g.dx[:, 1:], g_sub.dx, rtol=1e-13, atol=1e-15)
            np.testing.assert_allclose(g.dgamma[1:], g_sub.dgamma, rtol=1e-13)
            out = renorm.inference(config, params, new, poisoned)
            np.testing.assert_allclose(
                out[:, 1:], renorm.inference(sub, sub_params, new_sub, x[:, 1:]), rtol=1e-14
            )


# ------------------------------------------------------------------------------------
# Invalid parameters and states


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: RenormConfig(2, eps=0.0), "eps"),
        (lambda: RenormConfig(2, eps=-1e-5), "eps"),
        (lambda: RenormConfig(2, rate=1.5), "update rate"),
        (lambda: RenormConfig(2, rate=-0.1), "update rate"),
        (lambda: RenormConfig(2, statistics="separate"), "correction_rate"),
        (lambda: RenormConfig(2, statistics="separate", correction_rate=2.0), "update rate"),
        (lambda: RenormConfig(2, correction_rate=0.1), "correction_rate"),
        (lambda: RenormConfig(2, average="var"), "average"),  # type: ignore[arg-type]
        (lambda: RenormConfig(2, sigma_floor="eps"), "sigma_floor"),  # type: ignore[arg-type]
        (lambda: RenormConfig(2, schedule=RenormBounds.symmetric(2, 1)), "schedule"),  # type: ignore[arg-type]
        (lambda: RenormConfig(0), "num_features"),
        (
            lambda: renorm.inference(
                RenormConfig(1), None, RenormStatistics([0.0], [-1.0]), [[1.0]]
            ),
            "non-negative",
        ),
        (lambda: RenormStatistics([0.0], [1.0], -1), "steps"),
        (lambda: RenormStatistics([0.0, 1.0], [1.0]), "shape"),
        (lambda: RenormStatistics([0.0], [1.0], 0, [0.0]), "together"),
        (
            lambda: renorm.training_step(
                RenormConfig(1, statistics="separate", correction_rate=0.1),
                None,
                RenormStatistics([0.0], [1.0], 0, [0.0], [-1.0]),
                np.ones((2, 1)),
            ),
            "non-negative",
        ),
        (
            lambda: renorm.train_forward(
                np.ones((3, 1)), [0.0], [0.0], bounds=RenormBounds.symmetric(2, 1)
            ),
            "sigma",
        ),
        (
            lambda: renorm.train_forward(
                np.ones((3, 1)), [0.0], [-2.0], bounds=RenormBounds.symmetric(2, 1)
            ),
            "sigma",
        ),
        (lambda: renorm.inference_forward(np.ones((3, 1)), [0.0], [0.0]), "sigma"),
        (lambda: renorm.moving_std([0.0], average="std", eps=1e-5), "sigma"),
        (
            lambda: renorm.train_forward(
                np.ones((3, 2)), [0.0], [1.0, 1.0], bounds=RenormBounds.symmetric(2, 1)
            ),
            "moving mean",
        ),
        (
            lambda: renorm.train_forward(
                np.ones((3, 2)), [0.0, 0.0], [1.0, 1.0], [1.0], bounds=RenormBounds.symmetric(2, 1)
            ),
            "gamma",
        ),
        (lambda: renorm.train_backward(np.ones((3, 2)), np.ones((3, 2)), [1.0], [0.0, 0.0]), "r"),
        (lambda: renorm.train_backward(np.ones((3, 2)), np.ones((3, 2)), [1.0, 1.0], [0.0]), "d"),
        (
            lambda: renorm.training_step(
                RenormConfig(2), None, RenormStatistics.initial(3), np.ones((4, 2))
            ),
            "features",
        ),
        (
            lambda: renorm.training_step(
                RenormConfig(2, statistics="separate", correction_rate=0.1),
                None,
                RenormStatistics.initial(2),
                np.ones((4, 2)),
            ),
            "set",
        ),
        (
            lambda: renorm.training_step(
                RenormConfig(2), None, RenormStatistics.initial(2), np.ones((4, 3))
            ),
            "shape",
        ),
    ],
)
def test_invalid_parameters_raise_naming_the_parameter(make, name: str) -> None:
    """renorm.params.invalid, renorm.params.sigma, renorm.params.shape."""
    with pytest.raises(ValueError, match=name):
        make()


def test_a_state_holds_what_a_library_reports() -> None:
    """A negative or NaN spread is a value to judge (renorm.moving.*), not a malformed state:
    the state holds it; the reference refuses it only where it computes sigma from it."""
    state = RenormStatistics([0.0, np.nan], [-1.0, np.nan], 3, [1.0, 0.0], [-2.0, 1.0])
    assert state.spread[0] == -1.0 and np.isnan(state.spread[1])
    assert state.correction_spread is not None and state.correction_spread[0] == -2.0


def test_a_floor_on_sigma_accepts_a_zero_moving_standard_deviation() -> None:
    """renorm.params.sigma: with sigma_floor = sqrt_eps, sigma = 0 means sqrt(eps)."""
    config = RenormConfig(
        1, schedule=ConstantSchedule.symmetric(100.0, 100.0), eps=1e-2, sigma_floor="sqrt_eps"
    )
    state = RenormStatistics([0.0], [0.0])
    x = np.array([[1.0], [3.0]])
    corr = renorm.correction_for(config, state, x)
    assert corr.d[0] == pytest.approx(2.0 / 0.1)
    y = renorm.inference(config, None, state, x)
    np.testing.assert_allclose(y.ravel(), [10.0, 30.0])
    with pytest.raises(ValueError, match="sigma"):
        renorm.training_step(RenormConfig(1), None, state, x)


@given(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-1e3, 1e3),
)
def test_no_parameter_value_writes_nan_into_the_state(r_max, d_max, rate) -> None:
    """renorm.params.no_nan_state: invalid bounds or rates raise; valid ones keep the state finite."""
    x = np.array([[1.0, -2.0], [4.0, 0.5], [2.0, 2.0]])
    try:
        config = RenormConfig(2, schedule=ConstantSchedule.symmetric(r_max, d_max), rate=rate)
    except ValueError:
        return
    _, state = renorm.training_step(config, None, config.initial_state(), x)
    assert np.all(np.isfinite(state.mean)) and np.all(np.isfinite(state.spread))


# ------------------------------------------------------------------------------------
# Purity and the state's immutability


def test_inputs_are_never_modified_and_read_only_inputs_work() -> None:
    """conv.io.inputs_unmodified for every renorm function."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(4, 2, 3))
    dy = rng.normal(size=x.shape)
    gamma, beta = rng.normal(size=2), rng.normal(size=2)
    mu, sigma = rng.normal(size=2), rng.uniform(0.5, 2, size=2)
    arrays = [x, dy, gamma, beta, mu, sigma]
    copies = [a.copy() for a in arrays]
    for a in arrays:
        a.setflags(write=False)
    config = RenormConfig(
        2, schedule=ConstantSchedule.symmetric(2.0, 1.0), statistics="separate", correction_rate=0.2
    )
    params = Affine(gamma, beta)
    state = RenormStatistics(mu, sigma, 7, mu, sigma)
    bounds = RenormBounds.symmetric(2.0, 1.0)
    y, corr = renorm.train_forward(x, mu, sigma, gamma, beta, bounds=bounds)
    renorm.train_backward(dy, x, corr.r, corr.d, gamma)
    renorm.inference_forward(x, mu, sigma, gamma, beta)
    renorm.inference_backward(dy, x, mu, sigma, gamma)
    _, new_state = renorm.training_step(config, params, state, x)
    renorm.inference(config, params, state, x)
    renorm.backward(config, params, state, x, dy, training=True)
    renorm.backward(config, params, state, x, dy, training=False)
    renorm.update_moving_statistics(state, corr, average="std", rate=0.5, correction_rate=0.5)
    for a, c in zip(arrays, copies, strict=True):
        np.testing.assert_array_equal(a, c)
    assert state.steps == 7 and new_state.steps == 8
    np.testing.assert_array_equal(state.mean, mu)
    y[...] = 0.0  # outputs are fresh, writable arrays


def test_the_state_holds_read_only_copies() -> None:
    mean, spread = np.array([1.0, 2.0]), np.array([0.5, 0.25])
    state = RenormStatistics(mean, spread, np.int64(3), mean, spread)
    mean[0] = 99.0
    assert state.mean[0] == 1.0 and state.correction_mean is not None
    assert state.correction_mean[0] == 1.0
    for array in (state.mean, state.spread, state.correction_mean, state.correction_spread):
        assert array is not None and not array.flags.writeable
    assert isinstance(state.steps, int)
    assert state.separate and state.num_features == 2
    initial = RenormStatistics.initial(2, separate=True)
    np.testing.assert_array_equal(initial.correction_spread, 1.0)
    with pytest.raises(ValueError, match="num_features"):
        RenormStatistics.initial(0)


def test_inference_backward_and_layer_backward_agree() -> None:
    """renorm.backward.infer through the layer, with the dialect's sigma."""
    rng = np.random.default_rng(2)
    x, dy = rng.normal(size=(5, 2)), rng.normal(size=(5, 2))
    config = RenormConfig(2, average="variance_biased", eps=0.1)
    state = RenormStatistics([0.1, -0.2], [2.0, 0.5])
    params = Affine(np.array([1.5, -1.0]), np.array([0.0, 1.0]))
    grads = renorm.backward(config, params, state, x, dy, training=False)
    sigma = np.sqrt(np.array([2.0, 0.5]) + 0.1)
    np.testing.assert_allclose(grads.dx, params.gamma * dy / sigma, rtol=1e-15)
    np.testing.assert_allclose(
        grads.dgamma, np.sum(dy * (x - state.mean) / sigma, axis=0), rtol=1e-14
    )
    np.testing.assert_allclose(grads.dbeta, dy.sum(axis=0), rtol=1e-15)
