"""The gallery checked without the conformance engine.

The correct implementations must agree with the float64 reference to within their dtype's
precision on well-conditioned input, and every bug must visibly differ from the correct
implementation of its dialect in at least one of a fixed set of ordinary scenarios (the
scenarios are generic, not written per bug).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gallery.base import (
    KerasNumpyBatchNorm,
    NumpyBatchNorm,
    NumpyBatchRenorm,
    TfKerasNumpyBatchRenorm,
    ZeroDebiasedNumpyBatchNorm,
)
from gallery.bugs import BUGS, CORRECT, RENORM_BUGS, RENORM_CORRECT
from normspec.adapters.protocol import DTypeName, LayerConfig
from normspec.adapters.reference import ReferenceImplementation
from normspec.conformance.dtypes import round_to
from normspec.reference import RunningStatistics
from normspec.reference import renorm as reference_renorm
from normspec.reference.layer import Affine
from normspec.reference.schedules import (
    ConstantSchedule,
    LinearRamp,
    RenormBounds,
    Schedule,
    SwitchSchedule,
)

#: Agreement with the reference: a few units of the dtype's roundoff relative to the
#: output's scale, on inputs whose features are centred within a few spreads.
RELATIVE = {"float64": 1e-12, "float32": 2e-5, "float16": 1e-2, "bfloat16": 6e-2}


@dataclass(frozen=True)
class Scenario:
    config: LayerConfig
    x: np.ndarray
    dy: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    state: RunningStatistics


def _shape(rank: int, feature_axis: int, batch: int, features: int) -> tuple[int, ...]:
    shape = [batch, *([3] * (rank - 2))]
    shape.insert(feature_axis, features)
    return tuple(shape)


@st.composite
def scenarios(draw: st.DrawFn, momentum: Callable[[float], float]) -> Scenario:
    dtype: DTypeName = draw(st.sampled_from(["float64", "float32", "float16", "bfloat16"]))
    rank = draw(st.integers(2, 5))
    feature_axis = draw(st.sampled_from([1, rank - 1]))
    features = draw(st.integers(1, 4))
    batch = draw(st.integers(2, 5))
    shape = _shape(rank, feature_axis, batch, features)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    spread = 10.0 ** rng.uniform(-2, 2, features)
    centre = spread * rng.uniform(-3, 3, features)
    broadcast = [1] * rank
    broadcast[feature_axis] = features
    x = round_to(
        centre.reshape(broadcast) + spread.reshape(broadcast) * rng.normal(size=shape), dtype
    )
    dy = round_to(rng.normal(size=shape), dtype)
    gamma = round_to(rng.uniform(-2, 2, features), dtype)
    beta = round_to(rng.uniform(-2, 2, features), dtype)
    state = RunningStatistics(
        round_to(centre + spread * rng.uniform(-1, 1, features), dtype),
        # below float16's largest number (a spread of 100 squared, times 10, is beyond it)
        round_to(np.minimum(spread**2 * 10.0 ** rng.uniform(-1, 1, features), 6e4), dtype),
        draw(st.integers(0, 100)),
    )
    config = LayerConfig(
        num_features=features,
        rank=rank,
        feature_axis=feature_axis,
        dtype=dtype,
        eps=draw(st.sampled_from([1e-5, 1e-3, 0.1])),
        momentum=momentum(draw(st.sampled_from([0.1, 0.3, 0.9]))),
        affine=draw(st.booleans()),
        track_running_stats=draw(st.booleans()),
    )
    return Scenario(config, x, dy, gamma, beta, state)


def _close(actual: Any, expected: Any, dtype: str, what: str) -> None:
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, what
    scale = 1.0 + np.max(np.abs(expected), initial=0.0)
    error = np.max(np.abs(actual - expected), initial=0.0)
    assert error <= RELATIVE[dtype] * scale, f"{what}: error {error:.3g} at scale {scale:.3g}"


def _run_everything(impl: Any, scenario: Scenario) -> dict[str, Any]:
    """Every observable of one scenario: outputs, states, gradients in both modes."""
    cfg = scenario.config

    def build() -> Any:
        layer = impl.build(cfg)
        if cfg.affine:
            layer.set_parameters(scenario.gamma, scenario.beta)
        if cfg.track_running_stats:
            layer.set_state(scenario.state)
        return layer

    layer = build()
    results: dict[str, Any] = {"y_train": layer.train_step(scenario.x)}
    results["state_train"] = layer.state()
    layer = build()
    results["y_infer"] = layer.infer(scenario.x)
    results["state_infer"] = layer.state()
    for training in (True, False):
        grads = build().vjp(scenario.x, scenario.dy, training=training)
        for name in ("dx", "dgamma", "dbeta"):
            results[f"{name}_{'train' if training else 'infer'}"] = getattr(grads, name)
    return results


def _agree(ours: dict[str, Any], reference: dict[str, Any], dtype: str) -> None:
    for name, expected in reference.items():
        actual = ours[name]
        if isinstance(expected, RunningStatistics) or expected is None:
            assert (actual is None) == (expected is None), name
            if expected is not None:
                _close(actual.mean, expected.mean, dtype, f"{name} mean")
                _close(actual.var, expected.var, dtype, f"{name} var")
                assert actual.steps == expected.steps, name
        else:
            _close(actual, expected, dtype, name)


@given(scenario=scenarios(lambda alpha: alpha))
def test_torch_dialect_agrees_with_the_reference(scenario: Scenario) -> None:
    ours = _run_everything(NumpyBatchNorm(), scenario)
    _agree(ours, _run_everything(ReferenceImplementation("torch"), scenario), scenario.config.dtype)


@given(scenario=scenarios(lambda alpha: alpha))
def test_cumulative_average_agrees_with_the_reference(scenario: Scenario) -> None:
    scenario = replace(scenario, config=replace(scenario.config, momentum=None))
    ours = _run_everything(NumpyBatchNorm(), scenario)
    _agree(ours, _run_everything(ReferenceImplementation("torch"), scenario), scenario.config.dtype)


@given(scenario=scenarios(lambda alpha: 1.0 - alpha))
def test_keras_dialect_agrees_with_the_reference(scenario: Scenario) -> None:
    ours = _run_everything(KerasNumpyBatchNorm(), scenario)
    _agree(ours, _run_everything(ReferenceImplementation("keras"), scenario), scenario.config.dtype)


@given(scenario=scenarios(lambda alpha: 1.0 - alpha))
def test_zero_debiased_dialect_agrees_with_the_reference(scenario: Scenario) -> None:
    ours = _run_everything(ZeroDebiasedNumpyBatchNorm(), scenario)
    reference = ReferenceImplementation(ZeroDebiasedNumpyBatchNorm.profile)
    _agree(ours, _run_everything(reference, scenario), scenario.config.dtype)


@pytest.mark.parametrize("impl", CORRECT, ids=lambda c: c.__name__)
def test_results_are_computed_in_the_layer_dtype(impl: type[NumpyBatchNorm]) -> None:
    """Outputs are representable in the dtype, and differ from the float64 computation."""
    x = round_to(np.random.default_rng(0).normal(3.0, 2.0, (4, 3, 5)), "bfloat16")
    outputs = {}
    for dtype in ("float64", "float32", "float16", "bfloat16"):
        layer = impl().build(LayerConfig(3, 3, 1, dtype, 1e-3, 0.5))
        outputs[dtype] = layer.train_step(x)
        assert np.array_equal(round_to(outputs[dtype], dtype), outputs[dtype]), dtype
    for dtype in ("float32", "float16", "bfloat16"):
        assert not np.array_equal(outputs[dtype], outputs["float64"]), dtype


# ---------------------------------------------------------------- every bug shows itself


def _correct_for(bug: type[NumpyBatchNorm]) -> NumpyBatchNorm:
    """The correct implementation the bug was made from (its nearest correct base)."""
    return next(base for base in bug.__mro__ if base in CORRECT)()


def _probe(impl: NumpyBatchNorm, cfg: LayerConfig, x: np.ndarray) -> dict[str, Any]:
    """The observables of the ordinary scenario, with exceptions recorded as values."""
    rng = np.random.default_rng(1)
    features = cfg.num_features
    gamma = round_to(rng.uniform(0.5, 2.0, features), cfg.dtype)
    beta = round_to(rng.uniform(-1.0, 1.0, features), cfg.dtype)
    dy = round_to(rng.normal(size=x.shape), cfg.dtype)
    state = RunningStatistics(
        round_to(rng.uniform(-1, 1, features), cfg.dtype),
        round_to(rng.uniform(0.01, 0.5, features), cfg.dtype),
        3,
    )
    original = x.copy()
    observed: dict[str, Any] = {}

    def attempt(name: str, function: Callable[[], Any]) -> None:
        try:
            observed[name] = function()
        except Exception as problem:
            observed[name] = f"raised {type(problem).__name__}"

    def layer(fresh: bool = False) -> Any:
        built = impl.build(cfg)
        if not fresh and cfg.affine:
            built.set_parameters(gamma, beta)
        if not fresh and cfg.track_running_stats:
            built.set_state(state)
        return built

    fresh = layer(fresh=True)
    attempt("initial state", fresh.state)
    attempt("fresh train", lambda: fresh.train_step(x))
    trained = layer()
    attempt("train", lambda: trained.train_step(x))
    attempt("state after train", trained.state)
    inferred = layer()
    attempt("infer", lambda: inferred.infer(x))
    attempt("state after infer", inferred.state)
    attempt("vjp train", lambda: layer().vjp(x, dy, training=True))
    attempt("vjp infer", lambda: layer().vjp(x, dy, training=False))
    observed["input after calls"] = x.copy()
    observed["input unchanged"] = np.array_equal(x, original, equal_nan=True)
    return observed


def _differs(a: Any, b: Any, dtype: str) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return not (isinstance(a, str) and isinstance(b, str) and a == b)
    if a is None or b is None:
        return (a is None) != (b is None)
    if isinstance(a, RunningStatistics):
        return (
            a.steps != b.steps or _differs(a.mean, b.mean, dtype) or _differs(a.var, b.var, dtype)
        )
    if isinstance(a, reference_renorm.RenormStatistics):
        fields = ("mean", "spread", "correction_mean", "correction_spread")
        return a.steps != b.steps or any(
            _differs(getattr(a, f), getattr(b, f), dtype) for f in fields
        )
    if hasattr(a, "dx"):
        return any(_differs(getattr(a, n), getattr(b, n), dtype) for n in ("dx", "dgamma", "dbeta"))
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return True
    if not np.array_equal(np.isfinite(a), np.isfinite(b)):
        return True
    finite = np.isfinite(a)
    scale = 1.0 + np.max(np.abs(b[finite]), initial=0.0)
    return bool(np.max(np.abs(a[finite] - b[finite]), initial=0.0) > RELATIVE[dtype] * scale)


def _ordinary_scenarios() -> list[tuple[str, LayerConfig, np.ndarray]]:
    """A fixed list of ordinary situations: ranks, axes, dtypes, modes, layouts, a NaN."""
    rng = np.random.default_rng(2)
    found: list[tuple[str, LayerConfig, np.ndarray]] = []
    for dtype in ("float64", "float16"):
        for rank, position, batch in (
            (2, "first", 6),
            (4, "first", 3),
            (4, "last", 3),
            (3, "first", 1),
        ):
            axis = 1 if position == "first" else rank - 1
            shape = _shape(rank, axis, batch, 3)
            broadcast = [1] * rank
            broadcast[axis] = 3
            centre = np.array([0.5, -4.0, 20.0]).reshape(broadcast)
            spread = np.array([0.1, 1.0, 3.0]).reshape(broadcast)
            x = round_to(centre + spread * rng.normal(size=shape), dtype)
            for momentum in (0.1, None):
                for affine, track in ((True, True), (False, False)):
                    cfg = LayerConfig(3, rank, axis, dtype, 0.05, momentum, affine, track)
                    name = f"{dtype} rank {rank} {position} N={batch} m={momentum} {affine}/{track}"
                    found.append((name, cfg, x))
            cfg = LayerConfig(3, rank, axis, dtype, 0.05, 0.1)
            found.append((f"{dtype} rank {rank} {position} strided", cfg, _strided(x)))
            poisoned = x.copy()
            poisoned.flat[0] = np.nan
            found.append((f"{dtype} rank {rank} {position} NaN", cfg, poisoned))
    # one long, badly centred float16 batch: where float16 accumulation breaks down
    x = round_to(100.0 + np.random.default_rng(3).normal(size=(64, 2, 32)), "float16")
    found.append(("float16 long", LayerConfig(2, 3, 1, "float16", 1e-5, 0.1), x))
    x = round_to(3000.0 + np.random.default_rng(4).normal(size=(64, 2, 32)), "float32")
    found.append(("float32 ill-conditioned", LayerConfig(2, 3, 1, "float32", 1e-5, 0.1), x))
    return found


def _strided(x: np.ndarray) -> np.ndarray:
    buffer = np.zeros((*x.shape[:-1], 2 * x.shape[-1]))
    view = buffer[..., ::2]
    view[...] = x
    return view


def _keras_momentum(cfg: LayerConfig) -> LayerConfig | None:
    if cfg.momentum is None:
        return None
    return replace(cfg, momentum=1.0 - cfg.momentum)


@pytest.mark.parametrize("bug", BUGS, ids=lambda c: c.__name__)
def test_every_bug_differs_from_the_correct_implementation(bug: type[NumpyBatchNorm]) -> None:
    assert bug.expected_clauses, "a bug must name the clauses it violates"
    correct, buggy = _correct_for(bug), bug()
    for name, cfg, x in _ordinary_scenarios():
        if isinstance(correct, KerasNumpyBatchNorm):
            keras_cfg = _keras_momentum(cfg)
            if keras_cfg is None:
                continue
            cfg = keras_cfg
        expected = _probe(correct, cfg, x.copy() if x.flags.c_contiguous else x)
        observed = _probe(buggy, cfg, x.copy() if x.flags.c_contiguous else x)
        if any(_differs(observed[k], expected[k], cfg.dtype) for k in expected):
            return
        assert name  # the scenario showed nothing: try the next
    pytest.fail(f"{bug.__name__} behaves like the correct implementation in every scenario")


# ------------------------------------------------------------------- Batch Renormalization


def _renorm_state(
    rc: reference_renorm.RenormConfig,
    mean: np.ndarray,
    spread: np.ndarray,
    steps: int,
    dtype: str,
) -> reference_renorm.RenormStatistics:
    state = rc.initial_state().replace(
        mean=round_to(mean, dtype), spread=round_to(spread, dtype), steps=steps
    )
    if rc.statistics == "separate":
        state = state.replace(
            correction_mean=round_to(mean[::-1].copy(), dtype),
            correction_spread=round_to(spread[::-1].copy(), dtype),
        )
    return state


def _renorm_observables(
    impl: Any,
    cfg: LayerConfig,
    state: reference_renorm.RenormStatistics,
    params: tuple[np.ndarray, np.ndarray],
    x: np.ndarray,
    dy: np.ndarray,
) -> dict[str, Any]:
    def layer() -> Any:
        built = impl.build(cfg)
        if cfg.affine:
            built.set_parameters(*params)
        built.set_state(state)
        return built

    trained = layer()
    found: dict[str, Any] = {"y_train": trained.train_step(x), "state_train": trained.state()}
    inferred = layer()
    found["y_infer"] = inferred.infer(x)
    found["state_infer"] = inferred.state()
    for training in (True, False):
        grads = layer().vjp(x, dy, training=training)
        for name in ("dx", "dgamma", "dbeta"):
            found[f"{name}_{'train' if training else 'infer'}"] = getattr(grads, name)
    return found


def _reference_renorm_observables(
    rc: reference_renorm.RenormConfig,
    state: reference_renorm.RenormStatistics,
    params: tuple[np.ndarray, np.ndarray] | None,
    x: np.ndarray,
    dy: np.ndarray,
) -> dict[str, Any]:
    affine = None if params is None else Affine(*params)
    y, after = reference_renorm.training_step(rc, affine, state, x)
    found: dict[str, Any] = {"y_train": y, "state_train": after}
    found["y_infer"] = reference_renorm.inference(rc, affine, state, x)
    found["state_infer"] = state
    for training in (True, False):
        grads = reference_renorm.backward(rc, affine, state, x, dy, training=training)
        for name in ("dx", "dgamma", "dbeta"):
            found[f"{name}_{'train' if training else 'infer'}"] = getattr(grads, name)
    return found


def _close_renorm_states(actual: Any, expected: Any, dtype: str) -> None:
    assert actual.steps == expected.steps
    assert actual.separate == expected.separate
    _close(actual.mean, expected.mean, dtype, "moving mean")
    _close(actual.spread, expected.spread, dtype, "moving spread")
    if expected.separate:
        _close(actual.correction_mean, expected.correction_mean, dtype, "correction mean")
        _close(actual.correction_spread, expected.correction_spread, dtype, "correction spread")


@st.composite
def renorm_scenarios(draw: st.DrawFn) -> tuple[Any, ...]:
    dtype: DTypeName = draw(st.sampled_from(["float64", "float32", "float16", "bfloat16"]))
    rank = draw(st.integers(2, 4))
    feature_axis = draw(st.sampled_from([1, rank - 1]))
    features = draw(st.integers(1, 3))
    shape = _shape(rank, feature_axis, draw(st.integers(2, 5)), features)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    spread = 10.0 ** rng.uniform(-1, 1, features)
    centre = spread * rng.uniform(-3, 3, features)
    broadcast = [1] * rank
    broadcast[feature_axis] = features
    x = round_to(
        centre.reshape(broadcast) + spread.reshape(broadcast) * rng.normal(size=shape), dtype
    )
    dy = round_to(rng.normal(size=shape), dtype)
    schedule: Schedule = draw(
        st.sampled_from(
            [
                ConstantSchedule.symmetric(1.5, 0.5),
                ConstantSchedule.symmetric(3.0, 5.0),
                ConstantSchedule(RenormBounds.from_keras({"rmax": 2.0, "dmax": 1.0})),
                SwitchSchedule(5, RenormBounds.symmetric(2.0, 1.0)),
                LinearRamp(),
            ]
        )
    )
    average = draw(st.sampled_from(["std", "variance_biased", "variance_unbiased"]))
    statistics = draw(st.sampled_from(["shared", "separate"]))
    rate = draw(st.sampled_from([0.1, 0.5, 0.99]))
    rc = reference_renorm.RenormConfig(
        num_features=features,
        schedule=schedule,
        feature_axis=feature_axis,
        eps=draw(st.sampled_from([1e-5, 1e-3, 0.1])),
        rate=rate,
        average=average,
        statistics=statistics,
        correction_rate=0.3 if statistics == "separate" else None,
        sigma_floor=draw(st.sampled_from(["none", "sqrt_eps"])),
        affine=draw(st.booleans()),
    )
    moving_std = spread * 10.0 ** rng.uniform(-0.5, 0.5, features)
    moving = moving_std if average == "std" else moving_std**2
    state = _renorm_state(
        rc, centre + spread * rng.uniform(-2, 2, features), moving, draw(st.integers(0, 10)), dtype
    )
    params = (
        round_to(rng.uniform(-2, 2, features), dtype),
        round_to(rng.uniform(-2, 2, features), dtype),
    )
    cfg = LayerConfig(
        features, rank, feature_axis, dtype, rc.eps, rate, affine=rc.affine, renorm=rc
    )
    return cfg, rc, state, params, x, dy


@pytest.mark.parametrize("impl", RENORM_CORRECT, ids=lambda c: c.__name__)
@given(scenario=renorm_scenarios())
def test_renorm_agrees_with_the_reference(
    impl: type[NumpyBatchRenorm], scenario: tuple[Any, ...]
) -> None:
    cfg, rc, state, params, x, dy = scenario
    if impl is TfKerasNumpyBatchRenorm:
        cfg = replace(cfg, momentum=1.0 - rc.rate)
    ours = _renorm_observables(impl(), cfg, state, params, x, dy)
    expected = _reference_renorm_observables(rc, state, params if rc.affine else None, x, dy)
    for name, value in expected.items():
        if name.startswith("state"):
            _close_renorm_states(ours[name], value, cfg.dtype)
        else:
            _close(ours[name], value, cfg.dtype, name)


def _ordinary_renorm_scenarios() -> list[tuple[LayerConfig, Any, Any, np.ndarray, np.ndarray]]:
    """Renorm situations: clipped and unclipped corrections, a switch at the next step."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(6, 3, 4)) * np.array([0.2, 1.0, 3.0]).reshape(1, 3, 1)
    x += np.array([1.0, -2.0, 5.0]).reshape(1, 3, 1)
    dy = rng.normal(size=x.shape)
    params = (np.array([1.5, -0.5, 2.0]), np.array([0.25, 0.0, -1.0]))
    found = []
    schedules: list[tuple[Schedule, np.ndarray, np.ndarray, int]] = [
        # far from the batch: r and d clipped
        (ConstantSchedule.symmetric(1.5, 0.5), np.array([5.0, 3.0, -4.0]), np.full(3, 10.0), 3),
        # close to the batch: nothing clipped
        (ConstantSchedule.symmetric(3.0, 5.0), np.array([1.1, -2.1, 5.2]), np.ones(3), 3),
        # the bounds change at the next step
        (SwitchSchedule(4, RenormBounds.symmetric(1.2, 0.1)), np.zeros(3), np.full(3, 4.0), 3),
    ]
    for schedule, mean, sigma, steps in schedules:
        for average in ("std", "variance_biased"):
            for statistics in ("shared", "separate"):
                rc = reference_renorm.RenormConfig(
                    num_features=3,
                    schedule=schedule,
                    eps=0.05,
                    rate=0.3,
                    average=average,
                    statistics=statistics,
                    correction_rate=0.2 if statistics == "separate" else None,
                )
                spread = sigma if average == "std" else sigma**2
                state = _renorm_state(rc, mean, spread, steps, "float64")
                cfg = LayerConfig(3, 3, 1, "float64", 0.05, 0.3, renorm=rc)
                found.append((cfg, rc, state, x, dy))
    # under a floor on sigma, a zero and a negative moving sigma beyond it (renorm.params.sigma)
    for statistics in ("shared", "separate"):
        rc = reference_renorm.RenormConfig(
            num_features=3,
            schedule=ConstantSchedule.symmetric(3.0, 5.0),
            eps=0.05,
            rate=0.3,
            statistics=statistics,
            correction_rate=0.2 if statistics == "separate" else None,
            sigma_floor="sqrt_eps",
        )
        state = _renorm_state(
            rc, np.array([1.1, -2.1, 5.2]), np.array([-2.0, 0.0, 1.0]), 3, "float64"
        )
        found.append((LayerConfig(3, 3, 1, "float64", 0.05, 0.3, renorm=rc), rc, state, x, dy))
    return [(cfg, state, params, x, dy) for cfg, _, state, x, dy in found]


@pytest.mark.parametrize("bug", RENORM_BUGS, ids=lambda c: c.__name__)
def test_every_renorm_bug_differs_from_the_correct_implementation(
    bug: type[NumpyBatchRenorm],
) -> None:
    assert bug.expected_clauses, "a bug must name the clauses it violates"
    correct = TfKerasNumpyBatchRenorm() if bug.profile == "tf_keras" else NumpyBatchRenorm()
    for cfg, state, params, x, dy in _ordinary_renorm_scenarios():
        if bug.profile == "tf_keras":
            if cfg.renorm is None or cfg.renorm.statistics != "separate":
                continue
            assert cfg.momentum is not None
            cfg = replace(cfg, momentum=1.0 - cfg.momentum)
        expected = _renorm_observables(correct, cfg, state, params, x, dy)
        observed = _renorm_observables(bug(), cfg, state, params, x, dy)
        if any(_differs(observed[k], expected[k], cfg.dtype) for k in expected):
            return
    pytest.fail(f"{bug.__name__} behaves like the correct implementation in every scenario")
