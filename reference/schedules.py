"""Clipping bounds of Batch Renormalization and their schedules (spec: renorm.md).

The correction ``(r, d)`` of a training step is clipped to ``r in [r_min, r_max]`` and
``d in [-d_max, d_max]`` (renorm.train.correction). The paper writes the interval of ``r``
as ``[1 / r_max, r_max]`` (:meth:`RenormBounds.symmetric`); tf_keras takes ``rmin``,
``rmax`` and ``dmax`` independently, a missing key meaning no clipping
(:meth:`RenormBounds.from_keras`).

A :class:`Schedule` gives the bounds of a training step as a function of the step counter
``t``, the number of training steps completed before it (renorm.schedule.step):
:class:`ConstantSchedule` (renorm.schedule.constant), :class:`LinearRamp` with the paper's
experiment as :data:`PAPER_SCHEDULE` (renorm.schedule.paper) and :class:`SwitchSchedule`,
plain batch normalization up to a step and constant bounds from it on
(renorm.schedule.switch).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

from normspec.reference._arrays import real_number, whole_number

__all__ = [
    "BN_BOUNDS",
    "PAPER_SCHEDULE",
    "ConstantSchedule",
    "LinearRamp",
    "RenormBounds",
    "Schedule",
    "SwitchSchedule",
    "check_step",
]

_KERAS_KEYS = ("rmin", "rmax", "dmax")


def _number(name: str, value: object) -> float:
    number = real_number(name, value)
    if math.isnan(number):
        raise ValueError(f"{name} must not be NaN")
    return number


def check_step(step: object, name: str = "step") -> int:
    """A step counter: a non-negative integer (renorm.schedule.step)."""
    return whole_number(name, step, minimum=0)


@dataclass(frozen=True)
class RenormBounds:
    """Clipping bounds of one training step: ``r in [r_min, r_max]``, ``d in [-d_max, d_max]``.

    ``r_min = 0``, ``r_max = inf`` and ``d_max = inf`` mean no clipping. Invalid bounds
    (NaN, ``r_min < 0``, ``r_min > r_max``, ``d_max < 0``) raise ``ValueError`` naming the
    bound (renorm.params.invalid).
    """

    r_min: float
    r_max: float
    d_max: float

    def __post_init__(self) -> None:
        r_min = _number("r_min", self.r_min)
        r_max = _number("r_max", self.r_max)
        d_max = _number("d_max", self.d_max)
        if not 0 <= r_min < math.inf:
            raise ValueError(f"r_min must be non-negative and finite, got {r_min!r}")
        if r_max < r_min:
            raise ValueError(
                f"r_max must not be smaller than r_min, got r_min={r_min!r}, r_max={r_max!r}"
            )
        if d_max < 0:
            raise ValueError(f"d_max must be non-negative, got {d_max!r}")
        object.__setattr__(self, "r_min", r_min)
        object.__setattr__(self, "r_max", r_max)
        object.__setattr__(self, "d_max", d_max)

    @classmethod
    def symmetric(cls, r_max: float, d_max: float) -> RenormBounds:
        """The paper's bounds: ``r in [1 / r_max, r_max]``, ``d in [-d_max, d_max]``.

        ``r_max`` must be at least 1 and ``d_max`` non-negative; ``r_max = 1, d_max = 0`` is
        plain batch normalization (renorm.train.reduces_to_bn).
        """
        r_max = _number("r_max", r_max)
        d_max = _number("d_max", d_max)
        if r_max < 1:
            raise ValueError(f"r_max must be at least 1, got {r_max!r}")
        if d_max < 0:
            raise ValueError(f"d_max must be non-negative, got {d_max!r}")
        return cls(1.0 / r_max, r_max, d_max)

    @classmethod
    def from_keras(cls, clipping: Mapping[str, float] | None) -> RenormBounds:
        """tf_keras' ``renorm_clipping`` dict: keys ``rmin``, ``rmax``, ``dmax``.

        A missing key means no clipping on that side (``rmin = 0``, ``rmax = dmax = inf``);
        an unknown key raises ``ValueError`` as tf_keras does.
        """
        values = dict(clipping or {})
        unknown = sorted(set(values) - set(_KERAS_KEYS))
        if unknown:
            raise ValueError(
                f"renorm_clipping has unknown keys {unknown}; supported: {list(_KERAS_KEYS)}"
            )
        r_min = _number("rmin", values.get("rmin", 0.0))
        r_max = _number("rmax", values.get("rmax", math.inf))
        d_max = _number("dmax", values.get("dmax", math.inf))
        if r_min < 0:
            raise ValueError(f"rmin must be non-negative, got {r_min!r}")
        if r_max < r_min:
            raise ValueError(
                f"rmax must not be smaller than rmin, got rmin={r_min!r}, rmax={r_max!r}"
            )
        if d_max < 0:
            raise ValueError(f"dmax must be non-negative, got {d_max!r}")
        return cls(r_min, r_max, d_max)

    @property
    def is_batchnorm(self) -> bool:
        """True when the bounds force ``r = 1`` and ``d = 0``: plain batch normalization."""
        return self.r_min == 1.0 and self.r_max == 1.0 and self.d_max == 0.0


#: ``r_max = 1``, ``d_max = 0``: the correction is the identity, renorm is batch norm.
BN_BOUNDS = RenormBounds(1.0, 1.0, 0.0)


class Schedule(ABC):
    """The clipping bounds as a function of the step counter (renorm.schedule.step)."""

    @abstractmethod
    def bounds(self, step: int) -> RenormBounds:
        """The bounds of the training step taken when ``step`` steps were completed before it."""


@dataclass(frozen=True)
class ConstantSchedule(Schedule):
    """The same bounds at every step (renorm.schedule.constant)."""

    value: RenormBounds

    def __post_init__(self) -> None:
        if not isinstance(self.value, RenormBounds):
            raise ValueError(f"value must be RenormBounds, got {self.value!r}")

    @classmethod
    def symmetric(cls, r_max: float, d_max: float) -> ConstantSchedule:
        """Constant paper-style bounds ``[1 / r_max, r_max]`` and ``[-d_max, d_max]``."""
        return cls(RenormBounds.symmetric(r_max, d_max))

    def bounds(self, step: int) -> RenormBounds:
        check_step(step)
        return self.value


def _ramp(step: int, start: int, end: int) -> float:
    """0 up to ``start``, 1 from ``end`` on, linear in between."""
    if step >= end:
        return 1.0
    if step <= start:
        return 0.0
    return (step - start) / (end - start)


@dataclass(frozen=True)
class LinearRamp(Schedule):
    """Plain batch norm up to ``start``, then linear ramps to the final bounds.

    ``r_max(t) = 1 + (r_max - 1) * clamp((t - start) / (r_max_step - start), 0, 1)`` and
    ``d_max(t) = d_max * clamp((t - start) / (d_max_step - start), 0, 1)``; ``r`` is clipped
    to ``[1 / r_max(t), r_max(t)]``. The defaults are the paper's experiment
    (renorm.schedule.paper): ``r_max`` = 1 and ``d_max`` = 0 for the first 5,000 steps,
    ``r_max`` reaching 3 at step 40,000 and ``d_max`` reaching 5 at step 25,000.
    """

    start: int = 5_000
    r_max: float = 3.0
    r_max_step: int = 40_000
    d_max: float = 5.0
    d_max_step: int = 25_000

    def __post_init__(self) -> None:
        check_step(self.start, "start")
        check_step(self.r_max_step, "r_max_step")
        check_step(self.d_max_step, "d_max_step")
        RenormBounds.symmetric(self.r_max, self.d_max)  # validates and names r_max / d_max
        if self.r_max_step < self.start:
            raise ValueError(
                f"r_max_step ({self.r_max_step}) must not come before start ({self.start})"
            )
        if self.d_max_step < self.start:
            raise ValueError(
                f"d_max_step ({self.d_max_step}) must not come before start ({self.start})"
            )
        object.__setattr__(self, "r_max", float(self.r_max))
        object.__setattr__(self, "d_max", float(self.d_max))

    def r_max_at(self, step: int) -> float:
        """``r_max(t)``."""
        return 1.0 + (self.r_max - 1.0) * _ramp(check_step(step), self.start, self.r_max_step)

    def d_max_at(self, step: int) -> float:
        """``d_max(t)``."""
        return self.d_max * _ramp(check_step(step), self.start, self.d_max_step)

    def bounds(self, step: int) -> RenormBounds:
        return RenormBounds.symmetric(self.r_max_at(step), self.d_max_at(step))


@dataclass(frozen=True)
class SwitchSchedule(Schedule):
    """Plain batch norm for steps ``t < step``, the bounds ``after`` from ``t = step`` on.

    The warm-up of implementations that switch from batch norm to renorm at once
    (renorm.schedule.switch), for example a ``warm_up_steps`` argument.
    """

    step: int
    after: RenormBounds

    def __post_init__(self) -> None:
        check_step(self.step, "switch step")
        if not isinstance(self.after, RenormBounds):
            raise ValueError(f"after must be RenormBounds, got {self.after!r}")

    def bounds(self, step: int) -> RenormBounds:
        return self.after if check_step(step) >= self.step else BN_BOUNDS


#: The schedule of the paper's Inception-v3 experiment (renorm.schedule.paper).
PAPER_SCHEDULE = LinearRamp()
