"""Batch normalization written in JAX as a pair of pure functions ``init`` and ``apply``.

The convention (no glue code: normspec recognises it)::

    def init(num_features, *, dtype):                      # affine: bool optional
        return params, state
    def apply(params, state, x, *, training, axis, epsilon, momentum):
        return y, new_state

- ``params`` is a pytree (a dict) holding the per-feature vectors ``"scale"`` (gamma) and
  ``"bias"`` (beta); ``state`` one holding ``"mean"`` and ``"var"``, the running
  statistics. Their dtypes are the implementation's choice (float32 for half inputs, say);
  normspec writes values in those dtypes (the statistics in the dtype ``apply`` returns
  them in).
- ``dtype`` is the input's dtype (``jnp.float32``, ``jnp.bfloat16``, ...); ``y`` must have
  it, and ``x``'s shape.
- ``axis`` is the feature axis: ``-1`` (features last, ``NHWC``) or ``1`` (``NCHW``);
  ``epsilon`` a positive float; ``momentum`` the implementation's own momentum in the
  convention of the profile it claims (under ``flax``: ``new = momentum * old +
  (1 - momentum) * batch``). All three are Python values: ``apply`` is jitted with them
  static, as a user's training step would be.
- ``training=True`` normalizes with the batch statistics and returns the updated state;
  ``training=False`` normalizes with ``state`` and returns it unchanged.
- If ``init`` takes an ``affine`` keyword, ``affine=False`` asks for a layer without
  ``scale`` and ``bias`` (``params`` then holds neither).

The configuration is given to ``apply`` rather than stored by ``init`` so that ``params``
and ``state`` hold arrays only (a pytree of arrays is what ``jax.jit`` and ``jax.grad``
take; a static ``axis`` inside the state would become a tracer).

The target is either function of a module that defines both (``my_bn:apply`` or
``my_bn:init``), or any object with both as attributes (a class with static methods, a
``types.SimpleNamespace``, a submodule).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Mapping
from typing import Any

import jax

from normspec.adapters.jax._jax import (
    BIAS,
    MEAN,
    SCALE,
    VAR,
    JaxImplementation,
    JaxProgram,
    Tree,
    has_variables,
    jax_dtype,
)
from normspec.adapters.protocol import Capabilities, LayerConfig, UnsupportedConfig

#: The keyword arguments ``apply`` takes besides ``params, state, x``.
APPLY_KEYWORDS = ("training", "axis", "epsilon", "momentum")

Pair = tuple[Callable[..., Any], Callable[..., Any]]


def _binds(function: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
    try:
        inspect.signature(function).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return False
    return True


def _takes_keyword(function: Callable[..., Any], name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    found = parameters.get(name)
    return found is not None and found.kind in (
        inspect.Parameter.KEYWORD_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )


def find_pair(obj: object) -> Pair | None:
    """``(init, apply)`` of the target: its attributes, or a function and its sibling."""
    init, apply = getattr(obj, "init", None), getattr(obj, "apply", None)
    if inspect.isfunction(obj) and obj.__name__ in ("init", "apply"):
        module = sys.modules.get(obj.__module__)
        init, apply = getattr(module, "init", None), getattr(module, "apply", None)
        if obj is not init and obj is not apply:
            return None
    if not (inspect.isroutine(init) and inspect.isroutine(apply)):
        return None
    if not _binds(init, 2, dtype=None):
        return None
    if not _binds(apply, None, None, None, **{name: None for name in APPLY_KEYWORDS}):
        return None
    return init, apply


def _name(init: Callable[..., Any], apply: Callable[..., Any]) -> str:
    module = init.__module__
    if apply.__module__ == module:
        return f"{module}:init/apply"
    return f"{module}.{init.__qualname__}, {apply.__module__}.{apply.__qualname__}"


class FunctionalProgram(JaxProgram):
    """``init`` called eagerly once, ``apply`` jitted with the configuration static."""

    def __init__(self, init: Callable[..., Any], apply: Callable[..., Any], config: LayerConfig):
        self.init_function = init
        self.apply_function = apply
        self.static: dict[str, Any] = {
            "axis": 1 if config.feature_position == "first" else -1,
            "epsilon": config.eps,
            "momentum": config.momentum,
        }
        self.init_arguments: dict[str, Any] = {"dtype": jax_dtype(config.dtype)}
        if _takes_keyword(init, "affine"):
            self.init_arguments["affine"] = config.affine
        super().__init__(config)

    def make_initial(self) -> tuple[Tree, Tree]:
        made = self.init_function(self.config.num_features, **self.init_arguments)
        params, state = made
        return params, state

    def apply_train(
        self, params: Tree, stats: Tree, x: jax.Array, *, mask: jax.Array | None = None
    ) -> tuple[Any, Tree]:
        if mask is not None:
            raise UnsupportedConfig("the init/apply convention takes no mask")
        y, state = self.apply_function(params, stats, x, training=True, **self.static)
        return y, state

    def apply_infer(self, params: Tree, stats: Tree, x: jax.Array) -> tuple[Any, Tree]:
        y, state = self.apply_function(params, stats, x, training=False, **self.static)
        return y, state


class JaxFunctionalImplementation(JaxImplementation):
    """A JAX ``init``/``apply`` pair under test (see the module docstring)."""

    library = "the init/apply implementation"

    def __init__(
        self, init: Callable[..., Any], apply: Callable[..., Any], profile: str = "flax"
    ) -> None:
        super().__init__(profile, parameters="float32")
        self.init_function = init
        self.apply_function = apply
        self.affine_keyword = _takes_keyword(init, "affine")
        self.name = f"{_name(init, apply)} (jax {jax.__version__}, jax functional)"

    def base_capabilities(self) -> Capabilities:
        notes = {
            "cumulative_average": "the init/apply convention takes a float momentum",
            "step_counter": "the init/apply convention has no step counter",
            "untracked": "the init/apply convention always keeps a state",
            "strided_input": "JAX arrays have no strides or memory layout: every input is dense",
            "renorm": "the init/apply convention is batch normalization only",
            "replicas": "the init/apply convention takes no axis_name",
        }
        if not self.affine_keyword:
            notes["without_affine"] = "init takes no affine keyword"
        return Capabilities(
            ranks=frozenset({2, 3, 4, 5}),
            feature_axes=("last", "first"),
            backward=True,
            cumulative_average=False,
            untracked=False,
            without_affine=self.affine_keyword,
            step_counter=False,
            strided_input=False,
            notes=notes,
        )

    def library_versions(self) -> Mapping[str, str]:
        return {}

    def program_key(self, config: LayerConfig) -> Any:
        return (
            config.num_features,
            config.feature_position,
            config.dtype,
            config.eps,
            config.momentum,
            config.affine,
        )

    def make_program(self, config: LayerConfig) -> FunctionalProgram:
        return FunctionalProgram(self.init_function, self.apply_function, config)


def recognise(obj: object, profile: str) -> JaxFunctionalImplementation | None:
    """The recogniser this package declares (``ADAPTERS``).

    Besides the signatures, ``init(2, dtype=float32)`` must return ``(params, state)``
    holding ``scale``, ``bias`` and ``mean``, ``var``.
    """
    pair = find_pair(obj)
    if pair is None:
        return None
    init, _ = pair
    try:
        params, state = jax.eval_shape(lambda: init(2, dtype=jax_dtype("float32")))
    except Exception:  # not an init of this convention
        return None
    if not (has_variables(params, (SCALE, BIAS)) and has_variables(state, (MEAN, VAR))):
        return None
    return JaxFunctionalImplementation(*pair, profile=profile)
