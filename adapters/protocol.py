"""The protocol every implementation under test is driven through.

Arrays cross the protocol as NumPy float64 arrays whose values are exactly representable
in the layer's dtype (``LayerConfig.dtype``); an adapter converts them to its framework's
dtype and layout and converts results back to float64 NumPy arrays. The statistic state
is the reference's immutable value: :class:`normspec.reference.RunningStatistics` for batch
normalization, :class:`normspec.reference.renorm.RenormStatistics` for a renorm layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from normspec.reference import Gradients, RunningStatistics
from normspec.reference.renorm import RenormConfig, RenormStatistics
from normspec.reference.second_order import SecondOrderGradients

Array = NDArray[np.float64]
DTypeName = Literal["float64", "float32", "float16", "bfloat16"]
#: ``first``: the feature axis is axis 1 (NC, NCHW, ...); ``last``: the last axis (NHWC, ...).
FeatureAxisPosition = Literal["first", "last"]

ALL_DTYPES: tuple[DTypeName, ...] = ("float64", "float32", "float16", "bfloat16")

#: The statistic state a layer carries: running statistics (BN) or moving ones (renorm).
State = RunningStatistics | RenormStatistics
#: ``partial``: a replica's dgamma, dbeta are sums over its own values; ``reduced``: the
#: totals over every replica (dialects.md: replica_param_gradients).
ReplicaParamGradients = Literal["partial", "reduced"]
#: A chapter of the specification by the capability flag its layers need: the dtypes an
#: implementation supports are probed per chapter (``Capabilities.refused_dtypes``).
Chapter = Literal[
    "batchnorm",
    "renorm",
    "ghost_batches",
    "replicas",
    "layernorm",
    "rmsnorm",
    "groupnorm",
    "instancenorm",
]


class UnsupportedConfig(Exception):
    """Raised by :meth:`Implementation.build` for a configuration the adapter cannot express."""


class WrongOutput(Exception):
    """Raised by an adapter when the implementation returned something malformed.

    For example an output of the wrong dtype or shape (conv.io.shape_dtype); the engine
    reports it as a failure of the clause being checked.
    """


#: The members of the normalization family checked beside batch normalization (layernorm.md,
#: groupnorm.md).
FamilyKind = Literal["layernorm", "rmsnorm", "groupnorm", "instancenorm"]


@dataclass(frozen=True)
class FamilyConfig:
    """A normalization-family layer (spec: layernorm.md, groupnorm.md): what it normalizes
    and its affine.

    ``normalized_shape``: the trailing axes each slice spans (ln.train.statistics);
    ``bias``: an additive bias beside the weight (only with ``LayerConfig.affine``);
    ``scale_offset``: RMSNorm's scale dialect, the output multiplied by ``scale_offset + w``
    (0: ``w``, torch, flax, keras; 1: Gemma's ``1 + w``): the profile's ``rmsnorm.scale``
    (dialects.md), which the layer is claimed to follow.
    A GroupNorm or InstanceNorm layer (groupnorm.md) has no ``normalized_shape`` (``()``):
    it normalizes ``num_groups`` groups of consecutive channels of ``LayerConfig.num_features``
    (InstanceNorm: one per channel), its parameters per channel.
    """

    kind: FamilyKind
    normalized_shape: tuple[int, ...]
    bias: bool = True
    scale_offset: float = 0.0
    num_groups: int = 1


@dataclass(frozen=True)
class LayerConfig:
    """What an adapter builds a layer from.

    ``momentum`` is in the implementation's own convention (the profile's ``update_rate``);
    ``None`` asks for the cumulative average. ``renorm`` is ``None`` for plain batch
    normalization, else the reference's canonical :class:`RenormConfig` (its schedule or
    bounds, ``rate`` = the canonical alpha of the moving statistics, ``correction_rate`` for
    the separate correction set, what is averaged, the sigma floor): the adapter expresses it
    in its library's arguments (``momentum`` already is, for the moving statistics) and
    declares the dialects it cannot express as unsupported (:class:`UnsupportedConfig`).
    """

    num_features: int
    rank: int
    feature_axis: int
    dtype: DTypeName
    eps: float
    momentum: float | None
    affine: bool = True
    track_running_stats: bool = True
    renorm: RenormConfig | None = None
    #: Ghost batch normalization (spec: ghost.md): training normalizes each ghost batch of
    #: this many samples on its own; ``None``: the whole batch.
    virtual_batch_size: int | None = None
    #: A LayerNorm or RMSNorm layer (layernorm.md); ``None``: batch normalization. Its
    #: ``num_features`` is then the size of ``normalized_shape``, ``feature_axis`` the last;
    #: for GroupNorm and InstanceNorm (groupnorm.md) the channels, ``feature_axis`` 1.
    family: FamilyConfig | None = None

    @property
    def feature_position(self) -> FeatureAxisPosition | None:
        if self.feature_axis == 1:
            return "first"
        return "last" if self.feature_axis == self.rank - 1 else None


@dataclass(frozen=True)
class Capabilities:
    """What an implementation supports; clauses outside it are reported *not applicable*."""

    dtypes: frozenset[DTypeName] = frozenset(ALL_DTYPES)
    ranks: frozenset[int] = frozenset({2, 3, 4, 5})
    feature_axes: tuple[FeatureAxisPosition, ...] = ("first",)
    backward: bool = True
    batchnorm: bool = True
    renorm: bool = False
    #: LayerNorm and RMSNorm layers (``LayerConfig.family``; spec: layernorm.md)
    layernorm: bool = False
    rmsnorm: bool = False
    #: GroupNorm and InstanceNorm layers (``LayerConfig.family``; spec: groupnorm.md)
    groupnorm: bool = False
    instancenorm: bool = False
    #: InstanceNorm with running statistics (``LayerConfig.track_running_stats``: in.running.*)
    instance_running_stats: bool = False
    #: a LayerNorm/RMSNorm layer can carry a bias beside its weight (``FamilyConfig.bias``)
    elementwise_bias: bool = True
    cumulative_average: bool = False
    untracked: bool = False
    without_affine: bool = True
    step_counter: bool = False
    strided_input: bool = True
    #: the training backward is differentiable: ``SecondOrderLayer.second_order_vjp``
    #: (bn.backward.second_order; a family layer's backward: ln/rms/gn/in.backward.second_order,
    #: gamma and beta its weight and bias)
    double_backward: bool = False
    #: ghost batches (``LayerConfig.virtual_batch_size``, spec: ghost.md)
    ghost_batches: bool = False
    #: synchronized BN across replicas (spec: replicas.md): ``build_replicated``
    replicas: bool = False
    #: per-replica masks in a replicated step (Flax's ``mask=``; sync.train.mask)
    replica_masks: bool = False
    #: replicas whose batches differ in size (an empty one among them) without masks;
    #: false where every device takes a block of one shape (shard_map, pmap)
    replica_uneven_batches: bool = True
    #: the parameter gradients a replica returns (dialects.md: replica_param_gradients)
    replica_param_gradients: ReplicaParamGradients = "partial"
    #: a program is compiled per configuration and input shape (JAX): a check draws its
    #: settings from a per-run menu (conformance.menu) unless asked otherwise
    compiles_per_shape: bool = False
    #: a training mode (``train_step``); false for an inference-only (frozen) layer, whose
    #: statistics and affine parameters are only ever set (``set_state``,
    #: ``set_parameters``): the clauses that need a training step are not applicable
    training: bool = True
    #: the dtype the layer keeps eps and momentum in (ONNX's float32 attributes): a case's
    #: eps and momentum are values of it, the configuration the layer holds
    setting_dtype: DTypeName = "float64"
    #: ``(eps, momentum)`` of a layer that holds its own (a BN node of a model file; momentum
    #: in the profile's convention): every case takes them, and the clauses that choose
    #: others (bn.train.statistics, bn.params.invalid, bn.params.no_nan_state) do not apply
    held_setting: tuple[float, float] | None = None
    #: a new layer starts from its library's initial parameters and statistics
    #: (bn.running.initial, bn.train.affine); false for one that starts from the trained
    #: values a model file holds
    fresh_layers: bool = True
    #: per chapter, the dtypes of ``dtypes`` a tiny layer of that chapter fails in, each with
    #: the reason (the exception's one line): the chapter's clauses are not applicable in them
    #: (``dtypes`` holds the dtypes at least one chapter works in)
    refused_dtypes: Mapping[Chapter, Mapping[DTypeName, str]] = field(default_factory=dict)
    #: free text per capability that is missing, shown in the report's not-applicable reason
    notes: Mapping[str, str] = field(default_factory=dict)
    #: what a report should say about how the implementation is checked (constructor
    #: arguments left at their defaults, an arrangement chosen for a dtype): its warnings
    warnings: tuple[str, ...] = ()

    @property
    def chosen_settings(self) -> bool:
        """Whether a check may choose a layer's eps and momentum (it holds none of its own)."""
        return self.held_setting is None


@runtime_checkable
class Layer(Protocol):
    """One built layer: parameters, statistic state, and the three operations."""

    def set_parameters(self, gamma: Array, beta: Array) -> None:
        """Set the affine parameters (only called for layers with ``affine=True``)."""

    def set_state(self, state: State) -> None:
        """Set the running (BN) or moving (renorm) statistics, step counter included.

        Only called for layers that track statistics.
        """

    def state(self) -> State | None:
        """The current statistics as the library holds them, whatever their values (a
        negative or NaN variance is the clauses' to judge); ``None`` for a layer that keeps
        none."""

    def train_step(self, x: Array) -> Array:
        """One training-mode forward; updates the state as the implementation does.

        Never called for an implementation without a training mode (``Capabilities.training``).
        """

    def infer(self, x: Array) -> Array:
        """One inference-mode forward."""

    def vjp(self, x: Array, dy: Array, *, training: bool) -> Gradients:
        """dx, dgamma, dbeta of the forward in the given mode for the cotangent ``dy``.

        The state after a call is unspecified: the engine sets it before every call.
        """


@runtime_checkable
class SecondOrderLayer(Layer, Protocol):
    """A layer of an implementation with ``Capabilities.double_backward``."""

    def second_order_vjp(
        self, x: Array, dy: Array, v: Array, v_gamma: Array, v_beta: Array
    ) -> SecondOrderGradients:
        """The gradient in x, gamma and dy of ``S = sum(v * dx) + sum(v_gamma * dgamma) +
        sum(v_beta * dbeta)``, dx, dgamma, dbeta being the training-mode vjp for ``dy``.

        Without affine parameters ``v_gamma`` and ``v_beta`` are zero and the gradient in
        gamma is not compared. The state after a call is unspecified (bn.backward.second_order).
        """


@runtime_checkable
class Implementation(Protocol):
    """A batch-normalization implementation under test."""

    name: str

    def capabilities(self) -> Capabilities:
        """What this implementation supports."""

    def versions(self) -> Mapping[str, str]:
        """Versions of the libraries it runs on, for the report."""

    def build(self, config: LayerConfig) -> Layer:
        """A fresh layer, with the implementation's initial parameters and state."""


@runtime_checkable
class ReplicatedLayer(Protocol):
    """One layer on K replicas (spec: replicas.md): synchronized training steps.

    Every replica holds the same configuration; parameters and state are set on all of
    them. Arrays are per replica, in replica order, with the same shape but for the batch
    axis (axis 0), whose size may be 0. A mask is a boolean array broadcastable to its
    replica's input, true where a value counts (sync.train.mask).
    """

    def set_parameters(self, gamma: Array, beta: Array) -> None:
        """Set the affine parameters on every replica."""

    def set_state(self, state: State) -> None:
        """Set the running statistics of every replica."""

    def states(self) -> list[State | None]:
        """Each replica's statistics, as it holds them now."""

    def train_step(self, xs: Sequence[Array], masks: Sequence[Array] | None = None) -> list[Array]:
        """One synchronized training step; every replica's output."""

    def vjp(
        self, xs: Sequence[Array], dys: Sequence[Array], masks: Sequence[Array] | None = None
    ) -> list[Gradients]:
        """Each replica's dx, dgamma, dbeta of a training step (the state after is unspecified)."""


@runtime_checkable
class ReplicatedImplementation(Implementation, Protocol):
    """An implementation with ``Capabilities.replicas``: it also builds replicated layers."""

    def build_replicated(self, config: LayerConfig, replicas: int) -> ReplicatedLayer:
        """A fresh layer on ``replicas`` replicas (1 to 4), with initial parameters and state."""
