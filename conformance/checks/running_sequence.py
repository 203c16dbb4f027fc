"""bn.running.sequence: a Hypothesis state machine of training and inference calls."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from normspec.conformance.checks import check
from normspec.conformance.checks.batchnorm import expect_running_update
from normspec.conformance.context import CheckContext
from normspec.conformance.reuse import reused, sampled
from normspec.conformance.strategies import BatchNormCase, Wanted, feature_values, shapes


@reused
def _this_or(shape: tuple[int, ...], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``shape``, or one of ``other``'s (one object per pair: the first shape recurs)."""
    return st.one_of(st.just(shape), other)


def running_statistics_machine(ctx: CheckContext) -> type[RuleBasedStateMachine]:
    """A machine that drives one layer through training and inference calls.

    After every call the implementation's state is compared with the reference rules
    applied to the state it had before the call, so rounding never accumulates into a
    false failure while a wrong rule shows at its first application.
    """
    menu = ctx.menu
    first_case = ctx.cases_of() | (
        ctx.cases_of(wanted=Wanted(rate="cumulative"))
        if ctx.capabilities.cumulative_average and ctx.capabilities.step_counter
        else st.nothing()
    )

    class RunningStatisticsMachine(RuleBasedStateMachine):
        case: BatchNormCase

        @initialize(case=first_case)
        def build(self, case: BatchNormCase) -> None:
            self.case = ctx.start(case)
            self.layer = ctx.build(case)
            self.calls: list[str] = []

        def _next_input(self, data: Any) -> BatchNormCase:
            cfg = self.case.config
            # the first batch's shape again, or another (a smaller last batch, a new size):
            # as in training, where most batches have one shape (a compiling implementation
            # compiles once per shape)
            other = (
                shapes(rank=cfg.rank, feature_axis=cfg.feature_axis, num_features=cfg.num_features)
                if menu is None
                else sampled(menu.shapes(self.case.x.shape, cfg.feature_axis))
            )
            shape = data.draw(_this_or(self.case.x.shape, other), label="batch shape")
            x = data.draw(feature_values(shape, cfg.feature_axis, cfg.dtype), label="batch")
            state = ctx.state_of(self.layer)
            ctx.require(state is not None, "the layer lost its running statistics")
            return replace(self.case, x=x, dy=x, state=state)

        @rule(data=st.data())
        def train(self, data: Any) -> None:
            step = ctx.use_case(self._next_input(data))
            self.calls.append(f"train{list(step.x.shape)}")
            ctx.notes["calls"] = list(self.calls)
            ctx.call("train_step", self.layer.train_step, step.x)
            expect_running_update(ctx, step, ctx.state_of(self.layer), ("mean", "var"))
            after = ctx.state_of(self.layer)
            if ctx.capabilities.step_counter and after is not None and step.state is not None:
                ctx.require(
                    after.steps == step.state.steps + 1,
                    f"step counter {step.state.steps} -> {after.steps} in one training step",
                )

        @rule(data=st.data())
        def infer(self, data: Any) -> None:
            step = ctx.use_case(self._next_input(data))
            self.calls.append(f"infer{list(step.x.shape)}")
            ctx.notes["calls"] = list(self.calls)
            ctx.call("infer", self.layer.infer, step.x)
            after = ctx.state_of(self.layer)
            assert step.state is not None
            ctx.require(
                after is not None
                and (after.mean == step.state.mean).all()
                and (after.var == step.state.var).all(),
                "an inference call changed the running statistics",
            )

        @invariant()
        def has_state(self) -> None:
            if hasattr(self, "layer"):
                ctx.require(ctx.state_of(self.layer) is not None, "no running statistics")

    return RunningStatisticsMachine


@check("bn.running.sequence", stateful=True, depends_on=("bn.running.mean", "bn.running.var"))
def running_sequence(ctx: CheckContext, data: Any) -> Any:
    return running_statistics_machine(ctx)
