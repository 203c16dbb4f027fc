"""Targets: the built-in Flax aliases, third-party Flax modules and JAX init/apply pairs.

A third-party linen module with flax.linen.BatchNorm's fields, an nnx module with
nnx.BatchNorm's constructor and a module of ``init``/``apply`` functions are checked with
``normspec check package.module:attr --profile flax`` and no glue code.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flax")
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx

from normspec.adapters import Implementation, LayerConfig, UnsupportedConfig
from normspec.adapters.jax.flax_linen import FlaxLinenImplementation
from normspec.adapters.jax.flax_nnx import FlaxNnxImplementation
from normspec.adapters.jax.functional import JaxFunctionalImplementation, recognise
from normspec.adapters.registry import TargetError, load_target
from normspec.reference import RunningStatistics

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
if str(FIXTURES) not in sys.path:
    sys.path.insert(0, str(FIXTURES))

import jax_functional_bn  # noqa: E402


@functools.cache
def _implementation(target: str) -> Implementation:
    """One implementation per target for the module: its dtype probe compiles."""
    return load_target(target, "flax")


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


@pytest.mark.parametrize(
    ("target", "kind", "fast"),
    [
        ("flax.linen", FlaxLinenImplementation, None),
        ("flax.linen.two_pass", FlaxLinenImplementation, False),
        ("flax.nnx", FlaxNnxImplementation, None),
        ("flax.nnx.two_pass", FlaxNnxImplementation, False),
        ("flax.linen:BatchNorm", FlaxLinenImplementation, None),
        ("flax.nnx:BatchNorm", FlaxNnxImplementation, None),
    ],
)
def test_builtin_targets(target: str, kind: type, fast: bool | None) -> None:
    impl = load_target(target, "flax")
    assert isinstance(impl, kind) and isinstance(impl, Implementation)
    assert impl.use_fast_variance is fast
    assert "BatchNorm" in impl.name and "jax" in impl.name
    assert {"jax", "flax", "device"} <= set(impl.versions())


@pytest.mark.parametrize(
    ("target", "kind"),
    [
        ("thirdparty_flax_bn:ThirdPartyLinenBatchNorm", FlaxLinenImplementation),
        ("thirdparty_flax_bn:ThirdPartyNnxBatchNorm", FlaxNnxImplementation),
        ("jax_functional_bn:apply", JaxFunctionalImplementation),
        ("jax_functional_bn:init", JaxFunctionalImplementation),
    ],
)
def test_third_party_targets_are_recognised_with_no_glue(target: str, kind: type) -> None:
    impl = load_target(target, "flax")
    assert isinstance(impl, kind)
    name = target.split(":")[0]
    assert name in impl.name


def test_init_apply_pair_as_attributes() -> None:
    pair = types.SimpleNamespace(init=jax_functional_bn.init, apply=jax_functional_bn.apply)
    impl = recognise(pair, "flax")
    assert impl is not None and impl.capabilities().without_affine


class _Dense(nn.Module):
    features: int = 2

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        return nn.Dense(self.features)(x)


class _LinenFieldsOnly(nn.Module):
    """BatchNorm's fields, but not its variables."""

    use_running_average: bool = False
    axis: int = -1
    momentum: float = 0.99
    epsilon: float = 1e-5
    use_bias: bool = True
    use_scale: bool = True

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        return x * self.param("weight", nn.initializers.ones, (x.shape[-1],))


def _not_an_init(size: int) -> int:
    return size


@pytest.mark.parametrize(
    "value",
    [nn.Dense, _Dense, _LinenFieldsOnly, nnx.Linear, nnx.Dropout, _not_an_init],
)
def test_other_objects_are_not_recognised(value: object) -> None:
    from normspec.adapters.registry import _recognise

    assert _recognise(value, "flax") is None


def test_unknown_target_is_a_usage_error() -> None:
    with pytest.raises(TargetError):
        load_target("jax_functional_bn:missing", "flax")


def test_capabilities_and_refusals() -> None:
    impl = _implementation("flax.linen")
    caps = impl.capabilities()
    assert caps.dtypes == {"float64", "float32", "float16", "bfloat16"}
    assert caps.feature_axes == ("last", "first") and caps.ranks == {2, 3, 4, 5}
    assert caps.backward and caps.without_affine
    assert not (caps.untracked or caps.cumulative_average or caps.step_counter)
    assert not caps.strided_input and not caps.renorm
    assert "batch_stats" in caps.notes["untracked"]
    config = LayerConfig(
        num_features=2, rank=4, feature_axis=2, dtype="float32", eps=1e-5, momentum=0.9
    )
    with pytest.raises(UnsupportedConfig, match="feature axis 2"):
        impl.build(config)
    with pytest.raises(UnsupportedConfig, match="momentum=None"):
        impl.build(
            LayerConfig(
                num_features=2, rank=2, feature_axis=1, dtype="float32", eps=1e-5, momentum=None
            )
        )
    with pytest.raises(UnsupportedConfig, match="track_running_stats"):
        impl.build(
            LayerConfig(
                num_features=2,
                rank=2,
                feature_axis=1,
                dtype="float32",
                eps=1e-5,
                momentum=0.9,
                track_running_stats=False,
            )
        )


@pytest.mark.parametrize("target", ["flax.linen", "flax.nnx", "jax_functional_bn:apply"])
def test_a_new_layer_has_flax_initial_values(target: str) -> None:
    impl = _implementation(target)
    config = LayerConfig(
        num_features=3, rank=2, feature_axis=1, dtype="float32", eps=1e-5, momentum=0.9
    )
    layer = impl.build(config)
    state = layer.state()
    assert state is not None
    np.testing.assert_array_equal(state.mean, np.zeros(3))
    np.testing.assert_array_equal(state.var, np.ones(3))
    x = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    np.testing.assert_allclose(layer.infer(x), x / np.sqrt(1 + 1e-5), rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("target", ["flax.linen", "flax.nnx"])
def test_half_precision_layers_keep_float32_parameters_and_statistics(
    target: str, dtype: str
) -> None:
    impl = _implementation(target)
    config = LayerConfig(
        num_features=2, rank=2, feature_axis=1, dtype=dtype, eps=1e-5, momentum=0.5
    )  # type: ignore[arg-type]
    layer = impl.build(config)
    layer.set_parameters(np.array([1.0, 2.0**-20]), np.zeros(2))  # 2^-20 is float32, not half
    layer.set_state(RunningStatistics(np.array([0.0, 1.0 + 2.0**-20]), np.ones(2), 0))
    state = layer.state()
    assert state is not None and state.mean[1] == 1.0 + 2.0**-20
    y = layer.train_step(np.array([[1.0, 2.0], [3.0, 4.0]]))
    assert y.shape == (2, 2)


def test_normspec_never_imports_jax_at_start_up() -> None:
    code = (
        "import sys, normspec, normspec.cli, normspec.adapters.registry, "
        "normspec.conformance.runner; "
        "print(sorted(m for m in ('jax', 'flax') if m in sys.modules))"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert found == "[]"
