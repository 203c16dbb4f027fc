"""``haiku.BatchNorm`` and every haiku module class built like it, with no glue code.

A haiku module class is recognised when its constructor takes ``haiku.BatchNorm``'s
arguments ``create_scale, create_offset, decay_rate, eps, data_format`` and, run as a user
runs it (``hk.transform_with_state`` around ``module(x, is_training=...)``, initialised on
a small batch), its parameters are one ``scale`` and one ``offset`` (or none without
them) and its state holds a running mean and variance: ``hk.ExponentialMovingAverage``
modules named ``mean_ema`` and ``var_ema`` (``haiku.BatchNorm``'s) or state entries named
``mean`` and ``var``. Per-feature variables may be broadcast over the other axes, as haiku
keeps them (``(1, ..., C)``). The target's other constructor arguments are passed as given
(``haiku:BatchNorm(name="bn")``).

A layer config becomes the module a user writes: ``create_scale = create_offset =
affine``, ``decay_rate`` the momentum as given (the profile's convention: ``1 - alpha``
under ``flax``), ``eps``, ``data_format`` ``channels_last`` or ``channels_first``. haiku
creates parameters and statistics in the input's dtype. Training applies the transformed
function with ``is_training=True``, inference with ``is_training=False``, jitted with the
configuration static; a new layer is ``init`` with ``is_training=True`` on a batch of
zeros, as a user initialises one on a batch.

**State.** An ``ExponentialMovingAverage`` is zero-debiased: it keeps ``hidden`` (from 0),
``counter`` (the steps) and ``average = hidden / (1 - decay^counter)`` (its decay
converted to the statistics' dtype), and ``BatchNorm`` reads ``average`` in inference. The
state reported is what it keeps and updates: the hidden mean and variance and the counter
(a step counter); ``average`` is what inference reads, checked through inference. A state
set is written as a layer holding it holds it: ``hidden``, ``counter``, and the
``average`` the moving average stores beside them (``hidden`` itself at counter 0, where a
new layer holds ``hidden = average = 0``). Until normspec's dialects express zero-debiased
averages (``running_average = "zero_debiased"``), its built-in target is checked under
the ``flax`` profile, whose plain averages it differs from (README).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import haiku as hk
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
    probe_input,
    vector_to_jax,
    with_hyper,
)
from normspec.adapters.jax._module import ModuleImplementation, share_compilation, takes_keywords
from normspec.adapters.protocol import Array, Capabilities, LayerConfig, WrongOutput
from normspec.reference import RunningStatistics

#: The keyword arguments a constructor must take to be recognised.
REQUIRED_ARGUMENTS = ("create_scale", "create_offset", "decay_rate", "eps", "data_format")
#: A parameter's name in haiku's tree by its name in normspec's (``offset`` is beta).
PARAMETER_NAMES = {"scale": SCALE, "offset": BIAS}
#: The statistics, by their names in the state tree.
STATISTICS = ("mean", "var")
#: The constructor arguments of ``hk.BatchNorm`` passed as jit arguments, not constants.
TRACED = ("eps", "decay_rate")
#: The leaves of an ``hk.ExponentialMovingAverage``.
EMA_LEAVES = ("hidden", "average", "counter")


def _names(path: Sequence[Any]) -> tuple[str, ...]:
    """A leaf's path as names: every dict key split at haiku's ``/`` separators."""
    names: list[str] = []
    for entry in path:
        if isinstance(entry, jax.tree_util.DictKey):
            names.extend(str(entry.key).split("/"))
    return tuple(names)


@dataclasses.dataclass(frozen=True)
class Statistic:
    """Where a haiku state tree keeps one running statistic: leaf positions (in
    ``jax.tree_util`` order) of the value kept (an EMA's ``hidden``, or the statistic) and,
    for a moving average, of its ``average`` and ``counter``."""

    value: int
    average: int | None = None
    counter: int | None = None


def locate_statistics(state: Tree) -> dict[str, Statistic]:
    """The mean and the variance in a haiku state tree; ``ValueError`` if it lacks them.

    Each is the ``hidden``, ``average`` and ``counter`` of a module named ``NAME_ema``, or
    else the one entry named ``NAME``.
    """
    names = [_names(path) for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    found = {}
    for statistic in STATISTICS:
        ema = {
            path[-1]: index
            for index, path in enumerate(names)
            if len(path) >= 2 and path[-2] == f"{statistic}_ema" and path[-1] in EMA_LEAVES
        }
        plain = [index for index, path in enumerate(names) if path and path[-1] == statistic]
        if len(ema) == len(EMA_LEAVES):
            found[statistic] = Statistic(ema["hidden"], ema["average"], ema["counter"])
        elif len(plain) == 1 and not ema:
            found[statistic] = Statistic(plain[0])
        else:
            raise ValueError(
                f"the state holds no single {statistic!r} entry or {statistic}_ema moving average"
            )
    return found


def per_feature(value: Any, num_features: int, what: str) -> Array:
    """A per-feature variable (shape ``(C,)`` or broadcast, ``(1, ..., C, ..., 1)``) as a
    float64 vector; :class:`WrongOutput` for anything else."""
    shape = tuple(getattr(value, "shape", ()))
    if sorted(shape, reverse=True)[:1] != [num_features] or int(np.prod(shape)) != num_features:
        raise WrongOutput(f"{what} has shape {shape}, expected {num_features} features")
    dtype = getattr(value, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise WrongOutput(f"{what} is a {type(value).__name__}, not a floating-point array")
    return from_jax(value, shape=shape, dtype=dtype, what=what).reshape(num_features)


def debiased(hidden: Array, decay: float, steps: int) -> Array:
    """``hidden / (1 - decay^steps)``, ``hidden`` itself at 0 steps: the average an
    ``ExponentialMovingAverage`` stores beside its hidden value and counter."""
    if steps == 0:
        return hidden
    with np.errstate(divide="ignore", invalid="ignore"):
        result: Array = hidden / (1.0 - decay**steps)
    return result


@functools.partial(jax.jit, static_argnums=0)
def _initial(template: HaikuProgram, hyper: Mapping[str, Any]) -> tuple[Tree, Tree]:
    """:meth:`HaikuProgram.make_initial` of a program sharing ``template``'s compilations."""
    program = with_hyper(template, hyper)
    probe = probe_input(template.config)
    return program._init(jax.numpy.zeros(probe.shape, probe.dtype))


class HaikuProgram(JaxProgram):
    """One configured haiku module, transformed with state, as pure functions.

    The parameter tree is normspec's view of haiku's (``scale`` and ``bias`` vectors,
    reshaped to haiku's shapes inside the jitted functions, so that gradients come back
    per feature); the statistics tree is haiku's state as it is.
    """

    def __init__(self, cls: type, arguments: Mapping[str, Any], config: LayerConfig) -> None:
        factory: Any = cls
        # haiku.BatchNorm converts eps and decay_rate to the input's dtype before using
        # them: converted here, they are jit arguments with the same values. A user's class
        # may test them in Python, so it keeps them as constants.
        traced = TRACED if cls is hk.BatchNorm else ()
        dtype = jax_dtype(config.dtype)
        self.hyper: Mapping[str, Any] = {
            name: np.asarray(arguments[name], dtype) for name in traced
        }
        fixed = {name: value for name, value in arguments.items() if name not in traced}

        def forward(x: jax.Array, is_training: bool, hyper: Mapping[str, Any]) -> Any:
            return factory(**fixed, **hyper)(x, is_training=is_training)

        self.transformed = hk.transform_with_state(forward)
        self.decay = arguments["decay_rate"]
        super().__init__(config)
        if traced:
            structure = (cls, repr(sorted(fixed.items())), config.num_features, config.rank)
            self.steps_by_vjp = True  # the library's own layer: one program per shape
            share_compilation(self, (*structure, config.dtype), self.hyper)
        params, state = jax.eval_shape(self._library_init, probe_input(config))
        flat, self._params_def = jax.tree_util.tree_flatten_with_path(params)
        self._params = [(_names(path)[-1], item.shape) for path, item in flat]
        if any(name not in PARAMETER_NAMES for name, _ in self._params):
            raise ValueError("the module's parameters are not exactly a scale and an offset")
        self.located = locate_statistics(state)

    def _library_init(self, x: jax.Array) -> tuple[Tree, Tree]:
        params, state = self.transformed.init(None, x, is_training=True, hyper=self.hyper)
        return params, state

    def _init(self, x: jax.Array) -> tuple[Tree, Tree]:
        params, state = self._library_init(x)
        return self.view(params), state

    def view(self, params: Tree) -> dict[str, Any]:
        """haiku's parameter tree as normspec's: ``scale`` and ``bias`` vectors."""
        leaves = jax.tree_util.tree_leaves(params)
        return {
            PARAMETER_NAMES[name]: value.reshape(-1)
            for (name, _), value in zip(self._params, leaves, strict=True)
        }

    def library(self, params: Mapping[str, Any]) -> Tree:
        """normspec's parameter tree as haiku's."""
        leaves = [params[PARAMETER_NAMES[name]].reshape(shape) for name, shape in self._params]
        return jax.tree_util.tree_unflatten(self._params_def, leaves)

    def make_initial(self) -> tuple[Tree, Tree]:
        """``init`` on a batch of zeros, jitted: one small compilation per template, eps
        and the decay rate of haiku's own class jit arguments as in its steps (its initial
        state depends on the decay rate: the average of a decay of 1 is 0 / 0)."""
        return _initial(self.template, self.hyper)

    def abstract_initial(self) -> tuple[Tree, Tree]:
        return jax.eval_shape(self._init, probe_input(self.config))

    def _apply(self, params: Tree, stats: Tree, x: jax.Array, training: bool) -> Any:
        y, state = self.transformed.apply(
            self.library(params), stats, None, x, is_training=training, hyper=self.hyper
        )
        return y, state

    def apply_train(
        self, params: Tree, stats: Tree, x: jax.Array, *, mask: jax.Array | None = None
    ) -> tuple[Any, Tree]:
        return self._apply(params, stats, x, True)

    def apply_infer(self, params: Tree, stats: Tree, x: jax.Array) -> tuple[Any, Tree]:
        return self._apply(params, stats, x, False)

    # -- the state --

    @property
    def keeps_counter(self) -> bool:
        return all(place.counter is not None for place in self.located.values())

    def statistics(self, stats: Tree, steps: int) -> RunningStatistics:
        """The hidden mean and variance and the counter (``steps``: last set, without one)."""
        leaves = jax.tree_util.tree_leaves(stats)
        features = self.config.num_features
        mean, var = (
            per_feature(leaves[self.located[name].value], features, name) for name in STATISTICS
        )
        counters = {
            int(leaves[place.counter])
            for place in self.located.values()
            if place.counter is not None
        }
        if len(counters) > 1:
            raise WrongOutput(f"the mean's and the variance's counters differ: {sorted(counters)}")
        return running_statistics(mean, var, counters.pop() if counters else steps)

    def with_statistics(
        self, template: Tree, state: RunningStatistics, others: Callable[[], Tree]
    ) -> Tree:
        """``hidden`` (or the statistic) and ``counter`` set, ``average`` the debiased
        value the moving average stores beside them, in the template's dtypes."""
        kinds = jax.tree_util.tree_leaves(template)
        treedef = jax.tree_util.tree_structure(template)
        leaves = list(jax.tree_util.tree_leaves(others()))
        for name, values in (("mean", state.mean), ("var", state.var)):
            place = self.located[name]
            kind = kinds[place.value]
            if int(np.prod(kind.shape)) != values.size:
                raise WrongOutput(f"{name} has shape {kind.shape}, expected {values.shape}")
            held = np.asarray(values, np.float64).astype(kind.dtype)
            leaves[place.value] = vector_to_jax(held.reshape(kind.shape), kind.dtype)
            if place.average is not None:
                decay = float(np.asarray(self.decay, kinds[place.average].dtype))
                average = debiased(held.astype(np.float64), decay, state.steps)
                leaves[place.average] = vector_to_jax(
                    average.reshape(kinds[place.average].shape), kinds[place.average].dtype
                )
            if place.counter is not None:
                counter = np.asarray(state.steps, kinds[place.counter].dtype)
                leaves[place.counter] = jax.device_put(counter)
        return jax.tree_util.tree_unflatten(treedef, leaves)


def _data_format(config: LayerConfig) -> str:
    return "channels_first" if config.feature_position == "first" else "channels_last"


class HaikuImplementation(ModuleImplementation):
    """A BatchNorm-like haiku module class under test (default: ``hk.BatchNorm``)."""

    library = "haiku"
    requirements = (
        f"the constructor arguments {', '.join(REQUIRED_ARGUMENTS)}, the parameters scale and "
        "offset, and a running mean and variance in its state (mean_ema and var_ema moving "
        "averages, or entries mean and var)"
    )
    managed = REQUIRED_ARGUMENTS

    @staticmethod
    def default_class() -> type:
        return hk.BatchNorm

    @staticmethod
    def shaped_like_batchnorm(obj: object) -> bool:
        return (
            isinstance(obj, type)
            and issubclass(obj, hk.Module)
            and takes_keywords(obj, REQUIRED_ARGUMENTS)
        )

    @staticmethod
    def module_arguments(config: LayerConfig) -> dict[str, Any]:
        return {
            "create_scale": config.affine,
            "create_offset": config.affine,
            "decay_rate": config.momentum,
            "eps": config.eps,
            "data_format": _data_format(config),
        }

    @staticmethod
    def program_for(
        module_class: type, arguments: Mapping[str, Any], config: LayerConfig
    ) -> HaikuProgram:
        return HaikuProgram(module_class, arguments, config)

    def module_capabilities(self, program: JaxProgram) -> Capabilities:
        assert isinstance(program, HaikuProgram)
        notes = {"replicas": "the haiku adapter does not run cross_replica_axis (sync.*)"}
        if not program.keeps_counter:
            notes["step_counter"] = f"{self.module_class.__qualname__} keeps no step counter"
        return self.capabilities_with(("last", "first"), program.keeps_counter, notes)

    def library_versions(self) -> Mapping[str, str]:
        return {"dm-haiku": hk.__version__}


def haiku_batchnorm(profile: str = "flax") -> HaikuImplementation:
    """``normspec check haiku``: ``haiku.BatchNorm``."""
    return HaikuImplementation(profile=profile)


#: The recogniser this package declares (``ADAPTERS``).
recognise = HaikuImplementation.recognise

__all__ = ["HaikuImplementation", "haiku_batchnorm", "recognise"]
