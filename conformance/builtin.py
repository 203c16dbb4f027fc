"""The built-in implementations ``normspec report`` checks, each with the profile it claims.

One table, :data:`BUILTIN_TARGETS`: the reference always, and every framework target whose
framework is installed and whose adapter this normspec has. An adapter added to
``normspec.adapters.registry`` (an alias or a recogniser) becomes part of the report by
adding its row here; a row whose framework is missing, or whose adapter is not (yet) there,
is reported as not checked, with the reason.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING

from normspec.adapters.protocol import Implementation

if TYPE_CHECKING:
    from normspec.conformance.isolation import Isolation

#: The profile every implementation is also checked under: the paper's semantics.
PAPER = "paper"


@dataclass(frozen=True)
class BuiltinTarget:
    """A target normspec knows, the profile it claims, and the frameworks it needs."""

    target: str
    profile: str
    frameworks: tuple[str, ...] = ()
    label: str = ""

    @property
    def title(self) -> str:
        return self.label or self.target


#: (target, its own profile, frameworks it needs). Targets are ``normspec check`` targets:
#: an alias of ``normspec.adapters.registry.ALIASES`` or ``package.module:attr``.
BUILTIN_TARGETS: tuple[BuiltinTarget, ...] = (
    BuiltinTarget("reference", "paper", (), "normspec reference"),
    BuiltinTarget("torch.nn:BatchNorm2d", "torch", ("torch",)),
    BuiltinTarget("torch.functional", "torch", ("torch",), "torch.nn.functional.batch_norm"),
    # its sync.* clauses run on K processes on GPUs, and are not applicable on the CPU
    BuiltinTarget("torch.nn:SyncBatchNorm", "torch", ("torch",), "torch.nn.SyncBatchNorm"),
    BuiltinTarget("flax.linen", "flax", ("jax", "flax"), "flax.linen.BatchNorm"),
    BuiltinTarget("flax.nnx", "flax", ("jax", "flax"), "flax.nnx.BatchNorm"),
    # zero-debiased moving averages; equinox's default mode="ema" fits no dialect (its
    # training normalizes with the updated running averages), checked under flax's
    BuiltinTarget("haiku", "haiku", ("jax", "haiku"), "haiku.BatchNorm"),
    BuiltinTarget(
        "equinox", "equinox_batch", ("jax", "equinox"), 'equinox.nn.BatchNorm(mode="batch")'
    ),
    BuiltinTarget("equinox.ema", "flax", ("jax", "equinox"), 'equinox.nn.BatchNorm(mode="ema")'),
    BuiltinTarget("keras", "keras", ("tensorflow", "keras"), "keras.layers.BatchNormalization"),
    # Keras 3 on its other backends, each in a worker started with KERAS_BACKEND set
    BuiltinTarget("keras.jax", "keras", ("keras", "jax"), "keras.layers.BatchNormalization (jax)"),
    BuiltinTarget(
        "keras.torch", "keras", ("keras", "torch"), "keras.layers.BatchNormalization (torch)"
    ),
    BuiltinTarget("keras.numpy", "keras", ("keras",), "keras.layers.BatchNormalization (numpy)"),
    BuiltinTarget(
        "tf_keras", "tf_keras", ("tensorflow", "tf_keras"), "tf_keras.layers.BatchNormalization"
    ),
    BuiltinTarget(
        "tf_keras.fused",
        "tf_keras_fused",
        ("tensorflow", "tf_keras"),
        "tf_keras.layers.BatchNormalization(fused=True)",
    ),
    BuiltinTarget(
        "tf_keras.renorm",
        "tf_keras",
        ("tensorflow", "tf_keras"),
        "tf_keras.layers.BatchNormalization(renorm=True)",
    ),
    BuiltinTarget("tf.nn", "tf_keras", ("tensorflow",), "tf.nn.batch_normalization"),
    BuiltinTarget(
        "tf.nn.fused_batch_norm", "torch", ("tensorflow",), "tf.compat.v1.nn.fused_batch_norm"
    ),
    # -- ONNX (normspec.adapters.onnx_op): BatchNormalization-15; "onnxruntime(opset=9)" --
    BuiltinTarget(
        "onnx.reference", "onnx", ("onnx",), "onnx.reference.ReferenceEvaluator (opset 15)"
    ),
    BuiltinTarget("onnxruntime", "onnx", ("onnx", "onnxruntime"), "onnxruntime CPU (opset 15)"),
)


def missing_frameworks(entry: BuiltinTarget) -> list[str]:
    """The frameworks of ``entry`` that are not installed (found without importing them)."""
    missing = []
    for name in entry.frameworks:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def unavailable_reason(entry: BuiltinTarget) -> str | None:
    """Why ``entry`` cannot be checked here without importing anything, or ``None``."""
    missing = missing_frameworks(entry)
    if missing:
        return f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed"
    return None


def load_builtin(
    entry: BuiltinTarget,
    profile: str,
    isolation: Isolation | None = None,
    *,
    timeout: float = 60.0,
) -> Implementation:
    """The implementation of ``entry`` checked under ``profile``, in a worker process started
    as ``isolation`` says (``None``: in this process); ``TargetError`` otherwise."""
    from normspec.adapters.registry import TargetError, looks_like_target
    from normspec.conformance.isolation import load_implementation

    if not looks_like_target(entry.target):
        raise TargetError(f"this normspec has no adapter for {entry.title} yet")
    return load_implementation(entry.target, profile, isolation, timeout=timeout)


def find_builtin(name: str) -> BuiltinTarget | None:
    """The built-in row whose target or label is ``name``."""
    return next((e for e in BUILTIN_TARGETS if name in (e.target, e.label)), None)
