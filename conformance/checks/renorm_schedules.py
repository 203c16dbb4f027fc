"""Checks of the renorm chapter's schedules (renorm.schedule.*): the bounds of each step, and
the state machine that drives one layer across the points where they change.

Shared with the rest of the chapter: :mod:`normspec.conformance.checks.renorm`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from hypothesis import reject
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from normspec.conformance.checks.renorm import (
    RENORM_COUNTER,
    SCHEDULE_NAMES,
    build,
    draw_renorm,
    expect_inference_output,
    expect_moving_update,
    expect_train_output,
    moving_state,
    offers,
    renorm_check,
    run_schedules,
    same_moving_state,
)
from normspec.conformance.context import CheckContext, Violation
from normspec.conformance.strategies import Wanted
from normspec.conformance.strategies_renorm import (
    Moving,
    RenormCase,
    ScheduleKind,
    batches,
    offered_schedules,
)
from normspec.reference.renorm import RenormStatistics

# --------------------------------------------------------------------------------------
# Schedules


def _schedule_check(ctx: CheckContext, data: Any, kind: ScheduleKind) -> None:
    """One training step from a counter around the schedule's change points, with moving
    statistics far from the batch so that the bounds themselves show in the output.

    The output may be that of the bounds at the counter ``t`` or at ``t + 1``: which counter
    a step reads is renorm.schedule.step's business (checked after this clause), the values
    of the schedule this clause's.
    """
    case = draw_renorm(
        ctx,
        data,
        Wanted(affine=None),
        schedule=run_schedules(ctx, (kind,), counter="any"),
        moving=Moving("far"),
    )
    bounds = case.bounds
    ctx.notes["bounds at the step"] = [bounds.r_min, bounds.r_max, bounds.d_max]
    layer = build(ctx, case, offered=SCHEDULE_NAMES[kind])
    y = ctx.call("train_step", layer.train_step, case.x)
    try:
        expect_train_output(ctx, case, y)
    except Violation:
        following = replace(case, state=case.state.replace(steps=case.state.steps + 1))
        if following.bounds == bounds:
            raise
        expect_train_output(ctx, following, y)  # the bounds of t + 1: not this clause's


@renorm_check("renorm.schedule.constant", depends_on=("renorm.train.output",))
def schedule_constant(ctx: CheckContext, data: Any) -> None:
    _schedule_check(ctx, data, "constant")


@renorm_check(
    "renorm.schedule.paper",
    needs=RENORM_COUNTER,
    depends_on=("renorm.train.output",),
    applies=offers("paper"),
)
def schedule_paper(ctx: CheckContext, data: Any) -> None:
    _schedule_check(ctx, data, "paper")


@renorm_check(
    "renorm.schedule.switch",
    needs=RENORM_COUNTER,
    depends_on=("renorm.train.output",),
    applies=offers("switch"),
)
def schedule_switch(ctx: CheckContext, data: Any) -> None:
    _schedule_check(ctx, data, "switch")


def _usable(case: RenormCase, state: RenormStatistics) -> bool:
    """Whether the reference can go on from a state: a positive sigma without a floor."""
    cfg = case.renorm
    if cfg.average != "std" or cfg.sigma_floor != "none":
        return True
    spreads = [state.spread, state.correction_spread]
    return not any(s is not None and np.any(np.asarray(s) <= 0) for s in spreads)


def renorm_sequence_machine(ctx: CheckContext) -> type[RuleBasedStateMachine]:
    """A machine that drives one renorm layer through training and inference calls.

    The layer starts from a step counter around the points where its schedule's bounds
    change (the paper's ramps, a switch, or constant bounds) and sees a new batch at every
    call. After every call the output and the whole state (both sets, the counter) are
    compared with the reference applied to the state the layer reported before the call:
    rounding never accumulates into a false failure, and a schedule evaluated at the wrong
    counter, an inference call that counts, or a wrong update rule shows where it happens.
    """
    offered = offered_schedules(ctx.dialect)
    first_case = ctx.cases_of(
        "renorm",
        wanted=Wanted(affine=None),
        schedule=run_schedules(
            ctx, [k for k in offered if k != "constant"] or offered, counter="changing"
        ),
    )

    class RenormSequenceMachine(RuleBasedStateMachine):
        case: RenormCase

        @initialize(case=first_case)
        def build(self, case: RenormCase) -> None:
            self.case = ctx.start(case)
            self.layer = build(ctx, case)
            self.calls: list[str] = []

        def _next_input(self, data: Any) -> RenormCase:
            cfg = self.case.config
            # under a menu, the first batch's shape or another of the menu's (a compiling
            # implementation compiles once per shape), as bn.running.sequence draws them
            menu = ctx.menu
            shapes = None if menu is None else menu.shapes(self.case.x.shape, cfg.feature_axis)
            x = data.draw(
                batches(cfg.rank, cfg.feature_axis, cfg.num_features, cfg.dtype, shapes),
                label="batch",
            )
            state = moving_state(ctx, self.layer, "during the sequence")
            if not _usable(self.case, state):
                # within renorm.accuracy.moving (S >> sigma_B, alpha near 1) but no state to
                # go on from (renorm.params.sigma): this sequence ends here
                reject()
            step = replace(self.case, x=x, dy=x, state=state)
            ctx.use_case(step)
            return step

        def _log(self, call: str, step: RenormCase) -> None:
            self.calls.append(f"{call}{list(step.x.shape)} at t={step.state.steps}")
            ctx.notes["calls"] = list(self.calls)

        @rule(data=st.data())
        def train(self, data: Any) -> None:
            step = self._next_input(data)
            self._log("train", step)
            y = ctx.call("train_step", self.layer.train_step, step.x)
            expect_train_output(ctx, step, y)
            after = moving_state(ctx, self.layer, "after a training step")
            expect_moving_update(ctx, step, after)
            ctx.require(
                after.steps == step.state.steps + 1,
                f"step counter {step.state.steps} -> {after.steps} in one training step",
            )

        @rule(data=st.data())
        def infer(self, data: Any) -> None:
            step = self._next_input(data)
            self._log("infer", step)
            y = ctx.call("infer", self.layer.infer, step.x)
            expect_inference_output(ctx, step, y)
            after = moving_state(ctx, self.layer, "after an inference call")
            ctx.require(
                same_moving_state(step.state, after, counter=ctx.capabilities.step_counter),
                lambda: f"an inference call changed the state from {step.state} to {after}",
            )

        @invariant()
        def has_state(self) -> None:
            if hasattr(self, "layer"):
                moving_state(ctx, self.layer, "during the sequence")

    return RenormSequenceMachine


@renorm_check(
    "renorm.schedule.step",
    needs=RENORM_COUNTER,
    stateful=True,
    depends_on=(
        "renorm.schedule.constant",
        "renorm.schedule.paper",
        "renorm.schedule.switch",
        "renorm.train.output",
        "renorm.infer.output",
        "renorm.moving.mean",
        "renorm.moving.average",
        "renorm.moving.separate",
        "renorm.moving.steps",
        "renorm.moving.no_inference_update",
    ),
)
def schedule_step(ctx: CheckContext, data: Any) -> Any:
    return renorm_sequence_machine(ctx)
