"""Keras 3's BatchNormalization on the jax, torch and numpy backends (keras.jax, keras.torch,
keras.numpy), driven through their worker processes (Keras' backend is fixed per process):
agreement with the reference in float32, the not-applicable reasons (float64 computed in
float32, no gradients on NumPy), the worker's KERAS_BACKEND, and the in-process usage error.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip("keras")

from adapter_cases import Case, agree

from normspec.adapters import LayerConfig
from normspec.adapters.reference import ReferenceImplementation
from normspec.adapters.registry import target_environment
from normspec.conformance.builtin import find_builtin
from normspec.conformance.isolation import IsolatedImplementation, isolate
from normspec.reference import RunningStatistics
from normspec.reference import renorm as rn
from normspec.reference.dialects import renorm_config
from normspec.reference.layer import Affine

BACKENDS = ("jax", "torch", "numpy")
#: float32 against the float64 reference, relative to each quantity's natural scale
TOLERANCE = 2e-5


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


@pytest.fixture(scope="module", params=BACKENDS)
def keras_backend(request: pytest.FixtureRequest) -> Iterator[IsolatedImplementation]:
    backend = request.param
    if not _installed(backend):
        pytest.skip(f"{backend} is not installed")
    with isolate(f"keras.{backend}", "keras") as impl:
        yield impl


def _case(rank: int, feature_axis: int, affine: bool) -> Case:
    features = 3
    shape = [4] + [2] * (rank - 1)
    shape[feature_axis] = features
    rng = np.random.default_rng(rank * 2 + affine)
    config = LayerConfig(
        num_features=features,
        rank=rank,
        feature_axis=feature_axis,
        dtype="float32",
        eps=1e-3,
        momentum=0.9,
        affine=affine,
        track_running_stats=True,
    )
    # values exact in float32, so that both sides see the same input
    x = rng.normal(0.0, 2.0, shape).astype(np.float32).astype(np.float64)
    dy = rng.normal(0.0, 1.0, shape).astype(np.float32).astype(np.float64)
    vector = rng.uniform(0.5, 2.0, (3, features)).astype(np.float32).astype(np.float64)
    state = RunningStatistics(vector[2] - 1.0, vector[2], 0)
    return Case(config, x, dy, vector[0], vector[1] - 1.0, state)


@pytest.mark.parametrize(("rank", "feature_axis", "affine"), [(2, 1, True), (4, 1, False)])
def test_agrees_with_the_reference_in_float32(
    keras_backend: IsolatedImplementation, rank: int, feature_axis: int, affine: bool
) -> None:
    reference = ReferenceImplementation("keras")
    case = _case(rank, feature_axis, affine)
    gradients = keras_backend.capabilities().backward
    agree(keras_backend, reference, case, TOLERANCE, gradients=gradients)


def test_float64_is_not_applicable_with_the_reason(keras_backend: IsolatedImplementation) -> None:
    caps = keras_backend.capabilities()
    assert "float64" not in caps.dtypes and "float32" in caps.dtypes
    assert "computes a float64 layer in float32" in caps.notes["dtypes"]
    assert "result_type" in caps.notes["dtypes"]
    assert any(w.startswith("float64 not checked") for w in caps.warnings)


def test_only_the_numpy_backend_has_no_backward(keras_backend: IsolatedImplementation) -> None:
    caps = keras_backend.capabilities()
    numpy = "on numpy" in keras_backend.name
    assert caps.backward is not numpy
    if numpy:
        assert "no automatic differentiation" in caps.notes["backward"]


def test_the_worker_starts_with_the_targets_keras_backend(
    keras_backend: IsolatedImplementation,
) -> None:
    backend = keras_backend.versions()["keras_backend"]
    assert keras_backend.isolation.env["KERAS_BACKEND"] == backend
    assert f"KERAS_BACKEND={backend}" in keras_backend.isolation.describe()
    assert target_environment(f"keras.{backend}") == {"KERAS_BACKEND": backend}
    assert target_environment(f"keras.renorm.{backend}") == {"KERAS_BACKEND": backend}
    assert target_environment("keras") == {}


def test_the_backends_are_builtin_rows() -> None:
    for backend in BACKENDS:
        entry = find_builtin(f"keras.{backend}")
        assert entry is not None and entry.profile == "keras"
        assert entry.frameworks == (("keras",) if backend == "numpy" else ("keras", backend))


def _check_in_process(prelude: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    code = f"{prelude}; import sys; from normspec.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    return subprocess.run(
        [sys.executable, "-c", code, "check", *arguments, "--in-process"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_in_process_a_keras_imported_on_another_backend_is_a_usage_error() -> None:
    done = _check_in_process(
        "import os; os.environ['KERAS_BACKEND'] = 'numpy'; import keras", "keras.torch"
    )
    assert done.returncode == 2, done.stderr
    assert "already imported on the numpy backend" in done.stderr
    assert "KERAS_BACKEND=torch" in done.stderr


def test_in_process_keras_is_imported_on_the_targets_backend() -> None:
    done = _check_in_process(
        "pass", "keras.numpy", "--clauses", "bn.train.output", "--dtype", "float32"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "on numpy" in done.stdout and "1 passed" in done.stdout


def test_renorm_agrees_with_the_reference_in_float32(
    keras_backend: IsolatedImplementation,
) -> None:
    """renorm=True through the same adapter: its state is the renorm variables, written and
    read as on TensorFlow; clipping active (rmax 1.5, dmax 0.5)."""
    assert keras_backend.capabilities().renorm
    rng = np.random.default_rng(7)
    shape, features = (5, 2, 3), 3

    def exact(values: np.ndarray) -> np.ndarray:
        return values.astype(np.float32).astype(np.float64)

    cfg = rn_config(features)
    config = LayerConfig(
        num_features=features,
        rank=3,
        feature_axis=2,
        dtype="float32",
        eps=cfg.eps,
        momentum=1.0 - cfg.rate,
        renorm=cfg,
    )
    x, dy = exact(rng.normal(0.5, 2.0, shape)), exact(rng.normal(0.0, 1.0, shape))
    params = Affine(exact(rng.uniform(0.5, 2.0, features)), exact(rng.uniform(-1, 1, features)))
    spread = exact(rng.uniform(0.5, 3.0, features))
    state = rn.RenormStatistics(
        exact(rng.uniform(-1, 1, features)),
        spread,
        0,
        exact(rng.uniform(-1, 1, features)),
        spread * 0.5,
    )
    layer = keras_backend.build(config)
    layer.set_parameters(params.gamma, params.beta)
    layer.set_state(state)
    y, after = rn.training_step(cfg, params, state, x)
    np.testing.assert_allclose(layer.train_step(x), y, rtol=TOLERANCE, atol=TOLERANCE * 10)
    got = layer.state()
    assert isinstance(got, rn.RenormStatistics) and got.separate
    for name in ("mean", "spread", "correction_mean", "correction_spread"):
        np.testing.assert_allclose(getattr(got, name), getattr(after, name), rtol=TOLERANCE)
    layer.set_state(state)
    want_y = rn.inference(cfg, params, state, x)
    np.testing.assert_allclose(layer.infer(x), want_y, rtol=TOLERANCE, atol=TOLERANCE * 10)
    if keras_backend.capabilities().backward:
        layer.set_state(state)
        got_g = layer.vjp(x, dy, training=True)
        want = rn.backward(cfg, params, state, x, dy, training=True)
        for name in ("dx", "dgamma", "dbeta"):
            np.testing.assert_allclose(
                getattr(got_g, name), getattr(want, name), rtol=1e-4, atol=1e-4
            )


def rn_config(features: int) -> rn.RenormConfig:
    return renorm_config(
        "tf_keras",
        features,
        momentum=0.9,
        renorm_momentum=0.75,
        eps=1e-3,
        clipping={"rmax": 1.5, "rmin": 0.5, "dmax": 0.5},
        feature_axis=2,
    )


#: Run with KERAS_BACKEND=jax: two layers of one configuration share one compiled program,
#: agree with the eager call, layers of two momenta share their inference program, and a class that branches on a value runs eagerly (its configuration marked so).
TRACED = """
import keras, numpy as np
from normspec.adapters.keras.backend import KerasBackendImplementation, keras_jax
from normspec.adapters.protocol import LayerConfig

config = LayerConfig(num_features=2, rank=2, feature_axis=1, dtype="float32", eps=1e-3, momentum=0.9)
x = np.array([[0.0, 1.0], [2.0, 5.0], [1.0, -1.0]])
impl = keras_jax()
impl.capabilities()  # the dtype probes compile their own configurations
before = len(impl.traced._programs)
traced = [impl.build(config) for _ in range(2)]
want = np.asarray(impl.create(config)(keras.ops.convert_to_tensor(x, "float32"), training=True))
for layer in traced:  # the second layer runs the first one's program on its own variables
    np.testing.assert_allclose(layer.train_step(x), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(layer.read_vector("mean"), 0.1 * x.mean(axis=0), rtol=1e-6)
    layer.vjp(x, np.ones_like(x), training=True)
assert len(impl.traced._programs) == before + 2, impl.traced._programs  # forward, gradients

# an inference call reads no rate: a layer of another momentum shares the inference program,
# and trains with its own
from dataclasses import replace
traced[0].infer(x)
before = len(impl.traced._programs)
other = impl.build(replace(config, momentum=0.5))
np.testing.assert_allclose(other.infer(x), x / np.sqrt(1 + 1e-3), rtol=1e-6)
assert len(impl.traced._programs) == before, impl.traced._programs
other.train_step(x)
assert len(impl.traced._programs) == before + 1, impl.traced._programs
np.testing.assert_allclose(other.read_vector("mean"), 0.5 * x.mean(axis=0), rtol=1e-6)
eager = np.asarray(other.layer(keras.ops.convert_to_tensor(x, "float32"), training=False))
np.testing.assert_allclose(other.infer(x), eager, rtol=1e-6, atol=1e-6)

class Branching(keras.layers.BatchNormalization):
    def call(self, inputs, training=None, mask=None):
        if not training and float(keras.ops.max(inputs)) > 1e30:  # eager only
            raise ValueError("too large")
        return super().call(inputs, training=training, mask=mask)

branching = KerasBackendImplementation("jax", layer_class=Branching)
branching.capabilities()
eager = len(branching.traced._eager)
layer = branching.build(config)
layer.train_step(x)
layer.infer(x)
assert len(branching.traced._eager) == eager + 1, branching.traced._eager  # inference
print("ok")
"""


def test_on_jax_a_configuration_is_compiled_once_and_untraceable_layers_run_eagerly() -> None:
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    done = subprocess.run(
        [sys.executable, "-c", TRACED], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]
