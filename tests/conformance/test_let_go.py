"""An example that fails or is discarded lets go of its layers when it ends, instead of
keeping them until its dtype's run ends (context.let_go), so that a layer pool (Keras's)
can lend them again while Hypothesis shrinks."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
from test_discards import Still, StillLayer

from normspec.adapters.protocol import Array, Layer, LayerConfig
from normspec.conformance.runner import CheckOptions, check_implementation

#: More layers alive at once than one example builds: examples that ended keep theirs.
MOST_ALIVE = 4


class KeepsState(StillLayer):
    """A training step that keeps the running statistics: bn.train.statistics discards
    every example."""


class OffByOne(StillLayer):
    """A training step whose output is off by one where an input value exceeds 1/2 (in
    magnitude): bn.train.output fails, and shrinking tries many failing examples."""

    still = 0

    def train_step(self, x: Array) -> Array:
        y = super().train_step(x)
        return y + 1.0 if np.max(np.abs(x), initial=0.0) > 0.5 else y


class Counted(Still):
    """A :class:`Still` counting the layers alive at each build."""

    def __init__(self, layer: type[StillLayer]) -> None:
        super().__init__(layer)
        self.alive: weakref.WeakSet[Layer] = weakref.WeakSet()
        self.most_alive = 0
        self.builds = 0

    def build(self, config: LayerConfig) -> Layer:
        built = super().build(config)
        self.alive.add(built)
        self.builds += 1
        self.most_alive = max(self.most_alive, len(self.alive))
        return built


@pytest.mark.parametrize(
    ("layer", "clause", "outcome"),
    [(OffByOne, "bn.train.output", "fail"), (KeepsState, "bn.train.statistics", "skipped")],
)
def test_examples_that_ended_keep_no_layer_alive(
    layer: type[StillLayer], clause: str, outcome: str
) -> None:
    implementation = Counted(layer)
    options = CheckOptions(profile="paper", clauses=clause, dtypes=("float64",))
    (result,) = check_implementation(implementation, options).results
    assert result.outcome == outcome, result.message
    # shrinking a failure tries many failing examples; a discarded run, 90 discards
    assert implementation.builds > 5 * MOST_ALIVE
    assert implementation.most_alive <= MOST_ALIVE
