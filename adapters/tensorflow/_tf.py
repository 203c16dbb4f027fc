"""What the TensorFlow adapters share: dtypes, conversion, variables, gradients, tracing.

Imported only by the TensorFlow adapters (``keras.keras_layer``, ``tensorflow.tf_nn``), never by normspec at
start-up. Importing it imports TensorFlow, which imports Keras 3: unless Keras is already
loaded, ``KERAS_BACKEND`` is set to ``tensorflow`` first (the Keras adapters run on the
TensorFlow backend), and TensorFlow's C++ log level to warnings (``TF_CPP_MIN_LOG_LEVEL``,
unless set); what TensorFlow's native libraries log as they load and look for devices is
kept out of normspec's output (``adapters._quiet``).

An adapter specialises :class:`TFLayer` (how one forward is called, which variables hold
the parameters and statistics) and :class:`TFImplementation` (what it supports); the rest
is here: conversion of protocol arrays to tensors of the layer's dtype and back, checking
of results (conv.io.shape_dtype, :class:`WrongOutput`), writing and reading variables, the
vector-Jacobian product by ``tf.GradientTape`` (the batch statistics are part of the
differentiated computation), and :class:`Compiled`: ``tf.function`` with a relaxed input
signature, so that a function is traced once per rank, dtype and static arguments instead
of once per input shape, with a count of the traces.
"""

from __future__ import annotations

import abc
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

if "keras" not in sys.modules:
    os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from normspec.adapters._quiet import quiet_startup

with quiet_startup():
    import tensorflow as tf

    tf.config.list_logical_devices()  # looks for GPUs now, and logs so (cuInit) here

from normspec.adapters._common import ParameterPolicy, parameter_dtype_name
from normspec.adapters.framework import ArrayLayer, ProbedImplementation, VectorName
from normspec.adapters.protocol import (
    Array,
    Capabilities,
    DTypeName,
    Layer,
    LayerConfig,
    UnsupportedConfig,
    WrongOutput,
)
from normspec.reference import Gradients
from normspec.reference.dialects import Dialect, find_profile

TF_DTYPES: dict[DTypeName, tf.DType] = {
    "float64": tf.float64,
    "float32": tf.float32,
    "float16": tf.float16,
    "bfloat16": tf.bfloat16,
}

#: Traces per :class:`Compiled` function name, over the process (benchmarks/tf_speed.py).
TRACES: dict[str, int] = {}


def tf_dtype(name: DTypeName) -> tf.DType:
    """The TensorFlow dtype of a protocol dtype name."""
    try:
        return TF_DTYPES[name]
    except KeyError:
        raise UnsupportedConfig(f"unknown dtype {name!r}") from None


def parameter_dtype(name: DTypeName, policy: ParameterPolicy) -> tf.DType:
    """The dtype of parameters and statistics for inputs of dtype ``name``.

    ``float32``: float32 variables for half inputs, as under Keras mixed precision
    (``mixed_float16``/``mixed_bfloat16``: the usual way to train in half precision);
    ``input``: the input's dtype (a ``float16``/``bfloat16`` layer policy).
    """
    return tf_dtype(parameter_dtype_name(name, policy))


def tf_versions() -> dict[str, str]:
    """TensorFlow, NumPy and device, for the report."""
    gpus = tf.config.list_logical_devices("GPU")
    return {
        "tensorflow": tf.__version__,
        "numpy": np.__version__,
        "device": gpus[0].name if gpus else "CPU",
    }


# -- arrays ---------------------------------------------------------------------------------


def to_tf(array: Array, dtype: tf.DType) -> tf.Tensor:
    """A protocol array as a tensor of ``dtype``, converted as a user's NumPy array is.

    The array is first given ``dtype``'s NumPy type (``ml_dtypes.bfloat16`` for bfloat16;
    exact, the values being representable), keeping its memory layout where NumPy does, and
    then converted by ``tf.convert_to_tensor``: a strided or transposed view arrives as
    such at TensorFlow's conversion, which makes the dense tensor every TF op takes.
    """
    source = np.asarray(array, dtype=np.float64)
    typed = source if dtype == tf.float64 else source.astype(dtype.as_numpy_dtype, order="K")
    tensor = tf.convert_to_tensor(typed)
    if tensor.dtype != dtype:  # pragma: no cover - convert_to_tensor keeps NumPy's type
        tensor = tf.cast(tensor, dtype)
    return tensor


def vector_to_tf(values: Array, dtype: tf.DType) -> tf.Tensor:
    """A per-feature vector as a tensor of ``dtype`` (rounded to it)."""
    return tf.cast(tf.constant(np.array(values, dtype=np.float64, copy=True)), dtype)


def from_tf(value: object, *, shape: Sequence[int], dtype: tf.DType, what: str) -> Array:
    """A result tensor as a float64 NumPy array, after checking it (conv.io.shape_dtype).

    Raises :class:`WrongOutput` if ``value`` is not a tensor of exactly ``dtype`` and
    ``shape``: an implementation returns its input's dtype and shape, never a promoted or
    broadcast one.
    """
    if isinstance(value, tf.Variable):
        value = tf.convert_to_tensor(value)
    if not isinstance(value, tf.Tensor):
        raise WrongOutput(f"{what} is a {type(value).__name__}, not a tf.Tensor")
    if value.dtype != dtype:
        raise WrongOutput(f"{what} has dtype {value.dtype.name}, expected {dtype.name}")
    if tuple(value.shape) != tuple(shape):
        raise WrongOutput(f"{what} has shape {tuple(value.shape)}, expected {tuple(shape)}")
    return widened(value.numpy())


def widened(values: object) -> Array:
    """A tensor's or variable's NumPy value as a float64 array of its own (exact: float64
    holds every value of the narrower floating-point types)."""
    result: Array = np.array(values, dtype=np.float64, copy=True)
    return result


# -- variables ------------------------------------------------------------------------------


def as_tf_variable(variable: object) -> tf.Variable | None:
    """The ``tf.Variable`` behind a TF or Keras 3 variable (``.value``), else ``None``."""
    if isinstance(variable, tf.Variable):
        return variable
    inner = getattr(variable, "value", None)
    return inner if isinstance(inner, tf.Variable) else None


def _per_feature_shape(shape: tuple[int, ...], num_features: int) -> bool:
    """Whether ``shape`` holds ``num_features`` values along one axis, every other of size 1."""
    return math.prod(shape) == num_features and sum(size != 1 for size in shape) <= 1


def checked_variable(
    variable: object, num_features: int, what: str, *, keepdims: bool = False
) -> tf.Variable:
    """The variable, if it is a floating-point vector of ``num_features`` values.

    ``keepdims``: the layer keeps its per-feature variables broadcastable to its input
    (tf_keras with ``virtual_batch_size``: shape ``(1, 1, ..., C, ...)``), accepted too.
    """
    found = as_tf_variable(variable)
    if found is None:
        raise WrongOutput(f"the layer has no {what} variable")
    shape = tuple(found.shape)
    fits = shape == (num_features,) or (keepdims and _per_feature_shape(shape, num_features))
    if not fits or not found.dtype.is_floating:
        raise WrongOutput(
            f"{what} is a {found.dtype.name} variable of shape {shape}, "
            f"expected a floating-point vector of shape ({num_features},)"
        )
    return found


def write_variable(
    variable: object, values: Array, num_features: int, what: str, *, keepdims: bool = False
) -> None:
    """Overwrite a parameter or statistic, keeping its dtype (and shape, see ``keepdims``)."""
    target = checked_variable(variable, num_features, what, keepdims=keepdims)
    shaped = np.reshape(np.asarray(values, dtype=np.float64), target.shape)
    target.assign(vector_to_tf(shaped, target.dtype), read_value=False)


def read_variable(
    variable: object, num_features: int, what: str, *, keepdims: bool = False
) -> Array:
    """A parameter or statistic as a float64 vector."""
    target = checked_variable(variable, num_features, what, keepdims=keepdims)
    return widened(target.numpy()).reshape(num_features)


def snapshot(variables: Sequence[object]) -> tuple[tf.Tensor, ...]:
    """The values of TF or Keras 3 variables now, as tensors a later write leaves alone."""
    return tuple(tf.identity(_tf_variable(variable)) for variable in variables)


def restore(variables: Sequence[object], values: Sequence[tf.Tensor]) -> None:
    """Write back the values :func:`snapshot` took of the same variables, bit for bit."""
    for variable, value in zip(variables, values, strict=True):
        _tf_variable(variable).assign(value, read_value=False)


def _tf_variable(variable: object) -> tf.Variable:
    found = as_tf_variable(variable)
    if found is None:
        raise TypeError(f"{variable!r} is not a TensorFlow or Keras variable")
    return found


@dataclass(frozen=True)
class BatchNormVariables:
    """Where one layer's parameters and running statistics live (``None``: it has none)."""

    gamma: object | None
    beta: object | None
    moving_mean: object | None
    moving_variance: object | None


#: The field of :class:`BatchNormVariables` holding each per-feature vector.
VARIABLE_NAMES: dict[VectorName, str] = {
    "gamma": "gamma",
    "beta": "beta",
    "mean": "moving_mean",
    "var": "moving_variance",
}


# -- tracing --------------------------------------------------------------------------------


def relaxed_spec(tensor: tf.Tensor, keep: Sequence[int] = ()) -> tf.TensorSpec:
    """``tensor``'s spec with every size unknown but those of the axes in ``keep``."""
    rank = tensor.shape.rank
    kept = {axis % rank for axis in keep} if rank else set()
    shape = [tensor.shape[axis] if axis in kept else None for axis in range(rank or 0)]
    return tf.TensorSpec(shape, tensor.dtype)


class Compiled:
    """``function`` under ``tf.function``, traced once per signature key and static options.

    ``keep(index, tensor)`` names the axes of the ``index``-th argument whose size the trace
    fixes (a Keras layer needs its feature axis); every other size is unknown, so inputs of
    new shapes reuse the trace. Python ``options`` (hashable) are part of the key. The
    number of traces is counted in :attr:`traces` and in :data:`TRACES` under ``name``.
    """

    def __init__(
        self,
        function: Callable[..., Any],
        name: str,
        keep: Callable[[int, tf.Tensor], Sequence[int]] | None = None,
    ) -> None:
        self.function = function
        self.name = name
        self.keep = keep
        self.traces = 0
        self._traced: dict[Any, Callable[..., Any]] = {}

    def __call__(self, *tensors: tf.Tensor, **options: Any) -> Any:
        specs = [
            relaxed_spec(t, self.keep(i, t) if self.keep else ()) for i, t in enumerate(tensors)
        ]
        key = (
            tuple((s.dtype, tuple(s.shape.as_list())) for s in specs),
            tuple(sorted(options.items())),
        )
        traced = self._traced.get(key)
        if traced is None:

            def body(*args: tf.Tensor) -> Any:
                self.traces += 1
                TRACES[self.name] = TRACES.get(self.name, 0) + 1
                return self.function(*args, **options)

            traced = tf.function(body, input_signature=specs, autograph=False)
            # one trace per key is the design, not the accident TF warns about after five
            traced._omit_frequent_tracing_warning = True
            self._traced[key] = traced
        return traced(*tensors)


# -- the layer ------------------------------------------------------------------------------


class TFLayer(ArrayLayer):
    """A :class:`Layer` over TensorFlow tensors; subclasses say how one forward is computed.

    Outputs and gradients are checked for the input's dtype and shape, parameter gradients
    for the parameters' (WrongOutput). A layer without a step counter reports the step count
    last set. ``compiled``: run each operation as a :class:`Compiled` function instead of
    eagerly.
    """

    def __init__(self, config: LayerConfig, *, compiled: bool = False) -> None:
        super().__init__(config)
        self.input_dtype = tf_dtype(config.dtype)
        self.compiled = compiled
        #: per-feature variables kept broadcastable to the input (see checked_variable)
        self.keepdims = False
        self._train = Compiled(self._train_fn, "train", self._keep) if compiled else None
        self._infer = Compiled(self._infer_fn, "infer", self._keep) if compiled else None
        self._vjp = Compiled(self._vjp_fn, "vjp", self._keep) if compiled else None

    @abc.abstractmethod
    def variables(self) -> BatchNormVariables:
        """The layer's parameters and statistics, as they are now."""

    @abc.abstractmethod
    def forward(self, x: tf.Tensor, *, training: bool) -> object:
        """One forward pass of the implementation, in training or inference mode."""

    def trainable(self) -> list[tf.Variable]:
        """The variables :meth:`vjp` differentiates: gamma and beta of an affine layer."""
        if not self.config.affine:
            return []
        found = self.variables()
        n = self.config.num_features
        return [
            checked_variable(found.gamma, n, "gamma", keepdims=self.keepdims),
            checked_variable(found.beta, n, "beta", keepdims=self.keepdims),
        ]

    # -- the vectors (ArrayLayer) --

    def read_vector(self, name: VectorName) -> Array:
        what = VARIABLE_NAMES[name]
        variable = getattr(self.variables(), what)
        return read_variable(variable, self.config.num_features, what, keepdims=self.keepdims)

    def write_vector(self, name: VectorName, values: Array) -> None:
        what = VARIABLE_NAMES[name]
        variable = getattr(self.variables(), what)
        n, keep = self.config.num_features, self.keepdims
        write_variable(variable, values, n, what, keepdims=keep)

    def output(self, x: Array, *, training: bool) -> Array:
        inputs = to_tf(x, self.input_dtype)
        run = self._train if training else self._infer
        y = run(inputs) if run is not None else self.forward(inputs, training=training)
        return from_tf(y, shape=x.shape, dtype=self.input_dtype, what="the output")

    # -- gradients --

    def vjp(self, x: Array, dy: Array, *, training: bool) -> Gradients:
        """dx, dgamma, dbeta by ``tf.GradientTape`` through the whole forward.

        In training mode the batch mean and variance are part of the taped computation, so
        ``dx`` includes the paths through them (bn.backward.train.dx). Without affine
        parameters dgamma and dbeta are zeros (the engine compares them only when affine).
        """
        variables = self.trainable()
        inputs = to_tf(x, self.input_dtype)
        cotangent = to_tf(dy, self.input_dtype)
        if self._vjp is not None:
            y, *grads = self._vjp(inputs, cotangent, training=training)
        else:
            y, *grads = self._vjp_fn(inputs, cotangent, training=training)
        from_tf(y, shape=x.shape, dtype=self.input_dtype, what="the output")
        dx = self._gradient(grads[0], inputs, "dx")
        if not variables:
            zeros = np.zeros(self.config.num_features)
            return Gradients(dx, zeros, zeros.copy())
        n = self.config.num_features
        return Gradients(
            dx,
            self._gradient(grads[1], variables[0], "dgamma").reshape(n),
            self._gradient(grads[2], variables[1], "dbeta").reshape(n),
        )

    # -- helpers --

    def _keep(self, index: int, tensor: tf.Tensor) -> Sequence[int]:
        """Sizes a trace fixes: the feature axis of the input and the cotangent."""
        return (self.config.feature_axis,) if index < 2 else ()

    def _train_fn(self, x: tf.Tensor) -> object:
        return self.forward(x, training=True)

    def _infer_fn(self, x: tf.Tensor) -> object:
        return self.forward(x, training=False)

    def _vjp_fn(self, x: tf.Tensor, dy: tf.Tensor, *, training: bool) -> list[Any]:
        variables = self.trainable()
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x)
            for variable in variables:
                tape.watch(variable)
            y = self.forward(x, training=training)
        if not isinstance(y, tf.Tensor):
            return [y, None, *([None] * len(variables))]
        grads = tape.gradient(y, [x, *variables], output_gradients=tf.cast(dy, y.dtype))
        return [y, *grads]

    @staticmethod
    def _gradient(grad: object, of: tf.Tensor | tf.Variable, what: str) -> Array:
        """A gradient; ``None`` (the forward did not use ``of``) is a zero gradient."""
        if grad is None:
            grad = tf.zeros(of.shape, of.dtype)
        if isinstance(grad, tf.IndexedSlices):
            grad = tf.convert_to_tensor(grad)
        return from_tf(grad, shape=tuple(of.shape), dtype=of.dtype, what=what)


# -- the implementation ---------------------------------------------------------------------


class TFImplementation(ProbedImplementation):
    """An :class:`Implementation` on TensorFlow: versions, config checks, dtype probing."""

    def __init__(self, profile: str, *, parameters: ParameterPolicy = "float32") -> None:
        self.profile = profile
        self.parameters = parameters
        parameter_dtype("float16", parameters)  # validates the policy

    @property
    def dialect(self) -> Dialect | None:
        """The profile's dialect, ``None`` for a name normspec does not know."""
        return find_profile(self.profile)

    @property
    def library(self) -> str:  # type: ignore[override]
        """The implementation's name, in the messages about unsupported configurations."""
        return self.name

    def library_versions(self) -> Mapping[str, str]:
        """Versions of the libraries besides TensorFlow and NumPy."""
        return {}

    def versions(self) -> Mapping[str, str]:
        return {**tf_versions(), **self.library_versions()}

    def build(self, config: LayerConfig) -> Layer:
        caps = self.capabilities()
        if config.renorm is None and not caps.batchnorm:
            raise UnsupportedConfig(
                "plain batch normalization is not checked here: "
                + caps.notes.get("batchnorm", "the implementation is renorm-only")
            )
        return super().build(config)

    def probe(self, config: LayerConfig, x: Array, base: Capabilities) -> str | None:
        """The tiny layer's calls; a failure is summarised (Keras wraps the cause)."""
        try:
            return super().probe(config, x, base)
        except WrongOutput:
            return None
        except Exception as problem:  # any failure of the library means "not supported"
            return error_summary(problem)


def error_summary(problem: BaseException) -> str:
    """``Type: the informative line`` of an error (Keras wraps the cause in a preamble)."""
    lines = [line.strip() for line in str(problem).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith("Exception encountered")]
    return f"{type(problem).__name__}: {(useful or lines or [''])[0]}"


__all__ = [
    "TF_DTYPES",
    "TRACES",
    "BatchNormVariables",
    "Compiled",
    "ParameterPolicy",
    "TFImplementation",
    "TFLayer",
    "as_tf_variable",
    "checked_variable",
    "error_summary",
    "from_tf",
    "parameter_dtype",
    "read_variable",
    "relaxed_spec",
    "restore",
    "snapshot",
    "tf",
    "tf_dtype",
    "tf_versions",
    "to_tf",
    "vector_to_tf",
    "write_variable",
]
