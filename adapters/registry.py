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
from normspec.adapters.declarations import Adapters, collected
from normspec.adapters.protocol import Implementation

#: What the adapter packages declare (:mod:`normspec.adapters.declarations`).
DECLARED: Adapters = collected()

#: Short names for built-in targets, and the factory (``"module:function"``) of each.
ALIASES: dict[str, str] = {t.target: t.factory for t in DECLARED.targets if t.factory}


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
    for declared in DECLARED.recognisers:
        if declared.framework not in sys.modules:
            continue
        recogniser: Callable[..., Implementation | None] = _import_attr(declared.function)
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
    for declared in DECLARED.explainers:
        if declared.framework in sys.modules:
            explainer: Callable[[Any, Mapping[str, Any]], str | None] = _import_attr(
                declared.function
            )
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
    for suffix, loader_path in DECLARED.file_loaders:
        if location.endswith(suffix):
            loader: Callable[..., Implementation] = _import_attr(loader_path)
            try:
                return loader(path, profile, arguments)
            except (OSError, TypeError, ValueError) as problem:
                raise TargetError(f"target {target!r}: {problem}") from None
    return None


def target_environment(target: str) -> dict[str, str]:
    """The variables the worker process of ``target`` needs in its environment."""
    path = parse_target(target)[0]
    declared = next((t for t in DECLARED.targets if t.target == path), None)
    return dict(declared.environment) if declared is not None else {}


def looks_like_target(target: str) -> bool:
    """Whether ``target`` has a target's form: ``package.module:attr``, an alias, or a file."""
    path = parse_target(target)[0]
    location = path.partition("#")[0]
    return (
        ":" in path
        or path in ALIASES
        or location.endswith(tuple(s for s, _ in DECLARED.file_loaders))
    )


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
