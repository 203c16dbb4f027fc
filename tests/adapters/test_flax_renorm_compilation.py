"""What the Flax renorm adapter compiles (issue 13's budget): a layer whose variables are
all set compiles no ``init``, and configurations that differ only in the warm-up step share
their compilations where the module traces alike with it as a jit argument, with outputs
and states equal to the module's with the step a constant; a module that tests its warm-up
in Python keeps it a constant."""

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
from fixtures import thirdparty_flax_renorm as flax_fixtures
from fixtures import thirdparty_nnx_renorm as nnx_fixtures
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
    assert count["n"] == 2 * 2
    assert not np.array_equal(below[0], above[0])
    with pytest.raises(jax.errors.TracerBoolConversionError):
        jax.jit(lambda w: CheckedWarmup(warm_up_steps=w))(3)
