"""The renorm checks (conformance/checks/renorm.py) against the reference and mutants of it.

* The reference passes every renorm clause under the profiles with a renorm dialect and
  reports them not applicable under the others.
* Mutated reference layers (a gradient through r and d, r clipped to [0, r_max], d not
  clipped, the correction taken after the update, the variance averaged where the profile
  says standard deviation) are each caught under their clause, at half the default example
  budget. The run selects that clause with the clauses it depends on, so a dependency that
  fails first shows as it would in a full run.
* A float32 implementation written as a library would write it (tf_keras-style decay rates
  computed in float32) passes the accuracy-bounded clauses in float32, and a systematic
  relative error of 1e-4 does not: the tolerances are achievable and discriminate.
* The schedule clauses follow the dialect's warm-up form; a schedule an implementation
  declares unsupported although its profile's warm-up offers it makes the clause
  inconclusive at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from normspec.adapters.protocol import Capabilities, Layer, LayerConfig, UnsupportedConfig
from normspec.adapters.reference import ReferenceImplementation, ReferenceLayer
from normspec.conformance.checks import load_builtin_checks
from normspec.conformance.dtypes import round_to
from normspec.conformance.results import Report
from normspec.conformance.runner import CheckOptions, check_implementation
from normspec.conformance.strategies import Wanted
from normspec.conformance.strategies_renorm import Moving, renorm_cases, schedules
from normspec.reference import Gradients, renorm
from normspec.reference._arrays import per_feature, reduction_axes
from normspec.reference.schedules import ConstantSchedule, RenormBounds, Schedule

RENORM_PROFILES = ("paper", "tf_keras")


def with_dependencies(clause_id: str) -> str:
    """``clause_id`` and every clause it depends on, transitively, as a --clauses pattern."""
    registry = load_builtin_checks()
    found: list[str] = []
    pending = [clause_id]
    while pending:
        current = pending.pop()
        if current not in found:
            found.append(current)
            pending.extend(registry[current].depends_on)
    return ",".join(found)


def run(implementation: Any, profile: str, clauses: str, **options: Any) -> Report:
    return check_implementation(
        implementation, CheckOptions(profile=profile, clauses=clauses, **options)
    )


def outcomes(report: Report) -> dict[str, str]:
    return {r.clause_id: r.outcome for r in report.results}


# ------------------------------------------------------------------------------------
# The reference


@pytest.mark.parametrize("profile", RENORM_PROFILES)
def test_the_reference_passes_every_renorm_clause(profile: str) -> None:
    report = run(ReferenceImplementation(profile), profile, "renorm.*", max_examples=10)
    got = outcomes(report)
    assert set(got) == {c for c in load_builtin_checks() if c.startswith("renorm.")}
    # paper: one set of moving statistics; tf_keras: no warm-up, constant bounds only
    if profile == "paper":
        not_applicable = {"renorm.moving.separate"}
    else:
        not_applicable = {"renorm.schedule.paper", "renorm.schedule.switch"}
    assert {c for c, o in got.items() if o == "not_applicable"} == not_applicable
    failed = [r for r in report.results if r.outcome not in ("pass", "not_applicable")]
    assert not failed, [(r.clause_id, r.message) for r in failed]
    assert report.conformant


def test_without_a_renorm_dialect_every_renorm_clause_is_not_applicable() -> None:
    report = run(ReferenceImplementation("torch"), "torch", "renorm.*", max_examples=2)
    assert set(outcomes(report).values()) == {"not_applicable"}
    assert "renorm" in report.results[0].message
    assert report.conformant


def test_the_reference_adapter_builds_renorm_layers_in_the_profiles_dialect() -> None:
    impl = ReferenceImplementation("tf_keras")
    assert impl.capabilities().renorm and not ReferenceImplementation("torch").capabilities().renorm
    canonical = renorm.RenormConfig(
        2,
        schedule=ConstantSchedule(RenormBounds(0.5, 3.0, math.inf)),
        eps=1e-3,
        rate=0.25,
        statistics="separate",
        correction_rate=0.5,
        sigma_floor="sqrt_eps",
    )
    config = LayerConfig(2, 2, 1, "float64", 1e-3, 0.75, renorm=canonical)
    layer = impl.build(config)
    assert isinstance(layer.state(), renorm.RenormStatistics)
    built = impl.renorm_config(config)
    assert (built.rate, built.correction_rate) == (0.25, 0.5)
    assert built.schedule == canonical.schedule
    x = np.array([[0.0, 1.0], [2.0, -1.0], [4.0, 3.0]])
    y, expected_state = renorm.training_step(built, None, canonical.initial_state(), x)
    np.testing.assert_array_equal(layer.train_step(x), y)
    state = layer.state()
    assert isinstance(state, renorm.RenormStatistics) and state.separate
    for name in ("mean", "spread", "correction_mean", "correction_spread"):
        np.testing.assert_array_equal(getattr(state, name), getattr(expected_state, name))
    assert state.steps == 1
    # another dialect value is unsupported; invalid bounds raise naming the bound
    with pytest.raises(UnsupportedConfig, match="average"):
        impl.build(replace(config, renorm=replace(canonical, average="variance_biased")))
    with pytest.raises(UnsupportedConfig, match="no batch renormalization"):
        ReferenceImplementation("torch").build(config)
    bad = object.__new__(RenormBounds)
    for name, value in (("r_min", 2.0), ("r_max", 1.0), ("d_max", 0.0)):
        object.__setattr__(bad, name, value)
    with pytest.raises(ValueError, match="rmax"):
        impl.build(replace(config, renorm=replace(canonical, schedule=ConstantSchedule(bad))))
    paper = ReferenceImplementation("paper")
    symmetric = replace(
        canonical,
        statistics="shared",
        correction_rate=None,
        sigma_floor="none",
        schedule=ConstantSchedule(RenormBounds(0.5, 3.0, 1.0)),
    )
    with pytest.raises(UnsupportedConfig, match="1 / r_max"):
        paper.build(replace(config, momentum=0.25, renorm=symmetric))


# ------------------------------------------------------------------------------------
# Strategies


@settings(max_examples=60)
@given(
    st.data(),
    st.sampled_from(RENORM_PROFILES),
    st.sampled_from(["steady", "any", "changing"]),
    st.booleans(),
    st.booleans(),
)
def test_renorm_cases_keep_their_promises(
    data: Any, profile: str, counter: str, batchnorm: bool, same_sets: bool
) -> None:
    implementation = ReferenceImplementation(profile)
    case = data.draw(
        renorm_cases(
            implementation.capabilities(),
            implementation.dialect,
            ("float32",),
            Wanted(affine=None),
            schedule=schedules(implementation.dialect, batchnorm=batchnorm, counter=counter),
            moving=Moving(same_sets=same_sets),
        )
    )
    cfg, t = case.renorm, case.state.steps
    assert case.config.momentum == implementation.dialect.momentum_from_rate(case.rate)
    assert (cfg.average, cfg.statistics, cfg.sigma_floor) == (
        "std",
        "shared" if profile == "paper" else "separate",
        "none" if profile == "paper" else "sqrt_eps",
    )
    assert case.state.separate == (profile == "tf_keras")
    if same_sets and case.state.separate:
        assert cfg.correction_rate == cfg.rate
        np.testing.assert_array_equal(case.state.correction_mean, case.state.mean)
    if batchnorm:
        assert cfg.schedule.bounds(t).is_batchnorm and cfg.schedule.bounds(t + 1).is_batchnorm
    if counter == "steady":
        assert cfg.schedule.bounds(t) == cfg.schedule.bounds(t + 1)
    np.testing.assert_array_equal(round_to(case.x, "float32"), case.x)
    np.testing.assert_array_equal(round_to(case.state.spread, "float32"), case.state.spread)
    y, _ = renorm.training_step(cfg, None, case.state, case.x)
    assert np.all(np.isfinite(y))
    assert case.summary()["bounds"]["r_max"] == cfg.schedule.bounds(t).r_max


# ------------------------------------------------------------------------------------
# Mutants


@dataclass(frozen=True)
class Reclipped(Schedule):
    """Another schedule's bounds with ``r_min`` or ``d_max`` replaced."""

    inner: Schedule
    r_min: float | None = None
    d_max: float | None = None

    def bounds(self, step: int) -> RenormBounds:
        b = self.inner.bounds(step)
        r_min = b.r_min if self.r_min is None else self.r_min
        return RenormBounds(r_min, b.r_max, b.d_max if self.d_max is None else self.d_max)


@dataclass(frozen=True)
class Shifted(Schedule):
    """Another schedule evaluated ``by`` steps later."""

    inner: Schedule
    by: int

    def bounds(self, step: int) -> RenormBounds:
        return self.inner.bounds(step + self.by)


class Mutant(ReferenceImplementation):
    """The reference with its renorm layers replaced by ``layer`` (a ReferenceLayer subclass),
    their bounds ``clip``-ped by :class:`Reclipped` and their schedule ``shift``-ed."""

    def __init__(
        self,
        profile: str,
        layer: type[ReferenceLayer] = ReferenceLayer,
        shift: int = 0,
        **clip: Any,
    ):
        super().__init__(profile)
        self.layer, self.shift, self.clip = layer, shift, clip
        self.name = f"reference with {layer.__name__} {clip} shifted by {shift}"

    def build(self, config: LayerConfig) -> Layer:
        if config.renorm is None:
            return super().build(config)
        built = self.renorm_config(config)
        if self.clip:
            built = replace(built, schedule=Reclipped(built.schedule, **self.clip))
        if self.shift:
            built = replace(built, schedule=Shifted(built.schedule, self.shift))
        return self.layer(built)


class ThroughRAndD(ReferenceLayer):
    """Differentiates through r and d (no stop_gradient) where they are not clipped."""

    def vjp(self, x: Any, dy: Any, *, training: bool) -> Gradients:
        grads = super().vjp(x, dy, training=training)
        if not training:
            return grads
        cfg, state = self._config, self._state
        assert isinstance(cfg, renorm.RenormConfig)
        corr = renorm.correction_for(cfg, state, x)
        sigma = renorm.moving_std(
            state.correction_statistics()[1],
            average=cfg.average,
            eps=cfg.eps,
            sigma_floor=cfg.sigma_floor,
        )
        axis = cfg.feature_axis % x.ndim
        axes = reduction_axes(x.ndim, axis)
        n = corr.batch.count
        gamma = np.ones(cfg.num_features) if self._params is None else self._params.gamma

        def pf(v: Any) -> Any:
            return per_feature(np.asarray(v), x.ndim, axis)

        centred = x - pf(corr.batch.mean)
        zhat = centred / pf(corr.std)
        r_u, d_u = corr.std / sigma, (corr.batch.mean - mu_c(state)) / sigma
        free_r = (corr.bounds.r_min < r_u) & (r_u < corr.bounds.r_max)
        free_d = np.abs(d_u) < corr.bounds.d_max
        dl_dr = gamma * np.sum(dy * zhat, axis=axes)
        dl_dd = gamma * np.sum(dy, axis=axes)
        dx = grads.dx + pf(dl_dr * free_r / (n * corr.std * sigma)) * centred
        dx = dx + pf(dl_dd * free_d / (n * sigma))
        return Gradients(dx, grads.dgamma, grads.dbeta)


def mu_c(state: renorm.RenormStatistics) -> Any:
    return state.correction_statistics()[0]


class CorrectionAfterUpdate(ReferenceLayer):
    """Computes r and d from the moving statistics this step has already updated."""

    def train_step(self, x: Any) -> Any:
        cfg, state = self._config, self._state
        assert isinstance(cfg, renorm.RenormConfig)
        _, updated = renorm.training_step(cfg, self._params, state, x)
        y, _ = renorm.training_step(cfg, self._params, updated.replace(steps=state.steps), x)
        self._state = updated
        return y


class VarianceAveraged(ReferenceLayer):
    """Averages the biased batch variance into the moving standard deviation."""

    def train_step(self, x: Any) -> Any:
        cfg, state = self._config, self._state
        assert isinstance(cfg, renorm.RenormConfig)
        y, _ = renorm.training_step(cfg, self._params, state, x)
        corr = renorm.correction_for(cfg, state, x)
        self._state = renorm.update_moving_statistics(
            state,
            corr,
            average="variance_biased",
            rate=cfg.rate,
            correction_rate=cfg.correction_rate,
        )
        return y


MUTANTS = {
    "no stop-gradient": (dict(layer=ThroughRAndD), "renorm.backward.train.dx"),
    "r clipped to [0, r_max]": (dict(r_min=0.0), "renorm.train.correction"),
    "d unclipped": (dict(d_max=math.inf), "renorm.train.correction"),
    "r and d after the update": (dict(layer=CorrectionAfterUpdate), "renorm.train.pre_update"),
    "variance averaged": (dict(layer=VarianceAveraged), "renorm.moving.average"),
}


@pytest.mark.parametrize("profile", RENORM_PROFILES)
@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_each_mutant_is_caught_under_its_clause(mutant: str, profile: str) -> None:
    arguments, clause = MUTANTS[mutant]
    report = run(Mutant(profile, **arguments), profile, with_dependencies(clause), max_examples=20)
    got = outcomes(report)
    assert got[clause] == "fail", (mutant, got, [r.message for r in report.results])
    assert not report.conformant
    # attributed to its clause: every clause it depends on passes (or does not apply)
    others = {c for c, o in got.items() if o not in ("pass", "not_applicable") and c != clause}
    assert not others, others


def test_a_schedule_evaluated_at_the_next_step_is_caught_under_the_step_clause() -> None:
    """renorm.schedule.step; the paper's values at t or t + 1 satisfy renorm.schedule.paper,
    and the other clauses draw step counters where the two agree."""
    clause = "renorm.schedule.step"
    report = run(Mutant("paper", shift=1), "paper", with_dependencies(clause), max_examples=20)
    got = outcomes(report)
    assert got[clause] == "fail", got
    assert {c for c, o in got.items() if o not in ("pass", "not_applicable")} == {clause}


def test_the_gradient_mutant_shows_the_chapters_numbers() -> None:
    """renorm.backward.train.dx: through r (d clipped) the chapter's example gives
    (1.5, -0.5, -0.5, -0.5) instead of (0.9375, -0.6875, -0.3125, 0.0625)."""
    cfg = renorm.RenormConfig(1, schedule=ConstantSchedule.symmetric(3.0, 0.25), eps=0.75)
    x = np.array([[1.0], [2.0], [3.0], [4.0]])
    dy = np.array([[1.0], [0.0], [0.0], [0.0]])
    state = renorm.RenormStatistics(np.array([2.0]), np.array([1.0]), 0)
    good, bad = ReferenceLayer(cfg), ThroughRAndD(cfg)
    for layer in (good, bad):
        layer.set_parameters(np.array([2.0]), np.array([0.5]))
        layer.set_state(state)
    np.testing.assert_allclose(
        good.vjp(x, dy, training=True).dx.ravel(), [0.9375, -0.6875, -0.3125, 0.0625]
    )
    np.testing.assert_allclose(bad.vjp(x, dy, training=True).dx.ravel(), [1.5, -0.5, -0.5, -0.5])


# ------------------------------------------------------------------------------------
# A float32 implementation


class Float32Layer(ReferenceLayer):
    """Renorm in float32 as a library computes it: two-pass moments, ``r`` and ``d`` from
    the float32 moving statistics, ``gamma * r`` and ``gamma * d + beta`` as scale and shift,
    and tf_keras' update ``S -= (S - sigma_B) * (1 - momentum)`` with the momentum in
    float32. ``error`` scales the output (a systematic relative error)."""

    error = 0.0

    def train_step(self, x: Any) -> Any:
        cfg, state = self._config, self._state
        assert isinstance(cfg, renorm.RenormConfig)
        f32 = np.float32
        axis = cfg.feature_axis % x.ndim
        axes = reduction_axes(x.ndim, axis)
        x32 = x.astype(f32)

        def pf(v: Any) -> Any:
            return per_feature(np.asarray(v), x.ndim, axis)

        mean = x32.mean(axis=axes, dtype=f32)
        centred = x32 - pf(mean)
        var = np.mean(centred * centred, axis=axes, dtype=f32)
        std = np.sqrt(var + f32(cfg.eps))
        c_mean, c_spread = (a.astype(f32) for a in state.correction_statistics())
        sigma = c_spread
        if cfg.sigma_floor == "sqrt_eps":
            sigma = np.maximum(sigma, np.sqrt(f32(cfg.eps)))
        bounds = cfg.schedule.bounds(state.steps)
        r = np.clip(std / sigma, f32(bounds.r_min), f32(bounds.r_max)).astype(f32)
        d = np.clip((mean - c_mean) / sigma, f32(-bounds.d_max), f32(bounds.d_max)).astype(f32)
        if self._params is None:
            gamma, beta = np.ones(len(mean), f32), np.zeros(len(mean), f32)
        else:
            gamma, beta = self._params.gamma.astype(f32), self._params.beta.astype(f32)
        y = centred / pf(std) * pf(gamma * r) + pf(gamma * d + beta)

        def move(stat: Any, value: Any, rate: float) -> Any:
            momentum = f32(1.0 - rate)  # the library's argument, in float32
            stat = stat.astype(f32)
            return (stat - (stat - value) * (f32(1.0) - momentum)).astype(np.float64)

        sets = {
            "mean": move(state.mean, mean, cfg.rate),
            "spread": move(state.spread, std, cfg.rate),
        }
        if state.separate:
            assert cfg.correction_rate is not None
            sets["correction_mean"] = move(c_mean, mean, cfg.correction_rate)
            sets["correction_spread"] = move(state.correction_spread, std, cfg.correction_rate)
        self._state = state.replace(steps=state.steps + 1, **sets)
        return y.astype(np.float64) * (1.0 + self.error)


class Float32Off(Float32Layer):
    error = 1e-4


ACCURACY_CLAUSES = (
    "renorm.train.output,renorm.moving.mean,renorm.moving.average,renorm.moving.separate,"
    "renorm.accuracy.forward,renorm.accuracy.moving"
)


def test_a_float32_implementation_meets_the_tolerances_in_float32() -> None:
    report = run(
        Mutant("tf_keras", layer=Float32Layer),
        "tf_keras",
        ACCURACY_CLAUSES,
        dtypes=("float32",),
        max_examples=30,
    )
    assert all(o == "pass" for o in outcomes(report).values()), [
        (r.clause_id, r.message) for r in report.results
    ]


def test_a_relative_error_of_1e_4_fails_in_float32() -> None:
    report = run(
        Mutant("tf_keras", layer=Float32Off),
        "tf_keras",
        "renorm.train.output,renorm.train.statistics",
        dtypes=("float32",),
        max_examples=30,
    )
    assert outcomes(report)["renorm.train.statistics"] == "fail"


# ------------------------------------------------------------------------------------
# Schedules an implementation does not offer


class ConstantBoundsOnly(ReferenceImplementation):
    """The reference, but only constant bounds (as tf_keras' renorm_clipping)."""

    def build(self, config: LayerConfig) -> Layer:
        if config.renorm is not None and not isinstance(config.renorm.schedule, ConstantSchedule):
            raise UnsupportedConfig("renorm_clipping is fixed: no warm-up schedules")
        return super().build(config)


def test_a_schedule_the_implementation_does_not_offer_is_inconclusive_at_once() -> None:
    report = run(
        ConstantBoundsOnly("paper"),
        "paper",
        "renorm.schedule.*,renorm.train.output",
        max_examples=8,
    )
    got = outcomes(report)
    for clause in ("renorm.schedule.paper", "renorm.schedule.switch"):
        result = next(r for r in report.results if r.clause_id == clause)
        assert result.outcome == "skipped", (clause, got)
        assert "does not offer" in result.message and "no warm-up" in result.message
        assert result.examples < 200  # given up after a few refusals (and a shrink), not 1000s
    for clause in ("renorm.schedule.constant", "renorm.train.output"):
        assert got[clause] == "pass", (clause, got)
    assert got["renorm.schedule.step"] == "skipped"  # it depends on the schedules' values


# ------------------------------------------------------------------------------------
# An implementation without a step counter


class CounterlessLayer(ReferenceLayer):
    """Keeps no step counter (as Keras): ignores the one it is given and reports 0."""

    def set_state(self, state: Any) -> None:
        super().set_state(state.replace(steps=0))

    def state(self) -> Any:
        return super().state().replace(steps=0)


class Counterless(Mutant):
    """The reference with :class:`CounterlessLayer` renorm layers: constant bounds only (a
    schedule needs a counter), declaring ``step_counter`` as ``counter`` says."""

    def __init__(self, profile: str, counter: bool = False):
        super().__init__(profile, layer=CounterlessLayer)
        self.counter = counter

    def capabilities(self) -> Capabilities:
        caps = super().capabilities()
        notes = {**caps.notes, "step_counter": "no counter is kept"}
        return replace(caps, step_counter=self.counter, notes=notes)

    def build(self, config: LayerConfig) -> Layer:
        if config.renorm is not None and not isinstance(config.renorm.schedule, ConstantSchedule):
            raise UnsupportedConfig("no step counter: constant bounds only")
        return super().build(config)


COUNTER_CLAUSES = (
    "renorm.moving.steps",
    "renorm.schedule.step",
    "renorm.schedule.paper",
    "renorm.schedule.switch",
)


@pytest.mark.parametrize("profile", RENORM_PROFILES)
def test_without_a_step_counter_the_counter_clauses_are_not_applicable(profile: str) -> None:
    report = run(Counterless(profile), profile, "renorm.*", max_examples=6)
    for clause in COUNTER_CLAUSES:
        result = next(r for r in report.results if r.clause_id == clause)
        assert result.outcome == "not_applicable", (clause, result.message)
        assert "step counter (no counter is kept)" in result.message
    failed = [r for r in report.results if r.outcome not in ("pass", "not_applicable")]
    assert not failed, [(r.clause_id, r.outcome, r.message) for r in failed]
    assert report.conformant


def test_a_layer_without_a_counter_that_claims_one_fails_the_counter_clause() -> None:
    report = run(Counterless("tf_keras", counter=True), "tf_keras", "renorm.moving.steps")
    assert outcomes(report)["renorm.moving.steps"] == "fail"
