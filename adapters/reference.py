"""The reference itself, driven through the protocol: the suite must pass on it.

One layer class serves batch normalization and batch renormalization: the reference's two
layer-level APIs have the same shape (a config, the affine parameters, an immutable state;
``training_step``, ``inference``, ``backward``), and :class:`ReferenceLayer` picks one by
the type of its config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from normspec.adapters.protocol import (
    Array,
    Capabilities,
    Layer,
    LayerConfig,
    State,
    UnsupportedConfig,
)
from normspec.adapters.reference_family import ReferenceFamilyLayer
from normspec.reference import (
    Affine,
    BatchNormConfig,
    Gradients,
    RunningStatistics,
    backward,
    inference,
    renorm,
    replicas,
    training_step,
)
from normspec.reference import ghost as ghost_bn
from normspec.reference.dialects import Dialect, profile, renorm_config
from normspec.reference.schedules import (
    ConstantSchedule,
    LinearRamp,
    RenormBounds,
    Schedule,
    SwitchSchedule,
)
from normspec.reference.second_order import SecondOrderGradients, train_double_backward


@dataclass(frozen=True)
class Operations:
    """A layer-level API of the reference: the state of a new layer and the three operations."""

    initial: Callable[[Any], State | None]
    training_step: Callable[..., tuple[Array, Any]]
    inference: Callable[..., Array]
    backward: Callable[..., Gradients]


def _batchnorm_initial(config: BatchNormConfig) -> RunningStatistics | None:
    return config.initial_state()


def _renorm_initial(config: renorm.RenormConfig) -> renorm.RenormStatistics:
    return config.initial_state()


#: Batch normalization (normspec.reference.layer; bn.*).
BATCHNORM = Operations(_batchnorm_initial, training_step, inference, backward)
#: Batch renormalization (normspec.reference.renorm; renorm.*).
RENORM = Operations(_renorm_initial, renorm.training_step, renorm.inference, renorm.backward)


def _ghost_initial(config: ghost_bn.GhostConfig) -> RunningStatistics:
    return RunningStatistics.initial(config.num_features)


#: Ghost batch normalization (normspec.reference.ghost; ghost.*).
GHOST = Operations(_ghost_initial, ghost_bn.training_step, ghost_bn.inference, ghost_bn.backward)


class ReferenceLayer:
    """A float64 reference layer with the dialect's conventions.

    ``config`` is a :class:`BatchNormConfig` (batch normalization: momentum, estimator),
    a :class:`normspec.reference.renorm.RenormConfig` (batch renormalization: what is
    averaged, one or two sets of moving statistics, the floor on sigma, the schedule) or a
    :class:`normspec.reference.ghost.GhostConfig` (ghost batches of a BN layer).
    """

    def __init__(
        self, config: BatchNormConfig | renorm.RenormConfig | ghost_bn.GhostConfig
    ) -> None:
        self._config = config
        if isinstance(config, renorm.RenormConfig):
            self._ops = RENORM
        elif isinstance(config, ghost_bn.GhostConfig):
            self._ops = GHOST
        else:
            self._ops = BATCHNORM
        self._params = Affine.identity(config.num_features) if config.affine else None
        self._state: Any = self._ops.initial(config)

    def set_parameters(self, gamma: Array, beta: Array) -> None:
        self._params = Affine(np.array(gamma, dtype=np.float64), np.array(beta, dtype=np.float64))

    def set_state(self, state: State) -> None:
        self._state = state

    def state(self) -> State | None:
        return self._state

    def train_step(self, x: Array) -> Array:
        y, self._state = self._ops.training_step(self._config, self._params, self._state, x)
        return y

    def infer(self, x: Array) -> Array:
        return self._ops.inference(self._config, self._params, self._state, x)

    def vjp(self, x: Array, dy: Array, *, training: bool) -> Gradients:
        return self._ops.backward(self._config, self._params, self._state, x, dy, training=training)

    def second_order_vjp(
        self, x: Array, dy: Array, v: Array, v_gamma: Array, v_beta: Array
    ) -> SecondOrderGradients:
        """The closed form of bn.backward.second_order (batch normalization only): the check
        compares it with finite differences of the training backward."""
        config = self._config
        if not isinstance(config, BatchNormConfig):
            raise UnsupportedConfig("double backward is specified for batch normalization only")
        gamma = None if self._params is None else self._params.gamma
        return train_double_backward(
            x, dy, v, v_gamma, v_beta, gamma, eps=config.eps, feature_axis=config.feature_axis
        )


class ReplicatedReferenceLayer:
    """A reference layer on K replicas (normspec.reference.replicas; sync.*).

    It wraps one single-device :class:`ReferenceLayer`: the replicas share its
    configuration, parameters and state, and a step computes the concatenated batch once
    and hands each replica its slice.
    """

    def __init__(self, layer: ReferenceLayer, replicas: int) -> None:
        if not isinstance(layer._config, BatchNormConfig):
            raise UnsupportedConfig("only plain batch normalization is synchronized (sync.*)")
        self._layer = layer
        self._config: BatchNormConfig = layer._config
        self.replicas = replicas

    def set_parameters(self, gamma: Array, beta: Array) -> None:
        self._layer.set_parameters(gamma, beta)

    def set_state(self, state: State) -> None:
        self._layer.set_state(state)

    def states(self) -> list[State | None]:
        return [self._layer.state()] * self.replicas

    def _count(self, arrays: Sequence[Array]) -> None:
        if len(arrays) != self.replicas:
            raise ValueError(f"{len(arrays)} arrays for a layer on {self.replicas} replicas")

    def train_step(self, xs: Sequence[Array], masks: Sequence[Array] | None = None) -> list[Array]:
        self._count(xs)
        layer = self._layer
        ys, layer._state = replicas.training_step(
            self._config, layer._params, layer._state, xs, masks
        )
        return ys

    def vjp(
        self, xs: Sequence[Array], dys: Sequence[Array], masks: Sequence[Array] | None = None
    ) -> list[Gradients]:
        self._count(xs)
        return replicas.backward(self._config, self._layer._params, xs, dys, masks)


class ReferenceImplementation:
    """``normspec check reference --profile NAME``: the reference under any profile.

    Under a profile with a renorm dialect (``paper``, ``tf_keras``) it also builds renorm
    layers, acting as a library of that dialect would: it takes ``eps`` and the momenta in
    the profile's convention and the bounds in the dialect's form (and rejects invalid ones,
    renorm.params.invalid), and declares a canonical config with another ``average``,
    ``statistics`` or ``sigma_floor`` unsupported. It offers every schedule. Under a
    profile with a ghost dialect (``paper``, ``tf_keras``) it builds ghost layers of that
    dialect for a ``virtual_batch_size`` (rejecting one that is not a positive integer,
    ghost.params.invalid). It builds the reference's LayerNorm and RMSNorm (both RMSNorm
    scales, ``w`` and ``1 + w``) under every profile (layernorm.md), and its GroupNorm
    and InstanceNorm, with running statistics of the profile's dialect (groupnorm.md).
    """

    def __init__(self, dialect: str = "torch") -> None:
        self.dialect: Dialect = profile(dialect)
        self.name = f"normspec.reference ({self.dialect.name} dialect)"

    def capabilities(self) -> Capabilities:
        has_renorm = self.dialect.renorm is not None
        has_ghost = self.dialect.ghost is not None
        return Capabilities(
            feature_axes=("first", "last"),
            cumulative_average=self.dialect.cumulative_average,
            untracked=True,
            step_counter=True,
            renorm=has_renorm,
            replicas=True,
            replica_masks=True,
            double_backward=True,
            ghost_batches=self.dialect.ghost is not None,
            layernorm=True,
            rmsnorm=True,
            groupnorm=True,
            instancenorm=True,
            instance_running_stats=True,
            notes={
                name: f"profile {self.dialect.name} has none"
                for name, present in (("renorm", has_renorm), ("ghost_batches", has_ghost))
                if not present
            },
        )

    def versions(self) -> Mapping[str, str]:
        return {"numpy": np.__version__}

    def build(self, config: LayerConfig) -> Layer:
        if config.family is not None:
            return ReferenceFamilyLayer(config, self.dialect)
        if config.renorm is not None:
            if config.virtual_batch_size is not None:
                raise UnsupportedConfig("ghost batches with batch renormalization")
            return ReferenceLayer(self.renorm_config(config))
        batchnorm = BatchNormConfig(
            num_features=config.num_features,
            feature_axis=config.feature_axis,
            eps=config.eps,
            rate=self.dialect.rate_from_momentum(config.momentum),
            running_variance=self.dialect.running_variance,
            affine=config.affine,
            track_running_stats=config.track_running_stats,
            running_average=self.dialect.running_average,
        )
        if config.virtual_batch_size is None:
            return ReferenceLayer(batchnorm)
        ghost = self.dialect.ghost
        if ghost is None:
            raise UnsupportedConfig(f"profile {self.dialect.name} has no ghost batches")
        if not config.track_running_stats or config.momentum is None:
            raise UnsupportedConfig("a ghost layer keeps running statistics with a fixed rate")
        return ReferenceLayer(
            ghost_bn.GhostConfig(batchnorm, config.virtual_batch_size, ghost.groups, ghost.running)
        )

    def build_replicated(self, config: LayerConfig, replicas: int) -> ReplicatedReferenceLayer:
        """The layer of :meth:`build` on ``replicas`` replicas (batch normalization only)."""
        if config.renorm is not None:
            raise UnsupportedConfig("synchronized batch renormalization is not specified")
        layer = self.build(config)
        assert isinstance(layer, ReferenceLayer)
        return ReplicatedReferenceLayer(layer, replicas)

    # ------------------------------------------------------------------ renorm
    def renorm_config(self, config: LayerConfig) -> renorm.RenormConfig:
        """The reference config a library of the profile's renorm dialect would build.

        ``eps`` and ``momentum`` come from the layer config (the library's arguments), the
        correction set's momentum and the bounds from ``config.renorm`` expressed as the
        dialect takes them; invalid values raise ``ValueError`` naming the parameter.
        """
        canonical = config.renorm
        dialect = self.dialect.renorm
        if canonical is None or dialect is None:
            raise UnsupportedConfig(f"profile {self.dialect.name} has no batch renormalization")
        for name in ("average", "statistics", "sigma_floor"):
            wanted, offered = getattr(canonical, name), getattr(dialect, name)
            if wanted != offered:
                raise UnsupportedConfig(
                    f"{name}={wanted!r}: the {self.dialect.name} dialect has {name}={offered!r}"
                )
        if not config.track_running_stats:
            raise UnsupportedConfig("a renorm layer always keeps its moving statistics")
        if config.momentum is None:
            raise UnsupportedConfig("renorm has no cumulative-average mode")
        renorm_momentum = None
        if dialect.statistics == "separate":
            if canonical.correction_rate is None:  # pragma: no cover - RenormConfig ensures it
                raise ValueError("correction_rate is required when the statistics are separate")
            renorm_momentum = self.dialect.momentum_from_rate(canonical.correction_rate)
        built = renorm_config(
            self.dialect,
            config.num_features,
            momentum=config.momentum,
            renorm_momentum=renorm_momentum,
            eps=config.eps,
            schedule=self._schedule(canonical.schedule),
            feature_axis=config.feature_axis,
        )
        return replace(built, affine=config.affine)

    def _schedule(self, schedule: Schedule) -> Schedule:
        """The schedule as the library takes it: its bounds validated in the dialect's form."""
        if isinstance(schedule, ConstantSchedule):
            return ConstantSchedule(self._bounds(schedule.value))
        if isinstance(schedule, SwitchSchedule):
            return SwitchSchedule(schedule.step, self._bounds(schedule.after))
        if isinstance(schedule, LinearRamp):
            return replace(schedule)  # re-validates r_max, d_max and the steps
        return schedule

    def _bounds(self, bounds: RenormBounds) -> RenormBounds:
        """``r_max, d_max`` (symmetric) or ``rmin, rmax, dmax`` (independent), validated."""
        assert self.dialect.renorm is not None
        if self.dialect.renorm.clipping == "independent":
            return RenormBounds.from_keras(
                {"rmin": bounds.r_min, "rmax": bounds.r_max, "dmax": bounds.d_max}
            )
        made = RenormBounds.symmetric(bounds.r_max, bounds.d_max)
        if made.r_min != bounds.r_min:
            raise UnsupportedConfig(
                f"r_min={bounds.r_min!r}: the {self.dialect.name} dialect clips r to "
                f"[1 / r_max, r_max]"
            )
        return made
