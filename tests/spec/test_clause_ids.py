"""Clause IDs are stable: every clause of this list keeps its ID and its level.

A dialect parameter changes what a clause requires under it, never the clause's ID (spec:
dialects.md). The list is the specification's clauses when zero-debiased averages and the
momentum domain were added; a new clause is added to it, none is ever removed or renamed.
"""

from __future__ import annotations

from normspec import spec

STABLE = [
    # conventions
    "conv.layout.feature_axis MUST",
    "conv.io.shape_dtype MUST",
    "conv.io.inputs_unmodified MUST",
    "conv.io.finite MUST",
    "conv.layout.memory MUST",
    # batchnorm
    "bn.train.statistics MUST",
    "bn.train.output MUST",
    "bn.train.affine MUST",
    "bn.running.initial MUST",
    "bn.running.mean MUST",
    "bn.running.var MUST",
    "bn.running.sequence MUST",
    "bn.running.cumulative MUST",
    "bn.running.steps MUST",
    "bn.running.untracked MUST",
    "bn.running.no_inference_update MUST",
    "bn.infer.output MUST",
    "bn.infer.untracked MUST",
    "bn.backward.train.dx MUST",
    "bn.backward.train.dparams MUST",
    "bn.backward.infer MUST",
    "bn.backward.second_order MUST",
    "bn.degenerate.single_value MUST",
    "bn.degenerate.zero_variance MUST",
    "bn.degenerate.empty_batch MUST",
    "bn.degenerate.nonfinite_isolated MUST",
    "bn.params.shape MUST",
    "bn.params.invalid SHOULD",
    "bn.params.no_nan_state MUST",
    "bn.accuracy.forward SHOULD",
    "bn.accuracy.inference SHOULD",
    "bn.accuracy.backward SHOULD",
    "bn.accuracy.running SHOULD",
    "bn.accuracy.no_gross_error MUST",
    # renorm
    "renorm.train.statistics MUST",
    "renorm.train.correction MUST",
    "renorm.train.pre_update MUST",
    "renorm.train.output MUST",
    "renorm.train.affine MUST",
    "renorm.train.reduces_to_bn MUST",
    "renorm.moving.initial MUST",
    "renorm.moving.mean MUST",
    "renorm.moving.average MUST",
    "renorm.moving.separate MUST",
    "renorm.moving.steps MUST",
    "renorm.moving.no_inference_update MUST",
    "renorm.infer.output MUST",
    "renorm.backward.train.dx MUST",
    "renorm.backward.train.dparams MUST",
    "renorm.backward.infer MUST",
    "renorm.schedule.step MUST",
    "renorm.schedule.constant MUST",
    "renorm.schedule.paper MUST",
    "renorm.schedule.switch MUST",
    "renorm.degenerate.single_value MUST",
    "renorm.degenerate.zero_variance MUST",
    "renorm.degenerate.empty_batch MUST",
    "renorm.degenerate.nonfinite_isolated MUST",
    "renorm.params.shape MUST",
    "renorm.params.invalid SHOULD",
    "renorm.params.sigma SHOULD",
    "renorm.params.no_nan_state MUST",
    "renorm.accuracy.forward SHOULD",
    "renorm.accuracy.inference SHOULD",
    "renorm.accuracy.backward SHOULD",
    "renorm.accuracy.moving SHOULD",
    # replicas
    "sync.train.statistics MUST",
    "sync.train.output MUST",
    "sync.train.mask MUST",
    "sync.running.mean MUST",
    "sync.running.var MUST",
    "sync.backward.dx MUST",
    "sync.backward.dparams MUST",
    "sync.degenerate.empty_replica MUST",
    "sync.degenerate.all_empty MUST",
    "sync.accuracy.concatenated SHOULD",
    # ghost
    "ghost.groups MUST",
    "ghost.remainder MUST",
    "ghost.train.output MUST",
    "ghost.running MUST",
    "ghost.infer MUST",
    "ghost.backward MUST",
    "ghost.params.invalid SHOULD",
]


def test_no_clause_id_or_level_changed() -> None:
    levels = {c.id: c.level for c in spec.clauses()}
    missing = [entry for entry in STABLE if levels.get(entry.split()[0]) != entry.split()[1]]
    assert not missing, f"clauses renamed, removed or with another level: {missing}"
