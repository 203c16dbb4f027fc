"""Keras 3's ``BatchNormalization`` on the JAX, PyTorch and NumPy backends.

Keras 3's backend is fixed per process when Keras is imported (``KERAS_BACKEND``): the
targets ``keras.jax``, ``keras.torch`` and ``keras.numpy`` load Keras on their backend
(:func:`normspec.adapters.keras._keras.keras_on`), and their worker process starts with
``KERAS_BACKEND`` set (its declaration in :mod:`normspec.adapters.keras`); in a process
that imported Keras on another backend they are a usage error. ``keras`` (TensorFlow) is
:mod:`normspec.adapters.keras.keras_layer`.

The layer is built as on TensorFlow (the constructor arguments and dtype policies of
:mod:`normspec.adapters.keras._keras`) and driven through :class:`FrameworkAdapter` with Keras'
backend-neutral calls: arrays in by ``keras.ops.convert_to_tensor`` and out by
``keras.ops.convert_to_numpy``, variables written by ``Variable.assign``. Gradients are the
backend's own: ``jax.vjp`` of ``layer.stateless_call``, ``torch.autograd.grad``; the NumPy
backend has none (the backward clauses are not applicable). ``renorm=True`` layers are checked
as on TensorFlow (their state through ``_keras``'s renorm variables); ``keras.renorm.jax``
and the like check the renorm clauses only.

A user's BatchNormalization-like Keras 3 class is checked here too, on the backend Keras runs
on (``KERAS_BACKEND=jax normspec check my_package.layers:MyBatchNorm``: the worker inherits
it): the package's one recogniser, :func:`normspec.adapters.keras._keras.recognise`,
dispatches on ``keras.backend.backend()`` to :func:`recognise` here, or to ``keras_layer``
on TensorFlow.

A float64 layer that a backend computes in float32 (Keras on JAX without
``jax_enable_x64``: the variables and outputs are float32) leaves float64 out of the
capabilities with that reason, rather than reporting float32 values as wrong float64 ones.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Hashable, Mapping
from dataclasses import replace
from typing import Any, ClassVar, Literal

import numpy as np

from normspec.adapters._common import ParameterPolicy, parameter_dtype_name
from normspec.adapters.framework import FrameworkAdapter, FrameworkLayer, VectorName
from normspec.adapters.keras import _keras
from normspec.adapters.keras._keras import (
    ALL_RANKS,
    capability_notes,
    chapter_config,
    construct,
    keras_on,
    layer_arguments,
    probe_input,
    read_renorm_state,
    write_renorm_state,
)
from normspec.adapters.protocol import (
    ALL_DTYPES,
    Array,
    Capabilities,
    Chapter,
    DTypeName,
    FeatureAxisPosition,
    Layer,
    LayerConfig,
    State,
    UnsupportedConfig,
    WrongOutput,
)
from normspec.reference.dialects import Dialect, find_profile

#: The gradients of one call: (layer, x, dy, training) -> (dx, dgamma, dbeta).
GradientFunction = Callable[[Any, Any, Any, bool], tuple[Any, Any | None, Any | None]]

Backend = Literal["jax", "torch", "numpy"]


def _jax_gradients(
    layer: Any, x: Any, dy: Any, training: bool
) -> tuple[Any, Any | None, Any | None]:
    """``jax.vjp`` of the layer's stateless call: the batch statistics are differentiated."""
    trainable = list(layer.trainable_variables)
    dx, dvalues = _jax_pullback(layer, training)(
        [v.value for v in trainable], [v.value for v in layer.non_trainable_variables], x, dy
    )
    return dx, *(_of(layer, name, trainable, dvalues) for name in ("gamma", "beta"))


def _stateless_call(layer: Any, values: list[Any], fixed: list[Any], x: Any, training: bool) -> Any:
    """``layer.stateless_call`` through the layer's ``__call__`` (which checks the input
    against the layer's ``input_spec`` and casts it, as a user's call does; ``stateless_call``
    runs ``call`` alone): ``(y, the new non-trainable values)``."""
    import keras

    variables = (*layer.trainable_variables, *layer.non_trainable_variables)
    mapping = list(zip(variables, (*values, *fixed), strict=True))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        y = layer(x, training=training)
    return y, [scope.get_current_value(v) for v in layer.non_trainable_variables]


def _jax_pullback(layer: Any, training: bool) -> Callable[[Any, Any, Any, Any], Any]:
    """``(trainable values, non-trainable values, x, dy) -> (dx, trainable gradients)``."""
    import jax

    def pullback(values: list[Any], fixed: list[Any], x: Any, dy: Any) -> Any:
        def call(inputs: Any, trainable: list[Any]) -> Any:
            return _stateless_call(layer, trainable, fixed, inputs, training)[0]

        _, vjp = jax.vjp(call, x, values)
        return vjp(dy)

    return pullback


def _jax_forward(layer: Any, training: bool) -> Callable[[Any, Any, Any], Any]:
    """``(trainable values, non-trainable values, x) -> (y, new non-trainable values)``."""

    def forward(values: list[Any], fixed: list[Any], x: Any) -> Any:
        return _stateless_call(layer, values, fixed, x, training)

    return forward


class TracedCalls:
    """A Keras layer's calls on JAX traced and compiled once per layer configuration
    (``jax.jit`` of its stateless call, :func:`_stateless_call`, and of its ``jax.vjp``, as
    Keras' own trainer runs a layer on JAX), rather than run operation by operation, which compiles every
    operation anew for each input shape. A configuration's key is the layer's class and
    constructor arguments (:meth:`register`), and for an inference call those an inference
    call reads (the same key where none is given); the first layer of a key is traced, and
    every layer of that key runs the compiled program on its own variables' values (a
    training call's new moving statistics assigned to them). A layer whose call cannot be
    traced (a Python branch on a value) runs eagerly, as it would without this.
    """

    def __init__(self) -> None:
        self._keys: weakref.WeakKeyDictionary[Any, tuple[Hashable, Hashable]] = (
            weakref.WeakKeyDictionary()
        )
        self._programs: dict[Any, Callable[..., Any]] = {}
        self._eager: set[Hashable] = set()

    def register(self, layer: Any, key: Hashable, inference: Hashable | None = None) -> None:
        """``layer`` runs the programs of ``key`` (its configuration), its inference calls
        those of ``inference`` (what they read of it) where given."""
        self._keys[layer] = (key, key if inference is None else inference)

    def compiled(self) -> list[tuple[Hashable, str, bool]]:
        """The jitted calls made so far, each ``(key, call, training)`` (JAX compiles each
        anew per input shape): ``benchmarks/jax_compile.py`` counts them."""
        return list(self._programs)

    def _key(self, layer: Any, what: str, training: bool) -> Hashable | None:
        """The key of ``layer``'s ``what`` program (``None``: the layer is not registered)."""
        keys = self._keys.get(layer)
        return None if keys is None else (keys[0 if training else 1], what, training)

    def _program(
        self, layer: Any, what: str, training: bool, make: Callable[[Any, bool], Any]
    ) -> Callable[..., Any] | None:
        key = self._key(layer, what, training)
        if key is None or key in self._eager:
            return None
        found = self._programs.get(key)
        if found is None:
            import jax

            found = self._programs.setdefault(key, jax.jit(make(layer, training)))
        return found

    def _run(
        self,
        layer: Any,
        what: str,
        training: bool,
        eager: Callable[[], Any],
        program: Callable[..., Any] | None,
        *args: Any,
    ) -> tuple[Any, bool]:
        """``(program(*args), True)``, or ``(eager(), False)`` where there is no program or
        it fails: a call that fails eagerly too raises the layer's own error; one that runs
        eagerly marks the configuration eager (its call cannot be traced: a Python branch on
        a value, whose error Keras rewrites into another type)."""
        if program is not None:
            try:
                return program(*args), True
            except Exception:  # untraceable, or the layer's own error: eager tells which
                found = eager()
                self._eager.add(self._key(layer, what, training))
                return found, False
        return eager(), False

    def forward(self, layer: Any, x: Any, training: bool) -> Any:
        """One call, its new non-trainable values assigned to the layer's variables."""
        program = self._program(layer, "forward", training, _jax_forward)
        fixed = layer.non_trainable_variables
        values = [v.value for v in layer.trainable_variables]
        found, traced = self._run(
            layer,
            "forward",
            training,
            lambda: layer(x, training=training),
            program,
            values,
            [v.value for v in fixed],
            x,
        )
        if not traced:
            return found
        y, updated = found
        for variable, value in zip(fixed, updated, strict=True):
            variable.assign(value)
        return y

    def gradients(
        self, layer: Any, x: Any, dy: Any, training: bool
    ) -> tuple[Any, Any | None, Any | None]:
        """:func:`_jax_gradients`, compiled."""
        program = self._program(layer, "gradients", training, _jax_pullback)
        trainable = list(layer.trainable_variables)
        fixed = [v.value for v in layer.non_trainable_variables]
        values = [v.value for v in trainable]
        found, traced = self._run(
            layer,
            "gradients",
            training,
            lambda: _jax_gradients(layer, x, dy, training),
            program,
            values,
            fixed,
            x,
            dy,
        )
        if not traced:
            return found
        dx, dvalues = found
        return dx, *(_of(layer, name, trainable, dvalues) for name in ("gamma", "beta"))


def _of(layer: Any, name: str, trainable: list[Any], values: list[Any]) -> Any | None:
    """The entry of ``values`` for the layer's variable ``name`` (``None``: it has none)."""
    variable = getattr(layer, name, None)
    found = [value for v, value in zip(trainable, values, strict=True) if v is variable]
    return found[0] if found else None


def _torch_gradients(
    layer: Any, x: Any, dy: Any, training: bool
) -> tuple[Any, Any | None, Any | None]:
    """``torch.autograd.grad`` through the whole call (an unused input: zero gradient)."""
    import torch

    inputs = x.detach().requires_grad_(True)
    parameters = [getattr(layer, name, None) for name in ("gamma", "beta")]
    tensors = [p.value for p in parameters if p is not None]
    y = layer(inputs, training=training)
    grads = torch.autograd.grad(y, [inputs, *tensors], grad_outputs=dy, allow_unused=True)
    wrt = [inputs, *tensors]
    filled = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, wrt, strict=True)]
    dx, rest = filled[0], iter(filled[1:])
    dgamma, dbeta = (None if p is None else next(rest) for p in parameters)
    return dx, dgamma, dbeta


#: Each backend's gradients; a backend without (NumPy) is checked without backward clauses.
GRADIENTS: dict[Backend, GradientFunction | None] = {
    "jax": _jax_gradients,
    "torch": _torch_gradients,
    "numpy": None,
}

#: Constructor arguments of ``keras.layers.BatchNormalization`` that only a training call
#: reads (``call`` reads the moving statistics, ``epsilon`` and the affine parameters
#: otherwise): its inference programs are shared across them (:class:`TracedCalls`).
TRAINING_ONLY = frozenset({"momentum", "renorm_momentum", "renorm_clipping"})

#: Why a float64 layer is computed in float32, per backend (the probe finds that it is).
NARROWED_FLOAT64: dict[Backend, str] = {
    "jax": "JAX computes float64 only with jax_enable_x64, which Keras leaves off",
}


class KerasBackendImplementation(FrameworkAdapter):
    """``keras.layers.BatchNormalization`` of Keras 3 on ``backend`` (jax, torch, numpy), or
    a user's BatchNormalization-like ``layer_class`` (built as on TensorFlow, with the
    target's ``arguments``; its ranks, feature axes and renorm arguments detected as there,
    :mod:`normspec.adapters.keras._keras`)."""

    vectors: ClassVar[Mapping[VectorName, str]] = {
        "gamma": "gamma",
        "beta": "beta",
        "mean": "moving_mean",
        "var": "moving_variance",
    }

    def __init__(
        self,
        backend: Backend,
        profile: str = "keras",
        *,
        batchnorm: bool = True,
        parameters: ParameterPolicy = "float32",
        layer_class: type | None = None,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        if backend not in GRADIENTS:
            raise ValueError(f"backend must be one of {', '.join(GRADIENTS)}, got {backend!r}")
        self.keras = keras_on(backend)
        self.backend = backend
        self.profile = profile
        parameter_dtype_name("float16", parameters)  # validates the policy
        self.parameters = parameters
        self.batchnorm = batchnorm
        self.builtin = layer_class is None
        self.layer_class: type = layer_class or self.keras.layers.BatchNormalization
        self.arguments = dict(arguments or {})
        self.traced = TracedCalls() if backend == "jax" else None
        self.ranks = frozenset(ALL_RANKS)
        self.feature_axes: tuple[FeatureAxisPosition, ...] = ("last", "first")
        self.takes_renorm = True
        what = "keras.layers.BatchNormalization"
        if not self.builtin:
            cls, found = self.layer_class, self.arguments
            self.ranks = _keras.layer_ranks(cls, found, self._accepts)
            self.feature_axes = _keras.layer_feature_axes(cls, self.ranks, found, self._accepts)
            self.takes_renorm = _keras.takes_renorm(cls, found, self._is_variable)
            what = f"{cls.__module__}.{cls.__qualname__}"
        extra = [f"{k}={v!r}" for k, v in self.arguments.items()]
        extra += [] if batchnorm else ["renorm=True"]
        what += f"({', '.join(extra)}) " if extra else " "
        self.name = f"{what}(Keras {self.keras.__version__} on {backend} {self._backend_version()})"
        self.library = self.name

    def _is_variable(self, value: object) -> bool:
        return isinstance(value, self.keras.Variable)

    def _accepts(self, cls: type, rank: int, axis: int, arguments: Mapping[str, Any]) -> bool:
        """Whether a training call takes an input of ``rank`` with its features on ``axis``."""
        try:
            x = probe_input(rank, axis)
            y = construct(cls, axis=axis, **arguments)(
                self.to_framework(x, "float32"), training=True
            )
        except Exception:  # a rejected rank or axis, whatever the error
            return False
        return tuple(self.keras.ops.shape(y)) == x.shape

    def _backend_version(self) -> str:
        module = __import__(self.backend)
        return str(getattr(module, "__version__", ""))

    def versions(self) -> Mapping[str, str]:
        return {
            "numpy": np.__version__,
            "keras": self.keras.__version__,
            "keras_backend": self.backend,
            self.backend: self._backend_version(),
        }

    def base_capabilities(self) -> Capabilities:
        notes = capability_notes()
        if not self.batchnorm:
            notes["batchnorm"] = "this target checks the renorm clauses only"
        if not self.takes_renorm:
            notes["renorm"] = f"{self.layer_class.__name__} takes no renorm arguments"
        notes["ghost_batches"] = "Keras 3 takes no virtual_batch_size"
        backward = GRADIENTS[self.backend] is not None
        if not backward:
            notes["backward"] = (
                f"Keras' {self.backend} backend has no automatic differentiation: a layer "
                "cannot be differentiated there"
            )
        return Capabilities(
            ranks=self.ranks,
            feature_axes=self.feature_axes,
            backward=backward,
            batchnorm=self.batchnorm,
            renorm=self.takes_renorm,
            cumulative_average=False,
            untracked=False,
            without_affine=True,
            step_counter=False,
            strided_input=True,
            ghost_batches=False,
            # every jnp operation of an eager call compiles for each new shape
            compiles_per_shape=self.backend == "jax",
            notes=notes,
        )

    def probe(self, config: LayerConfig, x: Array, base: Capabilities) -> str | None:
        """A float64 layer the backend computes in float32 is not applicable, with the
        reason (:meth:`float64_narrowed`); otherwise the tiny layer's calls (a failure means
        the dtype is not supported)."""
        narrowed = self.float64_narrowed() if config.dtype == "float64" else None
        if narrowed is not None:
            return narrowed
        return super().probe(config, x, base)

    def chapter_config(self, chapter: Chapter, config: LayerConfig) -> LayerConfig | None:
        """The renorm chapter is probed with renorm layers (constant bounds, no clipping)."""
        return chapter_config(chapter, config, self.dialect)

    def float64_narrowed(self) -> str | None:
        """Why a float64 layer computes in float32 here, or ``None`` if it computes in float64.

        Measured: one feature, ``x = [0, 1]``, ``epsilon = 1e-3``, no affine parameters; the
        training output's first value in float64 is ``-0.5 / sqrt(0.251)``, and rounds to
        float32's otherwise. The causes known are named: float32 variables (JAX without
        ``jax_enable_x64``, the NumPy backend) and ``BatchNormalization.call`` computing in
        ``keras.backend.result_type(dtype, "float32")``, float32 for float64 on every backend
        but TensorFlow's.
        """
        config = LayerConfig(
            num_features=1,
            rank=2,
            feature_axis=1,
            dtype="float64",
            eps=1e-3,
            momentum=0.5,
            affine=False,
            track_running_stats=True,
        )
        layer = self.create(config)
        held = self.keras.backend.standardize_dtype(layer.moving_mean.value.dtype)
        x = np.array([[0.0], [1.0]])
        y = self.forward(layer, self.to_framework(x, "float64"), training=True)
        got = float(np.asarray(self.to_numpy(y), dtype=np.float64)[0, 0])
        want = -0.5 / math.sqrt(0.25 + 1e-3)
        if abs(got - want) <= 1e-12:
            return None
        causes = []
        if held != "float64":
            why = NARROWED_FLOAT64.get(self.backend)
            causes.append(f"its variables hold {held} values" + (f" ({why})" if why else ""))
        promoted = self.keras.backend.result_type("float64", "float32")
        if self.builtin and promoted != "float64":
            causes.append(
                "BatchNormalization.call computes in keras.backend.result_type(dtype, "
                f"'float32'), which is {promoted} for float64"
            )
        return (
            f"Keras on the {self.backend} backend computes a float64 layer in float32: the "
            f"training output at x = [0, 1], epsilon = 1e-3 is {got!r}, float64 gives "
            f"{want!r}" + (f"; {'; '.join(causes)}" if causes else "")
        )

    def probed(self, base: Capabilities) -> Capabilities:
        """The probed capabilities; a dtype left out is a warning of the report too (the
        dtypes it checks are listed, those it does not would go unsaid)."""
        found = super().probed(base)
        left_out = [d for d in ALL_DTYPES if d in base.dtypes and d not in found.dtypes]
        if not left_out:
            return found
        warning = f"{', '.join(left_out)} not checked ({found.notes['dtypes']})"
        return replace(found, warnings=(*found.warnings, warning))

    @property
    def dialect(self) -> Dialect | None:
        """The profile's dialect, ``None`` for a name normspec does not know."""
        return find_profile(self.profile)

    def build(self, config: LayerConfig) -> Layer:
        if config.renorm is None and not self.batchnorm:
            raise UnsupportedConfig(
                "plain batch normalization is not checked here: this target checks the "
                "renorm clauses only"
            )
        return super().build(config)

    # -- FrameworkAdapter --

    def make_layer(self, config: LayerConfig) -> KerasBackendLayer:
        return KerasBackendLayer(self, config, self.create(config))

    def create(self, config: LayerConfig) -> Any:
        """The layer (on JAX registered with its configuration's compiled calls)."""
        arguments = layer_arguments(config, self.parameters, self.dialect, self.arguments)
        layer = _keras.built(self.layer_class, config, arguments)
        if self.traced is not None:
            shape = (config.rank, config.num_features)
            inference = None
            if self.builtin:  # an inference call reads neither rates nor clipping
                read = {k: v for k, v in arguments.items() if k not in TRAINING_ONLY}
                inference = (shape, repr(sorted(read.items())))
            self.traced.register(layer, (shape, repr(sorted(arguments.items()))), inference)
        return layer

    def to_framework(self, array: Array, dtype: DTypeName) -> Any:
        """Given ``dtype``'s NumPy type first (exact), keeping its layout where NumPy does,
        then converted as a user's NumPy array is."""
        typed = np.asarray(array).astype(_numpy_type(dtype), order="K")
        return self.keras.ops.convert_to_tensor(typed, dtype=dtype)

    def to_numpy(self, value: Any) -> np.ndarray:
        """Keras' conversion; a bfloat16 tensor by way of float32 (exact), as ``ml_dtypes``."""
        if isinstance(value, self.keras.Variable):
            value = value.value
        ops = self.keras.ops
        dtype = self.keras.backend.standardize_dtype(value.dtype)
        if dtype == "bfloat16":
            widened = np.asarray(ops.convert_to_numpy(ops.cast(value, "float32")))
            return widened.astype(_numpy_type("bfloat16"))
        return np.asarray(ops.convert_to_numpy(value))

    def forward(self, layer: Any, x: Any, *, training: bool) -> Any:
        if self.traced is not None:
            return self.traced.forward(layer, x, training)
        return layer(x, training=training)

    def gradients(
        self, layer: Any, x: Any, dy: Any, *, training: bool
    ) -> tuple[Any, Any | None, Any | None]:
        found = GRADIENTS[self.backend]
        if found is None:  # pragma: no cover - refused by the capabilities
            raise UnsupportedConfig(self.base_capabilities().notes["backward"])
        if self.traced is not None:
            return self.traced.gradients(layer, x, dy, training)
        return found(layer, x, dy, training)

    def write(self, layer: Any, name: VectorName | Literal["steps"], value: Any) -> None:
        """``Variable.assign``: the layer keeps its variable (and its dtype)."""
        getattr(layer, self.attribute(name)).assign(value)


class KerasBackendLayer(FrameworkLayer):
    """A Keras layer; a renorm layer's state is its renorm variables (``_keras``)."""

    adapter: KerasBackendImplementation

    def _write(self, name: str, values: Array) -> None:
        variable = getattr(self.layer, name)
        dtype = np.asarray(self.adapter.to_numpy(variable)).dtype.name
        variable.assign(self.adapter.to_framework(np.asarray(values), dtype))

    def _read(self, name: str) -> Array:
        variable = getattr(self.layer, name, None)
        if variable is None:
            raise WrongOutput(f"the layer has no {name}")
        return self._numpy(variable, name, (self.config.num_features,), None)

    def set_state(self, state: State) -> None:
        if self.config.renorm is None:
            super().set_state(state)
            return
        self._steps = write_renorm_state(self._write, state, self.config.eps)

    def state(self) -> State | None:
        if self.config.renorm is None:
            return super().state()
        return read_renorm_state(self._read, self._steps)


def _numpy_type(dtype: DTypeName) -> Any:
    if dtype == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(dtype)


def recognise(
    obj: object, profile: str, arguments: Mapping[str, Any] | None = None
) -> KerasBackendImplementation | None:
    """A user's BatchNormalization-like Keras 3 layer class on the backend Keras runs on
    (jax, torch, numpy), as :func:`normspec.adapters.keras._keras.recognise` dispatches it."""
    import keras

    backend = keras.backend.backend()
    if backend not in GRADIENTS or not isinstance(obj, type):
        return None
    if not issubclass(obj, keras.layers.Layer):
        return None
    if not _keras.recognisable_class(obj, arguments, lambda v: isinstance(v, keras.Variable)):
        return None
    return KerasBackendImplementation(backend, profile, layer_class=obj, arguments=arguments)


# -- the built-in targets (normspec.adapters.registry.ALIASES) ------------------------------


def keras_jax(profile: str = "keras") -> KerasBackendImplementation:
    """``keras.jax``: ``keras.layers.BatchNormalization`` of Keras 3 on JAX."""
    return KerasBackendImplementation("jax", profile)


def keras_torch(profile: str = "keras") -> KerasBackendImplementation:
    """``keras.torch``: ``keras.layers.BatchNormalization`` of Keras 3 on PyTorch."""
    return KerasBackendImplementation("torch", profile)


def keras_numpy(profile: str = "keras") -> KerasBackendImplementation:
    """``keras.numpy``: ``keras.layers.BatchNormalization`` of Keras 3 on NumPy (no
    gradients: the backward clauses are not applicable)."""
    return KerasBackendImplementation("numpy", profile)


def keras_renorm_jax(profile: str = "tf_keras") -> KerasBackendImplementation:
    """``keras.renorm.jax``: Keras 3's ``BatchNormalization(renorm=True)`` on JAX."""
    return KerasBackendImplementation("jax", profile, batchnorm=False)


def keras_renorm_torch(profile: str = "tf_keras") -> KerasBackendImplementation:
    """``keras.renorm.torch``: Keras 3's ``BatchNormalization(renorm=True)`` on PyTorch."""
    return KerasBackendImplementation("torch", profile, batchnorm=False)


def keras_renorm_numpy(profile: str = "tf_keras") -> KerasBackendImplementation:
    """``keras.renorm.numpy``: Keras 3's ``BatchNormalization(renorm=True)`` on NumPy."""
    return KerasBackendImplementation("numpy", profile, batchnorm=False)


__all__ = [
    "GRADIENTS",
    "KerasBackendImplementation",
    "KerasBackendLayer",
    "keras_jax",
    "keras_numpy",
    "keras_renorm_jax",
    "keras_renorm_numpy",
    "keras_renorm_torch",
    "keras_torch",
    "recognise",
]
