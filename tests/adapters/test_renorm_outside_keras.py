"""Renorm layers outside Keras, checked from a profile file with no code (issue 13).

* The names a third-party renorm layer gives its bounds, warm-up and state map onto the
  renorm chapter's roles (adapters/renorm_roles.py), and a canonical renorm config is
  expressed in them; what such a layer cannot express is unsupported.
* A torch ``BatchRenorm2d`` and a ``flax.linen`` and a ``flax.nnx`` ``BatchRenorm`` written
  as third parties write them (tests/fixtures) resolve through the registry as renorm layers, with no glue,
  under the profile files that describe their dialects; BatchNorm-shaped classes stay
  BatchNorms.
* Each correct fixture passes its renorm clauses under 20 seeds (at a reduced budget: two
  examples per clause, on the clauses the dialects differ in: every Flax example compiles)
  and meets every renorm MUST clause; a planted bug per framework is caught under its
  clause for 5 seeds.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("flax")

from fixtures import thirdparty_flax_renorm as flax_fixtures
from fixtures import thirdparty_nnx_renorm as nnx_fixtures
from fixtures import thirdparty_torch_renorm as torch_fixtures

from normspec.adapters import renorm_roles
from normspec.adapters._common import probe_case
from normspec.adapters.jax.flax_renorm import FlaxRenormImplementation
from normspec.adapters.protocol import Implementation, UnsupportedConfig
from normspec.adapters.registry import load_target
from normspec.adapters.torch.renorm import TorchRenormImplementation
from normspec.conformance.results import Report
from normspec.conformance.runner import CheckOptions, check_implementation
from normspec.reference.renorm import RenormConfig, RenormStatistics
from normspec.reference.schedules import (
    PAPER_SCHEDULE,
    ConstantSchedule,
    RenormBounds,
    SwitchSchedule,
)

PROFILES = Path(__file__).parents[2] / "examples" / "profiles"
TORCH_PROFILE = str(PROFILES / "torch_batchrenorm.toml")
FLAX_PROFILE = str(PROFILES / "sbx_batchrenorm.toml")
TORCH_TARGET = "tests.fixtures.thirdparty_torch_renorm:BatchRenorm2d"
FLAX_TARGET = "tests.fixtures.thirdparty_flax_renorm:BatchRenorm"
NNX_TARGET = "tests.fixtures.thirdparty_nnx_renorm:BatchRenorm"

#: The clauses each seed runs: the output with its correction, the moving statistics and
#: the step counter (what the dialects differ in: a moving standard deviation or a biased
#: variance, rate or decay, a warm-up switch), inference and the gradient with r and d held.
SEED_CLAUSES = (
    "renorm.train.output,renorm.moving.mean,renorm.moving.average,renorm.moving.steps,"
    "renorm.infer.output,renorm.backward.train.dx,renorm.schedule.switch"
)


# -- the roles ------------------------------------------------------------------------------


def test_names_map_onto_renorm_roles() -> None:
    found = renorm_roles.argument_roles(["num_features", "rmax", "dmax", "warm_up_steps"])
    assert found == renorm_roles.ArgumentRoles("rmax", "dmax", None, "warm_up_steps")
    clipping = renorm_roles.argument_roles(["renorm_clipping", "r_max", "d_max"])
    assert clipping == renorm_roles.ArgumentRoles(None, None, "renorm_clipping", None)
    assert renorm_roles.argument_roles(["r_max", "eps"]) is None  # no d_max: no bounds
    state = renorm_roles.state_roles(["running_mean", "running_std", "num_batches_tracked"])
    assert state == renorm_roles.StateRoles(
        "running_mean", "running_std", "std", "num_batches_tracked"
    )
    variance = renorm_roles.state_roles(["mean", "var", "steps"])
    assert variance is not None and variance.spread_kind == "variance"
    assert renorm_roles.state_roles(["mean", "var"]) is None  # no step counter


def test_a_renorm_config_is_expressed_in_the_layers_arguments() -> None:
    roles = renorm_roles.ArgumentRoles("r_max", "d_max", None, "warmup_steps")
    bounds = RenormBounds.symmetric(3.0, 0.5)
    constant = RenormConfig(2, schedule=ConstantSchedule(bounds))
    assert renorm_roles.library_arguments(roles, constant) == {
        "r_max": 3.0,
        "d_max": 0.5,
        "warmup_steps": 0,
    }
    switch = RenormConfig(2, schedule=SwitchSchedule(100, bounds))
    assert renorm_roles.library_arguments(roles, switch)["warmup_steps"] == 100
    mapping = renorm_roles.ArgumentRoles(None, None, "clipping", None)
    independent = RenormConfig(2, schedule=ConstantSchedule(RenormBounds(0.5, 3.0, math.inf)))
    assert renorm_roles.library_arguments(mapping, independent) == {
        "clipping": {"rmin": 0.5, "rmax": 3.0}
    }
    unsupported = [
        RenormConfig(2, schedule=PAPER_SCHEDULE),  # ramps
        RenormConfig(2, schedule=ConstantSchedule(RenormBounds(0.5, 3.0, 1.0))),  # asymmetric
        RenormConfig(2, schedule=ConstantSchedule(bounds), sigma_floor="sqrt_eps"),
        RenormConfig(
            2, schedule=ConstantSchedule(bounds), statistics="separate", correction_rate=0.1
        ),
    ]
    for config in unsupported:
        with pytest.raises(UnsupportedConfig):
            renorm_roles.library_arguments(roles, config)
    no_warmup = renorm_roles.ArgumentRoles("r_max", "d_max", None, None)
    with pytest.raises(UnsupportedConfig, match="warm-up"):
        renorm_roles.library_arguments(no_warmup, switch)


# -- recognition ----------------------------------------------------------------------------


def test_the_fixtures_resolve_as_renorm_layers_with_no_glue() -> None:
    torch_impl = load_target(TORCH_TARGET, TORCH_PROFILE)
    assert isinstance(torch_impl, TorchRenormImplementation)
    assert torch_impl.state_roles.spread == "running_std"
    assert torch_impl.argument_roles.warmup == "warmup_steps"
    flax_impl = load_target(FLAX_TARGET, FLAX_PROFILE)
    nnx_impl = load_target(NNX_TARGET, FLAX_PROFILE)
    for impl, library in ((flax_impl, "flax.linen"), (nnx_impl, "flax.nnx")):
        assert isinstance(impl, FlaxRenormImplementation) and impl.library == library
        assert impl.state_roles == renorm_roles.StateRoles("mean", "var", "variance", "steps")
        assert impl.argument_roles.warmup == "warm_up_steps"
    for impl in (torch_impl, flax_impl, nnx_impl):
        caps = impl.capabilities()
        assert caps.renorm and not caps.batchnorm and caps.step_counter
        assert "float32" in caps.dtypes and "float64" in caps.dtypes
        assert not caps.warnings  # the profile's average says what the layer keeps
    # under a profile that says the other average, the report warns
    mismatched = load_target(TORCH_TARGET, FLAX_PROFILE).capabilities()
    assert any("running_std" in warning for warning in mismatched.warnings)


def test_batchnorm_shaped_classes_stay_batchnorms() -> None:
    from fixtures.thirdparty_bn import ThirdPartyBatchNorm2d

    from normspec.adapters.jax.flax_linen import FlaxLinenImplementation
    from normspec.adapters.jax.flax_nnx import FlaxNnxImplementation
    from normspec.adapters.torch.module import TorchModuleImplementation
    from normspec.adapters.torch.renorm import explain

    for target in ("torch.nn:BatchNorm2d", "fixtures.thirdparty_bn:ThirdPartyBatchNorm2d"):
        assert isinstance(load_target(target, "torch"), TorchModuleImplementation)
    assert renorm_roles.argument_roles(["num_features", "eps", "momentum"]) is None
    assert explain(ThirdPartyBatchNorm2d) is None  # no bounds: not a renorm class at all
    assert isinstance(load_target("flax.linen:BatchNorm", "flax"), FlaxLinenImplementation)
    assert isinstance(load_target("flax.nnx:BatchNorm", "flax"), FlaxNnxImplementation)


def test_a_renorm_class_missing_a_role_is_explained() -> None:
    import torch
    from torch import nn

    class NoCounter(nn.Module):
        def __init__(
            self,
            num_features: int,
            eps: float,
            momentum: float,
            r_max: float = 3.0,
            d_max: float = 5.0,
        ) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_std", torch.ones(num_features))

    from normspec.adapters.torch.renorm import explain

    message = explain(NoCounter)
    assert message is not None and "no step counter in its state" in message
    assert "r_max=r_max, d_max=d_max" in message
    assert explain(torch_fixtures.BatchRenorm2d) is None  # recognised: nothing to explain
    assert explain(nn.BatchNorm2d) is None


@pytest.mark.parametrize(
    "target,profile",
    [(TORCH_TARGET, TORCH_PROFILE), (FLAX_TARGET, FLAX_PROFILE), (NNX_TARGET, FLAX_PROFILE)],
)
def test_state_round_trips_and_a_step_moves_it(target: str, profile: str) -> None:
    impl = load_target(target, profile)
    tiny, x = probe_case(impl.capabilities(), "float64")
    layer = impl.build(renorm_roles.probe_config(tiny, profile))
    initial = layer.state()
    assert isinstance(initial, RenormStatistics)
    np.testing.assert_array_equal(initial.mean, [0.0, 0.0])
    np.testing.assert_array_equal(initial.spread, [1.0, 1.0])
    assert initial.steps == 0
    state = RenormStatistics(np.array([0.5, -1.0]), np.array([2.0, 0.25]), 7)
    layer.set_state(state)
    got = layer.state()
    assert isinstance(got, RenormStatistics)
    np.testing.assert_array_equal(got.mean, state.mean)
    np.testing.assert_array_equal(got.spread, state.spread)
    assert got.steps == 7
    layer.train_step(x)
    stepped = layer.state()
    assert isinstance(stepped, RenormStatistics) and stepped.steps == 8
    assert not np.array_equal(stepped.mean, state.mean)


# -- the conformance checks -----------------------------------------------------------------


def _check(impl: Implementation, profile: str, clauses: str, seed: int, examples: int) -> Report:
    options = CheckOptions(
        profile=profile, clauses=clauses, seed=seed, max_examples=examples, shrink_seconds=0.5
    )
    return check_implementation(impl, options)


def _failures(report: Report) -> list[str]:
    return [
        f"{r.clause_id}: {r.outcome} ({r.message[:200]})"
        for r in report.results
        if r.outcome not in ("pass", "not_applicable")
    ]


@functools.cache
def implementation(cls: type, profile: str) -> Implementation:
    """The implementation of a fixture class, resolved as a target, once per test run (its
    capabilities are probed once)."""
    return load_target(f"{cls.__module__}:{cls.__qualname__}", profile)


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize(
    "cls,profile",
    [
        (torch_fixtures.BatchRenorm2d, TORCH_PROFILE),
        (flax_fixtures.BatchRenorm, FLAX_PROFILE),
        (nnx_fixtures.BatchRenorm, FLAX_PROFILE),
    ],
    ids=["torch", "flax", "nnx"],
)
def test_a_correct_fixture_passes(cls: type, profile: str, seed: int) -> None:
    report = _check(implementation(cls, profile), profile, SEED_CLAUSES, seed, 2)
    assert not _failures(report), _failures(report)
    assert {r.outcome for r in report.results} == {"pass"}


@pytest.mark.parametrize(
    "cls,profile,expected",
    [
        (torch_fixtures.BatchRenorm2d, TORCH_PROFILE, set()),
        # a jitted module cannot raise on a negative moving variance (a SHOULD)
        (flax_fixtures.BatchRenorm, FLAX_PROFILE, {"renorm.params.sigma"}),
        (nnx_fixtures.BatchRenorm, FLAX_PROFILE, {"renorm.params.sigma"}),
    ],
    ids=["torch", "flax", "nnx"],
)
def test_a_correct_fixture_meets_every_renorm_must(
    cls: type, profile: str, expected: set[str]
) -> None:
    report = _check(implementation(cls, profile), profile, "renorm.*", 0, 1)
    assert report.conformant, _failures(report)
    assert {r.clause_id for r in report.results if r.outcome != "pass"} == expected | {
        "renorm.moving.separate",  # one set of statistics
        "renorm.schedule.paper",  # a warm-up switch, no ramps
    }


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(
    "bug,profile,clause",
    [
        (torch_fixtures.GradThroughCorrection2d, TORCH_PROFILE, "renorm.backward.train.dx"),
        (flax_fixtures.UnbiasedVarianceRenorm, FLAX_PROFILE, "renorm.moving.average"),
        (nnx_fixtures.LateSwitchRenorm, FLAX_PROFILE, "renorm.schedule.step"),
    ],
    ids=[
        "torch-gradient-through-r-and-d",
        "flax-unbiased-moving-variance",
        "nnx-switch-one-step-late",
    ],
)
def test_a_planted_bug_is_caught_under_its_clause(
    bug: type, profile: str, clause: str, seed: int
) -> None:
    report = _check(implementation(bug, profile), profile, clause, seed, 10)
    assert report.outcome(clause) == "fail", _failures(report)
