"""What the Keras adapters share on every backend: constructor arguments, dtype policies,
renorm arguments, the capability notes, and loading Keras on a backend.

Imports no framework: :mod:`normspec.adapters.keras.keras_layer` (Keras 3 on TensorFlow, tf_keras)
and :mod:`normspec.adapters.keras.backend` (Keras 3 on JAX, PyTorch, NumPy) build on it.
Keras 3's backend is fixed per process when Keras is imported (``KERAS_BACKEND``):
:func:`keras_on` sets it before the import, or refuses a Keras already imported on another
backend.
"""

from __future__ import annotations

import inspect
import math
import os
import sys
from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from normspec.adapters._common import ParameterPolicy, default_chapter_config
from normspec.adapters.protocol import (
    Array,
    Chapter,
    FeatureAxisPosition,
    Implementation,
    LayerConfig,
    State,
    UnsupportedConfig,
    WrongOutput,
)
from normspec.reference.dialects import PROFILES, Dialect, renorm_config
from normspec.reference.renorm import RenormConfig, RenormStatistics
from normspec.reference.schedules import ConstantSchedule

CONSTRUCTOR_ARGUMENTS = ("axis", "momentum", "epsilon", "center", "scale")
RENORM_ARGUMENTS = ("renorm", "renorm_clipping", "renorm_momentum")
WEIGHTS = ("gamma", "beta", "moving_mean", "moving_variance")
RENORM_WEIGHTS = ("moving_stddev", "renorm_mean", "renorm_stddev")

#: The Keras 3 backends normspec checks, as ``KERAS_BACKEND`` names them.
BACKENDS = ("tensorflow", "jax", "torch", "numpy")

#: The class attributes a third-party layer may set to declare its input ranks and the
#: feature-axis positions (``"first"``, ``"last"``) it takes.
RANKS_ATTRIBUTE = "normspec_ranks"
FEATURE_AXES_ATTRIBUTE = "normspec_feature_axes"
ALL_RANKS = (2, 3, 4, 5)
_DEFAULTS = {"axis": -1, "momentum": 0.99, "epsilon": 1e-3, "center": True, "scale": True}

#: Whether an attribute of a built layer is one of its framework's variables.
IsVariable = Callable[[object], bool]
#: Whether a training call of a class built with these arguments takes an input of this
#: rank with its features on this axis: (class, rank, axis, arguments) -> bool.
Accepts = Callable[[type, int, int, Mapping[str, Any]], bool]


class BackendError(ValueError):
    """Keras is imported on another backend than the one a target needs (a usage error)."""


def keras_on(backend: str) -> Any:
    """The ``keras`` module on ``backend``: ``KERAS_BACKEND`` is set first if Keras is not
    imported yet; :class:`BackendError` if it is, on another backend (fixed per process)."""
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = backend
    import keras

    found = keras.backend.backend()
    if found != backend:
        raise BackendError(
            f"Keras is already imported on the {found} backend in this process, and its "
            f"backend is fixed per process; this target needs KERAS_BACKEND={backend}: run it "
            "in its worker process (without --in-process), which starts with "
            f"KERAS_BACKEND={backend}, or import Keras only after setting it"
        )
    return keras


def dtype_policy(dtype: str, parameters: ParameterPolicy) -> str:
    """The Keras dtype policy for inputs of ``dtype``: the dtype itself, or for half inputs
    with float32 parameters ``mixed_float16``/``mixed_bfloat16`` (the usual mixed precision)."""
    if dtype in ("float16", "bfloat16") and parameters == "float32":
        return f"mixed_{dtype}"
    return dtype


def library_momentum(dialect: Dialect | None, rate: float) -> float:
    """A canonical rate in the profile's convention, valid or not (no validation here)."""
    if dialect is not None and dialect.update_rate == "rate":
        return rate
    return 1.0 - rate


def renorm_arguments(renorm: RenormConfig, dialect: Dialect | None) -> dict[str, Any]:
    """``renorm``, ``renorm_clipping`` and ``renorm_momentum`` for a canonical renorm config.

    Raises :class:`UnsupportedConfig` for what the Keras layers cannot express; passes
    invalid bounds and rates through (whether the layer rejects them is what
    renorm.params.invalid checks).
    """
    if renorm.average != "std":
        raise UnsupportedConfig(
            f"average={renorm.average!r}: the Keras renorm layers average the batch standard "
            "deviation"
        )
    if renorm.statistics != "separate" or renorm.correction_rate is None:
        raise UnsupportedConfig(
            "statistics='shared': the Keras renorm layers keep a separate correction set "
            "(renorm_mean, renorm_stddev) updated with renorm_momentum"
        )
    if renorm.sigma_floor != "sqrt_eps":
        raise UnsupportedConfig(
            f"sigma_floor={renorm.sigma_floor!r}: the Keras renorm layers floor the correction "
            "sigma at sqrt(epsilon)"
        )
    if not isinstance(renorm.schedule, ConstantSchedule):
        raise UnsupportedConfig(
            f"schedule {type(renorm.schedule).__name__}: renorm_clipping is fixed at "
            "construction, the Keras renorm layers have no warm-up"
        )
    bounds = renorm.schedule.value
    clipping: dict[str, float] = {}
    if bounds.r_min != 0.0:  # NaN passes through: an invalid bound for the layer to reject
        clipping["rmin"] = float(bounds.r_min)
    if bounds.r_max != math.inf:
        clipping["rmax"] = float(bounds.r_max)
    if bounds.d_max != math.inf:
        clipping["dmax"] = float(bounds.d_max)
    return {
        "renorm": True,
        "renorm_clipping": clipping,
        "renorm_momentum": library_momentum(dialect, renorm.correction_rate),
    }


def write_renorm_state(write: Callable[[str, Array], None], state: State, eps: float) -> int:
    """Write renorm statistics into a Keras renorm layer's variables, by ``write(name,
    values)``; the step count set. The layer keeps ``moving_variance`` derived from
    ``moving_stddev`` (``relu(moving_stddev^2 - epsilon)``, used by inference): written so."""
    if not isinstance(state, RenormStatistics):
        raise TypeError(f"a renorm layer keeps RenormStatistics, not {state!r}")
    spread = np.asarray(state.spread, dtype=np.float64)
    with np.errstate(all="ignore"):
        variance = np.maximum(spread * spread - eps, 0.0)
    c_mean, c_spread = state.correction_statistics()
    for name, values in (
        ("moving_mean", state.mean),
        ("moving_stddev", spread),
        ("moving_variance", variance),
        ("renorm_mean", c_mean),
        ("renorm_stddev", c_spread),
    ):
        write(name, values)
    return state.steps


def read_renorm_state(read: Callable[[str], Array], steps: int) -> RenormStatistics:
    """A Keras renorm layer's statistics, read by ``read(name)``; :class:`WrongOutput` if
    they cannot be renorm statistics."""
    names = ("moving_mean", "moving_stddev", "renorm_mean", "renorm_stddev")
    mean, spread, c_mean, c_spread = (read(name) for name in names)
    try:
        return RenormStatistics(mean, spread, steps, c_mean, c_spread)
    except ValueError as problem:
        raise WrongOutput(f"the moving statistics are malformed: {problem}") from None


def renorm_probe_config(config: LayerConfig, dialect: Dialect | None) -> LayerConfig:
    """The renorm layer the renorm chapter's dtypes are probed with (constant bounds, no
    clipping), in the profile's renorm dialect (tf_keras' if it has none)."""
    found = dialect if dialect is not None and dialect.renorm else PROFILES["tf_keras"]
    momentum = config.momentum if config.momentum is not None else 0.5
    renorm = renorm_config(
        found,
        config.num_features,
        momentum=found.momentum_from_rate(0.5),
        eps=config.eps,
        feature_axis=config.feature_axis,
    )
    return replace(config, momentum=momentum, renorm=renorm)


def chapter_config(
    chapter: Chapter, config: LayerConfig, dialect: Dialect | None
) -> LayerConfig | None:
    """The tiny layer a Keras layer's chapter is probed with: renorm's
    (:func:`renorm_probe_config`), else the default (:func:`default_chapter_config`)."""
    if chapter == "renorm":
        return renorm_probe_config(config, dialect)
    return default_chapter_config(chapter, config)


# -- a user's layer class (any backend) -----------------------------------------------------


def recognise(
    obj: object, profile: str, arguments: Mapping[str, Any] | None = None
) -> Implementation | None:
    """The recogniser the package declares (``ADAPTERS``) for Keras 3 and tf_keras classes,
    on the backend Keras runs on (``keras.backend.backend()``, from ``KERAS_BACKEND``):
    TensorFlow's classes and tf_keras' by :mod:`normspec.adapters.keras.keras_layer`, a Keras 3
    class on jax, torch or numpy by :mod:`normspec.adapters.keras.backend`. ``arguments``:
    the target's constructor arguments."""
    if not isinstance(obj, type):  # an instance, a function: none of these adapters'
        return None
    keras = sys.modules.get("keras")
    on_tensorflow = keras is None or keras.backend.backend() == "tensorflow"
    if keras is not None and not on_tensorflow and issubclass(obj, keras.layers.Layer):
        from normspec.adapters.keras import backend

        return backend.recognise(obj, profile, arguments)
    if on_tensorflow or "tf_keras" in sys.modules:  # TensorFlow imported for these only
        from normspec.adapters.keras import keras_layer

        return keras_layer.recognise(obj, profile, arguments)
    return None


def construct(cls: type, **arguments: Any) -> Any:
    """An instance of ``cls`` with BatchNormalization's defaults under ``arguments``."""
    return cls(**{**_DEFAULTS, **arguments})


def probe_input(rank: int, axis: int, num_features: int = 2) -> np.ndarray:
    """A small float32 input of ``rank`` with ``num_features`` on ``axis``."""
    shape = [3] + [2] * (rank - 1)
    shape[axis] = num_features
    return np.linspace(-1.0, 1.0, int(np.prod(shape))).reshape(shape).astype(np.float32)


def has_variables(layer: object, names: tuple[str, ...], is_variable: IsVariable) -> bool:
    """Whether ``layer`` keeps a variable under each of ``names``."""
    return all(is_variable(getattr(layer, name, None)) for name in names)


def recognisable_class(
    obj: object, arguments: Mapping[str, Any] | None, is_variable: IsVariable
) -> bool:
    """Whether the layer class ``obj`` (its framework already known) is BatchNormalization-
    like: it takes :data:`CONSTRUCTOR_ARGUMENTS`, and an instance built on some rank keeps
    the variables :data:`WEIGHTS`."""
    if not isinstance(obj, type):
        return False
    try:
        inspect.signature(obj).bind_partial(**{name: None for name in CONSTRUCTOR_ARGUMENTS})
    except (TypeError, ValueError):
        return False
    for rank in (2, 4, 3, 5):
        try:
            probe = construct(obj, **(arguments or {}))
            probe.build((2,) * rank)
        except Exception:  # a constructor that needs more, or a rank it does not take
            continue
        return has_variables(probe, WEIGHTS, is_variable)
    return False


def takes_renorm(cls: type, arguments: Mapping[str, Any] | None, is_variable: IsVariable) -> bool:
    """Whether ``renorm=True`` (with ``renorm_clipping`` and ``renorm_momentum``) builds a
    layer with the renorm variables ``moving_stddev``, ``renorm_mean``, ``renorm_stddev``.

    Tried rather than read from the signature: tf_keras passes ``renorm`` on through
    ``**kwargs``, and a third-party layer's ``**kwargs`` may go to the base layer, which
    rejects it.
    """
    given = dict(arguments or {})
    if "fused" in given:  # the question is whether the class takes renorm at all
        given["fused"] = False
    renorm = dict(zip(RENORM_ARGUMENTS, (True, {}, 0.99), strict=True))
    try:
        probe = construct(cls, **given, **renorm)
        probe.build((2, 2))
    except Exception:  # no renorm arguments, or they are not taken
        return False
    return has_variables(probe, (*WEIGHTS, *RENORM_WEIGHTS), is_variable)


def layer_ranks(cls: type, arguments: Mapping[str, Any], accepts: Accepts) -> frozenset[int]:
    """The input ranks a BatchNormalization-like class takes: its ``normspec_ranks`` class
    attribute, else those a training call on a tiny input accepts (every rank if none)."""
    declared = getattr(cls, RANKS_ATTRIBUTE, None)
    if declared is not None:
        return frozenset(int(rank) for rank in declared)
    accepted = frozenset(r for r in ALL_RANKS if accepts(cls, r, r - 1, arguments))
    # A class that takes no rank at all is checked on every rank: its errors are reported.
    return accepted or frozenset(ALL_RANKS)


def layer_feature_axes(
    cls: type, ranks: frozenset[int], arguments: Mapping[str, Any], accepts: Accepts
) -> tuple[FeatureAxisPosition, ...]:
    """Its ``normspec_feature_axes``, else ``("last", "first")`` (Keras' default first), less
    a position no accepted rank takes."""
    declared = getattr(cls, FEATURE_AXES_ATTRIBUTE, None)
    if declared is not None:
        return tuple(declared)
    rank = max(ranks)
    if rank < 3 or accepts(cls, rank, 1, arguments):
        return ("last", "first")
    return ("last",)


def layer_arguments(
    config: LayerConfig,
    parameters: ParameterPolicy,
    dialect: Dialect | None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The constructor arguments of the layer ``config`` describes: ``axis``, ``momentum``,
    ``epsilon``, ``center = scale = affine``, the dtype policy (:func:`dtype_policy`), the
    target's ``extra`` arguments, and a renorm config's (:func:`renorm_arguments`)."""
    arguments: dict[str, Any] = {
        "axis": config.feature_axis,
        "momentum": config.momentum,
        "epsilon": config.eps,
        "center": config.affine,
        "scale": config.affine,
        "dtype": dtype_policy(config.dtype, parameters),
        **(extra or {}),
    }
    if config.renorm is not None:
        arguments.update(renorm_arguments(config.renorm, dialect))
    return arguments


def built_shape(config: LayerConfig) -> tuple[int, ...]:
    """The input shape a layer for ``config`` is built for: its features, every other size 1."""
    shape = [1] * config.rank
    shape[config.feature_axis] = config.num_features
    return tuple(shape)


def built(cls: type, config: LayerConfig, arguments: Mapping[str, Any]) -> Any:
    """An instance of ``cls`` with ``arguments``, built for ``config``'s input shape."""
    layer = cls(**arguments)
    layer.build(built_shape(config))
    return layer


#: What makes two built layers alike: the class, its constructor arguments (name and repr of
#: each, in order) and the shape it was built for.
Construction = tuple[type, tuple[tuple[str, str], ...], tuple[int, ...]]

#: Constructor arguments that the libraries' own BatchNormalization keeps, given Python
#: floats, as the attribute of the same name, read at every call and nowhere else (not when
#: building): a built layer serves another value once the attribute is set
#: (:func:`call_time_arguments`). Per flavour: eps and the momentum on both; tf_keras's
#: renorm momentum and clipping too, its constructor checking the clipping's keys only (Keras
#: 3's checks its values, ``rmax > rmin`` and ``dmax >= 0``: they stay constructor-only).
CALL_TIME_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "keras": ("momentum", "epsilon"),
    "tf_keras": ("momentum", "epsilon", "renorm_momentum", "renorm_clipping"),
}
#: The keys of ``renorm_clipping`` both libraries take.
CLIPPING_KEYS = frozenset({"rmin", "rmax", "dmax"})


def call_time_arguments(arguments: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The arguments among ``arguments`` that a built layer of the library's own class of
    flavour ``kind`` takes by setting its attribute (:data:`CALL_TIME_ARGUMENTS`): Python
    floats exactly (a float subclass may convert otherwise), a clipping a dict of them."""
    return {
        name: arguments[name]
        for name in CALL_TIME_ARGUMENTS[kind]
        if _settable(arguments.get(name))
    }


def _settable(value: object) -> bool:
    if isinstance(value, dict):
        return set(value) <= CLIPPING_KEYS and all(type(v) is float for v in value.values())
    return type(value) is float


def set_call_time_arguments(layer: object, arguments: Mapping[str, Any]) -> None:
    """Set :func:`call_time_arguments` on a built layer, as its constructor does (a
    clipping as a dict of its own)."""
    for name, value in arguments.items():
        setattr(layer, name, dict(value) if isinstance(value, dict) else value)


def construction(
    cls: type,
    config: LayerConfig,
    arguments: Mapping[str, Any],
    *,
    skipped: Collection[str] = (),
) -> Construction:
    """The key of :func:`built`'s layer: two layers with equal keys are built alike (the
    arguments compared by their reprs: ``1`` and ``1.0``, ``0.0`` and ``-0.0`` differ).
    ``skipped``: arguments set after building (:func:`call_time_arguments`), left out."""
    given = tuple((name, repr(value)) for name, value in arguments.items() if name not in skipped)
    return cls, given, built_shape(config)


def capability_notes() -> dict[str, str]:
    """Why a Keras BatchNormalization lacks what it lacks, on every backend."""
    return {
        "untracked": "a Keras BatchNormalization always keeps moving statistics; "
        "trainable=False freezes it and makes it normalize with the moving statistics "
        "even with training=True (inference behaviour), which is not an untracked mode",
        "cumulative_average": "Keras takes a float momentum: no cumulative average",
        "step_counter": "Keras keeps no step counter",
        "feature_axes": "Keras takes any axis; axis=1 and the last axis are checked",
    }


__all__ = [
    "ALL_RANKS",
    "BACKENDS",
    "CALL_TIME_ARGUMENTS",
    "CLIPPING_KEYS",
    "CONSTRUCTOR_ARGUMENTS",
    "FEATURE_AXES_ATTRIBUTE",
    "RANKS_ATTRIBUTE",
    "RENORM_ARGUMENTS",
    "RENORM_WEIGHTS",
    "WEIGHTS",
    "BackendError",
    "Construction",
    "built",
    "built_shape",
    "call_time_arguments",
    "capability_notes",
    "chapter_config",
    "construct",
    "construction",
    "dtype_policy",
    "has_variables",
    "keras_on",
    "layer_arguments",
    "layer_feature_axes",
    "layer_ranks",
    "library_momentum",
    "probe_input",
    "read_renorm_state",
    "recognisable_class",
    "recognise",
    "renorm_arguments",
    "renorm_probe_config",
    "set_call_time_arguments",
    "takes_renorm",
    "write_renorm_state",
]
