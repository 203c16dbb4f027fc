"""The shared TensorFlow mechanism (adapters/tensorflow/_tf.py): dtypes, conversion, checks, tracing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from normspec.adapters import ALL_DTYPES, Capabilities, LayerConfig, UnsupportedConfig, WrongOutput
from normspec.adapters._common import check_config, probe_dtypes
from normspec.adapters.tensorflow._tf import (
    Compiled,
    from_tf,
    parameter_dtype,
    read_variable,
    tf,
    tf_dtype,
    to_tf,
    write_variable,
)
from normspec.conformance.dtypes import round_to


@pytest.mark.parametrize("name", ALL_DTYPES)
def test_round_trip_is_exact_for_representable_values(name: str) -> None:
    rng = np.random.default_rng(0)
    values = round_to(rng.standard_normal((3, 4, 5)) * 100.0, name)
    tensor = to_tf(values, tf_dtype(name))
    assert tensor.dtype == tf_dtype(name)
    back = from_tf(tensor, shape=values.shape, dtype=tf_dtype(name), what="y")
    assert back.dtype == np.float64
    np.testing.assert_array_equal(back, values)


@pytest.mark.parametrize("layout", ["strided", "fortran", "negative"])
def test_views_arrive_with_their_values(layout: str) -> None:
    base = np.arange(24.0).reshape(2, 3, 4)
    if layout == "strided":
        view = np.zeros((2, 3, 8))[..., ::2]
        view[...] = base
    elif layout == "fortran":
        view = np.asfortranarray(base)
    else:
        view = np.ascontiguousarray(base[:, ::-1])[:, ::-1]
    for name in ALL_DTYPES:
        got = to_tf(view, tf_dtype(name)).numpy().astype(np.float64)
        np.testing.assert_array_equal(got, base)


def test_from_tf_rejects_another_dtype_or_shape() -> None:
    value = tf.zeros((2, 3), tf.float32)
    with pytest.raises(WrongOutput, match="dtype float32, expected float16"):
        from_tf(value, shape=(2, 3), dtype=tf.float16, what="the output")
    with pytest.raises(WrongOutput, match=r"shape \(2, 3\), expected \(3, 2\)"):
        from_tf(value, shape=(3, 2), dtype=tf.float32, what="the output")
    with pytest.raises(WrongOutput, match=r"not a tf\.Tensor"):
        from_tf(np.zeros((2, 3)), shape=(2, 3), dtype=tf.float32, what="the output")


def test_variables_are_written_and_read_in_their_dtype() -> None:
    variable = tf.Variable(tf.zeros([3], tf.bfloat16))
    write_variable(variable, np.array([1.0, 0.5, -2.0]), 3, "gamma")
    assert variable.dtype == tf.bfloat16
    np.testing.assert_array_equal(read_variable(variable, 3, "gamma"), [1.0, 0.5, -2.0])
    with pytest.raises(WrongOutput, match="expected a floating-point vector of shape"):
        read_variable(variable, 4, "gamma")
    with pytest.raises(WrongOutput, match="no gamma variable"):
        read_variable(None, 3, "gamma")


def test_parameter_policy() -> None:
    assert parameter_dtype("float16", "float32") == tf.float32
    assert parameter_dtype("bfloat16", "input") == tf.bfloat16
    assert parameter_dtype("float64", "float32") == tf.float64
    with pytest.raises(ValueError, match="parameter policy"):
        parameter_dtype("float16", "half")


def test_compiled_traces_once_per_rank_dtype_and_option() -> None:
    compiled = Compiled(lambda x, *, power: x**power, "test.power", keep=lambda i, t: (1,))
    for batch in (1, 2, 5, 7):
        for spatial in (1, 3):
            x = tf.ones((batch, 3, spatial), tf.float32)
            assert compiled(x, power=2).shape == x.shape
    assert compiled.traces == 1
    compiled(tf.ones((2, 4, 2), tf.float32), power=2)  # a kept axis of another size
    compiled(tf.ones((2, 3, 2), tf.float64), power=2)  # another dtype
    compiled(tf.ones((2, 3), tf.float32), power=2)  # another rank
    compiled(tf.ones((2, 3, 2), tf.float32), power=3)  # another option
    assert compiled.traces == 5


def test_check_config_and_probe_dtypes() -> None:
    caps = Capabilities(ranks=frozenset({4}), feature_axes=("last",), untracked=False)
    config = LayerConfig(
        num_features=2, rank=4, feature_axis=3, dtype="float32", eps=-1.0, momentum=7.0
    )
    check_config(caps, config)  # invalid eps and momentum are the implementation's to reject
    for change, message in (
        ({"rank": 2, "feature_axis": 1}, "rank 2"),
        ({"feature_axis": 1}, "feature axis 1"),
        ({"track_running_stats": False}, "track_running_stats=False"),
        ({"momentum": None}, "cumulative average"),
    ):
        with pytest.raises(UnsupportedConfig, match=message):
            check_config(caps, LayerConfig(**{**config.__dict__, **change}))

    def probe(config: LayerConfig, x: np.ndarray) -> str | None:
        assert x.shape[config.feature_axis] == config.num_features and x.ndim == 4
        if config.dtype == "float64":
            raise TypeError("no double kernel")
        return None

    probed = probe_dtypes(caps, probe, where="CPU")
    assert probed.dtypes == {"float32", "float16", "bfloat16"}
    assert "float64: TypeError: no double kernel" in probed.notes["dtypes"]


def test_normspec_does_not_import_tensorflow_at_start_up(tmp_path: Path) -> None:
    code = (
        "import sys, normspec, normspec.cli, normspec.adapters.registry; "
        "sys.exit('tensorflow' in sys.modules or 'keras' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], check=False, cwd=tmp_path)
    assert run.returncode == 0
