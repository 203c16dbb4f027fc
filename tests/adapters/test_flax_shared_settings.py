"""Flax's own BatchNorm (linen and nnx) with eps and the momentum as jit arguments: layers of
one shape that differ only in them share one compilation, and compute bitwise what the same
module with Python floats computes (a subclass keeps the floats)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from adapter_cases import layer_results, shared_compilations
from flax import linen as nn
from flax import nnx

from normspec.adapters.jax import _module
from normspec.adapters.jax.flax_linen import FlaxLinenImplementation
from normspec.adapters.jax.flax_nnx import FlaxNnxImplementation
from normspec.adapters.protocol import LayerConfig
from normspec.reference import RunningStatistics


class LinenFloats(nn.BatchNorm):
    """nn.BatchNorm under another name: its settings stay Python floats."""


class NnxFloats(nnx.BatchNorm):
    """nnx.BatchNorm under another name: its settings stay Python floats."""


APIS = {
    "linen": (FlaxLinenImplementation, LinenFloats),
    "nnx": (FlaxNnxImplementation, NnxFloats),
}
#: (eps, momentum): momenta 0 and 1 among them (rates 1 and 0); 0.9, whose 1 - momentum
#: rounded from double (0.1 in float32) is not 1 - its float32 rounding (0.100000024)
SETTINGS = [(1e-5, 0.9), (0.1, 0.0), (0.3, 1.0)]


def results(implementation: Any, config: LayerConfig, seed: int) -> list[np.ndarray]:
    """What a layer of ``config`` computes (:func:`adapter_cases.layer_results`)."""
    shape = (6, 3, 2) if config.feature_axis == 1 else (6, 2, 3)
    return layer_results(implementation, config, seed, shape)


@pytest.mark.parametrize(
    ("api", "dtype"), [("linen", "float32"), ("linen", "float64"), ("nnx", "float16")]
)
def test_settings_are_jit_arguments_and_compute_as_floats(api: str, dtype: str) -> None:
    own, floats = (APIS[api][0](), APIS[api][0](APIS[api][1]))
    growth = []
    for k, (eps, momentum) in enumerate(SETTINGS):
        config = LayerConfig(
            num_features=3, rank=3, feature_axis=1, dtype=dtype, eps=eps, momentum=momentum
        )
        before = shared_compilations()
        shared = results(own, config, k)
        after = shared_compilations()
        growth.append(tuple(a - b for a, b in zip(after, before, strict=True)))
        for got, want in zip(shared, results(floats, config, k), strict=True):
            assert got.tobytes() == want.tobytes(), (eps, momentum, got, want)
    # the first setting compiles the shared forwards and vjps (if no other test did); the
    # others, which differ only in eps and the momentum, nothing
    assert growth[1:] == [(0, 0)] * (len(SETTINGS) - 1), growth


@pytest.mark.parametrize("api", sorted(APIS))
def test_a_step_and_an_inference_run_as_their_vjps_program(api: str) -> None:
    """A training step, an inference and both vjps on one shape: two compilations (the
    vjps'), none of a forward alone."""
    implementation = APIS[api][0]()
    implementation.capabilities()  # the dtype probes compile before, not in, the count
    config = LayerConfig(
        num_features=7, rank=2, feature_axis=1, dtype="float32", eps=1e-3, momentum=0.9
    )
    rng = np.random.default_rng(0)
    x, dy = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    layer = implementation.build(config)
    layer.set_parameters(rng.normal(size=7), rng.normal(size=7))
    layer.set_state(RunningStatistics(rng.normal(size=7), rng.uniform(0.5, 2.0, 7), 1))
    before = shared_compilations()
    for _ in range(2):
        layer.train_step(x)
        layer.infer(x)
        layer.vjp(x, dy, training=True)
        layer.vjp(x, dy, training=False)
    assert tuple(a - b for a, b in zip(shared_compilations(), before, strict=True)) == (0, 2)


def shares(program: Any) -> bool:
    return getattr(program.train, "func", None) is _module._forward


@pytest.mark.parametrize("api", sorted(APIS))
def test_a_subclass_and_half_parameters_keep_their_floats(api: str) -> None:
    """Only the API's own class, with float32 or float64 parameters, takes stand-ins."""
    implementation, subclass = APIS[api]
    config = LayerConfig(
        num_features=3, rank=3, feature_axis=1, dtype="float16", eps=1e-3, momentum=0.9
    )
    assert shares(implementation().program(config))
    assert not shares(implementation(subclass).program(config))
    assert not shares(implementation(parameters="input").program(config))


def replicated_results(implementation: Any, config: LayerConfig, seed: int) -> list[np.ndarray]:
    """A synchronized training step on two replicas, the states it leaves and the vjp,
    without and with masks (sync.*), of a layer whose parameters and statistics are set."""
    rng = np.random.default_rng(seed)
    xs = [rng.normal(size=(3, 3)) * 3.0 + 100.0 for _ in range(2)]
    dys = [rng.normal(size=(3, 3)) for _ in range(2)]
    masks = [np.array([True, True, False]), np.array([True, False, True])]
    found: list[np.ndarray] = []
    for masked in (None, masks):
        layer = implementation.make_replicated(config, 2)
        layer.set_parameters(rng.normal(size=3), rng.normal(size=3))
        layer.set_state(RunningStatistics(rng.normal(size=3), rng.uniform(0.5, 2.0, 3), 1))
        found += layer.train_step(xs, masked)
        found += [v for state in layer.states() for v in (state.mean, state.var)]
        found += [v for g in layer.vjp(xs, dys, masked) for v in (g.dx, g.dgamma, g.dbeta)]
    return found


@pytest.mark.parametrize(("api", "dtype"), [("linen", "float32"), ("nnx", "float64")])
def test_replicated_layers_share_their_template_compilations(api: str, dtype: str) -> None:
    """On two replicas too, layers that differ only in eps and the momentum share one
    training step and vjp (eps and the momentum replicated jit arguments), and compute
    bitwise what the module with Python floats computes."""
    own, floats = (APIS[api][0](), APIS[api][0](APIS[api][1]))
    growth = []
    for k, (eps, momentum) in enumerate(SETTINGS):
        config = LayerConfig(
            num_features=3, rank=2, feature_axis=1, dtype=dtype, eps=eps, momentum=momentum
        )
        before = sum(f.train._cache_size() + f.vjp._cache_size() for f in own._functions.values())
        shared = replicated_results(own, config, k)
        after = sum(f.train._cache_size() + f.vjp._cache_size() for f in own._functions.values())
        growth.append(after - before)
        for got, want in zip(shared, replicated_results(floats, config, k), strict=True):
            assert got.tobytes() == want.tobytes(), (eps, momentum, got, want)
    assert len(own._functions) == 1  # one template on two replicas
    assert len(floats._functions) == len(SETTINGS)  # a subclass: one per configuration
    # the first setting compiles the vjp, with and without masks, which also runs the
    # training steps (ShardedProgram.step); the others nothing
    assert growth == [2] + [0] * (len(SETTINGS) - 1), growth
