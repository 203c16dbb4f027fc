"""Dialects: the parameters on which real libraries legitimately differ (spec: dialects.md).

A :class:`Dialect` is a set of values for those parameters; a *profile* is a named dialect
that an implementation claims and is checked under. A dialect is a parameter, never a failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from normspec.reference._arrays import check_rate
from normspec.reference.ghost import GhostDialect
from normspec.reference.renorm import RenormConfig, RenormDialect
from normspec.reference.running import VarianceEstimator
from normspec.reference.schedules import (
    PAPER_SCHEDULE,
    ConstantSchedule,
    RenormBounds,
    Schedule,
)

#: ``rate``: the library's momentum is alpha itself (PyTorch);
#: ``decay``: the library's momentum is 1 - alpha (Keras, Flax).
UpdateRateConvention = Literal["rate", "decay"]


@dataclass(frozen=True)
class Dialect:
    """The dialect parameters of the BN chapter (dialect.update_rate, dialect.running_variance,
    dialect.cumulative_average, dialect.default_eps)."""

    name: str
    description: str
    update_rate: UpdateRateConvention
    running_variance: VarianceEstimator
    cumulative_average: bool
    default_eps: float
    default_momentum: float
    #: The renorm dialect parameters (renorm.md, dialects.md); ``None``: no batch renorm.
    renorm: RenormDialect | None = None
    #: The ghost-batch dialect parameters (ghost.md, dialects.md); ``None``: no ghost batches.
    ghost: GhostDialect | None = None

    def rate_from_momentum(self, momentum: float | None) -> float | None:
        """The canonical alpha for a library momentum (``None``: cumulative average)."""
        if momentum is None:
            if not self.cumulative_average:
                raise ValueError(f"profile {self.name!r} has no cumulative-average mode")
            return None
        value = check_rate(momentum)
        return value if self.update_rate == "rate" else 1.0 - value

    def momentum_from_rate(self, rate: float | None) -> float | None:
        """The library momentum that means the canonical alpha ``rate``."""
        if rate is None:
            return self.rate_from_momentum(None)
        value = check_rate(rate)
        return value if self.update_rate == "rate" else 1.0 - value


PROFILES: dict[str, Dialect] = {
    dialect.name: dialect
    for dialect in (
        Dialect(
            name="paper",
            description="Ioffe & Szegedy 2015: alpha as given, unbiased population variance",
            update_rate="rate",
            running_variance="unbiased",
            cumulative_average=True,
            default_eps=1e-5,
            default_momentum=0.1,
            renorm=RenormDialect(
                average="std",
                statistics="shared",
                clipping="symmetric",
                sigma_floor="none",
                warmup="ramp",
            ),
            ghost=GhostDialect(groups="consecutive", running="sequential"),
        ),
        Dialect(
            name="torch",
            description="torch.nn.BatchNorm*d: momentum is alpha, unbiased running variance, "
            "momentum=None averages cumulatively",
            update_rate="rate",
            running_variance="unbiased",
            cumulative_average=True,
            default_eps=1e-5,
            default_momentum=0.1,
        ),
        Dialect(
            name="keras",
            description="keras.layers.BatchNormalization: momentum is 1 - alpha, biased "
            "moving variance, epsilon 1e-3",
            update_rate="decay",
            running_variance="biased",
            cumulative_average=False,
            default_eps=1e-3,
            default_momentum=0.99,
        ),
        Dialect(
            name="flax",
            description="flax.linen/nnx.BatchNorm: momentum is 1 - alpha, biased running variance",
            update_rate="decay",
            running_variance="biased",
            cumulative_average=False,
            default_eps=1e-5,
            default_momentum=0.99,
        ),
        Dialect(
            name="tf_keras",
            description="tf_keras.layers.BatchNormalization (Keras 2), non-fused path: momentum "
            "is 1 - alpha, biased moving variance, epsilon 1e-3; renorm=True keeps a separate "
            "correction set updated with renorm_momentum",
            update_rate="decay",
            running_variance="biased",
            cumulative_average=False,
            default_eps=1e-3,
            default_momentum=0.99,
            renorm=RenormDialect(
                average="std",
                statistics="separate",
                clipping="independent",
                sigma_floor="sqrt_eps",
                warmup="none",
                default_renorm_momentum=0.99,
            ),
            ghost=GhostDialect(groups="strided", running="averaged"),
        ),
        Dialect(
            name="tf_keras_fused",
            description="tf_keras.layers.BatchNormalization (Keras 2), fused path: momentum is "
            "1 - alpha, the moving variance averages the Bessel-corrected batch variance, "
            "epsilon 1e-3; no renorm and no ghost batches (fused=True rejects both)",
            update_rate="decay",
            running_variance="unbiased",
            cumulative_average=False,
            default_eps=1e-3,
            default_momentum=0.99,
        ),
        Dialect(
            name="onnx",
            description="ONNX BatchNormalization (opsets 6 to 15): momentum is 1 - alpha, "
            "biased running variance (training_mode=1, or the training outputs of opsets 6 to "
            "9), epsilon 1e-5, momentum 0.9",
            update_rate="decay",
            running_variance="biased",
            cumulative_average=False,
            default_eps=1e-5,
            default_momentum=0.9,
        ),
    )
}


def profile(name: str) -> Dialect:
    """The named profile; ``KeyError`` naming the known ones otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise KeyError(f"unknown profile {name!r} (known: {known})") from None


def renorm_config(
    dialect: Dialect | str,
    num_features: int,
    *,
    momentum: float | None = None,
    renorm_momentum: float | None = None,
    eps: float | None = None,
    schedule: Schedule | None = None,
    clipping: Mapping[str, float] | None = None,
    feature_axis: int = 1,
) -> RenormConfig:
    """The :class:`RenormConfig` of a library layer given its own arguments.

    ``momentum`` and ``renorm_momentum`` are in the library's convention (its
    ``update_rate``); left out, the profile's defaults. The bounds are ``schedule``, or a
    Keras-style ``clipping`` dict (``rmin``, ``rmax``, ``dmax``; a missing key: no
    clipping), or by default the paper's schedule for a ramping dialect and no clipping for
    one that takes independent bounds.
    """
    chosen = profile(dialect) if isinstance(dialect, str) else dialect
    if chosen.renorm is None:
        raise ValueError(f"profile {chosen.name!r} has no batch renormalization")
    renorm = chosen.renorm
    if schedule is not None and clipping is not None:
        raise ValueError("give the bounds as schedule or as clipping, not both")
    if schedule is None:
        if clipping is not None or renorm.clipping == "independent":
            schedule = ConstantSchedule(RenormBounds.from_keras(clipping))
        elif renorm.warmup == "ramp":
            schedule = PAPER_SCHEDULE
        else:
            raise ValueError(f"profile {chosen.name!r} needs an explicit schedule")
    rate = chosen.rate_from_momentum(chosen.default_momentum if momentum is None else momentum)
    if rate is None:  # pragma: no cover - a momentum given is never None here
        raise ValueError("renorm needs a fixed update rate")
    correction_rate: float | None = None
    if renorm.statistics == "separate":
        given = renorm_momentum if renorm_momentum is not None else renorm.default_renorm_momentum
        correction_rate = chosen.rate_from_momentum(given)
    elif renorm_momentum is not None:
        raise ValueError(f"profile {chosen.name!r} has no separate renorm_momentum")
    return RenormConfig(
        num_features=num_features,
        schedule=schedule,
        feature_axis=feature_axis,
        eps=chosen.default_eps if eps is None else eps,
        rate=rate,
        average=renorm.average,
        statistics=renorm.statistics,
        correction_rate=correction_rate,
        sigma_floor=renorm.sigma_floor,
    )
