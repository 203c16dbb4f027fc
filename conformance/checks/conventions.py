"""Checks of the conventions chapter: shapes, untouched inputs, finiteness, layouts."""

from __future__ import annotations

from typing import Any

import numpy as np

from normspec.conformance.checks import check
from normspec.conformance.checks.batchnorm import (
    expect_gradients,
    expect_running_update,
    expect_train_output,
)
from normspec.conformance.context import CheckContext
from normspec.conformance.strategies import Wanted, memory_layouts


@check("conv.io.shape_dtype", training=False)
def shape_dtype(ctx: CheckContext, data: Any) -> None:
    """Shapes here; dtypes are checked by the adapters, which raise WrongOutput. An
    inference-only implementation is checked in inference (its vjp too)."""
    case = ctx.draw_case(data)
    layer = ctx.build(case)
    features = (case.config.num_features,)
    training = ctx.capabilities.training
    if training:
        ctx.shape_of(
            "training output y", ctx.call("train_step", layer.train_step, case.x), case.x.shape
        )
    state = ctx.state_of(layer)
    if state is not None:
        ctx.shape_of("running mean", state.mean, features)
        ctx.shape_of("running variance", state.var, features)
    ctx.shape_of("inference output y", ctx.call("infer", layer.infer, case.x), case.x.shape)
    if ctx.capabilities.backward:
        grads = ctx.call("vjp", layer.vjp, case.x, case.dy, training=training)
        ctx.shape_of("dx", grads.dx, case.x.shape)
        ctx.shape_of("dgamma", grads.dgamma, features)
        ctx.shape_of("dbeta", grads.dbeta, features)


@check("conv.io.inputs_unmodified", training=False)
def inputs_unmodified(ctx: CheckContext, data: Any) -> None:
    case = ctx.draw_case(data)
    originals = {"x": case.x.copy(), "dy": case.dy.copy()}
    if case.params is not None:
        originals.update(gamma=case.params[0].copy(), beta=case.params[1].copy())
    layer = ctx.build(case, copy_inputs=False)
    training = ctx.capabilities.training
    if training:
        ctx.call("train_step", layer.train_step, case.x, copy_inputs=False)
    ctx.call("infer", layer.infer, case.x, copy_inputs=False)
    if ctx.capabilities.backward:
        ctx.call("vjp", layer.vjp, case.x, case.dy, training=training, copy_inputs=False)
    passed = {"x": case.x, "dy": case.dy}
    if case.params is not None:
        passed.update(gamma=case.params[0], beta=case.params[1])
    for name, original in originals.items():
        ctx.require(
            np.array_equal(original, passed[name], equal_nan=True),
            f"the implementation modified its input {name}",
        )


@check("conv.io.finite", training=False)
def finite(ctx: CheckContext, data: Any) -> None:
    case = ctx.draw_case(data, wanted=Wanted(affine=None))
    layer = ctx.build(case)
    training = ctx.capabilities.training
    outputs = {}
    if training:
        outputs["training output"] = ctx.call("train_step", layer.train_step, case.x)
    outputs["inference output"] = ctx.call("infer", layer.infer, case.x)
    if ctx.capabilities.backward:
        outputs["dx"] = ctx.call("vjp", layer.vjp, case.x, case.dy, training=training).dx
    state = ctx.state_of(layer)
    if state is not None:
        outputs.update({"running mean": state.mean, "running variance": state.var})
    for name, value in outputs.items():
        ctx.require(
            bool(np.all(np.isfinite(np.asarray(value, dtype=np.float64)))),
            f"{name} has NaN or infinity for a finite input",
        )


@check(
    "conv.layout.feature_axis",
    depends_on=("bn.train.output", "bn.train.statistics", "bn.running.mean", "bn.running.var"),
)
def feature_axis(ctx: CheckContext, data: Any) -> None:
    case = ctx.draw_case(data, wanted=Wanted(positions=ctx.capabilities.feature_axes))
    layer = ctx.build(case)
    expect_train_output(ctx, case, ctx.call("train_step", layer.train_step, case.x))
    expect_running_update(ctx, case, ctx.state_of(layer), ("mean", "var"))
    if ctx.capabilities.backward:
        layer = ctx.build(case)
        grads = ctx.call("vjp", layer.vjp, case.x, case.dy, training=True)
        expect_gradients(ctx, case, grads, training=True)


@check("conv.layout.memory", needs=("strided_input",), depends_on=("bn.train.output",))
def memory(ctx: CheckContext, data: Any) -> None:
    layout = data.draw(memory_layouts(max(ctx.capabilities.ranks)), label="layout")
    case = ctx.draw_case(
        data, wanted=Wanted(positions=ctx.capabilities.feature_axes), layout=layout
    )
    layer = ctx.build(case)
    expect_train_output(ctx, case, ctx.call("train_step", layer.train_step, case.x))
    if ctx.capabilities.backward:
        layer = ctx.build(case)
        grads = ctx.call("vjp", layer.vjp, case.x, case.dy, training=True)
        expect_gradients(ctx, case, grads, training=True, which=("dx",))
