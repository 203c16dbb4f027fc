"""LayerNorm and RMSNorm of Flax (linen, nnx), haiku and equinox, and their GroupNorm and
InstanceNorm layers, with no glue (layernorm.md, groupnorm.md).

One adapter for the four libraries (:mod:`normspec.adapters._family`): each is a
:class:`JaxLibrary`, a table row per layer class and a *program maker* that builds a
configured layer as a pure function ``apply(tree, x)`` of its variable tree. The forward is
that function jitted, the gradients its ``jax.vjp`` jitted; the weight and bias are the
tree's leaves stored under the row's names (a library may keep them flat: nnx holds
``num_features`` values). Programs are cached per configuration; JAX compiles once per
input shape and dtype. float64 layers run in x64 mode (:func:`_jax.precision`).

A user's class is recognised by its base class and its constructor (:func:`recognise`):
a linen or nnx module taking ``epsilon``, ``reduction_axes``, ``feature_axes`` and
``use_scale``; a haiku module taking ``axis``, ``eps``, ``create_scale`` and
``param_axis``; an equinox module taking ``shape``, ``eps``, ``use_weight`` and
``use_bias``. It is RMSNorm when its name says so or it takes no bias. A grouped class
(:func:`grouped_kind`): a Flax module taking ``num_groups`` (GroupNorm) or named
``*Instance*`` taking ``feature_axes`` but no ``reduction_axes`` (InstanceNorm), a haiku
module taking ``groups`` and ``data_format``, an equinox module taking ``groups`` and
``channels``. The cases' inputs are ``(N, C, *spatial)``: Flax InstanceNorm is built with
``feature_axes=1``, haiku GroupNorm with ``data_format="channels_first"``, equinox GroupNorm
(which takes one sample) is mapped over ``N``; Flax GroupNorm takes channels last only (its
``reduction_axes`` must hold the last axis), so its adapter moves the channel axis last and
back, the transposition a channels-first model would make.

Dialects and conventions, each the library's default: Flax keeps float32 parameters for
half inputs (``param_dtype``) and computes LayerNorm's variance as ``E[x^2] - E[x]^2``
(``use_fast_variance=True``): the value clauses admit it, the accuracy clause judges it
(layernorm.md, Dialects), as ``bn.accuracy.forward`` does for Flax's BatchNorm; haiku and
equinox keep the parameters in the input's dtype. JAX arrays have no memory layout: every
input arrives dense.
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from normspec.adapters._common import ParameterPolicy
from normspec.adapters._family import (
    GROUPED,
    Computation,
    FamilyClass,
    FamilyImplementation,
    as_float64,
    axes_of,
    constructor_names,
    kind_of,
    parameter_shape,
    without_keyword,
)
from normspec.adapters.jax._jax import (
    Tree,
    abstract,
    describe_device,
    from_jax,
    jax_dtype,
    jax_versions,
    leaf,
    parameter_dtype,
    precision,
    replace_leaves,
    to_jax,
)
from normspec.adapters.protocol import Array, FamilyConfig, FamilyKind, LayerConfig, WrongOutput

#: ``apply(tree, x) -> y``: a configured layer as a pure function of its variables.
Apply = Callable[[Tree, jax.Array], Any]
#: Makes (the variable tree, abstract or concrete; ``apply``) of a class for a configuration,
#: with the library's arguments, the compute dtype and the parameter dtype.
ProgramMaker = Callable[
    [type, LayerConfig, FamilyConfig, Mapping[str, Any], Any, Any], tuple[Tree, Apply]
]


def _probe(
    config: LayerConfig, family: FamilyConfig, dtype: Any, *, last: bool = False
) -> jax.ShapeDtypeStruct:
    """An input of the configuration's rank (haiku's parameters have the input's rank); a
    grouped one ``(2, C, 2, ...)``, or with the channels ``last`` (:func:`_channels_last`)."""
    if family.kind in GROUPED:
        spatial = (2,) * (config.rank - 2)
        shape = (2, *spatial, config.num_features) if last else (2, config.num_features, *spatial)
        return abstract(shape, dtype)
    leading = (2,) * (config.rank - len(family.normalized_shape))
    return abstract((*leading, *family.normalized_shape), dtype)


def _channels_last(apply: Apply) -> Apply:
    """A channels-last layer on ``(N, C, *spatial)`` inputs: the channel axis moved last
    and the output's back (Flax GroupNorm)."""

    def moved(tree: Tree, x: jax.Array) -> Any:
        return jax.numpy.moveaxis(apply(tree, jax.numpy.moveaxis(x, 1, -1)), -1, 1)

    return moved


def _flax_arguments(
    cls: type, config: LayerConfig, family: FamilyConfig, dtype: Any, param_dtype: Any
) -> dict[str, Any]:
    given: dict[str, Any] = dict(
        epsilon=config.eps, dtype=dtype, param_dtype=param_dtype, use_scale=config.affine
    )
    if family.kind == "groupnorm":
        given["num_groups"] = family.num_groups
    elif family.kind == "instancenorm":
        given["feature_axes"] = 1  # the case's channel axis
    else:
        axes = axes_of(family)
        given.update(reduction_axes=axes, feature_axes=axes)
    if "use_bias" in constructor_names(cls):
        given["use_bias"] = family.bias
    return given


def _linen(
    cls: type,
    config: LayerConfig,
    family: FamilyConfig,
    arguments: Mapping[str, Any],
    dtype: Any,
    param_dtype: Any,
) -> tuple[Tree, Apply]:
    module: Any = cls(**_flax_arguments(cls, config, family, dtype, param_dtype), **arguments)
    last = family.kind == "groupnorm"
    probe = _probe(config, family, dtype, last=last)
    tree = jax.eval_shape(module.init, jax.random.key(0), probe)
    return tree, _channels_last(module.apply) if last else module.apply


def _nnx(
    cls: type,
    config: LayerConfig,
    family: FamilyConfig,
    arguments: Mapping[str, Any],
    dtype: Any,
    param_dtype: Any,
) -> tuple[Tree, Apply]:
    from flax import nnx

    given = _flax_arguments(cls, config, family, dtype, param_dtype)
    factory: Any = cls
    module = factory(config.num_features, rngs=nnx.Rngs(0), **given, **arguments)
    graph, tree = nnx.split(module)

    def apply(state: Tree, x: jax.Array) -> Any:
        return nnx.merge(graph, state)(x)

    return tree, _channels_last(apply) if family.kind == "groupnorm" else apply


def _haiku(
    cls: type,
    config: LayerConfig,
    family: FamilyConfig,
    arguments: Mapping[str, Any],
    dtype: Any,
    param_dtype: Any,
) -> tuple[Tree, Apply]:
    import haiku as hk

    given: dict[str, Any] = dict(eps=config.eps, create_scale=config.affine)
    if family.kind == "groupnorm":
        given.update(groups=family.num_groups, data_format="channels_first")
    else:
        axes = axes_of(family)
        given.update(axis=axes, param_axis=axes)
    if "create_offset" in constructor_names(cls):
        given["create_offset"] = family.bias
    factory: Any = cls
    transformed: Any = hk.without_apply_rng(
        hk.transform(lambda x: factory(**given, **arguments)(x))
    )
    tree = jax.eval_shape(transformed.init, jax.random.key(0), _probe(config, family, dtype))
    return tree, transformed.apply


def _equinox(
    cls: type,
    config: LayerConfig,
    family: FamilyConfig,
    arguments: Mapping[str, Any],
    dtype: Any,
    param_dtype: Any,
) -> tuple[Tree, Apply]:
    import equinox as eqx

    factory: Any = cls
    if family.kind == "groupnorm":  # one sample (C, *spatial) at a time: mapped over N
        module = factory(
            family.num_groups,
            config.num_features,
            eps=config.eps,
            channelwise_affine=config.affine,
            dtype=param_dtype,
            **arguments,
        )
        tree, static = eqx.partition(module, eqx.is_array)
        return tree, lambda arrays, x: jax.vmap(eqx.combine(arrays, static))(x)
    shape = family.normalized_shape
    module = factory(
        shape,
        eps=config.eps,
        use_weight=config.affine,
        use_bias=family.bias,
        dtype=param_dtype,
        **arguments,
    )
    tree, static = eqx.partition(module, eqx.is_array)

    def apply(arrays: Tree, x: jax.Array) -> Any:
        """The layer (which takes one slice) mapped over the slices: the leading axes."""
        layer = eqx.combine(arrays, static)
        slices = x.reshape(-1, *x.shape[x.ndim - len(shape) :])
        return jax.vmap(layer)(slices).reshape(x.shape)

    return tree, apply


@dataclass(frozen=True)
class JaxLibrary:
    """One JAX library: how its LayerNorm/RMSNorm classes are recognised, tabled and built.

    ``base``: ``"module:Class"`` every layer class of the library derives from;
    ``required``: the constructor arguments a recognised class takes; ``bias_argument``:
    the one that adds a bias; ``weight``, ``bias``: the names its variables are stored under;
    ``eps_argument``: the one that takes eps.
    """

    name: str
    package: str
    base: str
    required: tuple[str, ...]
    bias_argument: str
    weight: str
    bias: str
    parameters: ParameterPolicy
    program: ProgramMaker
    eps_argument: str = "eps"

    def row(self, cls: object, path: str) -> FamilyClass:
        """The table row of a layer class of this library."""
        grouped = grouped_kind(cls)
        if grouped is not None:  # a weight and bias per channel, both or neither
            return FamilyClass(grouped, path, self.weight, self.bias)
        takes_bias = self.bias_argument in constructor_names(cls)
        return FamilyClass(
            kind_of(cls, takes_bias), path, self.weight, self.bias if takes_bias else None
        )

    def recognisable(self, obj: object) -> bool:
        module, _, name = self.base.partition(":")
        if module not in sys.modules:  # a class of the library imports it
            return False
        base = getattr(sys.modules[module], name)
        names = constructor_names(obj)
        if not isinstance(obj, type) or not issubclass(obj, base):
            return False
        return grouped_kind(obj) is not None or all(n in names for n in self.required)


def grouped_kind(cls: object) -> FamilyKind | None:
    """GroupNorm: a class taking ``num_groups`` (Flax), ``groups`` and ``data_format``
    (haiku) or ``groups`` and ``channels`` (equinox); InstanceNorm: one named ``*Instance*``
    taking ``feature_axes`` but no ``reduction_axes`` (Flax); else ``None``."""
    names = set(constructor_names(cls))
    if (
        "num_groups" in names
        or {"groups", "data_format"} <= names
        or {"groups", "channels"} <= names
    ):
        return "groupnorm"
    instance = "instance" in getattr(cls, "__name__", "").lower()
    if instance and "feature_axes" in names and "reduction_axes" not in names:
        return "instancenorm"
    return None


_FLAX = ("epsilon", "reduction_axes", "feature_axes", "use_scale")
LIBRARIES: dict[str, JaxLibrary] = {
    library.name: library
    for library in (
        JaxLibrary(
            "flax.linen", "flax", "flax.linen:Module", _FLAX, "use_bias", "scale", "bias",
            "float32", _linen, "epsilon",
        ),
        JaxLibrary(
            "flax.nnx", "flax", "flax.nnx:Module", ("num_features", *_FLAX), "use_bias",
            "scale", "bias", "float32", _nnx, "epsilon",
        ),
        JaxLibrary(
            "haiku", "haiku", "haiku:Module", ("axis", "eps", "create_scale", "param_axis"),
            "create_offset", "scale", "offset", "input", _haiku,
        ),
        JaxLibrary(
            "equinox.nn", "equinox", "equinox:Module", ("shape", "eps", "use_weight", "use_bias"),
            "use_bias", "weight", "bias", "input", _equinox,
        ),
    )
}  # fmt: skip


class JaxFamilyComputation(Computation):
    """A configured layer: its variable tree and its jitted forward and vjp."""

    def __init__(self, entry: FamilyClass, config: LayerConfig, tree: Tree, apply: Apply) -> None:
        self.entry, self.config, self.template = entry, config, tree
        self.dtype = jax_dtype(config.dtype)
        self.shape = parameter_shape(config) if config.family else ()

        def gradients(variables: Tree, x: jax.Array, dy: jax.Array) -> tuple[Any, Tree]:
            _, pullback = jax.vjp(apply, variables, x)
            dvariables, dx = pullback(dy)
            return dx, dvariables

        def second_order(
            variables: Tree, x: jax.Array, dy: jax.Array, v: jax.Array, v_tree: Tree
        ) -> Any:
            def total(variables: Tree, x: jax.Array, dy: jax.Array) -> jax.Array:
                dx, dvariables = gradients(variables, x, dy)
                weighted = jax.tree_util.tree_map(lambda a, b: (a * b).sum(), dvariables, v_tree)
                return (v * dx).sum() + sum(jax.tree_util.tree_leaves(weighted))

            return jax.grad(total, argnums=(0, 1, 2))(variables, x, dy)

        self._forward = jax.jit(apply)
        self._gradients = jax.jit(gradients)
        self._second_order = jax.jit(second_order)

    def _names(self) -> dict[str, str]:
        """``{"weight": name, "bias": name}`` of the variables the layer holds."""
        names = {"weight": self.entry.weight} if self.config.affine else {}
        family = self.config.family
        if self.config.affine and family is not None and family.bias and self.entry.bias:
            names["bias"] = self.entry.bias
        return names

    def _tree(self, weight: Array | None, bias: Array | None) -> Tree:
        given = {"weight": weight, "bias": bias}
        values = {}
        for role, name in self._names().items():
            stored = leaf(self.template, name, "variables")
            values[name] = np.reshape(np.asarray(given[role], dtype=np.float64), stored.shape)

        def unexpected() -> Tree:
            raise WrongOutput(f"the layer holds variables besides {sorted(values)}")

        return replace_leaves(self.template, values, unexpected)

    def forward(self, x: Array, weight: Array | None, bias: Array | None) -> Array:
        with precision(self.config.dtype):
            y = self._forward(self._tree(weight, bias), to_jax(x, self.config.dtype))
            return from_jax(y, shape=x.shape, dtype=self.dtype, what="the output")

    def gradients(
        self, x: Array, dy: Array, weight: Array | None, bias: Array | None
    ) -> tuple[Array, Array | None, Array | None]:
        name = self.config.dtype
        with precision(name):
            dx, dtree = self._gradients(self._tree(weight, bias), to_jax(x, name), to_jax(dy, name))
            found = {
                role: as_float64(leaf(dtree, stored, "gradients"), self.shape)
                for role, stored in self._names().items()
            }
            return (
                from_jax(dx, shape=x.shape, dtype=self.dtype, what="dx"),
                found.get("weight"),
                found.get("bias"),
            )

    def second_order(
        self,
        x: Array,
        dy: Array,
        cotangents: tuple[Array, Array | None, Array | None],
        weight: Array | None,
        bias: Array | None,
    ) -> tuple[Array, Array | None, Array]:
        """jax.grad of ``S`` through the jax.vjp of the layer (the vjp of the vjp)."""
        name = self.config.dtype
        v, v_weight, v_bias = cotangents
        zeros = np.zeros(self.shape)
        with precision(name):  # the trees' leaves are converted in the layer's precision
            v_tree = self._tree(
                zeros if v_weight is None else v_weight, zeros if v_bias is None else v_bias
            )
            dtree, d_x, d_dy = self._second_order(
                self._tree(weight, bias), to_jax(x, name), to_jax(dy, name), to_jax(v, name), v_tree
            )
            d_weight = (
                as_float64(leaf(dtree, self._names()["weight"], "gradients"), self.shape)
                if "weight" in self._names()
                else None
            )
            return (
                from_jax(d_x, shape=x.shape, dtype=self.dtype, what="d_x"),
                d_weight,
                from_jax(d_dy, shape=x.shape, dtype=self.dtype, what="d_dy"),
            )


class JaxFamily(FamilyImplementation):
    """A normalization-family class of a JAX library under test."""

    compiles_per_shape = True
    double_backward = True

    def __init__(
        self,
        library: JaxLibrary,
        entry: FamilyClass,
        cls: type | None = None,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        self.jax_library = library
        self.library = library.name
        self.eps_argument = library.eps_argument
        self._programs: dict[Any, JaxFamilyComputation] = {}
        self._lock = threading.Lock()
        super().__init__(entry, cls, arguments)

    def describe(self) -> str:
        version = getattr(importlib.import_module(self.jax_library.package), "__version__", "?")
        policy = ", float32 parameters for half inputs"
        parameters = policy if self.jax_library.parameters == "float32" else ""
        return f"{self.jax_library.package} {version}, jax {jax.__version__}, {describe_device()}{parameters}"

    def notes(self) -> dict[str, str]:
        return {**super().notes(), "strided_input": "JAX arrays have no strides: inputs are dense"}

    def versions(self) -> Mapping[str, str]:
        package = self.jax_library.package
        version = getattr(importlib.import_module(package), "__version__", "?")
        return {**jax_versions(), package: version}

    def computation(
        self, config: LayerConfig, family: FamilyConfig, *, default_eps: bool = False
    ) -> JaxFamilyComputation:
        with self._lock:
            found = self._programs.get((config, default_eps))
            if found is None:
                dtype = jax_dtype(config.dtype)
                params = parameter_dtype(config.dtype, self.jax_library.parameters)
                cls: Any = without_keyword(self.cls, self.eps_argument) if default_eps else self.cls
                with precision(config.dtype):
                    tree, apply = self.jax_library.program(
                        cls, config, family, self.arguments, dtype, params
                    )
                found = JaxFamilyComputation(self.entry, config, tree, apply)
                self._programs[(config, default_eps)] = found
            return found


def recognise(
    obj: object, profile: str, arguments: Mapping[str, Any] | None = None
) -> JaxFamily | None:
    """The recogniser this package declares (``ADAPTERS``): a LayerNorm/RMSNorm-like class
    of Flax linen or nnx, haiku or equinox, or a grouped one (:func:`grouped_kind`)."""
    for library in LIBRARIES.values():
        if library.recognisable(obj):
            path = f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', obj)}"
            assert isinstance(obj, type)
            return JaxFamily(library, library.row(obj, path), obj, arguments)
    return None


__all__ = ["LIBRARIES", "JaxFamily", "grouped_kind", "recognise"]
