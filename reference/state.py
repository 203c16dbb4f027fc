"""The explicit, immutable statistic state of a batch-normalization layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from normspec.reference._arrays import FloatArray, as_float64, frozen, whole_number


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
    def initial(cls, num_features: int) -> RunningStatistics:
        """The state every library starts from: mean 0, variance 1, no steps (bn.running.initial)."""
        if num_features < 1:
            raise ValueError(f"num_features must be at least 1, got {num_features}")
        return cls(np.zeros(num_features), np.ones(num_features), 0)

    @property
    def num_features(self) -> int:
        return int(self.mean.shape[0])

    def replace(self, **changes: Any) -> RunningStatistics:
        """A copy with some fields changed."""
        fields = {"mean": self.mean, "var": self.var, "steps": self.steps, **changes}
        return RunningStatistics(**fields)
