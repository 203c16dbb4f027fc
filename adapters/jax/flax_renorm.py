"""Batch-renormalization ``flax.linen`` and ``flax.nnx`` modules of third parties, with no glue.

A Module class is recognised as a renorm layer when it takes the arguments
``use_running_average, axis, momentum, epsilon`` (``rngs`` too for nnx) and bounds
(``r_max`` and ``d_max``, or a clipping mapping; a warm-up argument such as
``warm_up_steps`` optional), and its initial variables hold ``scale`` and ``bias`` among its
parameters and a moving mean, a moving spread and a step counter among the rest (``mean``,
``var`` or ``std``, ``steps``): the names and their roles are
:mod:`normspec.adapters.renorm_roles`', shared with torch. The two APIs differ only in
where the arguments are (a linen module's fields, an nnx module's constructor keywords)
and in the program that runs the module (:class:`FlaxApi`: ``LinenProgram``,
``NnxProgram``).

It is checked under the profile that describes its dialect (the renorm clauses only): a
layer config becomes the module a user writes (:func:`normspec.adapters.jax._flax.flax_arguments`:
``momentum`` in the profile's convention, ``epsilon``, ``axis``, ``use_scale = use_bias``,
``dtype``, ``param_dtype``) with the config's bounds and warm-up step.

**Compilation** (issue 13's budget). The bounds, eps and momentum are constants of each
compiled program, as the Python floats a user passes are: as jit arguments, ``1 - momentum``
or ``1 / r_max`` would be computed in float32 rather than in float64 and then rounded, a
change to the library's arithmetic. The warm-up step, an integer compared with the integer
step counter, is a jit argument where the class traces alike with it as one
(:func:`traces_alike`, decided on its first program): configurations that differ only in it
(constant bounds are warm-up 0, and each switch step) share their compilations
(:func:`normspec.adapters.jax._module.share_compilation`). An inference call reads neither
the bounds, the warm-up nor the momentum where the class traces its inference alike with
other values of them (:func:`inference_reads_training_only`, decided on its first
program): configurations that differ only in those share their inference programs (the
forward and its vjp), as Keras' do (``backend.TRAINING_ONLY``). A layer whose parameters
and state are all set computes no initial variables (no ``init`` compiled).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import flax
import jax
import numpy as np
from flax import linen as nn
from flax import nnx

from normspec.adapters import renorm_roles
from normspec.adapters.jax._flax import flax_arguments
from normspec.adapters.jax._jax import (
    BIAS,
    PROBE_CONFIG,
    SCALE,
    JaxImplementation,
    JaxLayer,
    JaxProgram,
    Tree,
    has_variables,
    leaf,
    leaves_named,
    precision,
    probe_input,
    read_vector,
    replace_leaves,
    vector_to_jax,
)
from normspec.adapters.jax._module import share_compilation, with_hyper
from normspec.adapters.jax.flax_linen import LinenProgram, module_fields
from normspec.adapters.jax.flax_nnx import NnxProgram, constructor_keywords
from normspec.adapters.protocol import Array, Capabilities, LayerConfig, State, UnsupportedConfig
from normspec.reference.renorm import RenormStatistics
from normspec.reference.schedules import ConstantSchedule, RenormBounds, SwitchSchedule

#: The arguments every recognised class takes (``use_scale``, ``use_bias``, ``dtype``,
#: ``param_dtype`` are used where present).
REQUIRED_ARGUMENTS = ("use_running_average", "axis", "momentum", "epsilon")


@dataclass(frozen=True)
class FlaxApi:
    """What differs between Flax's APIs for a renorm module: the base class, the arguments
    a class takes (beyond :data:`REQUIRED_ARGUMENTS`, those it ``requires``) and the
    program that runs it."""

    library: str
    base: type
    arguments: Callable[[type], frozenset[str]]
    program: Callable[[Any, Mapping[str, Any], LayerConfig], JaxProgram]
    requires: tuple[str, ...] = ()


class LinenWarmupProgram(LinenProgram):
    """A :class:`LinenProgram` whose module takes the arguments in ``hyper`` (the warm-up
    step) when it is applied: traced where the program's compilation is shared
    (:func:`share_warmup`), the constructor's value otherwise."""

    def _apply(
        self, module: nn.Module, params: Tree, stats: Tree, x: jax.Array, **options: Any
    ) -> tuple[Any, Tree]:
        module = module.clone(**self.hyper) if self.hyper else module
        return super()._apply(module, params, stats, x, **options)


class NnxWarmupProgram(NnxProgram):
    """An :class:`NnxProgram` whose module takes the arguments in ``hyper`` (as
    :class:`LinenWarmupProgram`): built inside the traced function with them, as the
    constructor builds it, its variables then those given."""

    def graph(self, training: bool) -> Any:
        if not self.hyper:
            return super().graph(training)
        return nnx.graphdef(self.module(self.config, not training, **self.hyper))


LINEN = FlaxApi("flax.linen", nn.Module, module_fields, LinenWarmupProgram)
NNX = FlaxApi("flax.nnx", nnx.Module, constructor_keywords, NnxWarmupProgram, ("rngs",))


def api_of(cls: object) -> FlaxApi | None:
    """The Flax API a module class is written in; ``None`` for anything else."""
    if not isinstance(cls, type):
        return None
    return next((api for api in (LINEN, NNX) if issubclass(cls, api.base)), None)


Roles = tuple[FlaxApi, renorm_roles.ArgumentRoles, renorm_roles.StateRoles]


def roles_of(cls: object) -> Roles | None:
    """The API and the argument and variable roles of a renorm-shaped Flax module class;
    ``None`` otherwise."""
    api = api_of(cls)
    if api is None:
        return None
    assert isinstance(cls, type)
    names = api.arguments(cls)
    found = renorm_roles.argument_roles(names)
    if found is None or not {*REQUIRED_ARGUMENTS, *api.requires} <= names:
        return None
    arguments = {
        **_arguments(api, cls, PROBE_CONFIG, "float32"),
        **renorm_roles.probe_arguments(found),
    }
    try:
        params, stats = api.program(cls, arguments, PROBE_CONFIG).abstract_initial()
    except Exception:  # a module that cannot be built or initialised like one
        return None
    state = renorm_roles.state_roles(leaves_named(stats))
    if state is None or not has_variables(params, (SCALE, BIAS)):
        return None
    if not has_variables(stats, (state.mean, state.spread, state.steps)):
        return None
    return api, found, state


def traces_alike(program: JaxProgram, hyper: Mapping[str, Any]) -> bool:
    """Whether ``program``'s training step and inference trace with the arguments ``hyper``
    traced (its :class:`LinenWarmupProgram` or :class:`NnxWarmupProgram` ``hyper``) to the
    outputs and statistics of the same structure, shapes and dtypes as with them given: a
    module that tests them in Python, or keeps them as state, does not."""
    params, stats = program.abstract_initial()
    x = probe_input(program.config)

    def run(training: bool) -> Callable[..., Any]:
        def apply(p: Tree, s: Tree, inputs: jax.Array, values: Mapping[str, Any]) -> Any:
            copy = with_hyper(program, values)
            return copy.apply_train(p, s, inputs) if training else copy.apply_infer(p, s, inputs)

        return apply

    def shapes(tree: Tree) -> Any:
        leaves, structure = jax.tree_util.tree_flatten(tree)
        return structure, [(leaf.shape, leaf.dtype) for leaf in leaves]

    try:
        for training in (True, False):
            traced = jax.eval_shape(run(training), params, stats, x, hyper)
            given = jax.eval_shape(functools.partial(run(training), values=hyper), params, stats, x)
            if shapes(traced) != shapes(given):
                return False
    except Exception:  # a module that cannot take them traced: they stay constants
        return False
    return True


#: The other training-only values :func:`inference_reads_training_only` traces a class's
#: inference with: bounds, a warm-up step and a momentum no configuration of a check uses.
OTHER_BOUNDS = RenormBounds.symmetric(2.25, 1.75)
OTHER_WARMUP = 7
OTHER_MOMENTUMS = (0.375, 0.625)


def _inference_jaxprs(program: JaxProgram) -> tuple[str, str]:
    """The jaxprs of ``program``'s inference forward and vjp, on its probe input."""
    params, stats = program.abstract_initial()
    x = probe_input(program.config)

    def vjp(p: Tree, s: Tree, inputs: jax.Array, dy: jax.Array) -> Any:
        return program._vjp(p, s, inputs, dy, training=False)

    forward = jax.make_jaxpr(program.apply_infer)(params, stats, x)
    return str(forward), str(jax.make_jaxpr(vjp)(params, stats, x, x))


def other_training_values(config: LayerConfig, warmup: bool) -> LayerConfig:
    """``config`` with other bounds (:data:`OTHER_BOUNDS`), momentum and, where the class
    takes one (``warmup``), warm-up step: what :func:`inference_reads_training_only`
    traces the class's inference with."""
    assert config.renorm is not None
    schedule = SwitchSchedule(OTHER_WARMUP, OTHER_BOUNDS) if warmup else None
    renorm = replace(config.renorm, schedule=schedule or ConstantSchedule(OTHER_BOUNDS))
    momentum = next(m for m in OTHER_MOMENTUMS if m != config.momentum)
    return replace(config, momentum=momentum, renorm=renorm)


def inference_reads_training_only(program: JaxProgram, other: Callable[[], JaxProgram]) -> bool:
    """Whether ``program``'s inference (forward and vjp) reads its bounds, warm-up or
    momentum: whether its jaxprs differ from those of ``other()``, the program of
    :func:`other_training_values` (a class that fails to trace either: it reads them)."""
    try:
        return _inference_jaxprs(program) != _inference_jaxprs(other())
    except Exception:  # a class whose inference cannot be traced like this: not shared
        return True


def _arguments(api: FlaxApi, cls: type, config: LayerConfig, parameters: Any) -> dict[str, Any]:
    return flax_arguments(
        config,
        parameters=parameters,
        use_fast_variance=None,
        accepts=lambda name: name in api.arguments(cls),
    )


def with_leaves(tree: Tree, values: Mapping[str, Array]) -> Tree:
    """``tree`` with its leaves named in ``values`` replaced (in their dtype, whatever the
    shape given: a vector of another length is the module's to refuse, renorm.params.shape,
    as a user's would be)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    for name, positions in leaves_named(tree).items():
        if name in values:
            for index in positions:
                leaves[index] = vector_to_jax(values[name], leaves[index].dtype)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def filled(tree: Tree, others: Callable[[], Tree]) -> Tree:
    """``tree`` with its abstract leaves taken from ``others()``, called only where there
    is one: a layer whose variables are all set computes no initial ones (no ``init``
    compiled for it)."""
    return replace_leaves(tree, {}, others)


class JaxRenormLayer(JaxLayer):
    """A :class:`JaxLayer` whose state is :class:`RenormStatistics`, step counter included,
    read and set by the variables' ``roles``."""

    def __init__(
        self, program: JaxProgram, config: LayerConfig, roles: renorm_roles.StateRoles
    ) -> None:
        super().__init__(program, config)
        self.roles = roles

    def set_parameters(self, gamma: Array, beta: Array) -> None:
        with precision(self.config.dtype):
            template, _ = self.program.structure()
            current = self._params
            values = {SCALE: np.asarray(gamma), BIAS: np.asarray(beta)}
            self._params = filled(
                with_leaves(template if current is None else current, values),
                lambda: self.program.initial()[0],
            )

    def set_state(self, state: State) -> None:
        if not isinstance(state, RenormStatistics):
            raise TypeError(f"a renorm layer keeps RenormStatistics, not {state!r}")
        with precision(self.config.dtype):
            _, template = self.program.structure()
            current = self._stats

            def others() -> Tree:
                return self.program.initial()[1] if current is None else current

            values = {
                self.roles.mean: np.asarray(state.mean),
                self.roles.spread: np.asarray(state.spread),
                self.roles.steps: np.asarray(state.steps),
            }
            self._stats = filled(with_leaves(template, values), others)

    def state(self) -> State:
        _, stats = self._trees()
        n, roles = self.config.num_features, self.roles
        return renorm_roles.statistics(
            read_vector(stats, roles.mean, n, "statistics"),
            read_vector(stats, roles.spread, n, "statistics"),
            leaf(stats, roles.steps, "statistics"),
        )


class FlaxRenormImplementation(JaxImplementation):
    """A renorm ``flax.linen`` or ``flax.nnx`` Module class under test (see the module
    docstring)."""

    def __init__(self, module_class: type, profile: str) -> None:
        super().__init__(profile)
        found = roles_of(module_class)
        if found is None:
            raise TypeError(f"{module_class!r} is not a renorm-shaped Flax Module class")
        self.module_class = module_class
        self.api, self.argument_roles, self.state_roles = found
        self.library = self.api.library
        self.name = self.describe(f"{module_class.__module__}.{module_class.__qualname__}")
        #: whether the warm-up step is a jit argument (:func:`traces_alike`; ``None``:
        #: not decided yet)
        self._warmup_traced: bool | None = None
        #: whether inference reads the training-only arguments
        #: (:func:`inference_reads_training_only`; ``None``: not decided yet), and the
        #: first program of each inference key (:meth:`inference_key`)
        self._inference_reads: bool | None = None
        self._inference_programs: dict[Any, JaxProgram] = {}

    def library_versions(self) -> Mapping[str, str]:
        return {"flax": flax.__version__}

    def base_capabilities(self) -> Capabilities:
        who = self.module_class.__qualname__
        roles = renorm_roles.describe(self.argument_roles, self.state_roles)
        return Capabilities(
            ranks=frozenset({2, 3, 4, 5}),
            feature_axes=("last", "first"),
            batchnorm=False,
            renorm=True,
            untracked=False,
            without_affine="use_scale" in self.api.arguments(self.module_class),
            step_counter=True,
            strided_input=False,
            notes={
                "batchnorm": f"{who} is a renorm layer ({roles})",
                "untracked": "a renorm layer always keeps moving statistics",
                "without_affine": f"{who} has no use_scale",
                "strided_input": "JAX arrays have no strides or memory layout",
            },
            warnings=renorm_roles.profile_notes(self.profile, self.state_roles),
        )

    def _renorm_arguments(self, config: LayerConfig) -> dict[str, Any]:
        if config.renorm is None:
            raise UnsupportedConfig(f"{self.module_class.__name__} is a renorm layer only")
        return renorm_roles.library_arguments(self.argument_roles, config.renorm)

    def program_key(self, config: LayerConfig) -> Any:
        renorm = sorted(self._renorm_arguments(config).items())
        return (*super().program_key(config), repr(renorm))

    def inference_key(self, config: LayerConfig) -> Any:
        """What an inference program depends on where it reads no training-only argument:
        the program's key less the momentum (here fixed), the bounds and the warm-up."""
        return super().program_key(replace(config, momentum=0.0))

    def make_program(self, config: LayerConfig) -> JaxProgram:
        program = self._training_program(config)
        if self._inference_reads is None:  # decided on the class's first program
            warmup = self.argument_roles.warmup is not None
            self._inference_reads = inference_reads_training_only(
                program, lambda: self._training_program(other_training_values(config, warmup))
            )
        if not self._inference_reads:
            # one inference program (forward and vjp) per inference key and input shape
            first = self._inference_programs.setdefault(self.inference_key(config), program)
            program.infer, program.vjp_infer = first.infer, first.vjp_infer
        return program

    def _training_program(self, config: LayerConfig) -> JaxProgram:
        """The program of ``config`` (its warm-up shared where it traces alike)."""
        arguments = {
            **_arguments(self.api, self.module_class, config, self.parameters),
            **self._renorm_arguments(config),
        }
        program: Any = self.api.program(self.module_class, arguments, config)
        warmup = self.argument_roles.warmup
        if warmup is None:
            return program
        hyper = {warmup: arguments[warmup]}
        if self._warmup_traced is None:  # decided on the class's first program
            self._warmup_traced = traces_alike(program, hyper)
        if self._warmup_traced:
            # the warm-up step a jit argument: configurations that differ only in it
            # (constant bounds are warm-up 0; each switch step) share their compilations
            program.hyper = hyper
            renorm = {k: v for k, v in self._renorm_arguments(config).items() if k != warmup}
            shared = (*super().program_key(config), repr(sorted(renorm.items())))
            share_compilation(program, (self.module_class, self.parameters, *shared), hyper)
        return program

    def make_layer(self, config: LayerConfig) -> JaxRenormLayer:
        return JaxRenormLayer(self.program(config), config, self.state_roles)

    def probe(self, config: LayerConfig, x: Array, base: Capabilities) -> str | None:
        """A training-mode backward of a tiny renorm layer (one compilation per dtype)."""
        renorm = renorm_roles.probe_config(config, self.profile)
        layer = self.make_layer(renorm)
        features = config.num_features
        layer.set_parameters(np.ones(features), np.zeros(features))
        layer.set_state(RenormStatistics.initial(features))
        layer.vjp(x, np.ones_like(x), training=True)
        return None


def recognise(obj: object, profile: str) -> FlaxRenormImplementation | None:
    """The recogniser this package declares (``ADAPTERS``)."""
    if roles_of(obj) is None:
        return None
    assert isinstance(obj, type)
    return FlaxRenormImplementation(obj, profile)
