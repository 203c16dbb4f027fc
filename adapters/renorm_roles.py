"""Renorm layers outside Keras: which argument and which state entry plays which renorm role.

A third-party batch-renormalization layer (a ``torch.nn.Module``, a ``flax.linen`` module)
shows what it is in the names of its constructor arguments and of its state: bounds
(``r_max`` and ``d_max``, or a clipping mapping with the keys ``rmin``, ``rmax``, ``dmax``),
perhaps a warm-up (``warmup_steps``: plain batch norm before that step, the bounds from it
on, renorm.schedule.switch), a moving mean, a moving spread (a standard deviation,
``running_std``, or a variance, ``running_var``: the dialect parameter ``average``) and a
step counter (renorm.moving.steps). This module maps those names onto the renorm chapter's
roles, once for every framework: :func:`argument_roles` and :func:`state_roles` read them,
:func:`library_arguments` expresses a canonical :class:`RenormConfig` in the layer's own
arguments (:class:`UnsupportedConfig` for what it cannot express), :func:`statistics`
turns what the layer holds into the reference's :class:`RenormStatistics`.

One set of moving statistics (``statistics = shared``) and no floor on sigma
(``sigma_floor = none``) are what such a layer can be driven under; the profile file that
describes its dialect says the rest (``examples/profiles/``). Imports no framework.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from normspec.adapters.protocol import Array, LayerConfig, UnsupportedConfig, WrongOutput
from normspec.reference.dialects import Dialect, find_profile, renorm_config
from normspec.reference.renorm import RenormConfig, RenormStatistics
from normspec.reference.schedules import ConstantSchedule, RenormBounds, SwitchSchedule

#: Constructor-argument names of each role, in order of preference.
R_MAX_NAMES = ("r_max", "rmax", "max_r", "renorm_r_max")
D_MAX_NAMES = ("d_max", "dmax", "max_d", "renorm_d_max")
CLIPPING_NAMES = ("renorm_clipping", "clipping")
WARMUP_NAMES = ("warmup_steps", "warm_up_steps", "warmup", "renorm_warmup_steps")
#: State-entry names of each role (buffers, variables), in order of preference.
MEAN_NAMES = ("running_mean", "moving_mean", "ra_mean", "mean")
STD_NAMES = ("running_std", "moving_std", "moving_stddev", "ra_std", "std")
VAR_NAMES = ("running_var", "moving_var", "moving_variance", "ra_var", "var")
STEP_NAMES = ("num_batches_tracked", "steps", "step", "num_steps", "renorm_steps")

#: What the moving spread a layer keeps is: a standard deviation or a variance.
SpreadKind = Literal["std", "variance"]

#: The bounds and warm-up a candidate class is built with to see its state.
PROBE_BOUNDS = RenormBounds.symmetric(3.0, 5.0)


def _first(names: Iterable[str], candidates: tuple[str, ...]) -> str | None:
    present = set(names)
    return next((name for name in candidates if name in present), None)


@dataclass(frozen=True)
class ArgumentRoles:
    """The constructor arguments of the bounds (``r_max`` and ``d_max``, or ``clipping``)
    and of the warm-up step (``None``: no warm-up)."""

    r_max: str | None
    d_max: str | None
    clipping: str | None
    warmup: str | None

    def names(self) -> tuple[str, ...]:
        found = (self.r_max, self.d_max, self.clipping, self.warmup)
        return tuple(name for name in found if name is not None)


@dataclass(frozen=True)
class StateRoles:
    """The state entries of the moving mean, the moving spread and the step counter."""

    mean: str
    spread: str
    spread_kind: SpreadKind
    steps: str


def argument_roles(names: Iterable[str]) -> ArgumentRoles | None:
    """The renorm roles among constructor-argument ``names``; ``None`` without bounds (both
    ``r_max`` and ``d_max``, or a clipping mapping)."""
    listed = list(names)
    r_max, d_max = _first(listed, R_MAX_NAMES), _first(listed, D_MAX_NAMES)
    clipping = _first(listed, CLIPPING_NAMES)
    if clipping is None and (r_max is None or d_max is None):
        return None
    if clipping is not None:
        r_max = d_max = None
    return ArgumentRoles(r_max, d_max, clipping, _first(listed, WARMUP_NAMES))


def state_roles(names: Iterable[str]) -> StateRoles | None:
    """The renorm roles among state-entry ``names``; ``None`` unless there are a moving
    mean, a moving spread (a standard deviation first) and a step counter."""
    listed = list(names)
    mean, steps = _first(listed, MEAN_NAMES), _first(listed, STEP_NAMES)
    std, var = _first(listed, STD_NAMES), _first(listed, VAR_NAMES)
    spread = std if std is not None else var
    if mean is None or steps is None or spread is None:
        return None
    return StateRoles(mean, spread, "std" if std is not None else "variance", steps)


def _pairs(pairs: Iterable[tuple[str, str | None]]) -> str:
    return ", ".join(f"{role}={name}" for role, name in pairs if name is not None)


def describe_arguments(arguments: ArgumentRoles) -> str:
    """``r_max=..., d_max=..., warm-up=...``: the argument names found."""
    return _pairs(
        (
            ("r_max", arguments.r_max),
            ("d_max", arguments.d_max),
            ("clipping", arguments.clipping),
            ("warm-up", arguments.warmup),
        )
    )


def describe(arguments: ArgumentRoles, state: StateRoles) -> str:
    """``r_max=..., d_max=..., warm-up=..., mean=..., spread=..., steps=...``: the names found."""
    state_names = (("mean", state.mean), ("spread", state.spread), ("steps", state.steps))
    return ", ".join((describe_arguments(arguments), _pairs(state_names)))


def missing_roles(arguments: ArgumentRoles | None, state_names: Iterable[str]) -> list[str]:
    """What a renorm-shaped class lacks among its bounds and its state entries
    ``state_names``, for an explanation (empty: nothing)."""
    problems = []
    if arguments is None:
        problems.append(
            f"no bounds among its arguments ({'/'.join(R_MAX_NAMES[:2])} and "
            f"{'/'.join(D_MAX_NAMES[:2])}, or {'/'.join(CLIPPING_NAMES)})"
        )
    listed = list(state_names)
    wanted = (
        ("moving mean", MEAN_NAMES),
        ("moving spread", STD_NAMES + VAR_NAMES),
        ("step counter", STEP_NAMES),
    )
    problems += [
        f"no {role} in its state ({'/'.join(names)})"
        for role, names in wanted
        if _first(listed, names) is None
    ]
    return problems


def _bound_arguments(roles: ArgumentRoles, bounds: RenormBounds) -> dict[str, Any]:
    if roles.clipping is not None:
        clipping: dict[str, float] = {}
        if bounds.r_min != 0.0:
            clipping["rmin"] = float(bounds.r_min)
        if bounds.r_max != math.inf:
            clipping["rmax"] = float(bounds.r_max)
        if bounds.d_max != math.inf:
            clipping["dmax"] = float(bounds.d_max)
        return {roles.clipping: clipping}
    r_min, r_max = float(bounds.r_min), float(bounds.r_max)
    symmetric = (math.isnan(r_min) and math.isnan(r_max)) or (r_max != 0.0 and r_min == 1.0 / r_max)
    if not symmetric:
        raise UnsupportedConfig(
            f"r_min={r_min!r}, r_max={r_max!r}: the layer takes {roles.r_max} and clips r to "
            f"[1 / {roles.r_max}, {roles.r_max}]"
        )
    assert roles.r_max is not None and roles.d_max is not None
    return {roles.r_max: r_max, roles.d_max: float(bounds.d_max)}


def library_arguments(roles: ArgumentRoles, renorm: RenormConfig) -> dict[str, Any]:
    """The layer's bounds and warm-up arguments for a canonical renorm config.

    Constant bounds are the warm-up step 0; a switch schedule is the warm-up step and its
    bounds; the paper's ramps, two sets of statistics and a floor on sigma are
    :class:`UnsupportedConfig`. Invalid bounds pass through (renorm.params.invalid).
    """
    if renorm.statistics != "shared":
        raise UnsupportedConfig("statistics='separate': the layer keeps one set of statistics")
    if renorm.sigma_floor != "none":
        raise UnsupportedConfig(f"sigma_floor={renorm.sigma_floor!r}: the layer has no floor")
    schedule = renorm.schedule
    if isinstance(schedule, ConstantSchedule):
        bounds, step = schedule.value, 0
    elif isinstance(schedule, SwitchSchedule):
        bounds, step = schedule.after, schedule.step
    else:
        raise UnsupportedConfig(
            f"schedule {type(schedule).__name__}: the layer takes fixed bounds and a warm-up"
        )
    arguments = _bound_arguments(roles, bounds)
    if roles.warmup is not None:
        arguments[roles.warmup] = step
    elif step != 0:
        raise UnsupportedConfig("a warm-up schedule: the layer takes no warm-up argument")
    return arguments


def probe_arguments(roles: ArgumentRoles) -> dict[str, Any]:
    """The bounds and warm-up arguments a candidate class is built with (:data:`PROBE_BOUNDS`)."""
    config = RenormConfig(1, schedule=ConstantSchedule(PROBE_BOUNDS))
    return library_arguments(roles, config)


def statistics(mean: Array, spread: Array, steps: Any) -> RenormStatistics:
    """The reference's state holding what a layer keeps (any values: the clauses judge
    them); :class:`WrongOutput` for arrays that cannot be one, or a counter that is no
    whole number."""
    try:
        count = float(np.asarray(steps))
        if not count.is_integer():
            raise ValueError(f"the step counter holds {count!r}")
        return RenormStatistics(mean, spread, int(count))
    except (TypeError, ValueError) as problem:
        raise WrongOutput(f"the moving statistics are malformed: {problem}") from None


def profile_notes(profile: str, state: StateRoles) -> tuple[str, ...]:
    """A warning where the profile's ``average`` does not say what the layer's spread is."""
    dialect = find_profile(profile)
    if dialect is None or dialect.renorm is None:
        return ()
    average = dialect.renorm.average
    if (average == "std") == (state.spread_kind == "std"):
        return ()
    return (
        f"profile {dialect.name!r} says average={average!r}, but the layer keeps its moving "
        f"spread in {state.spread!r}, a {state.spread_kind}: the moving statistics are read "
        "as the profile says",
    )


def probe_config(config: LayerConfig, profile: str) -> LayerConfig:
    """A dtype probe's tiny config as a renorm layer: constant :data:`PROBE_BOUNDS` in the
    profile's renorm dialect (the paper's if it has none)."""
    dialect: Dialect | None = find_profile(profile)
    if dialect is None or dialect.renorm is None:
        dialect = find_profile("paper")
    assert dialect is not None
    renorm = renorm_config(
        dialect,
        config.num_features,
        momentum=config.momentum,
        eps=config.eps,
        schedule=ConstantSchedule(PROBE_BOUNDS),
        feature_axis=config.feature_axis,
    )
    if renorm.statistics != "shared" or renorm.sigma_floor != "none":
        renorm = replace(renorm, statistics="shared", correction_rate=None, sigma_floor="none")
    return replace(config, renorm=renorm)


__all__ = [
    "ArgumentRoles",
    "StateRoles",
    "argument_roles",
    "describe",
    "describe_arguments",
    "library_arguments",
    "missing_roles",
    "probe_arguments",
    "probe_config",
    "profile_notes",
    "state_roles",
    "statistics",
]
