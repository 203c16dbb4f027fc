"""Resolving a TARGET (``package.module:attr``) to an :class:`Implementation`.

A target is either an object implementing the protocol (or a zero-argument callable that
returns one), or an object that a framework adapter recognises: each recogniser is named
here by import path and imported only when its framework is already loaded, so that
normspec itself never imports a framework at start-up.

A target may end with constructor arguments, ``package.module:Class(name=value, ...)``:
keyword arguments whose values are Python literals (read with ``ast.literal_eval``, never
evaluated), for a class a recogniser builds (those whose recogniser takes ``arguments``)
or an implementation class or factory (called with them).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import sys
from collections.abc import Callable, Mapping
from typing import Any

from normspec.adapters._quiet import quiet_startup
from normspec.adapters.protocol import Implementation

#: (framework module that must be loaded, "module:function" of the recogniser).
#: A recogniser takes (object, profile name) and returns an Implementation or None; one that
#: builds classes with the target's constructor arguments also takes ``arguments``.
RECOGNISERS: list[tuple[str, str]] = [
    ("torch", "normspec.adapters.torch_family:recognise"),  # LayerNorm, RMSNorm (layernorm.md)
    ("torch", "normspec.adapters.torch_distributed:recognise"),
    ("torch", "normspec.adapters.torch_module:recognise"),
    ("keras", "normspec.adapters.keras_layer:recognise"),
    ("tf_keras", "normspec.adapters.keras_layer:recognise"),
    ("flax", "normspec.adapters.flax_linen:recognise"),
    ("flax", "normspec.adapters.flax_nnx:recognise"),
    # issue 13, haiku and equinox (to move into their adapter modules with the others)
    ("haiku", "normspec.adapters.haiku_module:recognise"),
    ("equinox", "normspec.adapters.equinox_module:recognise"),
    # end of issue 13, haiku and equinox
    ("jax", "normspec.adapters.jax_functional:recognise"),
]

#: (framework module, "module:function"): why an object of that framework is recognised by
#: none of its recognisers, and what to do (``None``: not its framework's), for the error.
EXPLAINERS: list[tuple[str, str]] = [
    ("torch", "normspec.adapters.torch_module:explain"),
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
    # issue 13, haiku and equinox (to move into their adapter modules with the others)
    "haiku": "normspec.adapters.haiku_module:haiku_batchnorm",
    "equinox": "normspec.adapters.equinox_module:equinox_batchnorm",
    "equinox.ema": "normspec.adapters.equinox_module:equinox_batchnorm_ema",
    # end of issue 13, haiku and equinox
    # -- ONNX (normspec.adapters.onnx_op): BatchNormalization-15; onnxruntime(opset=9) --
    "onnx.reference": "normspec.adapters.onnx_op:reference_evaluator",
    "onnxruntime": "normspec.adapters.onnx_op:onnxruntime_cpu",
}

#: (file suffix, "module:function"): a target naming a file, ``path/model.onnx#Node``; the
#: loader takes (the target's path, profile name, constructor arguments).
FILE_TARGETS: list[tuple[str, str]] = [
    (".onnx", "normspec.adapters.onnx_file:load_node"),  # ONNX (normspec.adapters.onnx_file)
]


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


def parse_target(target: str) -> tuple[str, dict[str, Any]]:
    """``package.module:attr(name=literal, ...)`` as the path and the constructor arguments
    (none without parentheses); :class:`TargetError` for anything but literal keywords."""
    path, bracket, rest = target.partition("(")
    if not bracket:
        return target, {}
    try:
        call = ast.parse(f"f({rest}", mode="eval").body
    except SyntaxError:
        call = None
    if not isinstance(call, ast.Call) or call.args or any(k.arg is None for k in call.keywords):
        raise TargetError(
            f"target {target!r}: constructor arguments are keyword arguments, "
            "package.module:Class(name=value, ...)"
        )
    arguments = {}
    for keyword in call.keywords:
        try:
            arguments[str(keyword.arg)] = ast.literal_eval(keyword.value)
        except ValueError:
            raise TargetError(
                f"target {target!r}: the value of {keyword.arg} is not a Python literal "
                f"({ast.unparse(keyword.value)})"
            ) from None
    return path.strip(), arguments


def _takes_arguments(recogniser: Callable[..., Any]) -> bool:
    return "arguments" in inspect.signature(recogniser).parameters


def _recognise(
    value: Any, profile: str, arguments: Mapping[str, Any] | None = None
) -> Implementation | None:
    for framework, path in RECOGNISERS:
        if framework not in sys.modules:
            continue
        recogniser: Callable[..., Implementation | None] = _import_attr(path)
        if not arguments:
            found = recogniser(value, profile)
        elif _takes_arguments(recogniser):
            found = recogniser(value, profile, arguments=arguments)
        else:
            continue
        if found is not None:
            return found
    return None


def _explain(value: Any, arguments: Mapping[str, Any]) -> str | None:
    for framework, path in EXPLAINERS:
        if framework in sys.modules:
            explainer: Callable[[Any, Mapping[str, Any]], str | None] = _import_attr(path)
            found = explainer(value, arguments)
            if found is not None:
                return found
    return None


def _made(factory: Any, arguments: Mapping[str, Any]) -> Implementation | None:
    """What calling ``factory`` with ``arguments`` makes, if it is an implementation."""
    try:
        made = factory(**arguments)
    except TypeError:
        return None
    return made if isinstance(made, Implementation) else None


def _keywords(factory: Callable[..., Any]) -> set[str]:
    """The keyword-only arguments a built-in target's factory takes."""
    parameters = inspect.signature(factory).parameters.values()
    return {p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _built_in(target: str, path: str, profile: str, arguments: Mapping[str, Any]) -> Any:
    """What the alias ``path`` makes, with the keyword arguments its factory takes
    (``onnxruntime(opset=9)``)."""
    factory: Callable[..., Any] = _import_attr(ALIASES[path])
    taken = _keywords(factory)
    if not taken and arguments:
        raise TargetError(f"target {target!r}: built-in targets take no constructor arguments")
    unknown = sorted(set(arguments) - taken)
    if unknown:
        raise TargetError(
            f"target {target!r}: built-in target {path} takes {', '.join(sorted(taken))}, "
            f"not {', '.join(unknown)}"
        )
    try:
        return factory(profile, **arguments)
    except (TypeError, ValueError) as problem:
        raise TargetError(f"target {target!r}: {problem}") from None


def _file_target(target: str, path: str, profile: str, arguments: Mapping[str, Any]) -> Any:
    """The implementation a file target makes (``path/model.onnx#Node``), or ``None``."""
    location = path.partition("#")[0]
    for suffix, loader_path in FILE_TARGETS:
        if location.endswith(suffix):
            loader: Callable[..., Implementation] = _import_attr(loader_path)
            try:
                return loader(path, profile, arguments)
            except (OSError, TypeError, ValueError) as problem:
                raise TargetError(f"target {target!r}: {problem}") from None
    return None


def looks_like_target(target: str) -> bool:
    """Whether ``target`` has a target's form: ``package.module:attr``, an alias, or a file."""
    path = parse_target(target)[0]
    location = path.partition("#")[0]
    return ":" in path or path in ALIASES or location.endswith(tuple(s for s, _ in FILE_TARGETS))


def load_target(target: str, profile: str) -> Implementation:
    """The implementation a target names, checked under ``profile``."""
    path, arguments = parse_target(target)
    if path in ALIASES:
        value = _built_in(target, path, profile, arguments)
        arguments = {}
    else:
        value = _file_target(target, path, profile, arguments)
        if value is not None:
            return value
        value = _import_attr(path)
    if isinstance(value, Implementation) and not isinstance(value, type):
        if arguments:
            raise TargetError(f"target {target!r}: {path} is an instance, built already")
        return value
    try:
        recognised = _recognise(value, profile, arguments)
    except (TypeError, ValueError) as problem:
        raise TargetError(f"target {target!r}: {problem}") from None
    if recognised is not None:
        return recognised
    if callable(value):
        made = _made(value, arguments)
        if made is not None:
            return made
    explanation = _explain(value, arguments)
    if explanation is not None:
        raise TargetError(f"target {target!r}: {explanation}")
    raise TargetError(
        f"target {target!r} is a {type(value).__name__}, not an implementation: it neither "
        "implements normspec.adapters.Implementation nor is recognised by a framework adapter"
    )
