"""The reference itself, driven through the protocol: the suite must pass on it."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from normspec.adapters.protocol import Array, Capabilities, Layer, LayerConfig
from normspec.reference import (
    Affine,
    BatchNormConfig,
    Gradients,
    RunningStatistics,
    backward,
    inference,
    training_step,
)
from normspec.reference.dialects import Dialect, profile


class ReferenceLayer:
    """A float64 reference layer with the dialect's conventions (momentum, estimator)."""

    def __init__(self, config: BatchNormConfig) -> None:
        self._config = config
        self._params = Affine.identity(config.num_features) if config.affine else None
        self._state = (
            RunningStatistics.initial(config.num_features) if config.track_running_stats else None
        )

    def set_parameters(self, gamma: Array, beta: Array) -> None:
        self._params = Affine(np.array(gamma, dtype=np.float64), np.array(beta, dtype=np.float64))

    def set_state(self, state: RunningStatistics) -> None:
        self._state = state

    def state(self) -> RunningStatistics | None:
        return self._state

    def train_step(self, x: Array) -> Array:
        y, self._state = training_step(self._config, self._params, self._state, x)
        return y

    def infer(self, x: Array) -> Array:
        return inference(self._config, self._params, self._state, x)

    def vjp(self, x: Array, dy: Array, *, training: bool) -> Gradients:
        return backward(self._config, self._params, self._state, x, dy, training=training)


class ReferenceImplementation:
    """``normspec check reference --profile NAME``: the reference under any profile."""

    def __init__(self, dialect: str = "torch") -> None:
        self.dialect: Dialect = profile(dialect)
        self.name = f"normspec.reference ({self.dialect.name} dialect)"

    def capabilities(self) -> Capabilities:
        return Capabilities(
            feature_axes=("first", "last"),
            cumulative_average=self.dialect.cumulative_average,
            untracked=True,
            step_counter=True,
        )

    def versions(self) -> Mapping[str, str]:
        return {"numpy": np.__version__}

    def build(self, config: LayerConfig) -> Layer:
        return ReferenceLayer(
            BatchNormConfig(
                num_features=config.num_features,
                feature_axis=config.feature_axis,
                eps=config.eps,
                rate=self.dialect.rate_from_momentum(config.momentum),
                running_variance=self.dialect.running_variance,
                affine=config.affine,
                track_running_stats=config.track_running_stats,
            )
        )
