"""``flax.linen.BatchNorm`` and every linen Module class built like it, with no glue code.

A linen Module class is recognised when it has ``flax.linen.BatchNorm``'s fields
``use_running_average, axis, momentum, epsilon, use_bias, use_scale`` and its variables,
created by ``init`` on a small input, hold one ``scale`` and one ``bias`` among its
``params`` and one ``mean`` and one ``var`` among its other collections (``batch_stats``).
Its optional fields ``dtype``, ``param_dtype`` and ``use_fast_variance`` are used when
present.

A layer config becomes the module a user writes: ``momentum`` as given (the profile's
convention; under ``flax`` it is ``1 - alpha``), ``epsilon=eps``, ``axis=-1`` for the
features last (Flax's default) or ``axis=1`` for the features first,
``use_scale=use_bias=affine``, ``dtype`` the input's dtype and ``param_dtype`` float32 for
half-precision inputs (mixed precision, the Flax examples' idiom) or the input's dtype
(policy ``input``; float64 layers always use ``param_dtype=float64``). Training is a module
with ``use_running_average=False`` applied with its statistics mutable, inference one with
``use_running_average=True`` (also applied with them mutable, so that an implementation
that changes them in inference is caught by bn.running.no_inference_update rather than
raising).

Built-in targets: ``flax.linen`` (Flax's defaults, ``use_fast_variance=True``: the variance
as ``E[x^2] - E[x]^2``) and ``flax.linen.two_pass`` (``use_fast_variance=False``:
``E[(x - E[x])^2]``). There is no untracked mode, cumulative average or step counter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import jax
from flax import linen as nn

from normspec.adapters.jax._flax import FlaxImplementation, settings_structure, stand_ins
from normspec.adapters.jax._jax import (
    JaxProgram,
    Tree,
    probe_input,
)
from normspec.adapters.jax._module import share_compilation
from normspec.adapters.jax.traced_settings import hyper_settings
from normspec.adapters.protocol import LayerConfig

#: The fields a linen Module class needs to be recognised.
REQUIRED_FIELDS = ("use_running_average", "axis", "momentum", "epsilon", "use_bias", "use_scale")
#: The collection of trainable variables; every other collection is statistics.
PARAMS = "params"


def module_fields(cls: type) -> frozenset[str]:
    """The dataclass fields of a linen Module class."""
    try:
        return frozenset(field.name for field in dataclasses.fields(cls))
    except TypeError:
        return frozenset()


class LinenProgram(JaxProgram):
    """One configured linen module: ``init`` and ``apply`` of its training and inference clones.

    Of ``nn.BatchNorm`` itself, eps and the momentum are jit arguments (``hyper``, read
    through :class:`~normspec.adapters.jax.traced_settings.Setting` stand-ins): configurations of one
    shape that differ only in them share one compilation, and their initial variables
    (which do not depend on them) one ``init``.
    """

    #: the scalar settings a shared compilation takes as jit arguments (``share_compilation``):
    #: eps and the momentum of the API's own BatchNorm, a renorm module's warm-up step
    hyper: Mapping[str, Any] = MappingProxyType({})

    def __init__(self, cls: type[nn.Module], arguments: Mapping[str, Any], config: LayerConfig):
        self.cls, self.arguments = cls, arguments
        self.train_module = cls(use_running_average=False, **arguments)
        self.infer_module = cls(use_running_average=True, **arguments)
        super().__init__(config)
        structure = settings_structure(cls, nn.BatchNorm, arguments, config)
        self._own_hyper: Mapping[str, Any] | None = None
        if structure is not None:
            self.hyper = self._own_hyper = hyper_settings(config)
            self.steps_by_vjp = True
            self.template = share_compilation(self, structure, self.hyper)

    def module(self, training: bool) -> nn.Module:
        """The training or inference module; with traced settings where ``hyper`` was
        replaced by them (a shared compilation's trace)."""
        if self._own_hyper is None or self.hyper is self._own_hyper:
            return self.train_module if training else self.infer_module
        arguments = {**self.arguments, **stand_ins(self.hyper)}
        return self.cls(use_running_average=not training, **arguments)

    def _init(self, x: Any) -> tuple[Tree, Tree]:
        variables = self.train_module.init(jax.random.key(0), x)
        params = variables.get(PARAMS, {})
        stats = {name: tree for name, tree in variables.items() if name != PARAMS}
        return params, stats

    def make_initial(self) -> tuple[Tree, Tree]:
        """``init`` on a small zero input, jitted: one small compilation (the forward is
        dead code) rather than one per primitive of an eager forward, which JAX compiles
        for each new probe shape."""
        if self.template is not self:
            return self.template.initial()
        probe = probe_input(self.config)
        return jax.jit(lambda: self._init(jax.numpy.zeros(probe.shape, probe.dtype)))()

    def abstract_initial(self) -> tuple[Tree, Tree]:
        return jax.eval_shape(self._init, probe_input(self.config))

    def abstract_structure(self) -> tuple[Tree, Tree]:
        """``init`` and a training step traced together: one trace per configuration."""

        def created_and_stepped(x: jax.Array) -> tuple[Tree, Tree]:
            params, stats = self._init(x)
            _, stepped = self.apply_train(params, stats, x)
            return params, stepped

        return jax.eval_shape(created_and_stepped, probe_input(self.config))

    def _apply(
        self, module: nn.Module, params: Tree, stats: Tree, x: jax.Array, **options: Any
    ) -> tuple[Any, Tree]:
        variables = {PARAMS: params, **stats}
        if not stats:
            return module.apply(variables, x, **options), stats
        y, updated = module.apply(variables, x, mutable=list(stats), **options)
        return y, {**stats, **updated}

    def apply_train(
        self, params: Tree, stats: Tree, x: jax.Array, *, mask: jax.Array | None = None
    ) -> tuple[Any, Tree]:
        options = {} if mask is None else {"mask": mask}
        return self._apply(self.module(True), params, stats, x, **options)

    def apply_infer(self, params: Tree, stats: Tree, x: jax.Array) -> tuple[Any, Tree]:
        return self._apply(self.module(False), params, stats, x)


class FlaxLinenImplementation(FlaxImplementation):
    """A BatchNorm-like ``flax.linen.Module`` class under test (default: ``nn.BatchNorm``)."""

    library = "flax.linen"
    requirements = (
        f"the fields {', '.join(REQUIRED_FIELDS)} and the variables params/scale, "
        "params/bias, batch_stats/mean, batch_stats/var"
    )

    @staticmethod
    def default_class() -> type:
        return nn.BatchNorm

    @staticmethod
    def accepts(module_class: type, name: str) -> bool:
        return name in module_fields(module_class)

    @staticmethod
    def shaped_like_batchnorm(obj: object) -> bool:
        return (
            isinstance(obj, type)
            and issubclass(obj, nn.Module)
            and set(REQUIRED_FIELDS) <= module_fields(obj)
        )

    @staticmethod
    def program_for(
        module_class: type, arguments: Mapping[str, Any], config: LayerConfig
    ) -> LinenProgram:
        return LinenProgram(module_class, arguments, config)


def linen_batchnorm(profile: str = "flax") -> FlaxLinenImplementation:
    """``normspec check flax.linen``: ``flax.linen.BatchNorm`` with Flax's defaults."""
    return FlaxLinenImplementation(profile=profile)


def linen_batchnorm_two_pass(profile: str = "flax") -> FlaxLinenImplementation:
    """``normspec check flax.linen.two_pass``: ``flax.linen.BatchNorm(use_fast_variance=False)``."""
    return FlaxLinenImplementation(profile=profile, use_fast_variance=False)


#: The recogniser this package declares (``ADAPTERS``).
recognise = FlaxLinenImplementation.recognise
