"""The family adapters beyond torch drive their real libraries (layernorm.md, groupnorm.md).

Each framework: its built-in targets are recognised with no glue and pass the value and
gradient clauses on a few examples (CI budget); eps = 0 is accepted (``*.params.eps``, a
SHOULD every library here fails, README); and a planted mistake in a user's class of the
library (eps outside the root) is caught under ``*.train.statistics``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from normspec.adapters.registry import load_target
from normspec.conformance.runner import CheckOptions, check_implementation

FEW = 4
VALUES = "{p}.train.statistics,{p}.train.output,{p}.backward.dx,{p}.params.eps"
PREFIX = {"layernorm": "ln", "rmsnorm": "rms", "groupnorm": "gn", "instancenorm": "in"}


def outcomes(implementation: Any, kind: str, profile: str, clauses: str = VALUES) -> dict[str, str]:
    prefix = PREFIX[kind]
    options = CheckOptions(
        profile=profile,
        dtypes=("float32",),
        max_examples=FEW,
        clauses=clauses.format(p=prefix),
    )
    report = check_implementation(implementation, options)
    return {r.clause_id: r.outcome for r in report.results if r.outcome != "not_applicable"}


def expect_library_outcomes(target: str, kind: str, profile: str) -> None:
    implementation = load_target(target, profile)
    capabilities = implementation.capabilities()
    assert getattr(capabilities, kind) and not capabilities.batchnorm
    found = outcomes(implementation, kind, profile)
    prefix = PREFIX[kind]
    assert found.pop(f"{prefix}.params.eps") == "fail", found  # eps = 0 accepted (README)
    expected = {f"{prefix}.train.statistics", f"{prefix}.train.output"}
    if capabilities.backward:
        expected.add(f"{prefix}.backward.dx")
    assert found == dict.fromkeys(expected, "pass")


# -- JAX: Flax linen and nnx, haiku, equinox ---------------------------------------------


@pytest.mark.parametrize(
    ("target", "kind", "profile"),
    [
        ("flax.linen:LayerNorm", "layernorm", "flax"),
        ("flax.nnx:RMSNorm", "rmsnorm", "flax"),
        ("haiku:LayerNorm", "layernorm", "haiku"),
        ("equinox.nn:RMSNorm", "rmsnorm", "flax"),
        ("flax.linen:GroupNorm", "groupnorm", "flax"),  # channels last: moved by the adapter
        ("flax.nnx:InstanceNorm", "instancenorm", "flax"),
        ("haiku:GroupNorm", "groupnorm", "haiku"),
        ("equinox.nn:GroupNorm", "groupnorm", "flax"),
    ],
)
def test_jax_libraries_are_recognised_and_pass(target: str, kind: str, profile: str) -> None:
    pytest.importorskip(target.split(".")[0].split(":")[0])
    expect_library_outcomes(target, kind, profile)


def test_a_flax_rmsnorm_with_eps_outside_the_root_is_caught() -> None:
    pytest.importorskip("flax")
    import jax.numpy as jnp
    from flax import linen as nn

    from normspec.adapters.jax.family import recognise

    class EpsOutside(nn.RMSNorm):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            axes = self.reduction_axes
            rms = jnp.sqrt(jnp.mean(jnp.square(x), axis=axes, keepdims=True))
            return (x / (rms + self.epsilon)).astype(x.dtype)

    implementation = recognise(EpsOutside, "flax")
    assert implementation is not None and implementation.capabilities().rmsnorm
    found = outcomes(implementation, "rmsnorm", "flax", "rms.train.statistics")
    assert found == {"rms.train.statistics": "fail"}


def test_flax_layernorm_shapes_of_several_axes_reach_the_library() -> None:
    pytest.importorskip("flax")
    from normspec.adapters.protocol import FamilyConfig, LayerConfig
    from normspec.reference import family

    implementation = load_target("flax.nnx:LayerNorm", "flax")
    config = LayerConfig(6, 3, 2, "float32", 1e-5, None, family=FamilyConfig("layernorm", (2, 3)))
    layer = implementation.build(config)
    weight = np.arange(6.0).reshape(2, 3) / 4
    layer.set_parameters(weight, np.ones((2, 3)))
    x = np.random.default_rng(0).normal(size=(4, 2, 3)).astype(np.float32)
    expected = family.layer_norm(x, (2, 3), weight, np.ones((2, 3)), eps=1e-5)
    np.testing.assert_allclose(layer.infer(x), expected, atol=1e-5)


# -- Keras 3 (TensorFlow in this process, JAX in a worker) and tf_keras --------------------


@pytest.mark.parametrize(
    ("target", "kind", "profile"),
    [
        ("keras.layernorm.tensorflow", "layernorm", "keras"),
        ("keras.rmsnorm.tensorflow", "rmsnorm", "keras"),
        ("tf_keras.layers:LayerNormalization", "layernorm", "tf_keras"),
        ("keras.groupnorm.tensorflow", "groupnorm", "keras"),
        ("tf_keras.layers:GroupNormalization", "groupnorm", "tf_keras"),
    ],
)
def test_keras_layers_are_recognised_and_pass(target: str, kind: str, profile: str) -> None:
    pytest.importorskip("tensorflow")
    pytest.importorskip(target.split(".")[0])
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("Keras runs on another backend in this process")
    expect_library_outcomes(target, kind, profile)


def test_a_keras_group_normalization_subclass_is_a_groupnorm_on_the_channel_axis() -> None:
    keras = pytest.importorskip("keras")
    from normspec.adapters.keras.family import recognise
    from normspec.adapters.protocol import FamilyConfig, LayerConfig

    class Mine(keras.layers.GroupNormalization):
        pass

    implementation = recognise(Mine, "keras")
    assert implementation is not None and implementation.capabilities().groupnorm
    family = FamilyConfig("groupnorm", (), num_groups=2)
    config = LayerConfig(4, 3, 1, "float32", 1e-5, None, family=family)
    layer = implementation.computation(config, family).layer
    assert (layer.axis, layer.groups) == (1, 2)  # the case's (N, C, L) as it is


def test_keras_on_jax_runs_in_its_worker(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("keras")
    pytest.importorskip("jax")
    from normspec.cli import main

    clauses = ["--clauses", "rms.train.*", "--max-examples", str(FEW), "--dtype", "float32"]
    assert main(["check", "keras.rmsnorm.jax", "--profile", "keras", *clauses]) == 0
    out = capsys.readouterr().out
    assert "KERAS_BACKEND=jax" in out and "2 passed, 0 failed" in out


# -- ONNX ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "kind"),
    [
        ("onnx.reference.layernorm", "layernorm"),
        ("onnxruntime.layernorm", "layernorm"),
        ("onnx.reference.rmsnorm", "rmsnorm"),
        ("onnxruntime.rmsnorm", "rmsnorm"),
        ("onnx.reference.groupnorm", "groupnorm"),
        ("onnxruntime.groupnorm", "groupnorm"),
        ("onnx.reference.instancenorm", "instancenorm"),
        ("onnxruntime.instancenorm", "instancenorm"),
    ],
)
def test_onnx_operators_are_checked_on_both_runtimes(target: str, kind: str) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    expect_library_outcomes(target, kind, "onnx")
    capabilities = load_target(target, "onnx").capabilities()
    assert not capabilities.backward and capabilities.setting_dtype == "float32"
    # eps held as float32 (strategies_family.held_eps): float64 is checked wherever the
    # runtime has a kernel for it (onnxruntime has no float64 InstanceNormalization)
    if "float64" not in capabilities.dtypes:
        assert "Could not find an implementation" in capabilities.notes["float64"]


@pytest.mark.parametrize("target", ["onnx.reference.layernorm", "onnxruntime.rmsnorm"])
def test_onnx_float64_is_checked_with_the_eps_the_model_holds(target: str) -> None:
    """float64 passes with eps rounded to float32 (``setting_dtype``) and fails without:
    the model's float32 epsilon differs from a float64 1e-5 by 1e3 float64 ulps."""
    pytest.importorskip("onnxruntime")
    prefix = "ln" if "layernorm" in target else "rms"
    options = CheckOptions(
        profile="onnx", dtypes=("float64",), clauses=f"{prefix}.train.statistics"
    )
    implementation = load_target(target, "onnx")
    assert check_implementation(implementation, options).conformant
    implementation.setting_dtype = "float64"  # type: ignore[attr-defined]
    assert not check_implementation(implementation, options).conformant
