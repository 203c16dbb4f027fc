"""Batch-renormalization ``flax.linen`` modules of third parties, with no glue code.

A linen Module class is recognised as a renorm layer when it has the fields
``use_running_average, axis, momentum, epsilon`` and bounds (``r_max`` and ``d_max``, or a
clipping mapping; a warm-up field such as ``warm_up_steps`` optional), and its variables,
created by ``init`` on a small input, hold ``scale`` and ``bias`` among its ``params`` and a
moving mean, a moving spread and a step counter among its other collections (``mean``,
``var`` or ``std``, ``steps``): the names and their roles are
:mod:`normspec.adapters.renorm_roles`', shared with torch.

It is checked under the profile that describes its dialect (the renorm clauses only): a
layer config becomes the module a user writes (:func:`normspec.adapters.jax._flax.flax_arguments`:
``momentum`` in the profile's convention, ``epsilon``, ``axis``, ``use_scale = use_bias``,
``dtype``, ``param_dtype``) with the config's bounds and warm-up step. One program is
compiled per configuration (bounds, warm-up, eps and momentum are static fields).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import numpy as np
from flax import linen as nn

from normspec.adapters import renorm_roles
from normspec.adapters.jax._flax import flax_arguments
from normspec.adapters.jax._jax import (
    BIAS,
    PROBE_CONFIG,
    SCALE,
    JaxImplementation,
    JaxLayer,
    Tree,
    has_variables,
    leaf,
    leaves_named,
    precision,
    read_vector,
    replace_leaves,
    vector_to_jax,
)
from normspec.adapters.jax.flax_linen import LinenProgram, module_fields
from normspec.adapters.protocol import Array, Capabilities, LayerConfig, State, UnsupportedConfig
from normspec.reference.renorm import RenormStatistics

#: The fields every recognised class has (``use_scale``, ``use_bias``, ``dtype``,
#: ``param_dtype`` are used where present).
REQUIRED_FIELDS = ("use_running_average", "axis", "momentum", "epsilon")


def roles_of(cls: object) -> tuple[renorm_roles.ArgumentRoles, renorm_roles.StateRoles] | None:
    """The field and variable roles of a renorm-shaped linen class; ``None`` otherwise."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        return None
    fields = module_fields(cls)
    found = renorm_roles.argument_roles(fields)
    if found is None or not set(REQUIRED_FIELDS) <= fields:
        return None
    arguments = {
        **_arguments(cls, PROBE_CONFIG, "float32"),
        **renorm_roles.probe_arguments(found),
    }
    try:
        params, stats = LinenProgram(cls, arguments, PROBE_CONFIG).abstract_initial()
    except Exception:  # a module that cannot be built or initialised like one
        return None
    state = renorm_roles.state_roles(leaves_named(stats))
    if state is None or not has_variables(params, (SCALE, BIAS)):
        return None
    if not has_variables(stats, (state.mean, state.spread, state.steps)):
        return None
    return found, state


def _arguments(cls: type, config: LayerConfig, parameters: Any) -> dict[str, Any]:
    return flax_arguments(
        config,
        parameters=parameters,
        use_fast_variance=None,
        accepts=lambda name: name in module_fields(cls),
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


class LinenRenormProgram(LinenProgram):
    """A renorm linen module's program: its moving statistics read and set by role."""

    def __init__(
        self,
        cls: type[nn.Module],
        arguments: Mapping[str, Any],
        config: LayerConfig,
        roles: renorm_roles.StateRoles,
    ) -> None:
        self.roles = roles
        super().__init__(cls, arguments, config)

    def renorm_statistics(self, stats: Tree) -> RenormStatistics:
        n, roles = self.config.num_features, self.roles
        return renorm_roles.statistics(
            read_vector(stats, roles.mean, n, "statistics"),
            read_vector(stats, roles.spread, n, "statistics"),
            leaf(stats, roles.steps, "statistics"),
        )

    def with_renorm_statistics(
        self, template: Tree, state: RenormStatistics, others: Callable[[], Tree]
    ) -> Tree:
        """The statistics tree holding ``state`` (:func:`with_leaves`)."""
        values = {
            self.roles.mean: np.asarray(state.mean),
            self.roles.spread: np.asarray(state.spread),
            self.roles.steps: np.asarray(state.steps),
        }
        return with_leaves(replace_leaves(template, {}, others), values)


class JaxRenormLayer(JaxLayer):
    """A :class:`JaxLayer` whose state is :class:`RenormStatistics`, step counter included."""

    program: LinenRenormProgram

    def set_parameters(self, gamma: Array, beta: Array) -> None:
        with precision(self.config.dtype):
            params, _ = self._trees()
            values = {SCALE: np.asarray(gamma), BIAS: np.asarray(beta)}
            self._params = with_leaves(params, values)

    def set_state(self, state: State) -> None:
        if not isinstance(state, RenormStatistics):
            raise TypeError(f"a renorm layer keeps RenormStatistics, not {state!r}")
        with precision(self.config.dtype):
            _, template = self.program.structure()
            current = self._stats

            def others() -> Tree:
                return self.program.initial()[1] if current is None else current

            self._stats = self.program.with_renorm_statistics(template, state, others)

    def state(self) -> State:
        _, stats = self._trees()
        return self.program.renorm_statistics(stats)


class FlaxLinenRenormImplementation(JaxImplementation):
    """A renorm ``flax.linen.Module`` class under test (see the module docstring)."""

    library = "flax.linen"

    def __init__(self, module_class: type, profile: str) -> None:
        super().__init__(profile)
        found = roles_of(module_class)
        if found is None:
            raise TypeError(f"{module_class!r} is not a renorm-shaped flax.linen.Module class")
        self.module_class = module_class
        self.argument_roles, self.state_roles = found
        self.name = self.describe(f"{module_class.__module__}.{module_class.__qualname__}")

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
            without_affine="use_scale" in module_fields(self.module_class),
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

    def make_program(self, config: LayerConfig) -> LinenRenormProgram:
        arguments = {
            **_arguments(self.module_class, config, self.parameters),
            **self._renorm_arguments(config),
        }
        return LinenRenormProgram(self.module_class, arguments, config, self.state_roles)

    def make_layer(self, config: LayerConfig) -> JaxRenormLayer:
        program = self.program(config)
        assert isinstance(program, LinenRenormProgram)
        return JaxRenormLayer(program, config)

    def probe(self, config: LayerConfig, x: Array, base: Capabilities) -> str | None:
        """A training-mode backward of a tiny renorm layer (one compilation per dtype)."""
        renorm = renorm_roles.probe_config(config, self.profile)
        layer = self.make_layer(renorm)
        features = config.num_features
        layer.set_parameters(np.ones(features), np.zeros(features))
        layer.set_state(RenormStatistics.initial(features))
        layer.vjp(x, np.ones_like(x), training=True)
        return None


def recognise(obj: object, profile: str) -> FlaxLinenRenormImplementation | None:
    """The recogniser this package declares (``ADAPTERS``)."""
    if roles_of(obj) is None:
        return None
    assert isinstance(obj, type)
    return FlaxLinenRenormImplementation(obj, profile)
