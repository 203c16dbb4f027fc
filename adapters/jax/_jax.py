"""What the JAX adapters share: dtypes and x64 mode, conversion, variable trees, the layer.

Imported only by the JAX adapters (``flax_linen``, ``flax_nnx``, ``functional``,
``haiku_module``, ``equinox_module``), never by normspec at start-up. An adapter specialises :class:`JaxProgram` (one configured layer
as pure functions over a parameter tree and a statistics tree) and
:class:`JaxImplementation` (what it supports, how a program is made); conversion, output
checks (conv.io.shape_dtype), state, gradients and compilation are here.

**float64.** JAX computes in float64 only in x64 mode (``jax_enable_x64``). The adapters
enable it around the work of a float64 layer only, with the thread-local
``jax.enable_x64(True)`` context, and leave the process's setting alone otherwise: a float32
or half-precision case runs exactly as the user's program runs without x64 (weak types,
default dtypes), and normspec never flips a global flag under a user's feet. A layer's
arrays are created and consumed inside the context of its own dtype.

**Compilation.** A program jits its training step, inference and the two vjps once,
with the layer's configuration static (the module, eps, momentum, axis, dtypes are Python
values, as in a user's program); JAX caches the compiled executables per input shape and
dtype. Programs are cached per configuration by the implementation, so a check compiles
once per distinct (configuration, operation, shape, dtype): on one device there is no
padding or masking (both would change the reductions being checked). The initial variables
of a layer are computed only when a check reads them, by the program's own means (linen:
``init`` jitted, one small compilation; an eager ``init`` would run the module's forward op
by op, and JAX compiles every primitive anew for each new shape).

**State.** The running statistics are held in the dtype a training step leaves them in
(found by tracing one step, not running it): for ``flax.linen.BatchNorm`` that is float32
for float32 and half inputs and float64 for float64 inputs, although a new layer's
statistics are float32 until its first step; ``flax.nnx.BatchNorm`` keeps them in float32
whatever the dtype. Values the engine sets are rounded to that dtype, as a trained layer
would hold them.

**Replicas (sync.*).** A module that takes ``axis_name`` runs synchronized on K devices:
:class:`ShardedProgram` runs its training step and vjp under ``shard_map`` over a 1-d mesh
of the first K devices whose axis is the module's ``axis_name``, each replica's batch on
its own device (the CPU has several when ``XLA_FLAGS`` asks for them:
:mod:`normspec.adapters.jax.devices`). Every device takes a block of one shape: replicas of
different batch sizes run only with masks, padded (:class:`ReplicatedJaxLayer`).
"""

from __future__ import annotations

import abc
import contextlib
import copy
import dataclasses
import functools
import importlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from normspec.adapters._common import (
    ParameterPolicy,
    check_config,
    parameter_dtype_name,
    running_statistics,
)
from normspec.adapters.framework import ProbedImplementation
from normspec.adapters.jax import devices as jax_devices
from normspec.adapters.protocol import (
    Array,
    Capabilities,
    DTypeName,
    Layer,
    LayerConfig,
    State,
    UnsupportedConfig,
    WrongOutput,
)
from normspec.reference import Gradients, RunningStatistics

#: A pytree of arrays: a parameter tree or a statistics tree (dicts, ``nnx.State``, ...).
Tree = Any

#: The names under which a BN layer's variables are found in its trees (flax's names).
SCALE, BIAS, MEAN, VAR = "scale", "bias", "mean", "var"

JAX_DTYPES: dict[DTypeName, np.dtype[Any]] = {
    "float64": np.dtype(jnp.float64),
    "float32": np.dtype(jnp.float32),
    "float16": np.dtype(jnp.float16),
    "bfloat16": np.dtype(jnp.bfloat16),
}


def jax_dtype(name: DTypeName) -> np.dtype[Any]:
    """The NumPy/JAX dtype of a protocol dtype name (bfloat16 from ml_dtypes)."""
    return JAX_DTYPES[name]


def parameter_dtype(name: DTypeName, policy: ParameterPolicy) -> np.dtype[Any]:
    """``param_dtype`` for inputs of dtype ``name``: float32 or the input's (half inputs)."""
    return jax_dtype(parameter_dtype_name(name, policy))


# -- x64 ------------------------------------------------------------------------------------


def _x64_context() -> contextlib.AbstractContextManager[Any]:
    state = getattr(jax, "enable_x64", None)
    if callable(state):  # recent jax: a config state, usable as a context manager
        context: contextlib.AbstractContextManager[Any] = state(True)
        return context
    older: contextlib.AbstractContextManager[Any] = importlib.import_module(
        "jax.experimental"
    ).enable_x64()
    return older


@contextlib.contextmanager
def precision(name: DTypeName) -> Iterator[None]:
    """x64 mode around the work of a float64 layer; the process's own setting otherwise."""
    if name != "float64" or x64_enabled():
        yield
        return
    with _x64_context():
        yield


def x64_enabled() -> bool:
    """Whether this thread computes with 64-bit types now (the context included)."""
    return bool(jax.dtypes.canonicalize_dtype(np.float64) == np.float64)


# -- arrays ---------------------------------------------------------------------------------


def to_jax(array: Array, name: DTypeName, sharding: NamedSharding | None = None) -> jax.Array:
    """A protocol array as a JAX array of dtype ``name`` (exact: values are representable).

    The conversion is done on the host (NumPy, ml_dtypes for bfloat16) and the result
    transferred with ``jax.device_put`` (split over the devices of ``sharding`` if one is
    given): no JAX operation, so nothing is compiled. JAX
    arrays have no strides: a strided or transposed view arrives dense. A float64 array
    needs x64 mode (:func:`precision`).
    """
    values = np.asarray(array, dtype=np.float64).astype(jax_dtype(name))
    if name == "float64" and not x64_enabled():
        raise RuntimeError("a float64 array outside x64 mode would be truncated to float32")
    return jax.device_put(values, sharding)


def vector_to_jax(values: Array, dtype: Any) -> jax.Array:
    """A per-feature vector in ``dtype`` (rounded to nearest where it is narrower)."""
    return jax.device_put(np.asarray(values, dtype=np.float64).astype(np.dtype(dtype)))


def from_jax(value: object, *, shape: Sequence[int], dtype: Any, what: str) -> Array:
    """A result as a float64 NumPy array, after checking it (conv.io.shape_dtype).

    Raises :class:`WrongOutput` unless ``value`` is an array of exactly ``dtype`` and
    ``shape``: an implementation returns its input's dtype and shape, never a promoted or
    broadcast one.
    """
    if not isinstance(value, jax.Array | np.ndarray):
        raise WrongOutput(f"{what} is a {type(value).__name__}, not a jax.Array")
    if np.dtype(value.dtype) != np.dtype(dtype):
        raise WrongOutput(f"{what} has dtype {np.dtype(value.dtype)}, expected {np.dtype(dtype)}")
    if tuple(value.shape) != tuple(shape):
        raise WrongOutput(f"{what} has shape {tuple(value.shape)}, expected {tuple(shape)}")
    result: Array = np.array(np.asarray(value), dtype=np.float64)
    return result


def probe_input(config: LayerConfig, batch: int = 2) -> jax.ShapeDtypeStruct:
    """The abstract input a layer's variables are created and traced with.

    ``batch`` samples, spatial size 1, the layer's features at its feature axis.
    """
    shape = [batch] + [1] * (config.rank - 2)
    shape.insert(config.feature_axis, config.num_features)
    return abstract(tuple(shape), jax_dtype(config.dtype))


def abstract(shape: Sequence[int], dtype: Any) -> jax.ShapeDtypeStruct:
    """``jax.ShapeDtypeStruct(shape, dtype)``."""
    make: Any = jax.ShapeDtypeStruct
    made: jax.ShapeDtypeStruct = make(tuple(shape), dtype)
    return made


# -- variable trees -------------------------------------------------------------------------


def _leaf_name(path: Sequence[Any]) -> str | None:
    """The name a leaf is stored under: the last dict key or attribute on its path.

    ``nnx.State`` leaves end in the attribute ``value`` of a variable, which is skipped.
    """
    for entry in reversed(path):
        if isinstance(entry, jax.tree_util.DictKey):
            return str(entry.key)
        if isinstance(entry, jax.tree_util.GetAttrKey) and entry.name != "value":
            return entry.name
    return None


def leaves_named(tree: Tree) -> dict[str, list[int]]:
    """Leaf positions (in ``jax.tree_util`` order) by the name they are stored under."""
    found: dict[str, list[int]] = {}
    for index, (path, _) in enumerate(jax.tree_util.tree_flatten_with_path(tree)[0]):
        name = _leaf_name(path)
        if name is not None:
            found.setdefault(name, []).append(index)
    return found


def has_variables(tree: Tree, names: Sequence[str]) -> bool:
    """Whether ``tree`` holds exactly one leaf under each of ``names``."""
    found = leaves_named(tree)
    return all(len(found.get(name, ())) == 1 for name in names)


def leaf(tree: Tree, name: str, what: str) -> Any:
    """The one leaf stored under ``name``; :class:`WrongOutput` if there is none or several."""
    positions = leaves_named(tree).get(name, [])
    if len(positions) != 1:
        raise WrongOutput(
            f"the layer's {what} hold {len(positions)} variables named {name!r}, expected one"
        )
    return jax.tree_util.tree_leaves(tree)[positions[0]]


def replace_leaves(
    template: Tree, values: Mapping[str, Array], fallback: Callable[[], Tree]
) -> Tree:
    """``template`` with the leaves named in ``values`` set (in the template leaf's dtype).

    Every other leaf comes from ``template`` if it is a concrete array, else from the tree
    ``fallback()`` returns (called at most once, only when needed), which has the
    template's structure.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves: list[Any] = []
    other: list[Any] | None = None
    for index, (path, item) in enumerate(flat):
        name = _leaf_name(path)
        if name is not None and name in values:
            if tuple(item.shape) != np.shape(values[name]):
                raise WrongOutput(
                    f"the variable {name!r} has shape {tuple(item.shape)}, expected "
                    f"{np.shape(values[name])}"
                )
            leaves.append(vector_to_jax(values[name], item.dtype))
        elif isinstance(item, jax.ShapeDtypeStruct):
            if other is None:
                other = jax.tree_util.tree_leaves(fallback())
            leaves.append(other[index])
        else:
            leaves.append(item)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def read_vector(tree: Tree, name: str, num_features: int, what: str) -> Array:
    """A per-feature variable as a float64 vector, checked for shape and a float dtype."""
    value = leaf(tree, name, what)
    if not isinstance(value, jax.Array | np.ndarray) or not jnp.issubdtype(
        value.dtype, jnp.floating
    ):
        raise WrongOutput(f"{name} is a {type(value).__name__}, not a floating-point array")
    return from_jax(value, shape=(num_features,), dtype=value.dtype, what=name)


def statistics_of(stats: Tree, num_features: int, steps: int) -> RunningStatistics:
    """The running statistics held in a statistics tree."""
    return running_statistics(
        read_vector(stats, MEAN, num_features, "statistics"),
        read_vector(stats, VAR, num_features, "statistics"),
        steps,
    )


# -- programs -------------------------------------------------------------------------------

#: The configuration a candidate module class is built with to see whether it is recognisable.
PROBE_CONFIG = LayerConfig(
    num_features=2, rank=2, feature_axis=1, dtype="float32", eps=1e-5, momentum=0.9
)


class JaxProgram(abc.ABC):
    """One configured layer as pure functions over ``(params, stats, x)``; jitted here.

    ``params`` is the tree of trainable variables (``scale`` and ``bias`` among its
    leaves, or neither without affine parameters), ``stats`` the tree of everything else
    the layer keeps (``mean`` and ``var`` among its leaves). Subclasses give the layer's
    initial trees and the two forwards; this class jits them with the configuration
    static and derives the vjps: ``jax.vjp`` of the forward with respect to the parameters
    and the input, with the batch statistics inside the differentiated graph and the new
    running statistics as an auxiliary output, outside it (and discarded).

    A program may share the compilations of a *template* (``_module.share_compilation``):
    a program of the same structure whose functions take this one's scalar settings
    ``hyper`` as jit arguments. Its structure and its replicated functions are then the
    template's (:meth:`structure`, :class:`ShardedFunctions`).
    """

    #: the scalar settings a shared compilation takes as jit arguments (:func:`with_hyper`)
    hyper: Mapping[str, Any] = MappingProxyType({})
    #: whether a training step and an inference run as the vjp's programs (:meth:`forward`):
    #: set for a library's own layer, whose output is always an array and differentiable; a
    #: user's class keeps forward-only programs (a module that returns a wrong output, or
    #: calls what JAX cannot differentiate, must fail as its forward fails)
    steps_by_vjp = False

    def __init__(self, config: LayerConfig) -> None:
        self.config = config
        #: the program whose compilations this one shares (``share_compilation``); itself
        self.template: JaxProgram = self
        self.train = jax.jit(self.apply_train)
        self.infer = jax.jit(self.apply_infer)
        self.vjp_train = jax.jit(functools.partial(self._vjp, training=True))
        self.vjp_infer = jax.jit(functools.partial(self._vjp, training=False))
        self._lock = threading.Lock()
        self._initial: tuple[Tree, Tree] | None = None
        self._structure: tuple[Tree, Tree] | None = None

    @abc.abstractmethod
    def make_initial(self) -> tuple[Tree, Tree]:
        """The parameter and statistics trees of a new layer (concrete arrays)."""

    def abstract_initial(self) -> tuple[Tree, Tree]:
        """The shapes and dtypes of :meth:`make_initial`'s trees, without computing them."""
        return jax.eval_shape(self.make_initial)

    @abc.abstractmethod
    def apply_train(
        self, params: Tree, stats: Tree, x: jax.Array, *, mask: jax.Array | None = None
    ) -> tuple[Any, Tree]:
        """One training-mode forward: the output and the updated statistics tree.

        ``mask`` (replicated programs only, sync.train.mask): Flax's ``mask=``, true where
        a value counts; ``None``: the call without it.
        """

    @abc.abstractmethod
    def apply_infer(self, params: Tree, stats: Tree, x: jax.Array) -> tuple[Any, Tree]:
        """One inference-mode forward: the output and the statistics tree it leaves."""

    def _vjp(
        self,
        params: Tree,
        stats: Tree,
        x: jax.Array,
        dy: jax.Array,
        *,
        training: bool,
        mask: jax.Array | None = None,
    ) -> tuple[Any, jax.Array, Tree, Tree]:
        """The output, dx, the parameter gradients and the statistics tree the forward
        leaves (the updated statistics of a training step)."""

        def output(p: Tree, inputs: jax.Array, s: Tree) -> tuple[Any, Tree]:
            if training:
                return self.apply_train(p, s, inputs, mask=mask)
            return self.apply_infer(p, s, inputs)

        # The statistics are a primal of the vjp (their cotangent is dropped) rather than
        # a constant closed over: nnx refuses to update a variable from another trace.
        y, pullback, updated = jax.vjp(output, params, x, stats, has_aux=True)
        # A wrong output dtype is reported by the caller (WrongOutput), never here.
        cotangent = dy.astype(y.dtype) if isinstance(y, jax.Array) else dy
        dparams, dx, _ = pullback(cotangent)
        return y, dx, dparams, updated

    def forward(self, training: bool, params: Tree, stats: Tree, x: jax.Array) -> tuple[Any, Tree]:
        """A training step or an inference: the output and the statistics tree it leaves.

        With :attr:`steps_by_vjp`, the vjp's program with a zero cotangent: the output and
        the statistics are computed by the same operations as by the forward alone, and one
        compilation per shape serves both the forward and its vjp.
        """
        if not self.steps_by_vjp:
            return (self.train if training else self.infer)(params, stats, x)
        vjp = self.vjp_train if training else self.vjp_infer
        # placed as :func:`to_jax` places a cotangent (uncommitted): a committed one would
        # be another entry of the jit cache, the same program compiled again
        zero = jax.device_put(np.zeros(x.shape, x.dtype))
        y, _, _, updated = vjp(params, stats, x, zero)
        return y, updated

    def statistics(self, stats: Tree, steps: int) -> RunningStatistics:
        """The running statistics a statistics tree holds, as held; ``steps``: the count
        last set, reported by a layer that keeps no step counter.

        The default reads the leaves ``mean`` and ``var``; a program whose library keeps
        its statistics elsewhere, or keeps a step counter, reads them itself.
        """
        return statistics_of(stats, self.config.num_features, steps)

    def with_statistics(
        self, template: Tree, state: RunningStatistics, others: Callable[[], Tree]
    ) -> Tree:
        """The statistics tree of ``template``'s structure and dtypes holding ``state``;
        every other leaf comes from ``others()`` (the current tree, or the initial one).

        The default sets the leaves ``mean`` and ``var``; a program whose library also
        keeps a step counter, or values derived from the statistics, sets them too, as a
        layer holding ``state`` would hold them.
        """
        values = {MEAN: np.asarray(state.mean), VAR: np.asarray(state.var)}
        for name in values:
            leaf(template, name, "statistics")
        return replace_leaves(template, values, others)

    def initial(self) -> tuple[Tree, Tree]:
        """The trees of a new layer, computed once and shared: arrays are immutable."""
        with self._lock, precision(self.config.dtype):
            if self._initial is None:
                self._initial = self.make_initial()
            return self._initial

    def abstract_structure(self) -> tuple[Tree, Tree]:
        """See :meth:`structure`; by tracing (not running) a training step."""
        params, stats = self.abstract_initial()
        x = probe_input(self.config)
        _, stepped = jax.eval_shape(self.apply_train, params, stats, x)
        return params, stepped

    def structure(self) -> tuple[Tree, Tree]:
        """Abstract trees: the parameters as created, the statistics as a training step
        leaves them (their dtype may differ from a new layer's: flax.linen in float64);
        traced once per template (the settings a template shares change no tree)."""
        if self.template is not self:
            return self.template.structure()
        with self._lock, precision(self.config.dtype):
            if self._structure is None:
                self._structure = self.abstract_structure()
            return self._structure


def with_hyper(template: JaxProgram, hyper: Mapping[str, Any]) -> Any:
    """A copy of ``template`` holding ``hyper`` (traced) as its ``hyper``."""
    program = copy.copy(template)
    program.hyper = hyper
    return program


# -- the layer ------------------------------------------------------------------------------


class JaxLayer:
    """A :class:`Layer` over a :class:`JaxProgram`: the layer's current trees and the calls.

    Every call runs in the precision context of the layer's dtype. Outputs and ``dx`` are
    checked for the input's dtype and shape, parameter gradients for the parameters'.
    """

    def __init__(self, program: JaxProgram, config: LayerConfig) -> None:
        self.program = program
        self.config = config
        self.input_dtype = jax_dtype(config.dtype)
        self._params: Tree | None = None  # None: the layer's initial parameters
        self._stats: Tree | None = None  # None: the layer's initial statistics
        #: the step count reported (the layers keep no step counter): the last one set
        self._steps = 0

    def _trees(self) -> tuple[Tree, Tree]:
        """The current trees; the initial ones (computed on first need) for those not set.

        A tree without leaves (the parameters of a layer without affine parameters) needs
        no initialisation.
        """
        params, stats = self._params, self._stats
        if params is None:
            template, _ = self.program.structure()
            if not jax.tree_util.tree_leaves(template):
                params = template
        if params is None or stats is None:
            initial_params, initial_stats = self.program.initial()
            params = initial_params if params is None else params
            stats = initial_stats if stats is None else stats
        return params, stats

    # -- the protocol --

    def set_parameters(self, gamma: Array, beta: Array) -> None:
        with precision(self.config.dtype):
            template, _ = self.program.structure()
            current = self._params
            values = {SCALE: np.asarray(gamma), BIAS: np.asarray(beta)}
            for name in values:
                leaf(template, name, "parameters")
            self._params = replace_leaves(
                template if current is None else current,
                values,
                lambda: self.program.initial()[0],
            )

    def set_state(self, state: State) -> None:
        if not isinstance(state, RunningStatistics):
            raise TypeError(f"a JAX BatchNorm layer keeps RunningStatistics, not {state!r}")
        with precision(self.config.dtype):
            _, template = self.program.structure()
            current = self._stats

            def others() -> Tree:
                return self.program.initial()[1] if current is None else current

            self._stats = self.program.with_statistics(template, state, others)
            self._steps = state.steps

    def state(self) -> State:
        _, stats = self._trees()
        return self.program.statistics(stats, self._steps)

    def train_step(self, x: Array) -> Array:
        with precision(self.config.dtype):
            params, stats = self._trees()
            y, self._stats = self.program.forward(True, params, stats, to_jax(x, self.config.dtype))
            return from_jax(y, shape=x.shape, dtype=self.input_dtype, what="the output")

    def infer(self, x: Array) -> Array:
        """Inference; if the implementation changed its statistics, the layer keeps that."""
        with precision(self.config.dtype):
            params, stats = self._trees()
            y, self._stats = self.program.forward(
                False, params, stats, to_jax(x, self.config.dtype)
            )
            return from_jax(y, shape=x.shape, dtype=self.input_dtype, what="the output")

    def vjp(self, x: Array, dy: Array, *, training: bool) -> Gradients:
        """dx, dgamma, dbeta by ``jax.vjp``; the layer's statistics are left as they were.

        Without affine parameters there is nothing to differentiate but ``x``: dgamma and
        dbeta are returned as zeros (the engine compares them only when affine).
        """
        with precision(self.config.dtype):
            params, stats = self._trees()
            function = self.program.vjp_train if training else self.program.vjp_infer
            inputs = to_jax(x, self.config.dtype)
            y, dx, dparams, _ = function(params, stats, inputs, to_jax(dy, self.config.dtype))
            from_jax(y, shape=x.shape, dtype=self.input_dtype, what="the output")
            grad_x = from_jax(dx, shape=x.shape, dtype=self.input_dtype, what="dx")
            features = self.config.num_features
            if not self.config.affine:
                zeros = np.zeros(features)
                return Gradients(grad_x, zeros, zeros.copy())
            grads = []
            for name, what in ((SCALE, "dgamma"), (BIAS, "dbeta")):
                parameter = leaf(params, name, "parameters")
                grads.append(
                    from_jax(
                        leaf(dparams, name, "parameter gradients"),
                        shape=(features,),
                        dtype=parameter.dtype,
                        what=what,
                    )
                )
            return Gradients(grad_x, grads[0], grads[1])


# -- replicas (sync.*) ----------------------------------------------------------------------

#: The mesh axis of a replicated layer: its module's ``axis_name``.
REPLICA_AXIS = "replicas"
#: Why batches of different sizes without masks cannot be run (sync.*).
UNEVEN_BATCHES = (
    "shard_map and pmap give every device a block of one shape: replicas with batches of "
    "different sizes (an empty replica among them) are only expressible padded to one size "
    "with the padding masked out, which needs mask= (checked under sync.train.mask)"
)


def _shard_map() -> Callable[..., Any]:
    """``jax.shard_map`` (jax >= 0.7), else ``jax.experimental.shard_map.shard_map``."""
    found: Callable[..., Any] | None = getattr(jax, "shard_map", None)
    if found is None:
        found = importlib.import_module("jax.experimental.shard_map").shard_map
    return found


def replica_devices_missing() -> str | None:
    """Why the devices do not suffice for the sync.* checks, or ``None`` if they do."""
    found = len(jax.devices())
    if found >= jax_devices.DEVICES:
        return None
    return (
        f"{found} JAX device(s) on {describe_device()}, {jax_devices.DEVICES} needed (one "
        f"per replica): {jax_devices.how_to_get_them()}"
    )


def _own(tree: Tree) -> Tree:
    """Inside shard_map: this device's copy of a tree stacked along a leading replica axis."""
    return jax.tree_util.tree_map(lambda value: value[0], tree)


def _stacked(tree: Tree) -> Tree:
    """Inside shard_map: a tree with a leading replica axis of size 1, to be concatenated."""
    return jax.tree_util.tree_map(lambda value: value[None], tree)


def _replica_split() -> PartitionSpec:
    """Every argument split along its leading axis over the replica mesh axis."""
    make: Any = PartitionSpec  # untyped in jax
    spec: PartitionSpec = make(REPLICA_AXIS)
    return spec


class ShardedFunctions:
    """A template program's training step and training vjp on the first K devices, jitted.

    The template's module synchronizes over :data:`REPLICA_AXIS` (its ``axis_name``), the
    axis of a 1-d mesh of K devices; the functions run under ``shard_map`` over that mesh,
    each device on its own block, and are jitted (one compilation per block shape, dtype
    and masking). Their first argument is the ``hyper`` of the program called (replicated
    on every device): every program sharing the template (one that differs from it only in
    those settings, ``_module.share_compilation``) shares its compilations, as on one device.
    Every other argument is split along its leading axis: the input, the cotangent and the
    mask are the concatenation of equal per-device blocks; the parameters and the
    statistics are K stacked copies, one per device, as under ``pmap``, so that each
    device returns its own running statistics and the gradient of its own copy of the
    parameters: the partial sums over its values (replica_param_gradients = partial). The
    vjp returns each device's updated statistics too, so that a program whose steps run as
    its vjp (``JaxProgram.steps_by_vjp``) steps through it (:meth:`ShardedProgram.step`).
    """

    def __init__(self, template: JaxProgram, replicas: int) -> None:
        mesh = Mesh(np.array(jax.devices()[:replicas]), (REPLICA_AXIS,))
        split = _replica_split()
        #: how every argument but ``hyper`` and every result is laid out: split over the
        #: devices along axis 0
        self.sharding = NamedSharding(mesh, split)

        def program(hyper: Mapping[str, Any]) -> JaxProgram:
            return with_hyper(template, hyper) if hyper else template

        def train(
            hyper: Mapping[str, Any],
            params: Tree,
            stats: Tree,
            x: jax.Array,
            mask: jax.Array | None,
        ) -> tuple[Any, Tree]:
            y, updated = program(hyper).apply_train(_own(params), _own(stats), x, mask=mask)
            return y, _stacked(updated)

        def vjp(
            hyper: Mapping[str, Any],
            params: Tree,
            stats: Tree,
            x: jax.Array,
            dy: jax.Array,
            mask: jax.Array | None,
        ) -> tuple[Any, jax.Array, Tree, Tree]:
            y, dx, dparams, updated = program(hyper)._vjp(
                _own(params), _own(stats), x, dy, training=True, mask=mask
            )
            return y, dx, _stacked(dparams), _stacked(updated)

        shard_map = _shard_map()
        make: Any = PartitionSpec  # untyped in jax
        replicated: PartitionSpec = make()  # ``hyper``: the same on every device

        def sharded(function: Callable[..., Any], arguments: int) -> Callable[..., Any]:
            specs = (replicated, *[split] * arguments)
            return jax.jit(shard_map(function, mesh=mesh, in_specs=specs, out_specs=split))

        self.train = sharded(train, 4)
        self.vjp = sharded(vjp, 5)
        #: whether a training step runs as the vjp's program (``JaxProgram.steps_by_vjp``)
        self.steps_by_vjp = template.steps_by_vjp


class ShardedProgram:
    """A replicated program's training step and training vjp on the first K devices: its
    template's :class:`ShardedFunctions` called with its ``hyper``."""

    def __init__(self, program: JaxProgram, functions: ShardedFunctions) -> None:
        #: how every argument and result is laid out: split over the devices along axis 0
        self.sharding = functions.sharding
        hyper = dict(program.hyper)  # a pytree (a mapping proxy is not)
        self.train = functools.partial(functions.train, hyper)
        self.vjp = functools.partial(functions.vjp, hyper)
        self.steps_by_vjp = functions.steps_by_vjp

    def step(
        self, params: Tree, stats: Tree, x: jax.Array, mask: jax.Array | None
    ) -> tuple[Any, Tree]:
        """A training step: the output and each device's statistics. With
        ``steps_by_vjp``, the vjp's program with a zero cotangent, as on one device
        (``JaxProgram.forward``): one compilation per block shape serves both."""
        if not self.steps_by_vjp:
            return self.train(params, stats, x, mask)
        zero = jax.device_put(np.zeros(x.shape, x.dtype), self.sharding)
        y, _, _, updated = self.vjp(params, stats, x, zero, mask)
        return y, updated

    def copies(self, tree: Tree, replicas: int) -> Tree:
        """``replicas`` stacked copies of a tree, one on each device (no JAX operation)."""

        def stack(value: Any) -> jax.Array:
            host = np.asarray(value)
            return jax.device_put(np.stack([host] * replicas), self.sharding)

        return jax.tree_util.tree_map(stack, tree)


class ReplicatedJaxLayer:
    """A :class:`~normspec.adapters.protocol.ReplicatedLayer` over a :class:`ShardedProgram`.

    ``single`` is the unsynchronized layer of the same configuration: it holds what is set
    on every replica (parameters, statistics) and knows the variables' structure (a
    synchronized module cannot be traced outside its mesh). Replica k's batch is the k-th
    block of the sharded input, on the k-th device.

    **Batch sizes.** ``shard_map`` (as ``pmap``) gives every device a block of one shape.
    Without masks, the replicas' batches must have one size (else
    :class:`UnsupportedConfig`; the capability ``replica_uneven_batches`` is false). With
    masks, each batch is padded with masked-out zeros to the largest one: the way a Flax
    user feeds devices batches of different sizes, and exactly as correct as the module's
    masking (sync.train.mask); the padding's outputs and gradients are dropped.
    """

    def __init__(
        self, single: JaxLayer, sharded: ShardedProgram, config: LayerConfig, replicas: int
    ) -> None:
        self.single, self.sharded = single, sharded
        self.config, self.replicas = config, replicas
        #: each replica's statistics (stacked) after a step; ``None``: the single layer's
        self._stats: Tree | None = None

    def set_parameters(self, gamma: Array, beta: Array) -> None:
        self.single.set_parameters(gamma, beta)

    def set_state(self, state: State) -> None:
        self.single.set_state(state)
        self._stats = None

    def states(self) -> list[State | None]:
        if self._stats is None:
            return [self.single.state() for _ in range(self.replicas)]
        with precision(self.config.dtype):
            host = jax.tree_util.tree_map(np.asarray, self._stats)
            program, steps = self.single.program, self.single._steps
            return [
                program.statistics(jax.tree_util.tree_map(lambda v, k=k: v[k], host), steps)
                for k in range(self.replicas)
            ]

    def _blocks(
        self, arrays: Sequence[Array], masks: Sequence[Array] | None, what: str
    ) -> tuple[jax.Array, jax.Array | None, list[int]]:
        """The sharded concatenation of equal blocks, the sharded mask, the batch sizes."""
        if len(arrays) != self.replicas:
            raise ValueError(f"{len(arrays)} {what} for a layer on {self.replicas} replicas")
        sizes = [int(np.shape(a)[0]) for a in arrays]
        block = max(sizes)
        if masks is None and len(set(sizes)) > 1:
            raise UnsupportedConfig(f"batch sizes {sizes}: {UNEVEN_BATCHES}")

        def padded(array: Array, fill: Any) -> Array:
            extra = [(0, block - array.shape[0])] + [(0, 0)] * (array.ndim - 1)
            return np.pad(array, extra, constant_values=fill)

        whole = np.concatenate([padded(np.asarray(a, np.float64), 0.0) for a in arrays])
        mask = None
        if masks is not None:
            flags = [
                np.broadcast_to(np.asarray(m, bool), a.shape)
                for m, a in zip(masks, arrays, strict=True)
            ]
            mask = jax.device_put(
                np.concatenate([padded(f, False) for f in flags]), self.sharded.sharding
            )
        return to_jax(whole, self.config.dtype, self.sharded.sharding), mask, sizes

    def _parts(
        self, value: object, sizes: list[int], shape: tuple[int, ...], what: str
    ) -> list[Array]:
        """Each replica's slice of a sharded result, after checking the whole."""
        block = max(sizes)
        whole = from_jax(
            value, shape=(block * len(sizes), *shape), dtype=self.single.input_dtype, what=what
        )
        return [whole[k * block : k * block + size] for k, size in enumerate(sizes)]

    def train_step(self, xs: Sequence[Array], masks: Sequence[Array] | None = None) -> list[Array]:
        with precision(self.config.dtype):
            x, mask, sizes = self._blocks(xs, masks, "inputs")
            params, stats = self.single._trees()
            if self._stats is None:
                stats = self.sharded.copies(stats, self.replicas)
            else:
                stats = self._stats
            copies = self.sharded.copies(params, self.replicas)
            y, self._stats = self.sharded.step(copies, stats, x, mask)
            return self._parts(y, sizes, tuple(xs[0].shape[1:]), "the output")

    def vjp(
        self, xs: Sequence[Array], dys: Sequence[Array], masks: Sequence[Array] | None = None
    ) -> list[Gradients]:
        """Each replica's dx and its own (partial) dgamma, dbeta; the state is left alone."""
        with precision(self.config.dtype):
            x, mask, sizes = self._blocks(xs, masks, "inputs")
            dy, _, _ = self._blocks(dys, masks, "cotangents")
            params, stats = self.single._trees()
            copies = self.sharded.copies(params, self.replicas)
            stats = self.sharded.copies(stats, self.replicas)
            y, dx, dparams, _ = self.sharded.vjp(copies, stats, x, dy, mask)
            shape = tuple(xs[0].shape[1:])
            self._parts(y, sizes, shape, "the output")
            dxs = self._parts(dx, sizes, shape, "dx")
            features = self.config.num_features
            if not self.config.affine:
                return [Gradients(d, np.zeros(features), np.zeros(features)) for d in dxs]
            found = []
            for name, what in ((SCALE, "dgamma"), (BIAS, "dbeta")):
                found.append(
                    from_jax(
                        leaf(dparams, name, "parameter gradients"),
                        shape=(self.replicas, features),
                        dtype=leaf(params, name, "parameters").dtype,
                        what=what,
                    )
                )
            return [Gradients(d, found[0][k], found[1][k]) for k, d in enumerate(dxs)]


# -- the implementation ---------------------------------------------------------------------


def jax_versions() -> dict[str, str]:
    """JAX, jaxlib, NumPy and device versions, for the report."""
    import jaxlib

    device = jax.devices()[0]
    return {
        "jax": jax.__version__,
        "jaxlib": getattr(jaxlib, "__version__", "?"),
        "numpy": np.__version__,
        "backend": jax.default_backend(),
        "device": f"{device.platform}:{device.id} ({device.device_kind})",
    }


def describe_device() -> str:
    device = jax.devices()[0]
    return f"{device.platform} ({device.device_kind})"


class JaxImplementation(ProbedImplementation):
    """An :class:`Implementation` on JAX: programs cached per configuration, dtype probing.

    ``parameters`` says where a float16/bfloat16 layer keeps its parameters: ``float32``
    (mixed precision, Flax's default ``param_dtype``) or ``input``.
    """

    library = "JAX"

    def __init__(self, profile: str = "flax", *, parameters: ParameterPolicy = "float32") -> None:
        self.profile = profile
        self.parameters = parameters
        parameter_dtype_name("float16", parameters)  # validates the policy
        self._programs: dict[Any, JaxProgram] = {}
        self._sharded: dict[Any, ShardedProgram] = {}
        #: the replicated functions of each (template, replicas) (:class:`ShardedFunctions`)
        self._functions: dict[tuple[JaxProgram, int], ShardedFunctions] = {}
        self._lock = threading.Lock()

    def program_key(self, config: LayerConfig) -> Any:
        """A hashable key: configurations with equal keys share one program (a module's
        settings; an adapter whose program depends on more extends it)."""
        return (
            config.num_features,
            config.rank,
            config.feature_position,
            config.dtype,
            config.eps,
            config.momentum,
            config.affine,
        )

    @abc.abstractmethod
    def make_program(self, config: LayerConfig) -> JaxProgram:
        """The program of a configuration within the capabilities."""

    def make_replicated_program(self, config: LayerConfig) -> JaxProgram:
        """The program of a configuration whose module synchronizes its statistics over
        :data:`REPLICA_AXIS` (sync.*); :class:`UnsupportedConfig` where there is none."""
        raise UnsupportedConfig(f"{self.library} takes no axis_name")

    def library_versions(self) -> Mapping[str, str]:
        """Versions of the libraries besides JAX and NumPy."""
        return {}

    def versions(self) -> Mapping[str, str]:
        return {**jax_versions(), **self.library_versions()}

    def describe(self, what: str) -> str:
        """``what (jax VERSION, DEVICE[, float32 parameters])``: the implementation's name."""
        policy = ", float32 parameters for half inputs" if self.parameters == "float32" else ""
        return f"{what} (jax {jax.__version__}, {describe_device()}{policy})"

    def program(self, config: LayerConfig) -> JaxProgram:
        """The cached program of ``config`` (made in the config's precision context)."""
        key = self.program_key(config)
        with self._lock:
            found = self._programs.get(key)
        if found is None:
            with precision(config.dtype):
                found = self.make_program(config)
            with self._lock:
                found = self._programs.setdefault(key, found)
        return found

    def make_layer(self, config: LayerConfig) -> Layer:
        return JaxLayer(self.program(config), config)

    def where(self) -> str:
        return describe_device()

    def probed(self, base: Capabilities) -> Capabilities:
        """The base capabilities, compiled per shape, less the dtypes a tiny layer fails on."""
        return super().probed(dataclasses.replace(base, compiles_per_shape=True))

    def build_replicated(self, config: LayerConfig, replicas: int) -> ReplicatedJaxLayer:
        """The layer on the first ``replicas`` devices (sync.*; see :class:`ShardedProgram`)."""
        capabilities = self.capabilities()
        if not capabilities.replicas:
            raise UnsupportedConfig(capabilities.notes.get("replicas", "no replicas"))
        check_config(capabilities, config, library=self.library)
        if not 1 <= replicas <= len(jax.devices()):
            raise UnsupportedConfig(f"{replicas} replicas on {len(jax.devices())} devices")
        return self.make_replicated(config, replicas)

    def make_replicated(self, config: LayerConfig, replicas: int) -> ReplicatedJaxLayer:
        """The layer on the first ``replicas`` devices, its program cached."""
        key = (self.program_key(config), replicas)
        with self._lock:
            sharded = self._sharded.get(key)
        if sharded is None:
            with precision(config.dtype):
                program = self.make_replicated_program(config)
            with self._lock:
                functions = self._functions.get((program.template, replicas))
            if functions is None:
                with precision(config.dtype):
                    functions = ShardedFunctions(program.template, replicas)
                with self._lock:
                    functions = self._functions.setdefault((program.template, replicas), functions)
            with self._lock:
                sharded = self._sharded.setdefault(key, ShardedProgram(program, functions))
        return ReplicatedJaxLayer(JaxLayer(self.program(config), config), sharded, config, replicas)

    def probe(self, config: LayerConfig, x: Array, base: Capabilities) -> str | None:
        """A training-mode backward of a tiny layer: one compilation per dtype.

        The training-mode vjp runs the training forward (batch statistics, running update,
        normalization) and its backward; a dtype XLA cannot compile or run fails there.
        The layer's parameters and statistics are set, not initialised, so that nothing
        else is compiled.
        """
        layer = self.make_layer(config)
        features = config.num_features
        layer.set_parameters(np.ones(features), np.zeros(features))
        layer.set_state(RunningStatistics.initial(features))
        layer.vjp(x, np.ones_like(x), training=True)
        return None

    def probe_replicated(self, config: LayerConfig, x: Array, base: Capabilities) -> str | None:
        """A training-mode backward of a tiny layer on two replicas, half the batch each, its
        parameters and statistics set: one compilation per dtype, as :meth:`probe`."""
        layer = self.make_replicated(config, 2)
        features = config.num_features
        layer.set_parameters(np.ones(features), np.zeros(features))
        layer.set_state(RunningStatistics.initial(features))
        layer.vjp([x[:2], x[2:]], [np.ones_like(x[:2]), np.ones_like(x[2:])])
        return None


#: Capability notes every Flax BatchNorm adapter shares.
FLAX_NOTES: Mapping[str, str] = {
    "cumulative_average": "Flax's momentum is a float (decay); there is no cumulative average",
    "step_counter": "Flax BatchNorm keeps no step counter",
    "untracked": "Flax BatchNorm always keeps its batch_stats; use_running_average=False "
    "outside training is the training forward (it updates the statistics), not a layer "
    "without statistics",
    "strided_input": "JAX arrays have no strides or memory layout: every input is dense",
    "renorm": "Flax has no batch renormalization (google/flax#3822)",
}
