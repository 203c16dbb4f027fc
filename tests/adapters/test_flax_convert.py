"""The shared JAX machinery: x64 mode, dtype round trips, output checks, variable trees."""

from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("flax")
import jax
import jax.numpy as jnp

from normspec.adapters import ALL_DTYPES, DTypeName, WrongOutput
from normspec.adapters._common import parameter_dtype_name
from normspec.adapters.jax._jax import (
    from_jax,
    jax_dtype,
    leaf,
    leaves_named,
    parameter_dtype,
    precision,
    read_vector,
    replace_leaves,
    to_jax,
    x64_enabled,
)
from normspec.conformance.dtypes import round_to


def _values(shape: tuple[int, ...]) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.float64).reshape(shape) * 0.25 - 3.0


@pytest.mark.parametrize("name", ALL_DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "strided", "transposed"])
def test_dtype_round_trip_is_exact(name: DTypeName, layout: str) -> None:
    rng = np.random.default_rng(7)
    dense = round_to(rng.standard_normal((4, 3, 5)) * 100.0, name)
    array = {
        "contiguous": dense,
        "strided": np.repeat(dense, 2, axis=2)[..., ::2],
        "transposed": np.asfortranarray(dense),
    }[layout]
    with precision(name):
        value = to_jax(array, name)
        assert value.dtype == jax_dtype(name)
        back = from_jax(value, shape=array.shape, dtype=jax_dtype(name), what="x")
    assert back.dtype == np.float64
    np.testing.assert_array_equal(back, array)


def test_half_precision_extremes_round_trip() -> None:
    for name, values in (
        ("float16", [65504.0, -65504.0, 2.0**-24, 2.0**-14, 0.0, -0.0]),
        ("bfloat16", [3.3895313892515355e38, 2.0**-133, 1.0 + 2.0**-7, -0.0]),
    ):
        array = np.array(values)
        back = from_jax(to_jax(array, name), shape=array.shape, dtype=jax_dtype(name), what="x")
        np.testing.assert_array_equal(back, array)
        assert np.array_equal(np.signbit(back), np.signbit(array))


def test_x64_only_inside_the_float64_context_and_only_in_its_thread() -> None:
    assert not x64_enabled()
    seen: list[bool] = []
    with precision("float64"):
        assert x64_enabled()
        worker = threading.Thread(target=lambda: seen.append(x64_enabled()))
        worker.start()
        worker.join()
        assert jnp.zeros(1).dtype == jnp.float64
    assert seen == [False]
    assert not x64_enabled()
    with precision("float32"):
        assert not x64_enabled()


def test_float64_outside_x64_mode_is_refused_not_truncated() -> None:
    with pytest.raises(RuntimeError, match="x64"):
        to_jax(np.array([1.0 + 2.0**-40]), "float64")


def test_from_jax_rejects_wrong_dtype_shape_and_type() -> None:
    value = jnp.zeros((4, 3), dtype=jnp.float32)
    with pytest.raises(WrongOutput, match=r"dtype float32, expected float16"):
        from_jax(value, shape=(4, 3), dtype=jnp.float16, what="the output")
    with pytest.raises(WrongOutput, match=r"shape \(4, 3\), expected \(4, 3, 1\)"):
        from_jax(value, shape=(4, 3, 1), dtype=jnp.float32, what="the output")
    with pytest.raises(WrongOutput, match=r"tuple, not a jax\.Array"):
        from_jax((value,), shape=(4, 3), dtype=jnp.float32, what="the output")


def test_parameter_dtype_policies() -> None:
    assert parameter_dtype("float16", "float32") == jnp.float32
    assert parameter_dtype("bfloat16", "float32") == jnp.float32
    assert parameter_dtype("bfloat16", "input") == jnp.bfloat16
    assert parameter_dtype("float64", "float32") == jnp.float64
    assert parameter_dtype_name("float32", "input") == "float32"
    with pytest.raises(ValueError, match="policy"):
        parameter_dtype_name("float16", "half")  # type: ignore[arg-type]


def test_variables_are_found_by_name_in_dicts_and_nnx_state() -> None:
    from flax import nnx

    nested = {"batch_stats": {"inner": {"mean": jnp.zeros(2), "var": jnp.ones(2)}}}
    assert set(leaves_named(nested)) == {"mean", "var"}
    np.testing.assert_array_equal(read_vector(nested, "var", 2, "statistics"), [1.0, 1.0])
    _, params, stats = nnx.split(nnx.BatchNorm(2, rngs=nnx.Rngs(0)), nnx.Param, ...)
    assert set(leaves_named(params)) == {"scale", "bias"}
    assert set(leaves_named(stats)) == {"mean", "var"}
    with pytest.raises(WrongOutput, match="0 variables named 'scale'"):
        leaf(stats, "scale", "statistics")
    with pytest.raises(WrongOutput, match=r"expected a|shape \(2,\), expected \(3,\)"):
        read_vector(nested, "mean", 3, "statistics")


def test_replace_leaves_keeps_the_template_dtype_and_fills_the_rest() -> None:
    template = {
        "mean": jax.ShapeDtypeStruct((2,), jnp.float32),
        "count": jax.ShapeDtypeStruct((), jnp.int32),
    }
    calls: list[int] = []

    def fallback() -> dict[str, jax.Array]:
        calls.append(1)
        return {"mean": jnp.zeros(2), "count": jnp.array(7, jnp.int32)}

    made = replace_leaves(template, {"mean": np.array([0.1, 2.0])}, fallback)
    assert made["mean"].dtype == jnp.float32 and made["mean"][0] == np.float32(0.1)
    assert int(made["count"]) == 7 and calls == [1]
    with pytest.raises(WrongOutput, match="shape"):
        replace_leaves(template, {"mean": np.zeros(3)}, fallback)


def test_a_float64_layer_is_initialised_in_x64_mode_whatever_is_called_first() -> None:
    from normspec.adapters import LayerConfig
    from normspec.adapters.registry import load_target

    config = LayerConfig(
        num_features=2, rank=2, feature_axis=1, dtype="float64", eps=1e-5, momentum=0.5
    )
    layer = load_target("flax.linen", "flax").build(config)
    assert layer.state() is not None  # initialises outside any call's context
    x = np.array([[1.0, 2.0], [1.0 + 2.0**-40, 3.0]])
    y = layer.train_step(x)
    assert y[1, 0] != y[0, 0] and not x64_enabled()
