"""``equinox.nn.BatchNorm`` (both modes) and every equinox module class built like it.

An equinox module class is recognised when its constructor takes ``equinox.nn.BatchNorm``'s
arguments ``input_size, axis_name, eps, channelwise_affine, momentum`` (``dtype`` too
where it takes it) and an instance, made with ``eqx.nn.make_with_state``, has ``weight``
and ``bias`` vectors, an ``inference`` field (``eqx.nn.inference_mode``) and, among its
``StateIndex`` fields, one holding the running mean and variance (a pair of vectors) and
at most one integer counter and one boolean flag. The target's other constructor arguments
are passed as given: ``equinox.nn:BatchNorm(mode="batch")``.

A layer config becomes the module a user writes: ``input_size`` the features,
``axis_name`` the batch axis normspec vmaps over, ``eps``, ``channelwise_affine =
affine``, ``momentum`` as given (the profile's convention: ``1 - alpha`` under ``flax``),
``dtype`` the input's dtype (the statistics and the affine parameters are kept in it). An
equinox layer takes one sample with its features first, ``(C, ...)``: a batch is the
layer ``jax.vmap``-ed over axis 0 with its ``axis_name`` and the state unbatched
(``in_axes=(0, None), out_axes=(0, None)``), so the features are at axis 1 only.
Training is the module with ``inference=False``, inference with ``inference=True``
(``eqx.nn.inference_mode``), each jitted with the configuration static; equinox's own
class in float32 and float64 takes eps and the momentum as jit arguments instead
(:mod:`~normspec.adapters.jax.traced_settings`), so that layers of one shape that differ
only in them share one compilation.

**State.** The statistics tree is the ``eqx.nn.State`` itself. ``mode="batch"`` keeps the
hidden mean and variance of a zero-debiased average and ``batch_counter``, and inference
reads ``hidden / (1 - momentum^counter)`` (``hidden`` at counter 0): the state reported
is the hidden statistics and the counter (a step counter). ``mode="ema"`` keeps running
statistics and a flag for its first step, which fills them with the batch's statistics;
the flag is set for a state of 0 steps. Until normspec's dialects express zero-debiased
averages, the built-in targets are checked under the ``flax`` profile (README).

Built-in targets: ``equinox`` (``mode="batch"``, equinox's advice for new code) and
``equinox.ema`` (``mode="ema"``, what an unset ``mode`` means).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from normspec.adapters._common import running_statistics
from normspec.adapters.jax._jax import (
    BIAS,
    SCALE,
    JaxProgram,
    Tree,
    from_jax,
    jax_dtype,
    vector_to_jax,
)
from normspec.adapters.jax._module import (
    ModuleImplementation,
    constructor_parameters,
    share_compilation,
    takes_keywords,
)
from normspec.adapters.jax.traced_settings import hyper_settings, stand_ins
from normspec.adapters.protocol import Array, Capabilities, LayerConfig, WrongOutput
from normspec.reference import RunningStatistics

#: The keyword arguments a constructor must take (besides ``input_size`` and ``axis_name``).
REQUIRED_ARGUMENTS = ("eps", "channelwise_affine", "momentum")
#: The name of the vmapped batch axis, the module's ``axis_name``.
AXIS_NAME = "batch"


#: The dtypes in which equinox's own BatchNorm takes eps and the momentum as jit arguments
#: (:mod:`~normspec.adapters.jax.traced_settings`): a float's rounding to float16 or
#: bfloat16 is not its float32 rounding's, so half layers keep the floats.
TRACED_DTYPES = ("float32", "float64")


def _is_index(value: object) -> bool:
    return isinstance(value, eqx.nn.StateIndex)


class EquinoxProgram(JaxProgram):
    """One configured equinox module as pure functions of its parameters and state.

    The parameter tree is ``{"scale": weight, "bias": bias}`` (empty without them), put
    into the module with ``eqx.tree_at`` inside the jitted functions; the statistics tree is
    the module's ``eqx.nn.State``. The module and its state are made eagerly, as a user
    makes them.
    """

    def __init__(self, cls: type, arguments: Mapping[str, Any], config: LayerConfig) -> None:
        model, state = eqx.nn.make_with_state(cls)(config.num_features, AXIS_NAME, **arguments)
        if not hasattr(model, "inference"):
            raise ValueError("the module has no inference field")
        params = {}
        if config.affine:
            params = {SCALE: model.weight, BIAS: model.bias}
        self.model = model
        self._made = (params, state)
        self.statistics_index, self.counter_index, self.flag_index = self._indexes(model, state)
        super().__init__(config)
        #: whether ``hyper`` (eps, the momentum) replaces the module's static floats
        self.traced = cls is eqx.nn.BatchNorm and config.dtype in TRACED_DTYPES
        if self.traced:
            self.hyper = hyper_settings(config)
            fixed = sorted((k, v) for k, v in arguments.items() if k not in ("eps", "momentum"))
            structure = (cls, repr(fixed), config.num_features, config.rank, config.dtype)
            share_compilation(self, structure, self.hyper)

    @staticmethod
    def _indexes(model: Any, state: Any) -> tuple[Any, Any, Any]:
        """The module's state indexes: the statistics (a pair of vectors), the counter
        (an integer scalar) or ``None``, the first-step flag (a boolean scalar) or ``None``;
        ``ValueError`` for any other state."""
        pairs, counters, flags = [], [], []
        for index in jax.tree_util.tree_leaves(model, is_leaf=_is_index):
            if not _is_index(index):
                continue
            value = state.get(index)
            if isinstance(value, tuple) and len(value) == 2:
                pairs.append(index)
            elif jnp.issubdtype(value.dtype, jnp.integer) and value.shape == ():
                counters.append(index)
            elif value.dtype == jnp.bool_ and value.shape == ():
                flags.append(index)
            else:
                raise ValueError(f"the module keeps a state it is not known to: {value!r}")
        if len(pairs) != 1 or len(counters) > 1 or len(flags) > 1:
            raise ValueError("the module keeps no single (mean, variance) pair")
        return pairs[0], (counters or [None])[0], (flags or [None])[0]

    def make_initial(self) -> tuple[Tree, Tree]:
        return self._made

    def abstract_initial(self) -> tuple[Tree, Tree]:
        return jax.eval_shape(lambda: self._made)

    def _module(self) -> Any:
        """The module; with eps and the momentum the stand-ins of ``hyper`` where traced
        (equinox keeps them as static fields of a frozen module: set on a copy)."""
        if not self.traced:
            return self.model
        module = copy.copy(self.model)
        eps, momentum = stand_ins(self.hyper)
        object.__setattr__(module, "eps", eps)
        object.__setattr__(module, "momentum", momentum)
        return module

    def _apply(self, params: Tree, stats: Tree, x: jax.Array, *, inference: bool) -> Any:
        model = eqx.nn.inference_mode(self._module(), value=inference)
        if params:
            model = eqx.tree_at(lambda m: (m.weight, m.bias), model, (params[SCALE], params[BIAS]))
        batched = jax.vmap(model, axis_name=AXIS_NAME, in_axes=(0, None), out_axes=(0, None))
        return batched(x, stats)

    def apply_train(
        self, params: Tree, stats: Tree, x: jax.Array, *, mask: jax.Array | None = None
    ) -> tuple[Any, Tree]:
        return self._apply(params, stats, x, inference=False)

    def apply_infer(self, params: Tree, stats: Tree, x: jax.Array) -> tuple[Any, Tree]:
        return self._apply(params, stats, x, inference=True)

    # -- the state --

    def statistics(self, stats: Tree, steps: int) -> RunningStatistics:
        """The statistics held, and the counter (``steps``: last set, without one)."""
        features = (self.config.num_features,)
        vectors = []
        for value, name in zip(stats.get(self.statistics_index), ("mean", "var"), strict=True):
            if not jnp.issubdtype(value.dtype, jnp.floating):
                raise WrongOutput(f"the running {name} has dtype {value.dtype}")
            vectors.append(from_jax(value, shape=features, dtype=value.dtype, what=name))
        if self.counter_index is not None:
            steps = int(stats.get(self.counter_index))
        return running_statistics(vectors[0], vectors[1], steps)

    def with_statistics(
        self, template: Tree, state: RunningStatistics, others: Callable[[], Tree]
    ) -> Tree:
        """The statistics, the counter at ``state.steps`` and the first-step flag set
        where no step was taken, in the template's dtypes."""
        current = others()
        # State.set invalidates the object it is called on: set on a copy.
        copy = jax.tree_util.tree_unflatten(*reversed(jax.tree_util.tree_flatten(current)))
        kinds = template.get(self.statistics_index)
        values: tuple[Array, Array] = (state.mean, state.var)
        pair = tuple(
            vector_to_jax(value, kind.dtype) for value, kind in zip(values, kinds, strict=True)
        )
        updated = copy.set(self.statistics_index, pair)
        if self.counter_index is not None:
            kind = template.get(self.counter_index)
            # a weak-typed counter (jnp.array(0)) stays weak, as the module's own steps keep it
            counter = (
                jnp.asarray(state.steps)
                if kind.weak_type
                else jnp.asarray(np.asarray(state.steps, kind.dtype))
            )
            updated = updated.set(self.counter_index, counter)
        if self.flag_index is not None:
            updated = updated.set(self.flag_index, jnp.asarray(state.steps == 0))
        return updated


class EquinoxImplementation(ModuleImplementation):
    """A BatchNorm-like equinox module class under test (default: ``eqx.nn.BatchNorm``)."""

    library = "equinox"
    requirements = (
        f"the constructor arguments input_size, axis_name, {', '.join(REQUIRED_ARGUMENTS)}, "
        "the fields weight, bias and inference, and a state index holding the running mean "
        "and variance"
    )
    managed = ("input_size", "axis_name", *REQUIRED_ARGUMENTS, "dtype", "inference")
    significant = ("mode",)

    @staticmethod
    def default_class() -> type:
        return eqx.nn.BatchNorm

    @staticmethod
    def shaped_like_batchnorm(obj: object) -> bool:
        return (
            isinstance(obj, type)
            and issubclass(obj, eqx.Module)
            and takes_keywords(obj, REQUIRED_ARGUMENTS, 2, AXIS_NAME)
        )

    @staticmethod
    def module_arguments(config: LayerConfig) -> dict[str, Any]:
        return {
            "eps": config.eps,
            "channelwise_affine": config.affine,
            "momentum": config.momentum,
            "dtype": jax_dtype(config.dtype),
        }

    @staticmethod
    def program_for(
        module_class: type, arguments: Mapping[str, Any], config: LayerConfig
    ) -> EquinoxProgram:
        if "dtype" not in constructor_parameters(module_class):
            arguments = {name: value for name, value in arguments.items() if name != "dtype"}
        return EquinoxProgram(module_class, arguments, config)

    def module_capabilities(self, program: JaxProgram) -> Capabilities:
        assert isinstance(program, EquinoxProgram)
        counter = program.counter_index is not None
        notes = {
            "feature_axes": "an equinox layer takes one sample with its features first; "
            "normspec vmaps it over the batch",
            "replicas": "the equinox adapter does not run axis_name over devices (sync.*)",
        }
        if not counter:
            notes["step_counter"] = f"{self.module_class.__qualname__} keeps no step counter"
        return self.capabilities_with(("first",), counter, notes)

    def library_versions(self) -> Mapping[str, str]:
        return {"equinox": eqx.__version__}


def equinox_batchnorm(profile: str = "flax") -> EquinoxImplementation:
    """``normspec check equinox``: ``equinox.nn.BatchNorm(mode="batch")``."""
    return EquinoxImplementation(profile=profile, arguments={"mode": "batch"})


def equinox_batchnorm_ema(profile: str = "flax") -> EquinoxImplementation:
    """``normspec check equinox.ema``: ``equinox.nn.BatchNorm(mode="ema")``."""
    return EquinoxImplementation(profile=profile, arguments={"mode": "ema"})


#: The recogniser this package declares (``ADAPTERS``).
recognise = EquinoxImplementation.recognise

__all__ = ["EquinoxImplementation", "equinox_batchnorm", "equinox_batchnorm_ema", "recognise"]
