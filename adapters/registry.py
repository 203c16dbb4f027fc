"""Resolving a TARGET (``package.module:attr``) to an :class:`Implementation`.

A target is either an object implementing the protocol (or a zero-argument callable that
returns one), or an object that a framework adapter recognises: each recogniser is named
here by import path and imported only when its framework is already loaded, so that
normspec itself never imports a framework at start-up.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

from normspec.adapters._quiet import quiet_startup
from normspec.adapters.protocol import Implementation

#: (framework module that must be loaded, "module:function" of the recogniser).
#: A recogniser takes (object, profile name) and returns an Implementation or None.
RECOGNISERS: list[tuple[str, str]] = [
    ("torch", "normspec.adapters.torch_distributed:recognise"),
    ("torch", "normspec.adapters.torch_module:recognise"),
    ("keras", "normspec.adapters.keras_layer:recognise"),
    ("tf_keras", "normspec.adapters.keras_layer:recognise"),
    ("flax", "normspec.adapters.flax_linen:recognise"),
    ("flax", "normspec.adapters.flax_nnx:recognise"),
    ("jax", "normspec.adapters.jax_functional:recognise"),
]

#: Short names for built-in targets.
ALIASES: dict[str, str] = {
    "reference": "normspec.adapters.reference:ReferenceImplementation",
    "torch.functional": "normspec.adapters.torch_functional:FunctionalBatchNorm",
    "keras": "normspec.adapters.keras_layer:keras_batchnorm",
    "keras.renorm": "normspec.adapters.keras_layer:keras_renorm",
    "tf_keras": "normspec.adapters.keras_layer:tf_keras_nonfused",
    "tf_keras.nonfused": "normspec.adapters.keras_layer:tf_keras_nonfused",
    "tf_keras.fused": "normspec.adapters.keras_layer:tf_keras_fused",
    "tf_keras.renorm": "normspec.adapters.keras_layer:tf_keras_renorm",
    "tf.nn": "normspec.adapters.tf_nn:BatchNormalizationFunctional",
    "tf.nn.batch_normalization": "normspec.adapters.tf_nn:BatchNormalizationFunctional",
    "tf.nn.fused_batch_norm": "normspec.adapters.tf_nn:FusedBatchNormFunctional",
    "flax.linen": "normspec.adapters.flax_linen:linen_batchnorm",
    "flax.linen.two_pass": "normspec.adapters.flax_linen:linen_batchnorm_two_pass",
    "flax.nnx": "normspec.adapters.flax_nnx:nnx_batchnorm",
    "flax.nnx.two_pass": "normspec.adapters.flax_nnx:nnx_batchnorm_two_pass",
}


class TargetError(ValueError):
    """The target cannot be loaded or is not an implementation: a usage error."""


def _import_attr(target: str) -> Any:
    module_name, sep, attr_path = target.partition(":")
    if not sep or not module_name or not attr_path:
        raise TargetError(f"target {target!r} must have the form package.module:attr")
    try:
        with quiet_startup():  # a library's native start-up logs (TensorFlow's)
            module = importlib.import_module(module_name)
    except ImportError as problem:
        raise TargetError(
            f"cannot import {module_name!r} for target {target!r}: {problem}"
        ) from None
    value: Any = module
    for part in attr_path.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise TargetError(f"{module_name!r} has no attribute {attr_path!r}") from None
    return value


def _recognise(value: Any, profile: str) -> Implementation | None:
    for framework, path in RECOGNISERS:
        if framework not in sys.modules:
            continue
        recogniser: Callable[[Any, str], Implementation | None] = _import_attr(path)
        found = recogniser(value, profile)
        if found is not None:
            return found
    return None


def load_target(target: str, profile: str) -> Implementation:
    """The implementation a target names, checked under ``profile``."""
    value = _import_attr(ALIASES.get(target, target))
    if target in ALIASES:
        value = value(profile)
    if isinstance(value, Implementation):
        return value
    recognised = _recognise(value, profile)
    if recognised is not None:
        return recognised
    if callable(value) and not isinstance(value, type):
        try:
            made = value()
        except TypeError:
            made = None
        if isinstance(made, Implementation):
            return made
    if isinstance(value, type):
        try:
            instance = value()
        except TypeError:
            instance = None
        if isinstance(instance, Implementation):
            return instance
    raise TargetError(
        f"target {target!r} is a {type(value).__name__}, not an implementation: it neither "
        "implements normspec.adapters.Implementation nor is recognised by a framework adapter"
    )
