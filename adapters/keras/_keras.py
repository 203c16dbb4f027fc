"""What the Keras adapters share on every backend: constructor arguments, dtype policies,
renorm arguments, the capability notes, and loading Keras on a backend.

Imports no framework: :mod:`normspec.adapters.keras.keras_layer` (Keras 3 on TensorFlow, tf_keras)
and :mod:`normspec.adapters.keras.backend` (Keras 3 on JAX, PyTorch, NumPy) build on it.
Keras 3's backend is fixed per process when Keras is imported (``KERAS_BACKEND``):
:func:`keras_on` sets it before the import, or refuses a Keras already imported on another
backend.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from normspec.adapters._common import ParameterPolicy
from normspec.adapters.protocol import Array, LayerConfig, State, UnsupportedConfig, WrongOutput
from normspec.reference.dialects import PROFILES, Dialect, renorm_config
from normspec.reference.renorm import RenormConfig, RenormStatistics
from normspec.reference.schedules import ConstantSchedule

CONSTRUCTOR_ARGUMENTS = ("axis", "momentum", "epsilon", "center", "scale")
RENORM_ARGUMENTS = ("renorm", "renorm_clipping", "renorm_momentum")
WEIGHTS = ("gamma", "beta", "moving_mean", "moving_variance")
RENORM_WEIGHTS = ("moving_stddev", "renorm_mean", "renorm_stddev")

#: The Keras 3 backends normspec checks, as ``KERAS_BACKEND`` names them.
BACKENDS = ("tensorflow", "jax", "torch", "numpy")


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
    """The renorm layer a renorm-only target's dtypes are probed with (constant bounds, no
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
    "BACKENDS",
    "CONSTRUCTOR_ARGUMENTS",
    "RENORM_ARGUMENTS",
    "RENORM_WEIGHTS",
    "WEIGHTS",
    "BackendError",
    "capability_notes",
    "dtype_policy",
    "keras_on",
    "library_momentum",
    "read_renorm_state",
    "renorm_arguments",
    "renorm_probe_config",
    "write_renorm_state",
]
