"""Built Keras layers reused (keras_layer.LayerPool): a released layer of the library's own
BatchNormalization comes back as if freshly built; a user's class, or another construction,
never gets it."""

from __future__ import annotations

import gc
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tf_keras")

import adapter_cases  # noqa: F401  (puts tests/fixtures on sys.path)

from normspec.adapters import LayerConfig
from normspec.adapters.keras import _keras
from normspec.adapters.keras import keras_layer as kl
from normspec.adapters.registry import load_target
from normspec.adapters.tensorflow._tf import as_tf_variable, tf
from normspec.reference.dialects import renorm_config
from normspec.reference.schedules import ConstantSchedule, RenormBounds

KERAS3 = pytest.mark.skipif(kl.keras3() is None, reason="Keras 3 does not run on TensorFlow here")
THIRDPARTY = "thirdparty_keras_bn:ThirdPartyTfKerasBatchNormalization"

PLAIN = LayerConfig(num_features=3, rank=4, feature_axis=1, dtype="float32", eps=1e-3, momentum=0.9)
RENORM = replace(PLAIN, rank=2, renorm=renorm_config("tf_keras", 3, eps=1e-3))
TARGETS = [
    ("tf_keras", PLAIN),
    ("tf_keras.renorm", RENORM),
    pytest.param("keras", PLAIN, marks=KERAS3),
    pytest.param("keras.renorm", RENORM, marks=KERAS3),
]


def _values(layer: Any) -> list[np.ndarray]:
    return [tf.convert_to_tensor(as_tf_variable(v)).numpy() for v in layer.variables]


def _released(impl: kl.KerasImplementation, config: LayerConfig) -> Any:
    """The Keras layer of a wrapper trained, with every variable changed, then released."""
    wrapper = impl.build(config)
    assert isinstance(wrapper, kl.KerasLayer)
    layer = wrapper.layer
    x = np.linspace(-2.0, 3.0, 4 * 3 * 2 ** (config.rank - 2)).reshape(_shape(config))
    wrapper.train_step(x)
    for i, variable in enumerate(layer.variables):
        tensor = as_tf_variable(variable)
        tensor.assign(tf.fill(tensor.shape, tf.cast(7.0 + i, tensor.dtype)))
    del wrapper
    gc.collect()
    return layer


def _shape(config: LayerConfig) -> tuple[int, ...]:
    shape = [4] + [2] * (config.rank - 1)
    shape[config.feature_axis] = config.num_features
    return tuple(shape)


def _calls(layer: kl.KerasLayer, config: LayerConfig) -> list[np.ndarray]:
    """What a layer computes: training and inference outputs, gradients, the statistics."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=_shape(config))
    dy = rng.normal(size=x.shape)
    grads = layer.vjp(x, dy, training=True)
    results = [grads.dx, grads.dgamma, grads.dbeta, layer.train_step(x), layer.infer(x)]
    return [*results, *_values(layer.layer)]


@pytest.mark.parametrize(("target", "config"), TARGETS)
def test_a_released_layer_comes_back_as_freshly_built(target: str, config: LayerConfig) -> None:
    impl = load_target(target, "tf_keras")
    assert isinstance(impl, kl.KerasImplementation) and impl.pool is not None
    released = _released(impl, config)
    reused = impl.build(config)
    assert isinstance(reused, kl.KerasLayer) and reused.layer is released
    arguments = _keras.layer_arguments(config, impl.parameters, impl.dialect, impl.arguments)
    fresh = kl.KerasLayer(_keras.built(impl.layer_class, config, arguments), config)
    for got, want in zip(_values(reused.layer), _values(fresh.layer), strict=True):
        np.testing.assert_array_equal(got, want, strict=True)
    for got, want in zip(_calls(reused, config), _calls(fresh, config), strict=True):
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes()


@pytest.mark.parametrize(("target", "config"), TARGETS)
def test_a_released_layer_serves_another_eps_and_momentum(target: str, config: LayerConfig) -> None:
    """eps and momentum are attributes the layer reads at every call: a layer built with
    others computes, once they are set, what a layer built with them computes."""
    impl = load_target(target, "tf_keras")
    assert isinstance(impl, kl.KerasImplementation)
    released = _released(impl, config)
    other = replace(config, eps=2.5e-2, momentum=0.5)
    reused = impl.build(other)
    assert isinstance(reused, kl.KerasLayer) and reused.layer is released
    arguments = _keras.layer_arguments(other, impl.parameters, impl.dialect, impl.arguments)
    fresh = kl.KerasLayer(_keras.built(impl.layer_class, other, arguments), other)
    assert (reused.layer.epsilon, reused.layer.momentum) == (2.5e-2, 0.5)
    for got, want in zip(_calls(reused, other), _calls(fresh, other), strict=True):
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes()


#: Another correction rate and other clipping bounds than RENORM's.
OTHER_RENORM = replace(
    RENORM,
    renorm=replace(
        RENORM.renorm,  # type: ignore[arg-type]
        correction_rate=0.5,
        schedule=ConstantSchedule(RenormBounds(r_min=0.8, r_max=1.25, d_max=0.5)),
    ),
)


def _clipping(layer: Any) -> dict[str, float]:
    return dict(layer.renorm_clipping)


def test_a_released_tf_keras_renorm_layer_serves_another_clipping_and_rate() -> None:
    """tf_keras reads ``renorm_clipping`` and ``renorm_momentum`` at every call: a layer
    built with others computes, once they are set, what a layer built with them computes
    (the clipping active: the inputs' spread is far from the moving one)."""
    impl = load_target("tf_keras.renorm", "tf_keras")
    assert isinstance(impl, kl.KerasImplementation)
    released = _released(impl, RENORM)
    reused = impl.build(OTHER_RENORM)
    assert isinstance(reused, kl.KerasLayer) and reused.layer is released
    arguments = _keras.layer_arguments(OTHER_RENORM, impl.parameters, impl.dialect, impl.arguments)
    fresh = kl.KerasLayer(_keras.built(impl.layer_class, OTHER_RENORM, arguments), OTHER_RENORM)
    assert (
        _clipping(reused.layer)
        == _clipping(fresh.layer)
        == {"rmin": 0.8, "rmax": 1.25, "dmax": 0.5}
    )
    assert reused.layer.renorm_momentum == fresh.layer.renorm_momentum
    for got, want in zip(_calls(reused, OTHER_RENORM), _calls(fresh, OTHER_RENORM), strict=True):
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
    # the check can fail: the same layer with RENORM's clipping and rate computes otherwise
    renorm_args = _keras.layer_arguments(RENORM, impl.parameters, impl.dialect, impl.arguments)
    _keras.set_call_time_arguments(reused.layer, _keras.call_time_arguments(renorm_args, impl.kind))
    kept = _calls(reused, OTHER_RENORM)
    fresh = kl.KerasLayer(_keras.built(impl.layer_class, OTHER_RENORM, arguments), OTHER_RENORM)
    want = _calls(fresh, OTHER_RENORM)
    assert any(g.tobytes() != w.tobytes() for g, w in zip(kept, want, strict=True))


@KERAS3
def test_keras3_renorm_layers_of_another_clipping_are_constructions_of_their_own() -> None:
    """Keras 3's constructor checks the clipping's values (``rmax > rmin``, ``dmax >= 0``):
    a released layer never serves another clipping, which would pass by that check."""
    impl = load_target("keras.renorm", "tf_keras")
    assert isinstance(impl, kl.KerasImplementation)
    released = _released(impl, RENORM)
    other = impl.build(OTHER_RENORM)
    assert isinstance(other, kl.KerasLayer) and other.layer is not released


def test_a_released_layer_left_with_its_own_eps_and_momentum_differs() -> None:
    """The check above can fail: the released layer restored but with its own eps and
    momentum left in place computes otherwise than a fresh layer with the new ones."""
    impl = load_target("tf_keras", "tf_keras")
    assert isinstance(impl, kl.KerasImplementation) and impl.pool is not None
    released = _released(impl, PLAIN)
    other = replace(PLAIN, eps=2.5e-2, momentum=0.5)
    built = impl.pool.take(_key(impl, other))
    assert built is not None and built.layer is released
    arguments = _keras.layer_arguments(other, impl.parameters, impl.dialect, impl.arguments)
    fresh = kl.KerasLayer(_keras.built(impl.layer_class, other, arguments), other)
    got, want = _calls(kl.KerasLayer(released, other), other), _calls(fresh, other)
    assert any(g.tobytes() != w.tobytes() for g, w in zip(got, want, strict=True))


@pytest.mark.parametrize(
    "change",
    [
        {"num_features": 2},
        {"feature_axis": 3},
        {"rank": 5},
        {"dtype": "float64"},
        {"dtype": "float16"},
        {"affine": False},
    ],
)
def test_another_construction_never_gets_a_released_layer(change: dict[str, Any]) -> None:
    impl = load_target("tf_keras", "tf_keras")
    assert isinstance(impl, kl.KerasImplementation)
    released = _released(impl, PLAIN)
    other = impl.build(replace(PLAIN, **change))
    assert isinstance(other, kl.KerasLayer) and other.layer is not released
    assert impl.build(PLAIN).layer is released  # type: ignore[attr-defined]


def test_ghost_and_fused_layers_are_constructions_of_their_own() -> None:
    impl = load_target("tf_keras", "tf_keras")
    assert isinstance(impl, kl.KerasImplementation)
    released = _released(impl, PLAIN)
    ghost = impl.build(replace(PLAIN, virtual_batch_size=2))
    assert ghost.layer is not released  # type: ignore[attr-defined]
    fused = load_target("tf_keras.fused", "tf_keras_fused")
    assert fused.build(PLAIN).layer is not released  # type: ignore[attr-defined]


class _Subclass(kl.tf_keras_module().layers.BatchNormalization):  # type: ignore[misc]
    """A user's subclass: it may keep state outside its variables."""


@pytest.mark.parametrize(
    "make",
    [
        lambda: kl.KerasImplementation(_Subclass, "tf_keras", arguments={"fused": False}),
        lambda: load_target(THIRDPARTY, "keras"),
    ],
    ids=["subclass", "thirdparty"],
)
def test_a_users_class_gets_a_fresh_layer_every_time(make: Any) -> None:
    impl = make()
    assert isinstance(impl, kl.KerasImplementation) and impl.pool is None
    config = replace(PLAIN, momentum=0.9 if impl.layer_class is _Subclass else 0.1)
    first = impl.build(config)
    layer = first.layer  # type: ignore[attr-defined]
    del first
    gc.collect()
    assert impl.build(config).layer is not layer  # type: ignore[attr-defined]


def test_the_pool_is_bounded() -> None:
    impl = load_target("tf_keras", "tf_keras")
    assert isinstance(impl, kl.KerasImplementation)
    pool = kl.LayerPool(per_key=2, keys=3)
    impl.pool = pool
    configs = [replace(PLAIN, num_features=n) for n in range(1, 6)]
    for config in configs:
        held = [impl.build(config) for _ in range(4)]
        del held
        gc.collect()
    assert pool.take(_key(impl, configs[0])) is None  # the oldest constructions dropped
    for config in configs[-3:]:
        key = _key(impl, config)
        assert [pool.take(key) is not None for _ in range(3)] == [True, True, False]


def _key(impl: kl.KerasImplementation, config: LayerConfig) -> _keras.Construction:
    arguments = _keras.layer_arguments(config, impl.parameters, impl.dialect, impl.arguments)
    settable = _keras.call_time_arguments(arguments, impl.kind)
    return _keras.construction(impl.layer_class, config, arguments, skipped=settable)
