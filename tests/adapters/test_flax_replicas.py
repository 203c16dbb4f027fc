"""Flax's synchronized BatchNorm (``axis_name``) on K host devices, under the sync.* clauses.

The JAX adapters run a replicated layer under ``shard_map`` over a 1-d mesh of the first K
CPU devices (tests/conftest.py asks XLA for four), the module's ``axis_name`` being the mesh
axis. ``flax.linen.BatchNorm`` passes the clauses of the unmasked case; with ``mask=`` it
averages the devices' masked means with equal weights (``lax.pmean`` of per-device
``mean(where=mask)``), a real deviation from sync.train.mask shown on the spec's
hand-worked case. A count-weighted linen module written here passes sync.train.mask
through the same adapter, so the failure is Flax's, not the padding's; a module that drops
its ``axis_name`` is caught under sync.train.statistics.

Each drawn shape costs a compilation per operation (0.1 to 0.6 s measured on a loaded
2-core machine): the runs are float64 only (float32 for sync.backward.dx), with few examples.
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flax")

import jax
import jax.numpy as jnp
from flax import linen as nn

from normspec.adapters import LayerConfig, UnsupportedConfig
from normspec.adapters.jax import devices as jax_devices
from normspec.adapters.jax._jax import replica_devices_missing
from normspec.adapters.jax.flax_linen import FlaxLinenImplementation, linen_batchnorm
from normspec.adapters.jax.flax_nnx import nnx_batchnorm
from normspec.adapters.registry import load_target
from normspec.conformance.runner import CheckOptions, check_implementation
from normspec.reference import RunningStatistics

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
if str(FIXTURES) not in sys.path:
    sys.path.insert(0, str(FIXTURES))

#: The clauses of the unmasked case with replicas of one batch size, but sync.backward.dx
#: (float64 dx underflows under XLA's flush to zero, as on one device: see
#: test_float64_dx_loses_a_flushed_term_on_one_device_as_on_several).
UNMASKED = (
    "sync.train.statistics,sync.train.output,sync.running.mean,sync.running.var,"
    "sync.backward.dparams"
)


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    """nnx warns (FutureWarning) when it casts float64 statistics to float32."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def _outcomes(
    implementation: Any, clauses: str, examples: int = 4, dtype: str = "float64"
) -> dict[str, str]:
    options = CheckOptions(
        profile="flax", clauses=clauses, dtypes=[dtype], max_examples=examples, seed=0
    )
    report = check_implementation(implementation, options)
    return {r.clause_id: f"{r.outcome}: {r.message}"[:400] for r in report.results}


def _config(features: int = 1, eps: float = 5.0) -> LayerConfig:
    return LayerConfig(
        num_features=features, rank=2, feature_axis=1, dtype="float64", eps=eps, momentum=0.0
    )


# -- modules under test -----------------------------------------------------------------


def _batchnorm_fields(module: nn.BatchNorm) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(nn.BatchNorm)} - {"parent", "name"}
    return {name: getattr(module, name) for name in names}


class IgnoresAxisName(nn.BatchNorm):
    """Known bad: flax.linen.BatchNorm that drops its ``axis_name`` (each device alone)."""

    @nn.compact
    def __call__(
        self, x: jax.Array, use_running_average: bool | None = None, *, mask: Any = None
    ) -> jax.Array:
        fields = {**_batchnorm_fields(self), "axis_name": None}
        inner = nn.BatchNorm(**fields, name="local")
        y: jax.Array = inner(x, use_running_average, mask=mask)
        return y


class CountWeightedBatchNorm(nn.BatchNorm):
    """flax.linen.BatchNorm's fields, with the statistics of the concatenated batch:
    all-reduced counts, sums and centred sums (a corrected two pass), each device weighted
    by its own count under ``mask=`` (sync.train.mask). Features last or first, one axis."""

    @nn.compact
    def __call__(
        self, x: jax.Array, use_running_average: bool | None = None, *, mask: Any = None
    ) -> jax.Array:
        use_running = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        axis = self.axis % x.ndim
        reduce = tuple(i for i in range(x.ndim) if i != axis)
        features = (x.shape[axis],)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, features, jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, features, jnp.float32)
        values = x.astype(jnp.promote_types(x.dtype, jnp.float32))

        def expand(vector: jax.Array) -> jax.Array:
            return jnp.expand_dims(vector, reduce)

        if use_running:
            mean, var = ra_mean.value, ra_var.value
        else:
            counted = jnp.broadcast_to(True if mask is None else mask, x.shape)
            synchronized = self.axis_name is not None and not self.is_initializing()

            def total(v: jax.Array) -> jax.Array:
                found = jnp.where(counted, v, 0.0).sum(reduce)
                return jax.lax.psum(found, self.axis_name) if synchronized else found

            n = total(jnp.ones_like(values))
            first = total(values) / n
            centred = values - expand(first)
            c1 = total(centred)
            mean = first + c1 / n
            var = (total(centred * centred) - c1 * c1 / n) / n
            if not self.is_initializing():
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        y = (values - expand(mean)) * jax.lax.rsqrt(expand(var) + self.epsilon)
        if self.use_scale:
            scale = self.param("scale", self.scale_init, features, self.param_dtype)
            y = y * expand(scale)
        if self.use_bias:
            y = y + expand(self.param("bias", self.bias_init, features, self.param_dtype))
        return y.astype(self.dtype or x.dtype)


# -- capabilities and devices -------------------------------------------------------------


def test_four_host_devices_are_there() -> None:
    assert len(jax.devices()) >= jax_devices.DEVICES
    assert replica_devices_missing() is None


@pytest.mark.parametrize("make", [linen_batchnorm, nnx_batchnorm], ids=["linen", "nnx"])
def test_flax_batchnorm_declares_synchronized_steps(make: Any) -> None:
    caps = make().capabilities()
    assert caps.replicas and caps.replica_masks
    assert caps.replica_param_gradients == "partial"
    assert not caps.replica_uneven_batches
    assert "mask=" in caps.notes["replica_uneven_batches"]


def test_a_module_without_axis_name_is_not_replicated() -> None:
    caps = load_target("thirdparty_flax_bn:ThirdPartyLinenBatchNorm", "flax").capabilities()
    assert not caps.replicas
    assert "takes no axis_name" in caps.notes["replicas"]


def test_too_few_devices_say_how_to_get_them(monkeypatch: pytest.MonkeyPatch) -> None:
    one = jax.devices()[:1]
    monkeypatch.setattr(jax, "devices", lambda *_: one)
    caps = FlaxLinenImplementation(nn.BatchNorm).capabilities()
    assert not caps.replicas and not caps.replica_masks
    assert "XLA_FLAGS=--xla_force_host_platform_device_count=4" in caps.notes["replicas"]


def test_uneven_batches_need_masks() -> None:
    layer = linen_batchnorm().build_replicated(_config(), 2)
    with pytest.raises(UnsupportedConfig, match="mask="):
        layer.train_step([np.zeros((2, 1)), np.zeros((3, 1))])


# -- the hand-worked case (replicas.md, sync.train.output) --------------------------------

#: Replica 1 holds (0, 2) and a masked-out 100, replica 2 holds (3, 4, 6): one block shape
#: (no padding by the adapter). With eps = 5: N = 5, mu_G = 3, var_G = 4.
HAND_XS = [np.array([[0.0], [2.0], [100.0]]), np.array([[3.0], [4.0], [6.0]])]
HAND_MASKS = [np.array([[True], [True], [False]]), np.ones((3, 1), bool)]
HAND_YS = [np.array([[-1.0], [-1 / 3]]), np.array([[0.0], [1 / 3], [1.0]])]


def _hand_worked(implementation: Any) -> tuple[list[np.ndarray], RunningStatistics]:
    layer = implementation.build_replicated(_config(), 2)
    layer.set_state(RunningStatistics.initial(1))
    ys = layer.train_step(HAND_XS, HAND_MASKS)
    state = layer.states()[0]
    assert isinstance(state, RunningStatistics)
    return [ys[0][:2], ys[1]], state


def test_a_count_weighted_module_gets_the_hand_worked_case() -> None:
    ys, state = _hand_worked(FlaxLinenImplementation(CountWeightedBatchNorm))
    for y, want in zip(ys, HAND_YS, strict=True):
        np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose([state.mean[0], state.var[0]], [3.0, 4.0], rtol=1e-12)


@pytest.mark.parametrize("make", [linen_batchnorm, nnx_batchnorm], ids=["linen", "nnx"])
def test_flax_weights_masked_devices_equally(make: Any) -> None:
    """The real deviation (sync.train.mask): each device's masked mean is averaged with
    equal weights (``lax.pmean``), 8/3 = (1 + 13/3) / 2 instead of mu_G = 3, and the
    variance (fast: the devices' masked E[x^2] averaged the same way, less the square of
    that mean) is 67/6 - 64/9 = 73/18 instead of 4."""
    ys, state = _hand_worked(make())
    np.testing.assert_allclose(state.mean, [8 / 3], rtol=1e-6)
    np.testing.assert_allclose(state.var, [73 / 18], rtol=1e-6)
    assert not np.allclose(ys[0], HAND_YS[0], atol=1e-3)


# -- the clauses ----------------------------------------------------------------------------


def test_flax_linen_passes_the_unmasked_sync_clauses() -> None:
    found = _outcomes(linen_batchnorm(), UNMASKED)
    found |= _outcomes(linen_batchnorm(), "sync.backward.dx", dtype="float32")
    assert all(outcome.startswith("pass") for outcome in found.values()), found


def test_float64_dx_loses_a_flushed_term_on_one_device_as_on_several() -> None:
    """sync.backward.dx's float64 failure is not the synchronization's: with gamma near
    1e-288 and var_B near 2.5e21 the variance path of the backward passes through about
    1e-310, which XLA on the CPU flushes to zero, so dx_0 keeps only the mean path,
    -gamma * s / 2, where the exact value is about 0 (bn.accuracy's underflow allowance
    is tiny). One device, one replica and two replicas give the same numbers."""
    config = dataclasses.replace(_config(features=1, eps=1e-5), momentum=0.9)
    x, dy = np.array([[0.0], [1e11]]), np.array([[0.0], [1.0]])
    gamma, beta = np.array([1.4031218077133228e-288]), np.zeros(1)
    implementation = linen_batchnorm()
    single = implementation.build(config)
    single.set_parameters(gamma, beta)
    alone = single.vjp(x, dy, training=True).dx
    half = gamma[0] / np.sqrt(2.5e21 + 1e-5) / 2
    np.testing.assert_allclose(alone.ravel(), [-half, half], rtol=1e-6)
    for replicas, xs, dys in ((1, [x], [dy]), (2, [x[:1], x[1:]], [dy[:1], dy[1:]])):
        layer = implementation.build_replicated(config, replicas)
        layer.set_parameters(gamma, beta)
        dx = np.concatenate([g.dx for g in layer.vjp(xs, dys)])
        np.testing.assert_array_equal(dx, alone)


def test_flax_linen_fails_the_masked_clause() -> None:
    found = _outcomes(linen_batchnorm(), "sync.train.output,sync.train.mask", examples=3)
    assert found["sync.train.mask"].startswith("fail"), found


def test_a_count_weighted_module_passes_the_masked_clause() -> None:
    implementation = FlaxLinenImplementation(CountWeightedBatchNorm)
    found = _outcomes(implementation, "sync.train.output,sync.train.mask")
    assert all(outcome.startswith("pass") for outcome in found.values()), found


def test_a_module_that_ignores_axis_name_is_caught() -> None:
    implementation = FlaxLinenImplementation(IgnoresAxisName)
    assert implementation.capabilities().replicas
    found = _outcomes(implementation, "sync.train.statistics")
    assert found["sync.train.statistics"].startswith("fail"), found


# -- the programs a step runs ---------------------------------------------------------------


def _replicated_results(
    make: Any, dtype: str, steps_by_vjp: bool, masked: bool
) -> tuple[list[np.ndarray], tuple[int, int]]:
    """Two replicated training steps' outputs and statistics, the step run through the vjp's
    program or through the training step's own; and how many programs each of the two
    jitted functions compiled meanwhile."""
    config = LayerConfig(
        num_features=3, rank=3, feature_axis=2, dtype=dtype, eps=1e-3, momentum=0.9
    )
    layer = make().build_replicated(config, 2)
    layer.sharded.steps_by_vjp = steps_by_vjp
    jitted = (layer.sharded.train.func, layer.sharded.vjp.func)
    before = [function._cache_size() for function in jitted]
    rng = np.random.default_rng(7)
    found = []
    for _ in range(2):
        xs = [rng.normal(3.0, 2.0, (4, 5, 3)) for _ in range(2)]
        masks = [rng.random((4, 5, 1)) < 0.7 for _ in range(2)] if masked else None
        found += layer.train_step(xs, masks)
        for state in layer.states():
            assert isinstance(state, RunningStatistics)
            found += [state.mean, state.var]
    train, vjp = (function._cache_size() - b for function, b in zip(jitted, before, strict=True))
    return found, (train, vjp)


@pytest.mark.parametrize(
    ("dtype", "masked"), [("float64", False), ("float32", True), ("float16", True)]
)
@pytest.mark.parametrize("make", [linen_batchnorm, nnx_batchnorm], ids=["linen", "nnx"])
def test_a_replicated_step_by_the_vjp_computes_bitwise_what_its_own_program_does(
    make: Any, dtype: str, masked: bool
) -> None:
    """Flax's own BatchNorm runs its replicated training steps as the replicated vjp's
    program with a zero cotangent (one compilation per block shape serves sync.train.* and
    sync.backward.*): outputs and every device's statistics bitwise those of the training
    step's own program."""
    assert make().build_replicated(_config(), 2).sharded.steps_by_vjp
    # a block shape no other test runs: each way compiles its own programs (in float64 two:
    # the second step meets the float64 statistics that linen's float32 ones became)
    by_vjp, (train, vjp) = _replicated_results(make, dtype, True, masked)
    assert train == 0 and vjp > 0
    own, (train, vjp) = _replicated_results(make, dtype, False, masked)
    assert train > 0 and vjp == 0
    for got, want in zip(by_vjp, own, strict=True):
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), (got, want)
