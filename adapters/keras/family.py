"""Keras 3's ``LayerNormalization``, ``RMSNormalization`` and ``GroupNormalization`` on every
backend, and tf_keras' ``LayerNormalization`` and ``GroupNormalization``, with no glue (spec:
layernorm.md, groupnorm.md).

One adapter (:mod:`normspec.adapters._family`): a table row per class and one computation,
which builds the layer for the configuration (``axis`` the trailing axes, or for
``GroupNormalization`` the case's channel axis 1 and ``groups``; ``epsilon``,
``center``/``scale`` where the class takes them; half inputs under the mixed dtype policy,
float32 variables), writes the parameters with ``Variable.assign``, calls it, and takes its
gradients with the backend's own means: ``tf.GradientTape`` (TensorFlow, tf_keras),
``jax.vjp`` of ``stateless_call``, ``torch.autograd.grad``; the NumPy backend has none.

Keras 3's backend is fixed per process: ``keras.layernorm.BACKEND`` and
``keras.rmsnorm.BACKEND`` run in a worker started with ``KERAS_BACKEND`` (their declaration
in :mod:`normspec.adapters.keras`), and their factories use the backend Keras runs on. A
user's Keras layer class is recognised by its constructor (``axis`` and ``epsilon``, no
``momentum``): GroupNorm when it takes ``groups``, else RMSNorm when its name says so or it
takes no ``center``. Keras has no InstanceNorm layer (``GroupNormalization`` with one group
per channel is one, checked as GroupNorm).

A float64 layer that the backend computes in float32 (JAX without x64) leaves float64 out
of the dtypes, with the reason, as :mod:`normspec.adapters.keras.backend` does for BN.
"""

from __future__ import annotations

import importlib
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from normspec.adapters._family import (
    Computation,
    FamilyClass,
    FamilyImplementation,
    as_float64,
    axes_of,
    constructor_names,
    kind_of,
    parameter_shape,
    without_keyword,
)
from normspec.adapters.keras._keras import dtype_policy, keras_on
from normspec.adapters.protocol import (
    ALL_DTYPES,
    Array,
    DTypeName,
    FamilyConfig,
    LayerConfig,
    UnsupportedConfig,
    WrongOutput,
)

#: The gradients of one call: (layer, x, dy, variables) -> (dx, one per variable).
Gradient = Callable[[Any, Any, Any, Sequence[Any]], tuple[Any, list[Any]]]


def _tensorflow(layer: Any, x: Any, dy: Any, variables: Sequence[Any]) -> tuple[Any, list[Any]]:
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
    dx, *found = tape.gradient(y, [x, *variables], output_gradients=dy)
    return dx, found


#: Each Keras layer's jitted forward and vjp on JAX (``stateless_call``), made once per layer.
_JITTED: weakref.WeakKeyDictionary[Any, tuple[Callable[..., Any], Callable[..., Any]]] = (
    weakref.WeakKeyDictionary()
)


def _jax_programs(layer: Any) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``call(values, x)`` and ``vjp(values, x, dy) -> (dx, dvalues)`` jitted, as a Keras
    training step on JAX is: one compilation per input shape instead of one per operation."""
    found = _JITTED.get(layer)
    if found is None:
        import jax

        fixed = [v.value for v in layer.non_trainable_variables]

        def call(values: list[Any], inputs: Any) -> Any:
            return layer.stateless_call(values, fixed, inputs)[0]

        def vjp(values: list[Any], inputs: Any, cotangent: Any) -> tuple[Any, Any]:
            _, pullback = jax.vjp(call, values, inputs)
            dvalues, dx = pullback(cotangent)
            return dx, dvalues

        found = (jax.jit(call), jax.jit(vjp))
        _JITTED[layer] = found
    return found


def _jax_forward(layer: Any, x: Any) -> Any:
    return _jax_programs(layer)[0]([v.value for v in layer.trainable_variables], x)


def _jax(layer: Any, x: Any, dy: Any, variables: Sequence[Any]) -> tuple[Any, list[Any]]:
    trainable = list(layer.trainable_variables)
    dx, dvalues = _jax_programs(layer)[1]([v.value for v in trainable], x, dy)
    by_id = {id(v): d for v, d in zip(trainable, dvalues, strict=True)}
    return dx, [by_id[id(v)] for v in variables]


def _torch(layer: Any, x: Any, dy: Any, variables: Sequence[Any]) -> tuple[Any, list[Any]]:
    import torch

    inputs = x.detach().requires_grad_(True)
    tensors = [v.value for v in variables]
    y = layer(inputs)
    grads = torch.autograd.grad(y, [inputs, *tensors], grad_outputs=dy, allow_unused=True)
    wrt = [inputs, *tensors]
    filled = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, wrt, strict=True)]
    return filled[0], filled[1:]


#: Each backend's forward where it is not ``layer(x)``.
FORWARDS: dict[str, Callable[[Any, Any], Any]] = {"jax": _jax_forward}
#: Each backend's gradients; ``None``: the backend has none (NumPy).
GRADIENTS: dict[str, Gradient | None] = {
    "tensorflow": _tensorflow,
    "jax": _jax,
    "torch": _torch,
    "numpy": None,
}


@dataclass(frozen=True)
class Flavour:
    """Keras 3 (``keras``, on the backend it runs on) or tf_keras (TensorFlow)."""

    package: str
    backend: str

    def module(self) -> Any:
        return keras_on(self.backend) if self.package == "keras" else _tf_keras()

    def to_tensor(self, array: Array, dtype: str) -> Any:
        typed = np.asarray(array, dtype=np.float64).astype(_numpy_type(dtype), order="K")
        if self.package == "keras":
            return self.module().ops.convert_to_tensor(typed, dtype=dtype)
        import tensorflow as tf

        return tf.convert_to_tensor(typed)

    def dtype_of(self, value: Any) -> str:
        """The name of a tensor's or a variable's dtype."""
        if self.package == "keras":
            return str(self.module().backend.standardize_dtype(value.dtype))
        return str(value.dtype.name)

    def plain(self, value: Any) -> Array:
        """A tensor's values as float64 (bfloat16 by way of float32, exactly)."""
        if self.package == "tf_keras":
            from normspec.adapters.tensorflow._tf import widened

            return widened(value.numpy())
        ops = self.module().ops
        if self.dtype_of(value) == "bfloat16":
            value = ops.cast(value, "float32")
        return np.asarray(ops.convert_to_numpy(value), dtype=np.float64)

    def to_numpy(self, value: Any, *, shape: tuple[int, ...], dtype: str, what: str) -> Array:
        """A result as float64 after checking its dtype and shape (conv.io.shape_dtype)."""
        found = self.dtype_of(value)
        if found != dtype:
            raise WrongOutput(f"{what} has dtype {found}, expected {dtype}")
        if tuple(value.shape) != tuple(shape):
            raise WrongOutput(f"{what} has shape {tuple(value.shape)}, expected {shape}")
        return self.plain(value)


def _tf_keras() -> Any:
    import normspec.adapters.tensorflow._tf  # noqa: F401 - TensorFlow's quiet start-up

    return importlib.import_module("tf_keras")


def _numpy_type(dtype: str) -> Any:
    if dtype == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(dtype)


class KerasFamilyComputation(Computation):
    """A configured Keras layer, built once; the parameters assigned before each call."""

    def __init__(
        self, flavour: Flavour, entry: FamilyClass, layer: Any, config: LayerConfig
    ) -> None:
        self.flavour, self.entry, self.layer, self.config = flavour, entry, layer, config
        self.shape = parameter_shape(config)

    def _variables(self, weight: Array | None, bias: Array | None) -> list[Any]:
        """The layer's weight and bias variables (those it holds), with the values given."""
        held = []
        for name, values in ((self.entry.weight, weight), (self.entry.bias, bias)):
            variable = getattr(self.layer, name, None) if name and values is not None else None
            if variable is None:
                continue
            dtype = self.flavour.dtype_of(variable)
            shaped = np.reshape(np.asarray(values), variable.shape)
            variable.assign(self.flavour.to_tensor(shaped, dtype))
            held.append(variable)
        return held

    def forward(self, x: Array, weight: Array | None, bias: Array | None) -> Array:
        self._variables(weight, bias)
        call = FORWARDS.get(self.flavour.backend, lambda layer, inputs: layer(inputs))
        y = call(self.layer, self.flavour.to_tensor(x, self.config.dtype))
        return self.flavour.to_numpy(y, shape=x.shape, dtype=self.config.dtype, what="the output")

    def gradients(
        self, x: Array, dy: Array, weight: Array | None, bias: Array | None
    ) -> tuple[Array, Array | None, Array | None]:
        gradient = GRADIENTS[self.flavour.backend]
        if gradient is None:  # pragma: no cover - refused by the capabilities
            raise UnsupportedConfig("the backend computes no gradients")
        variables = self._variables(weight, bias)
        name = self.config.dtype
        to = self.flavour.to_tensor
        dx, found = gradient(self.layer, to(x, name), to(dy, name), variables)
        grads: list[Array | None] = [as_float64(self.flavour.plain(g), self.shape) for g in found]
        grads += [None] * (2 - len(grads))
        return (
            self.flavour.to_numpy(dx, shape=x.shape, dtype=name, what="dx"),
            grads[0],
            grads[1],
        )


class KerasFamily(FamilyImplementation):
    """A LayerNorm/RMSNorm Keras layer class under test, on the backend Keras runs on."""

    def __init__(
        self,
        flavour: Flavour,
        entry: FamilyClass,
        cls: type | None = None,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        self.flavour = flavour
        self.library = f"{flavour.package} on {flavour.backend}"
        self.backward = GRADIENTS[flavour.backend] is not None
        self.compiles_per_shape = flavour.backend == "jax"
        self._layers: dict[tuple[LayerConfig, bool], KerasFamilyComputation] = {}
        self._narrowed: str | None = None
        super().__init__(entry, cls, arguments)
        self._narrowed = self._float64_narrowed()

    def describe(self) -> str:
        version = getattr(self.flavour.module(), "__version__", "?")
        return f"{self.flavour.package} {version}, {self.flavour.backend} backend"

    def versions(self) -> Mapping[str, str]:
        version = getattr(self.flavour.module(), "__version__", "?")
        return {self.flavour.package: version, "backend": self.flavour.backend}

    def _float64_narrowed(self) -> str | None:
        """Why float64 is left out: the backend computes a float64 layer in float32 (its
        output at ``x = [0, 1]``, ``epsilon = 1e-3``, weight 1, is not the float64 value),
        as :meth:`normspec.adapters.keras.backend.KerasBackendImplementation.float64_narrowed`
        finds for BN; ``None`` where it computes in float64."""
        kind = self.entry.kind
        family = FamilyConfig(kind, () if kind == "groupnorm" else (2,), bias=False)
        config = LayerConfig(2, 2, 1, "float64", 1e-3, None, affine=False, family=family)
        x = np.array([[0.0, 1.0]])
        try:
            got = float(self.computation(config, family).forward(x, np.ones(2), None)[0, 1])
        except WrongOutput as error:
            return f"{self.library} computes a float64 layer in another dtype: {error}"
        centred = kind != "rmsnorm"  # GroupNorm of one group over [0, 1]: LayerNorm's
        want = 0.5 / np.sqrt(0.25 + 1e-3) if centred else 1.0 / np.sqrt(0.5 + 1e-3)
        if abs(got - want) <= 1e-12:
            return None
        return (
            f"{self.library} computes a float64 layer in float32: its output at x = [0, 1], "
            f"epsilon = 1e-3 is {got!r}, float64 gives {want!r}"
        )

    def dtypes(self) -> frozenset[DTypeName]:
        if self._narrowed:
            return frozenset(d for d in ALL_DTYPES if d != "float64")
        return frozenset(ALL_DTYPES)

    def notes(self) -> dict[str, str]:
        notes = super().notes()
        if self._narrowed:
            notes["float64"] = self._narrowed
        return notes

    def computation(
        self, config: LayerConfig, family: FamilyConfig, *, default_eps: bool = False
    ) -> KerasFamilyComputation:
        found = self._layers.get((config, default_eps))
        if found is None:
            names = constructor_names(self.cls)
            given: dict[str, Any] = {"axis": list(axes_of(family)), "epsilon": config.eps}
            shape = (*(2,) * (config.rank - len(family.normalized_shape)), *family.normalized_shape)
            if family.kind == "groupnorm":  # the case's (N, C, *spatial): channels at axis 1
                given.update(axis=1, groups=family.num_groups)
                shape = (2, config.num_features, *(2,) * (config.rank - 2))
            if "scale" in names:
                given["scale"] = config.affine
            if "center" in names:
                given["center"] = family.bias
            given["dtype"] = dtype_policy(config.dtype, "float32")
            cls = without_keyword(self.cls, self.eps_argument) if default_eps else self.cls
            layer = cls(**given, **self.arguments)
            layer.build(shape)  # tf_keras: axes of this rank
            found = KerasFamilyComputation(self.flavour, self.entry, layer, config)
            self._layers[(config, default_eps)] = found
        return found


#: The table: Keras 3's classes and tf_keras' (their variables' names).
KERAS_CLASSES = {
    "LayerNormalization": ("layernorm", "gamma", "beta", True),
    "RMSNormalization": ("rmsnorm", "scale", None, False),
    "GroupNormalization": ("groupnorm", "gamma", "beta", True),
}


def _row(package: str, name: str) -> FamilyClass:
    kind, weight, bias, optional = KERAS_CLASSES[name]
    path = f"{package}.layers:{name}"
    return FamilyClass(kind, path, weight, bias, optional_affine=optional)  # type: ignore[arg-type]


def _running(package: str) -> Flavour:
    if package == "tf_keras":
        return Flavour("tf_keras", "tensorflow")
    import keras

    return Flavour("keras", keras.backend.backend())


def layer_normalization(profile: str = "keras") -> KerasFamily:
    """``keras.layernorm.BACKEND``: ``keras.layers.LayerNormalization`` on Keras' backend."""
    return KerasFamily(_running("keras"), _row("keras", "LayerNormalization"))


def rms_normalization(profile: str = "keras") -> KerasFamily:
    """``keras.rmsnorm.BACKEND``: ``keras.layers.RMSNormalization`` on Keras' backend."""
    return KerasFamily(_running("keras"), _row("keras", "RMSNormalization"))


def group_normalization(profile: str = "keras") -> KerasFamily:
    """``keras.groupnorm.BACKEND``: ``keras.layers.GroupNormalization`` on Keras' backend."""
    return KerasFamily(_running("keras"), _row("keras", "GroupNormalization"))


def recognise(
    obj: object, profile: str, arguments: Mapping[str, Any] | None = None
) -> KerasFamily | None:
    """The recogniser this package declares: a Keras 3 or tf_keras layer class whose
    constructor takes ``axis`` and ``epsilon`` but no ``momentum``."""
    if not isinstance(obj, type):
        return None
    package = (getattr(obj, "__module__", "") or "").split(".")[0]
    package = "tf_keras" if package == "tf_keras" else "keras"
    layers = (
        _tf_keras().layers if package == "tf_keras" else importlib.import_module("keras").layers
    )
    names = constructor_names(obj)
    if not issubclass(obj, layers.Layer) or not {"axis", "epsilon"} <= set(names):
        return None
    if "momentum" in names:
        return None
    known = KERAS_CLASSES.get(obj.__name__)
    kind = "groupnorm" if "groups" in names else kind_of(obj, "center" in names)
    weight, bias, optional = (
        ("scale", None, False) if kind == "rmsnorm" else ("gamma", "beta", True)
    )
    if known is not None:
        _, weight, bias, optional = known
    path = f"{obj.__module__}:{obj.__qualname__}"
    entry = FamilyClass(kind, path, weight, bias, optional_affine=optional)
    return KerasFamily(_running(package), entry, obj, arguments)


__all__ = [
    "GRADIENTS",
    "KerasFamily",
    "group_normalization",
    "layer_normalization",
    "recognise",
    "rms_normalization",
]
