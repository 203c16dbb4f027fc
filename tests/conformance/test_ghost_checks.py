"""The ghost-batch checks (conformance/checks/ghost.py) against the reference and mutants of it.

* The reference passes every ghost clause under the profiles with a ghost dialect (``paper``:
  consecutive, sequential; ``tf_keras``: strided, averaged) and reports them not applicable
  under the others.
* Mutated reference layers, each caught under its clause (checked with the ghost clauses it
  depends on, so that a dependency failing first would show): ghost batches formed strided where
  the profile says consecutive (ghost.groups; ghost.train.output still passes, the output
  being that of *some* ghost batches), one ghost batch's statistics used for all
  (ghost.train.output), the running statistics taken from the whole batch
  (ghost.running), a smaller last ghost batch instead of an error (ghost.remainder), the
  backward through the whole batch's statistics (ghost.backward), and a non-positive
  ``virtual_batch_size`` accepted (ghost.params.invalid).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from normspec.adapters.protocol import Array, Layer, LayerConfig
from normspec.adapters.reference import ReferenceImplementation, ReferenceLayer
from normspec.conformance.checks import load_builtin_checks
from normspec.conformance.results import Report
from normspec.conformance.runner import CheckOptions, check_implementation
from normspec.reference import Gradients, batchnorm, ghost, inference_forward
from normspec.reference.ghost import GhostConfig, GhostDialect
from normspec.reference.running import update_running_statistics

GHOST_CLAUSES = {c for c in load_builtin_checks() if c.startswith("ghost.")}


def run(implementation: Any, profile: str, clauses: str = "ghost.*", **options: Any) -> Report:
    options.setdefault("max_examples", 12)
    return check_implementation(
        implementation, CheckOptions(profile=profile, clauses=clauses, **options)
    )


def outcomes(report: Report) -> dict[str, str]:
    return {r.clause_id: r.outcome for r in report.results}


@pytest.mark.parametrize("profile", ["paper", "tf_keras"])
def test_the_reference_passes_every_ghost_clause(profile: str) -> None:
    got = outcomes(run(ReferenceImplementation(profile), profile))
    assert set(got) == GHOST_CLAUSES
    assert set(got.values()) == {"pass"}, got


def test_ghost_clauses_need_the_capability() -> None:
    got = outcomes(run(ReferenceImplementation("torch"), "torch"))
    assert set(got.values()) == {"not_applicable"}


# ------------------------------------------------------------------------------------
# Mutants


class MutantLayer(ReferenceLayer):
    """A reference ghost layer with one operation replaced (``how``)."""

    def __init__(self, config: GhostConfig, how: str) -> None:
        super().__init__(config)
        self.ghost = config
        self.how = how

    def _bn(self) -> dict[str, Any]:
        return {"eps": self.ghost.batchnorm.eps, "feature_axis": self.ghost.batchnorm.feature_axis}

    def _affine(self) -> tuple[Any, Any]:
        params = self._params
        return (None, None) if params is None else (params.gamma, params.beta)

    def train_step(self, x: Array) -> Array:
        gamma, beta = self._affine()
        size, groups = self.ghost.virtual_batch_size, self.ghost.groups
        bn = self.ghost.batchnorm
        if self.how == "whole_batch_running":
            y, _ = ghost.train_forward(
                x, gamma, beta, **self._bn(), virtual_batch_size=size, groups=groups
            )
            whole = batchnorm.batch_statistics(x, bn.feature_axis)
            self._state = update_running_statistics(
                self._state, whole, rate=bn.rate, estimator=bn.running_variance
            )
            return y
        if self.how == "first_group_statistics":
            y, stats = ghost.train_forward(
                x, gamma, beta, **self._bn(), virtual_batch_size=size, groups=groups
            )
            first = stats[0]
            y = inference_forward(x, first.mean, first.var, gamma, beta, **self._bn())
            self._state = ghost.update_running(
                self._state,
                stats,
                rate=bn.rate,
                estimator=bn.running_variance,
                running="sequential",
            )
            return y
        if self.how == "smaller_last_batch" and x.shape[0] % size:
            y = np.empty(x.shape)
            for start in range(0, x.shape[0], size):
                rows = slice(start, start + size)
                y[rows] = batchnorm.train_forward(x[rows], gamma, beta, **self._bn())[0]
            return y
        return super().train_step(x)

    def vjp(self, x: Array, dy: Array, *, training: bool) -> Gradients:
        if self.how == "whole_batch_backward" and training:
            gamma, _ = self._affine()
            return batchnorm.train_backward(dy, x, gamma, **self._bn())
        return super().vjp(x, dy, training=training)


class Mutant(ReferenceImplementation):
    """The reference under ``profile`` whose ghost layers are :class:`MutantLayer` s."""

    def __init__(self, profile: str, how: str, ghost_dialect: GhostDialect | None = None) -> None:
        super().__init__(profile)
        self.how = how
        if ghost_dialect is not None:
            self.dialect = replace(self.dialect, ghost=ghost_dialect)

    def build(self, config: LayerConfig) -> Layer:
        if self.how == "accepts_invalid_size" and config.virtual_batch_size is not None:
            config = replace(config, virtual_batch_size=abs(config.virtual_batch_size) or 1)
        layer = super().build(config)
        if config.virtual_batch_size is None or self.how == "accepts_invalid_size":
            return layer
        assert isinstance(layer, ReferenceLayer)
        ghost_config = layer._config
        assert isinstance(ghost_config, GhostConfig)
        return MutantLayer(ghost_config, self.how)


def test_strided_ghost_batches_fail_ghost_groups_under_a_consecutive_profile() -> None:
    strided = Mutant("paper", "none", GhostDialect("strided", "sequential"))
    got = outcomes(run(strided, "paper", "ghost.train.output,ghost.groups"))
    assert got == {"ghost.train.output": "pass", "ghost.groups": "fail"}


@pytest.mark.parametrize(
    ("how", "clause", "profile"),
    [
        ("first_group_statistics", "ghost.train.output", "paper"),
        ("whole_batch_running", "ghost.running", "tf_keras"),
        ("whole_batch_running", "ghost.running", "paper"),
        ("smaller_last_batch", "ghost.remainder", "paper"),
        ("whole_batch_backward", "ghost.backward", "tf_keras"),
        ("accepts_invalid_size", "ghost.params.invalid", "paper"),
    ],
)
def test_mutants_are_caught_under_their_clause(how: str, clause: str, profile: str) -> None:
    """The clause with the ghost clauses it depends on, in float64 and float32."""
    registry = load_builtin_checks()
    selected = [clause, *(c for c in registry[clause].depends_on if c.startswith("ghost."))]
    selected += [c for c in registry[selected[-1]].depends_on if c.startswith("ghost.")]
    got = outcomes(
        run(Mutant(profile, how), profile, ",".join(selected), dtypes=("float64", "float32"))
    )
    assert got[clause] == "fail", got
    assert {c for c, o in got.items() if o == "fail"} == {clause}, got
