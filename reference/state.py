"""The explicit, immutable statistic state of a batch-normalization layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from normspec.reference._arrays import FloatArray, as_float64, frozen, whole_number

#: What the running statistics a layer keeps stand for (dialect parameter
#: ``running_average``, spec: dialects.md): ``plain``: the averages themselves, from mean 0
#: and variance 1; ``zero_debiased``: hidden averages from mean 0 and variance 0, which
#: inference reads divided by ``1 - (1 - alpha)^t`` (haiku's ``ExponentialMovingAverage``,
#: equinox's ``BatchNorm(mode="batch")``).
RunningAverage = Literal["plain", "zero_debiased"]
RUNNING_AVERAGES: tuple[RunningAverage, ...] = ("plain", "zero_debiased")


@dataclass(frozen=True)
class BatchStatistics:
    """Per-feature statistics of one training batch (bn.train.statistics).

    ``var`` is the biased batch variance (divide by ``count``); ``count`` is the number of
    values per feature, batch size times spatial size.
    """

    mean: FloatArray
    var: FloatArray
    count: int


@dataclass(frozen=True)
class RunningStatistics:
    """Running mean and variance with the number of training steps that produced them.

    Never mutated: every update returns a new value. The arrays are read-only copies.

    It is also how an adapter reports the statistics a library holds, so it holds any
    values: a negative variance, NaN or an infinity are the clauses' to judge
    (bn.params.no_nan_state, bn.running.var). The reference refuses a negative variance
    where it computes from one (inference: bn.infer.output).
    """

    mean: FloatArray
    var: FloatArray
    steps: int = 0

    def __post_init__(self) -> None:
        mean = frozen(as_float64("running mean", self.mean))
        var = frozen(as_float64("running variance", self.var))
        if mean.ndim != 1 or mean.shape != var.shape:
            raise ValueError(
                f"running mean and variance must be vectors of one shape, got {mean.shape} "
                f"and {var.shape}"
            )
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "var", var)
        object.__setattr__(self, "steps", whole_number("steps", self.steps, minimum=0))

    @classmethod
    def initial(
        cls, num_features: int, running_average: RunningAverage = "plain"
    ) -> RunningStatistics:
        """The state of a new layer (bn.running.initial): mean 0, variance 1, no steps; a
        zero-debiased layer's hidden averages start from mean 0 and variance 0."""
        if num_features < 1:
            raise ValueError(f"num_features must be at least 1, got {num_features}")
        if running_average not in RUNNING_AVERAGES:
            raise ValueError(
                f"running_average must be 'plain' or 'zero_debiased', got {running_average!r}"
            )
        variance = 0.0 if running_average == "zero_debiased" else 1.0
        return cls(np.zeros(num_features), np.full(num_features, variance), 0)

    @property
    def num_features(self) -> int:
        return int(self.mean.shape[0])

    def replace(self, **changes: Any) -> RunningStatistics:
        """A copy with some fields changed."""
        fields = {"mean": self.mean, "var": self.var, "steps": self.steps, **changes}
        return RunningStatistics(**fields)
