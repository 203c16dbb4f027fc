"""Keras ``BatchNormalization`` layers, and every Keras layer class built like them, with no glue.

Keras 3 (``keras.layers.BatchNormalization``, on the TensorFlow backend) and Keras 2
(``tf_keras.layers.BatchNormalization``) are driven the same way. A layer class is
recognised when it derives from ``keras.layers.Layer`` (Keras 3 with the TensorFlow
backend; on the others, :mod:`normspec.adapters.keras.backend`) or ``tf_keras.layers.Layer``, its constructor takes ``axis, momentum, epsilon,
center, scale`` (and the base layer's ``dtype``), and a built instance has the variables
``gamma``, ``beta``, ``moving_mean`` and ``moving_variance``. A class that also takes
``renorm, renorm_clipping, renorm_momentum`` is checked as a batch-renormalization layer
too (Keras 3 and tf_keras both do), under a profile with a renorm dialect.

How a :class:`LayerConfig` becomes a layer: ``axis`` is the feature axis (1 or the last),
``momentum`` and ``epsilon`` as given (the profile's convention: under ``keras`` and
``tf_keras``, momentum is ``1 - alpha``), ``center = scale = affine``, and the dtype policy
``float64``, ``float32``, or for half inputs ``mixed_float16``/``mixed_bfloat16`` (float32
variables, the usual mixed precision; ``parameters="input"``: a ``float16``/``bfloat16``
policy instead -- tf_keras keeps float32 variables for half layers either way). A renorm
config is expressed as ``renorm=True``, ``renorm_clipping`` (the keys ``rmin``, ``rmax``,
``dmax`` of the finite bounds of a constant schedule) and ``renorm_momentum`` (the
correction rate in the profile's convention); what tf_keras cannot express (a warm-up
schedule, averaging a variance, one set of statistics, no floor on sigma) is
:class:`UnsupportedConfig`.

Semantics worth knowing (capability notes):

* A Keras BatchNormalization always keeps moving statistics: there is no untracked mode,
  no cumulative average (momentum is a float) and no step counter.
* ``trainable=False`` is *not* "untracked": it freezes the layer, and Keras 3 and tf_keras
  then normalize with the moving statistics even when called with ``training=True``
  (inference behaviour; the Keras 3 documentation says so). The adapter leaves ``trainable``
  at its default, True.
* tf_keras chooses a fused kernel by default (``fused=None``) for rank-4/5 float16, bfloat16
  and float32 inputs with the features on axis 1 or last; its moving variance then averages
  the Bessel-corrected batch variance (spec/dialects.md). The built-in targets
  ``tf_keras.fused`` and ``tf_keras.nonfused`` fix ``fused``; a recognised class is driven
  with its own default.
* The renorm layers keep ``moving_variance`` derived from ``moving_stddev``
  (``relu(moving_stddev^2 - epsilon)``, used by inference): :meth:`KerasLayer.set_state`
  writes it the way the layer keeps it.

Input ranks and feature axes of a recognised class: its ``normspec_ranks`` and
``normspec_feature_axes`` class attributes, else those a training call on a tiny input
accepts.
"""

from __future__ import annotations

import sys
import weakref
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from normspec.adapters.keras import _keras
from normspec.adapters.keras._keras import (
    ALL_RANKS,
    CONSTRUCTOR_ARGUMENTS,
    WEIGHTS,
    Construction,
    call_time_arguments,
    capability_notes,
    chapter_config,
    construct,
    construction,
    dtype_policy,
    has_variables,
    keras_on,
    layer_arguments,
    probe_input,
    read_renorm_state,
    renorm_arguments,
    set_call_time_arguments,
    write_renorm_state,
)
from normspec.adapters.protocol import (
    Array,
    Capabilities,
    Chapter,
    FeatureAxisPosition,
    LayerConfig,
    State,
    UnsupportedConfig,
)
from normspec.adapters.tensorflow._tf import (
    BatchNormVariables,
    ParameterPolicy,
    TFImplementation,
    TFLayer,
    read_variable,
    restore,
    snapshot,
    tf,
    write_variable,
)

# -- the frameworks -------------------------------------------------------------------------


def keras3() -> Any | None:
    """The ``keras`` (Keras 3) module if it runs on the TensorFlow backend, else ``None``."""
    import keras

    return keras if keras.backend.backend() == "tensorflow" else None


def tf_keras_module() -> Any:
    """The ``tf_keras`` module (imported on first use: it is not needed for Keras 3)."""
    import tf_keras

    return tf_keras


def flavour(cls: type) -> str | None:
    """``"keras"`` for a Keras 3 layer class, ``"tf_keras"`` for a Keras 2 one, else ``None``."""
    if not isinstance(cls, type):
        return None
    if "keras" in sys.modules:
        found = keras3()
        if found is not None and issubclass(cls, found.layers.Layer):
            return "keras"
    if "tf_keras" in sys.modules and issubclass(cls, sys.modules["tf_keras"].layers.Layer):
        return "tf_keras"
    return None


def own_batchnorm(kind: str) -> type:
    """The library's own ``BatchNormalization`` class of a flavour (:func:`flavour`)."""
    module = keras_on("tensorflow") if kind == "keras" else tf_keras_module()
    cls: type = module.layers.BatchNormalization
    return cls


def library_version(kind: str) -> dict[str, str]:
    if kind == "keras":
        import keras

        return {"keras": keras.__version__, "keras_backend": keras.backend.backend()}
    return {"tf_keras": tf_keras_module().__version__}


# -- arguments ------------------------------------------------------------------------------


def takes_renorm(cls: type, arguments: Mapping[str, Any] | None = None) -> bool:
    """Whether ``renorm=True`` builds a renorm layer (:func:`_keras.takes_renorm`)."""
    return _keras.takes_renorm(cls, arguments, _is_variable)


def takes_ghost(cls: type, arguments: Mapping[str, Any] | None = None) -> bool:
    """Whether ``virtual_batch_size`` builds a ghost layer (tf_keras' non-fused path).

    Tried, as :func:`takes_renorm` is: ``fused=True`` rejects it, and a class passing
    ``**kwargs`` to the base layer rejects it there.
    """
    try:
        probe = construct(cls, **dict(arguments or {}), virtual_batch_size=2)
        probe.build((4, 2))
        y = probe(tf.constant(probe_input(2, 1)[:2]), training=True)
    except Exception:  # no virtual_batch_size, or not taken with these arguments
        return False
    return isinstance(y, tf.Tensor) and has_variables(probe, WEIGHTS, _is_variable)


def _accepts(cls: type, rank: int, axis: int, arguments: Mapping[str, Any]) -> bool:
    try:
        layer = construct(cls, axis=axis, **arguments)
        x = tf.constant(probe_input(rank, axis))
        y = layer(x, training=True)
    except Exception:  # a rejected rank or axis, whatever the error
        return False
    return isinstance(y, tf.Tensor) and tuple(y.shape) == tuple(x.shape)


def layer_ranks(cls: type, arguments: Mapping[str, Any]) -> frozenset[int]:
    """The input ranks a BatchNormalization-like class takes (:func:`_keras.layer_ranks`)."""
    return _keras.layer_ranks(cls, arguments, _accepts)


def layer_feature_axes(
    cls: type, ranks: frozenset[int], arguments: Mapping[str, Any]
) -> tuple[FeatureAxisPosition, ...]:
    """The feature-axis positions it takes (:func:`_keras.layer_feature_axes`)."""
    return _keras.layer_feature_axes(cls, ranks, arguments, _accepts)


# -- the layer ------------------------------------------------------------------------------


class KerasLayer(TFLayer):
    """One Keras layer instance, called as ``layer(x, training=...)``."""

    def __init__(self, layer: Any, config: LayerConfig, *, compiled: bool = False) -> None:
        super().__init__(config, compiled=compiled)
        self.layer = layer
        # tf_keras keeps gamma, beta and the moving statistics of a ghost layer broadcastable
        # to the input reshaped to (V, G, ...): shape (1, 1, ..., C, ...)
        self.keepdims = config.virtual_batch_size is not None

    def variables(self) -> BatchNormVariables:
        layer = self.layer
        return BatchNormVariables(
            gamma=getattr(layer, "gamma", None),
            beta=getattr(layer, "beta", None),
            moving_mean=getattr(layer, "moving_mean", None),
            moving_variance=getattr(layer, "moving_variance", None),
        )

    def forward(self, x: tf.Tensor, *, training: bool) -> object:
        return self.layer(x, training=training)

    # -- renorm state --

    def set_state(self, state: State) -> None:
        if self.config.renorm is None:
            super().set_state(state)
            return
        n, layer = self.config.num_features, self.layer

        def write(name: str, values: Array) -> None:
            write_variable(getattr(layer, name, None), values, n, name)

        self._steps = write_renorm_state(write, state, self.config.eps)

    def state(self) -> State | None:
        if self.config.renorm is None:
            return super().state()
        n, layer = self.config.num_features, self.layer
        return read_renorm_state(
            lambda name: read_variable(getattr(layer, name, None), n, name), self._steps
        )


# -- reusing built layers -------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltLayer:
    """A built Keras layer and the values of all its variables right after it was built."""

    layer: Any
    initial: tuple[tf.Tensor, ...]

    @classmethod
    def fresh(cls, layer: Any) -> BuiltLayer:
        return cls(layer, snapshot(layer.variables))

    def restored(self) -> BuiltLayer:
        """The layer with every variable (trainable or not, renorm ones too) as built."""
        restore(self.layer.variables, self.initial)
        return self


class LayerPool:
    """Built layers whose wrapper is gone, kept by construction (:func:`_keras.construction`)
    to be lent again: restoring a built layer's variables takes 0.4-0.7 ms, building a
    layer 6-10 ms (tf_keras, plain and renorm, on two slow cores).

    Bounded: at most ``per_key`` idle layers per construction and ``keys`` constructions
    (the least recently returned dropped first; about 36 KiB a layer). A check draws the
    same settings again one clause later, a few hundred constructions apart: with 16 keys
    a quarter of a default tf_keras check's layers were reused, with 256 half, and with eps
    and the momentum set on a lent layer instead of keyed (:func:`_keras.call_time_arguments`)
    nearly three quarters (948 of 1,307 in its ``bn.*`` clauses). Only for classes whose
    whole state is in their variables (:meth:`KerasImplementation.make_layer`).
    """

    def __init__(self, per_key: int = 2, keys: int = 256) -> None:
        self.per_key = per_key
        self.keys = keys
        self._idle: OrderedDict[Construction, list[BuiltLayer]] = OrderedDict()
        # appended to by finalizers, which may run at any allocation; drained by take()
        self._returned: deque[tuple[Construction, BuiltLayer]] = deque()

    def take(self, key: Construction) -> BuiltLayer | None:
        """An idle layer of ``key``, restored to its built values; ``None`` if there is none."""
        self._drain()
        idle = self._idle.get(key)
        return idle.pop().restored() if idle else None

    def lend(self, wrapper: object, key: Construction, built: BuiltLayer) -> None:
        """Take ``built`` back once ``wrapper`` is gone (its finalizer holds the layer, never
        the wrapper)."""
        weakref.finalize(wrapper, self._returned.append, (key, built)).atexit = False

    def _drain(self) -> None:
        while self._returned:
            key, built = self._returned.popleft()
            idle = self._idle.setdefault(key, [])
            self._idle.move_to_end(key)
            if len(idle) < self.per_key:
                idle.append(built)
        while len(self._idle) > self.keys:
            self._idle.popitem(last=False)


# -- the implementation ---------------------------------------------------------------------


class KerasImplementation(TFImplementation):
    """A BatchNormalization-like Keras layer class under test.

    ``arguments``: extra constructor arguments (``{"fused": False}``); ``ranks`` and
    ``feature_axes`` override the detected ones; ``batchnorm=False`` checks the renorm
    clauses only; ``parameters`` as in :func:`dtype_policy`; ``compiled``: call the layer
    through ``tf.function`` (one trace per layer and mode: slower for the fresh layers a
    check builds, see benchmarks/tf_speed.py) instead of eagerly.

    The library's own classes (exactly ``keras.layers.BatchNormalization`` and
    ``tf_keras.layers.BatchNormalization``, whose state is wholly in their variables) reuse
    the built layers of released wrappers (:class:`LayerPool`), restored to their built
    values; any other class, a subclass or a third party's layer, which may keep state
    elsewhere, is built afresh for every layer.
    """

    def __init__(
        self,
        layer_class: type,
        profile: str = "keras",
        *,
        arguments: Mapping[str, Any] | None = None,
        ranks: frozenset[int] | None = None,
        feature_axes: tuple[FeatureAxisPosition, ...] | None = None,
        batchnorm: bool = True,
        parameters: ParameterPolicy = "float32",
        compiled: bool = False,
        label: str | None = None,
    ) -> None:
        super().__init__(profile, parameters=parameters)
        kind = flavour(layer_class)
        if kind is None or not recognisable(layer_class, arguments):
            raise TypeError(
                f"{layer_class!r} is not a BatchNormalization-like Keras layer class (Keras 3 "
                "on the TensorFlow backend, or tf_keras): it needs the constructor arguments "
                f"{', '.join(CONSTRUCTOR_ARGUMENTS)} and the variables {', '.join(WEIGHTS)}"
            )
        self.kind = kind
        self.layer_class = layer_class
        self.arguments = dict(arguments or {})
        self.ranks = ranks if ranks is not None else layer_ranks(layer_class, self.arguments)
        self.feature_axes = feature_axes or layer_feature_axes(
            layer_class, self.ranks, self.arguments
        )
        self.batchnorm = batchnorm
        self.takes_renorm = takes_renorm(layer_class, self.arguments)
        self.takes_ghost = takes_ghost(layer_class, self.arguments)
        self.compiled = compiled
        self.pool = LayerPool() if layer_class is own_batchnorm(kind) else None
        what = label or f"{layer_class.__module__}.{layer_class.__qualname__}"
        extra = ", ".join(f"{k}={v!r}" for k, v in self.arguments.items())
        if not batchnorm:
            extra = ", ".join(filter(None, [extra, "renorm=True"]))
        self.name = f"{what}" + (f"({extra})" if extra else "") + f" ({self._library_name()})"

    def _library_name(self) -> str:
        versions = library_version(self.kind)
        if self.kind == "keras":
            return f"Keras {versions['keras']} on TensorFlow {tf.__version__}"
        return f"tf_keras {versions['tf_keras']}, TensorFlow {tf.__version__}"

    def library_versions(self) -> Mapping[str, str]:
        return library_version(self.kind)

    def base_capabilities(self) -> Capabilities:
        notes = capability_notes()
        renorm = self.takes_renorm and self.arguments.get("fused") is not True
        if not renorm:
            notes["renorm"] = (
                "fused=True does not take renorm=True"
                if self.takes_renorm
                else f"{self.layer_class.__name__} takes no renorm arguments"
            )
        if not self.batchnorm:
            notes["batchnorm"] = "this target checks the renorm clauses only"
        if not self.takes_ghost:
            notes["ghost_batches"] = (
                "fused=True does not take virtual_batch_size"
                if self.arguments.get("fused") is True
                else f"{self.layer_class.__name__} takes no virtual_batch_size"
            )
        return Capabilities(
            ranks=self.ranks,
            feature_axes=self.feature_axes,
            backward=True,
            batchnorm=self.batchnorm,
            renorm=renorm,
            cumulative_average=False,
            untracked=False,
            without_affine=True,
            step_counter=False,
            strided_input=True,
            ghost_batches=self.takes_ghost,
            notes=notes,
        )

    def chapter_config(self, chapter: Chapter, config: LayerConfig) -> LayerConfig | None:
        """The renorm chapter is probed with renorm layers (constant bounds, no clipping)."""
        return chapter_config(chapter, config, self.dialect)

    def make_layer(self, config: LayerConfig) -> KerasLayer:
        arguments = layer_arguments(config, self.parameters, self.dialect, self.arguments)
        if config.virtual_batch_size is not None:
            if config.renorm is not None:
                raise UnsupportedConfig("ghost batches with batch renormalization are not checked")
            arguments["virtual_batch_size"] = config.virtual_batch_size
        if self.pool is None:
            layer = _keras.built(self.layer_class, config, arguments)
            return KerasLayer(layer, config, compiled=self.compiled)
        settable = call_time_arguments(arguments, self.kind)
        key = construction(self.layer_class, config, arguments, skipped=settable)
        built = self.pool.take(key) or BuiltLayer.fresh(
            _keras.built(self.layer_class, config, arguments)
        )
        set_call_time_arguments(built.layer, settable)
        wrapper = KerasLayer(built.layer, config, compiled=self.compiled)
        self.pool.lend(wrapper, key, built)
        return wrapper


def recognisable(obj: object, arguments: Mapping[str, Any] | None = None) -> bool:
    """Whether ``obj`` is a BatchNormalization-like Keras layer class (not an instance) of
    Keras 3 on TensorFlow or tf_keras."""
    if not isinstance(obj, type) or flavour(obj) is None:
        return False
    return _keras.recognisable_class(obj, arguments, _is_variable)


def _is_variable(value: object) -> bool:
    if isinstance(value, tf.Variable):
        return True
    return isinstance(getattr(value, "value", None), tf.Variable)


def recognise(
    obj: object, profile: str, arguments: Mapping[str, Any] | None = None
) -> KerasImplementation | None:
    """A Keras 3 class on TensorFlow or a tf_keras class (the package's recogniser,
    :func:`normspec.adapters.keras._keras.recognise`, dispatches here); ``arguments``: the
    target's constructor arguments."""
    if not recognisable(obj, arguments):
        return None
    assert isinstance(obj, type)
    return KerasImplementation(obj, profile, arguments=arguments)


# -- the built-in targets (declared in normspec.adapters.keras) ------------------------------

_EVERY_RANK = frozenset(ALL_RANKS)
_AXES: tuple[FeatureAxisPosition, ...] = ("last", "first")


def _keras3_class() -> type:
    cls: type = keras_on("tensorflow").layers.BatchNormalization
    return cls


def keras_batchnorm(profile: str = "keras", *, batchnorm: bool = True) -> KerasImplementation:
    """``keras``: ``keras.layers.BatchNormalization`` of Keras 3 on TensorFlow."""
    return KerasImplementation(
        _keras3_class(),
        profile,
        ranks=_EVERY_RANK,
        feature_axes=_AXES,
        batchnorm=batchnorm,
        label="keras.layers.BatchNormalization",
    )


def keras_renorm(profile: str = "tf_keras") -> KerasImplementation:
    """``keras.renorm``: Keras 3's ``BatchNormalization(renorm=True)``, renorm clauses only."""
    return keras_batchnorm(profile, batchnorm=False)


def tf_keras_nonfused(profile: str = "tf_keras", *, batchnorm: bool = True) -> KerasImplementation:
    """``tf_keras``, ``tf_keras.nonfused``: ``tf_keras.layers.BatchNormalization(fused=False)``."""
    return KerasImplementation(
        tf_keras_module().layers.BatchNormalization,
        profile,
        arguments={"fused": False},
        ranks=_EVERY_RANK,
        feature_axes=_AXES,
        batchnorm=batchnorm,
        label="tf_keras.layers.BatchNormalization",
    )


def tf_keras_fused(profile: str = "tf_keras_fused") -> KerasImplementation:
    """``tf_keras.fused``: ``tf_keras.layers.BatchNormalization(fused=True)``, rank 4 and 5,
    under the ``tf_keras_fused`` profile by default (its moving variance is unbiased)."""
    return KerasImplementation(
        tf_keras_module().layers.BatchNormalization,
        profile,
        arguments={"fused": True},
        ranks=frozenset({4, 5}),
        feature_axes=_AXES,
        label="tf_keras.layers.BatchNormalization",
    )


def tf_keras_renorm(profile: str = "tf_keras") -> KerasImplementation:
    """``tf_keras.renorm``: ``BatchNormalization(renorm=True)`` (non-fused), renorm clauses only."""
    return tf_keras_nonfused(profile, batchnorm=False)


__all__ = [
    "KerasImplementation",
    "KerasLayer",
    "dtype_policy",
    "keras_batchnorm",
    "keras_renorm",
    "recognisable",
    "recognise",
    "renorm_arguments",
    "tf_keras_fused",
    "tf_keras_nonfused",
    "tf_keras_renorm",
]
