"""``flax.nnx.BatchNorm`` and every nnx Module class built like it, with no glue code.

An nnx Module class is recognised when its constructor takes ``nnx.BatchNorm``'s
arguments ``num_features, *, use_running_average, axis, momentum, epsilon, use_bias,
use_scale, rngs`` and an instance holds one ``scale`` and one ``bias`` among its
``nnx.Param`` variables and one ``mean`` and one ``var`` among its other variables
(``nnx.BatchStat``). The optional arguments ``dtype``, ``param_dtype`` and
``use_fast_variance`` are passed when the constructor takes them.

A layer config becomes the module a user writes, as for :mod:`flax_linen`: ``momentum``
as given (``1 - alpha`` under the ``flax`` profile), ``epsilon=eps``, ``axis=-1`` (features
last, the default) or ``axis=1``, ``use_scale=use_bias=affine``, ``dtype`` the input's
dtype, ``param_dtype`` float32 for half inputs (or the input's dtype, policy ``input``)
and float64 for float64 layers, ``rngs=nnx.Rngs(0)``. Training is an instance constructed
with ``use_running_average=False``, inference one with ``use_running_average=True``; both
run as pure functions of their split state (``nnx.split`` / ``nnx.merge``), jitted with
``jax.jit``.

Built-in targets: ``flax.nnx`` (Flax's defaults, ``use_fast_variance=True``) and
``flax.nnx.two_pass`` (``use_fast_variance=False``).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import jax
from flax import nnx

from normspec.adapters.jax._flax import SETTINGS, FlaxImplementation, settings_structure, stand_ins
from normspec.adapters.jax._jax import (
    JaxProgram,
    Tree,
    abstract,
)
from normspec.adapters.jax._module import share_compilation
from normspec.adapters.jax.traced_settings import hyper_settings
from normspec.adapters.protocol import LayerConfig

#: The keyword arguments a constructor must take to be recognised (besides num_features).
REQUIRED_ARGUMENTS = (
    "use_running_average",
    "axis",
    "momentum",
    "epsilon",
    "use_bias",
    "use_scale",
    "rngs",
)


def _constructor(cls: type) -> inspect.Signature | None:
    """The signature of ``cls.__init__`` (``self`` included).

    nnx's metaclass hides the constructor's signature behind ``(*args, **kwargs)``.
    """
    try:
        return inspect.signature(cls.__init__)  # type: ignore[misc]
    except (TypeError, ValueError):
        return None


def _accepts(cls: type, name: str) -> bool:
    """Whether the constructor takes the keyword ``name`` (by name, or as ``**kwargs``)."""
    signature = _constructor(cls)
    if signature is None:
        return False
    parameters = signature.parameters
    return name in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )


def constructor_keywords(cls: type) -> frozenset[str]:
    """The names of the constructor's keyword arguments (``self`` left out)."""
    signature = _constructor(cls)
    if signature is None:
        return frozenset()
    keywords = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(
        name for name, p in list(signature.parameters.items())[1:] if p.kind in keywords
    )


def takes_batchnorm_arguments(cls: type) -> bool:
    """Whether ``cls(num_features, use_running_average=..., axis=..., ..., rngs=...)`` binds."""
    signature = _constructor(cls)
    if signature is None:
        return False
    try:
        signature.bind(None, 2, **{name: None for name in REQUIRED_ARGUMENTS})
    except TypeError:
        return False
    return True


def _split(module: nnx.Module) -> tuple[Any, Tree, Tree]:
    """(graph definition, ``nnx.Param`` state, every other state)."""
    parts: tuple[Any, ...] = nnx.split(module, nnx.Param, ...)
    graph, params, stats = parts
    return graph, params, stats


class NnxProgram(JaxProgram):
    """One configured nnx module as pure functions of its parameter and statistics state.

    The two instances (training, inference) are constructed eagerly, which runs their
    initializers: their state is the layer's initial state. Of ``nnx.BatchNorm`` itself,
    eps and the momentum are jit arguments (``hyper``, set on the merged module as
    :class:`~normspec.adapters.jax.traced_settings.Setting` stand-ins): configurations of one shape
    that differ only in them share one compilation.
    """

    #: the scalar settings a shared compilation takes as jit arguments (``share_compilation``):
    #: eps and the momentum of the API's own BatchNorm, a renorm module's warm-up step
    hyper: Mapping[str, Any] = MappingProxyType({})

    def __init__(self, cls: type[nnx.Module], arguments: Mapping[str, Any], config: LayerConfig):
        self.module_class, self.arguments = cls, arguments
        self.train_graph, params, stats = _split(self.module(config, False))
        self.infer_graph, _, _ = _split(self.module(config, True))
        self._made = (params, stats)
        super().__init__(config)
        structure = settings_structure(cls, nnx.BatchNorm, arguments, config)
        self._own_hyper: Mapping[str, Any] | None = None
        if structure is not None:
            self.hyper = self._own_hyper = hyper_settings(config)
            self.steps_by_vjp = True
            share_compilation(self, structure, self.hyper)

    def module(self, config: LayerConfig, use_running_average: bool, **changes: Any) -> nnx.Module:
        """The module a user constructs for ``config`` (its initializers run), with the
        constructor arguments ``changes`` besides the program's."""
        factory: Any = self.module_class
        return factory(
            config.num_features,
            use_running_average=use_running_average,
            rngs=nnx.Rngs(0),
            **{**self.arguments, **changes},
        )

    def make_initial(self) -> tuple[Tree, Tree]:
        return self._made

    def abstract_initial(self) -> tuple[Tree, Tree]:
        def spec(value: Any) -> jax.ShapeDtypeStruct:
            return abstract(value.shape, value.dtype)

        return jax.tree_util.tree_map(spec, self._made)

    def _apply(
        self, graph: Any, params: Tree, stats: Tree, x: jax.Array, **options: Any
    ) -> tuple[Any, Tree]:
        module: Any = nnx.merge(graph, params, stats)
        if self._own_hyper is None or self.hyper is self._own_hyper:
            y = module(x, **options)
        else:  # a shared compilation's trace: the settings traced, then the floats again
            floats = {name: getattr(module, name) for name in SETTINGS}
            for name, stand_in in stand_ins(self.hyper).items():
                setattr(module, name, stand_in)
            y = module(x, **options)
            for name, value in floats.items():
                setattr(module, name, value)
        _, _, updated = _split(module)
        return y, updated

    def graph(self, training: bool) -> Any:
        """The graph definition of the training or the inference module."""
        return self.train_graph if training else self.infer_graph

    def apply_train(
        self, params: Tree, stats: Tree, x: jax.Array, *, mask: jax.Array | None = None
    ) -> tuple[Any, Tree]:
        options = {} if mask is None else {"mask": mask}
        return self._apply(self.graph(True), params, stats, x, **options)

    def apply_infer(self, params: Tree, stats: Tree, x: jax.Array) -> tuple[Any, Tree]:
        return self._apply(self.graph(False), params, stats, x)


class FlaxNnxImplementation(FlaxImplementation):
    """A BatchNorm-like ``flax.nnx.Module`` class under test (default: ``nnx.BatchNorm``)."""

    library = "flax.nnx"
    requirements = (
        f"the constructor arguments num_features, {', '.join(REQUIRED_ARGUMENTS)} and the "
        "variables scale, bias (nnx.Param) and mean, var"
    )

    @staticmethod
    def default_class() -> type:
        return nnx.BatchNorm

    @staticmethod
    def accepts(module_class: type, name: str) -> bool:
        return _accepts(module_class, name)

    @staticmethod
    def shaped_like_batchnorm(obj: object) -> bool:
        return (
            isinstance(obj, type) and issubclass(obj, nnx.Module) and takes_batchnorm_arguments(obj)
        )

    @staticmethod
    def program_for(
        module_class: type, arguments: Mapping[str, Any], config: LayerConfig
    ) -> NnxProgram:
        return NnxProgram(module_class, arguments, config)


def nnx_batchnorm(profile: str = "flax") -> FlaxNnxImplementation:
    """``normspec check flax.nnx``: ``flax.nnx.BatchNorm`` with Flax's defaults."""
    return FlaxNnxImplementation(profile=profile)


def nnx_batchnorm_two_pass(profile: str = "flax") -> FlaxNnxImplementation:
    """``normspec check flax.nnx.two_pass``: ``flax.nnx.BatchNorm(use_fast_variance=False)``."""
    return FlaxNnxImplementation(profile=profile, use_fast_variance=False)


#: The recogniser this package declares (``ADAPTERS``).
recognise = FlaxNnxImplementation.recognise
