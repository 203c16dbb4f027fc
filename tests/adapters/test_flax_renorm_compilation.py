"""What the Flax renorm adapter compiles (issue 13's budget): a layer whose variables are
all set compiles no ``init``, and configurations that differ only in the warm-up step share
their compilations where the module traces alike with it as a jit argument, with outputs
and states equal to the module's with the step a constant; a module that tests its warm-up
in Python keeps it a constant. Configurations that differ only in bounds, warm-up and
momentum share their inference programs where the module's inference does not read them
(its outputs and gradients those of a program of its own); a module whose inference reads
a bound keeps one inference program per configuration."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flax")

import jax
import jax.numpy as jnp
from fixtures import thirdparty_flax_renorm as flax_fixtures
from fixtures import thirdparty_nnx_renorm as nnx_fixtures
from flax import linen as nn
from jax import monitoring

from normspec.adapters import renorm_roles
from normspec.adapters._common import probe_case
from normspec.adapters.jax.flax_renorm import FlaxRenormImplementation
from normspec.adapters.protocol import LayerConfig
from normspec.reference.renorm import RenormStatistics
from normspec.reference.schedules import RenormBounds, SwitchSchedule

PROFILE = str(Path(__file__).parents[2] / "examples" / "profiles" / "sbx_batchrenorm.toml")
COMPILE = "/jax/core/compile/backend_compile_duration"
_COMPILES: collections.Counter[str] = collections.Counter()
monitoring.register_event_duration_secs_listener(
    lambda event, duration, **_: _COMPILES.update([event])
)


@contextmanager
def compilations() -> Iterator[collections.Counter[str]]:
    """The XLA compilations of the block, counted in ``found["n"]`` when it ends."""
    found: collections.Counter[str] = collections.Counter()
    before = _COMPILES[COMPILE]
    yield found
    found["n"] = _COMPILES[COMPILE] - before


class CheckedWarmup(flax_fixtures.BatchRenorm):
    """The linen fixture testing its warm-up step in Python, as a user's module may."""

    def __post_init__(self) -> None:
        if self.warm_up_steps < 0:
            raise ValueError(f"warm_up_steps must be non-negative, got {self.warm_up_steps}")
        super().__post_init__()


class ClippedInference(flax_fixtures.BatchRenorm):
    """The linen fixture whose inference output is clipped at ``d_max / 100``: its inference
    reads a bound."""

    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        y = super().__call__(x, use_running_average)
        if nn.merge_param("use_running_average", self.use_running_average, use_running_average):
            y = jnp.clip(y, -self.d_max / 100, self.d_max / 100)
        return y


def switching_at(config: LayerConfig, step: int) -> LayerConfig:
    """``config`` with bounds ``r_max = 1.6, d_max = 0.5`` from the warm-up step ``step``."""
    assert config.renorm is not None
    schedule = SwitchSchedule(step, RenormBounds.symmetric(1.6, 0.5))
    return dataclasses.replace(config, renorm=dataclasses.replace(config.renorm, schedule=schedule))


def run(impl: FlaxRenormImplementation, config: LayerConfig, steps: int) -> tuple[Any, ...]:
    """A training step and an inference of a layer set at ``steps``: outputs and state."""
    rng = np.random.default_rng(steps)
    shape = (4, config.num_features)
    x, features = rng.normal(2.0, 3.0, shape), config.num_features
    layer = impl.build(config)
    layer.set_parameters(rng.uniform(0.5, 2.0, features), rng.normal(size=features))
    layer.set_state(RenormStatistics(np.full(features, 5.0), np.full(features, 0.01), steps))
    y = layer.train_step(x)
    state = layer.state()
    assert isinstance(state, RenormStatistics)
    return y, layer.infer(x), state.mean, state.spread, state.steps


@pytest.mark.parametrize(
    "cls", [flax_fixtures.BatchRenorm, nnx_fixtures.BatchRenorm], ids=["linen", "nnx"]
)
def test_warm_up_steps_share_one_compilation_and_agree_with_constants(cls: type) -> None:
    traced, constant = (
        FlaxRenormImplementation(cls, PROFILE),
        FlaxRenormImplementation(cls, PROFILE),
    )
    constant._warmup_traced = False  # the warm-up step a constant of each program
    constant._inference_reads = True  # and an inference program each
    constant.capabilities()  # its probes compiled here, not counted below
    tiny, _ = probe_case(traced.capabilities(), "float32")
    base = renorm_roles.probe_config(tiny, PROFILE)
    with compilations() as shared:
        found = {
            (at, t): run(traced, switching_at(base, at), t) for at in (0, 3, 7) for t in (2, 3)
        }
    assert traced._warmup_traced
    # one training step and one inference, for three warm-up steps: no init either
    assert shared["n"] == 2
    with compilations() as separate:
        for (at, t), values in found.items():
            expected = run(constant, switching_at(base, at), t)
            for got, want in zip(values, expected, strict=True):
                np.testing.assert_array_equal(got, want)
    assert separate["n"] == 2 * 3
    # the switch shows: at step 2 a warm-up of 3 is batch norm, a warm-up of 0 is not
    assert not np.array_equal(found[(0, 2)][0], found[(3, 2)][0])
    np.testing.assert_array_equal(found[(3, 2)][0], found[(7, 2)][0])


def test_a_module_testing_its_warm_up_in_python_keeps_it_constant() -> None:
    impl = FlaxRenormImplementation(CheckedWarmup, PROFILE)
    tiny, _ = probe_case(impl.capabilities(), "float32")
    base = renorm_roles.probe_config(tiny, PROFILE)
    with compilations() as count:
        below, above = (run(impl, switching_at(base, at), 2) for at in (3, 0))
    assert impl._warmup_traced is False
    assert count["n"] == 2 + 1  # a training step each, one inference (it reads no warm-up)
    assert not np.array_equal(below[0], above[0])
    with pytest.raises(jax.errors.TracerBoolConversionError):
        jax.jit(lambda w: CheckedWarmup(warm_up_steps=w))(3)


def other_training_values(config: LayerConfig, k: int) -> LayerConfig:
    """``config`` with the bounds, warm-up step and momentum of variant ``k``."""
    assert config.renorm is not None
    schedule = SwitchSchedule(k, RenormBounds.symmetric(1.5 + k, 0.5 + k))
    renorm = dataclasses.replace(config.renorm, schedule=schedule)
    return dataclasses.replace(config, momentum=0.9 - 0.2 * k, renorm=renorm)


def inferred(impl: FlaxRenormImplementation, config: LayerConfig) -> tuple[Any, ...]:
    """An inference of a set layer: the output and the gradients (seeded alike)."""
    rng = np.random.default_rng(0)
    features = config.num_features
    x, dy = rng.normal(2.0, 3.0, (4, features)), rng.normal(size=(4, features))
    layer = impl.build(config)
    layer.set_parameters(rng.uniform(0.5, 2.0, features), rng.normal(size=features))
    layer.set_state(RenormStatistics(rng.normal(size=features), np.full(features, 4.0), 3))
    grads = layer.vjp(x, dy, training=False)
    return layer.infer(x), grads.dx, grads.dgamma, grads.dbeta


@pytest.mark.parametrize(
    "cls", [flax_fixtures.BatchRenorm, nnx_fixtures.BatchRenorm], ids=["linen", "nnx"]
)
def test_inference_programs_are_shared_across_bounds_warm_up_and_momentum(cls: type) -> None:
    shared, own = FlaxRenormImplementation(cls, PROFILE), FlaxRenormImplementation(cls, PROFILE)
    own._inference_reads = True  # an inference program per configuration
    own.capabilities()
    tiny, _ = probe_case(shared.capabilities(), "float32")
    base = renorm_roles.probe_config(tiny, PROFILE)
    configs = [other_training_values(base, k) for k in range(3)]
    with compilations() as count:
        found = [inferred(shared, config) for config in configs]
    assert shared._inference_reads is False
    # one inference forward and one vjp for the three (fewer where an earlier test of the
    # class compiled them: the programs of a class's first configuration are shared)
    assert count["n"] <= 2
    programs = [shared.program(config) for config in configs]
    assert len({id(p.infer) for p in programs}) == len({id(p.vjp_infer) for p in programs}) == 1
    assert len({id(own.program(config).infer) for config in configs}) == 3
    for config, values in zip(configs, found, strict=True):
        for got, want in zip(values, inferred(own, config), strict=True):
            np.testing.assert_array_equal(got, want)


def test_a_module_whose_inference_reads_a_bound_keeps_a_program_per_configuration() -> None:
    impl = FlaxRenormImplementation(ClippedInference, PROFILE)
    tiny, _ = probe_case(impl.capabilities(), "float32")
    base = renorm_roles.probe_config(tiny, PROFILE)
    configs = [other_training_values(base, k) for k in (0, 1)]
    with compilations() as count:
        low, high = (inferred(impl, config) for config in configs)
    assert impl._inference_reads is True
    assert count["n"] == 2 * 2
    assert impl.program(configs[0]).infer is not impl.program(configs[1]).infer
    # d_max 0.5 clips the inference output at 0.005, d_max 1.5 at 0.015
    assert np.max(np.abs(low[0])) <= 0.005 < np.max(np.abs(high[0]))
