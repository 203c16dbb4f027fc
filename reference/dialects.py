"""Dialects: the parameters on which real libraries legitimately differ (spec: dialects.md).

A :class:`Dialect` is a set of values for those parameters; a *profile* is a named dialect
that an implementation claims and is checked under. A dialect is a parameter, never a failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from normspec.reference._arrays import check_rate
from normspec.reference.running import VarianceEstimator

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
    )
}


def profile(name: str) -> Dialect:
    """The named profile; ``KeyError`` naming the known ones otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise KeyError(f"unknown profile {name!r} (known: {known})") from None
