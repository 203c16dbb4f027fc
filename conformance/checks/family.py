"""Checks of the LayerNorm and RMSNorm chapter (layernorm.md: ln.*, rms.*).

The two layers share every check body: each clause of one has its twin in the other
(``ln.train.output`` and ``rms.train.output``, ...), registered here for both kinds but the
degenerate slice (constant for LayerNorm, zero for RMSNorm). Every check needs the
capability of its layer (``layernorm``, ``rmsnorm``) and no training mode (the layers have
none: ``Layer.infer`` is the forward). Cases are drawn by
:func:`strategies_family.family_cases`, expectations come from
:mod:`normspec.reference.family` and the tolerances from :mod:`tolerance_family`.

Attribution: ``*.train.statistics`` is checked without affine parameters, ``*.train.output``
with them (and depends on it), the gradients depend on the output, the degenerate slices and
the accuracy clause on the value clauses of the same forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
from hypothesis import strategies as st

from normspec.adapters.protocol import Array, FamilyKind
from normspec.conformance.checks import Body, check
from normspec.conformance.context import CheckContext, Violation
from normspec.conformance.dtypes import float_format
from normspec.conformance.strategies import arrange
from normspec.conformance.strategies_family import FamilyCase
from normspec.conformance.tolerance import Comparison, GradientBounds, compare
from normspec.conformance.tolerance_family import (
    layernorm_backward_bounds,
    layernorm_output_bound,
    rms_backward_bounds,
    rms_output_bound,
)
from normspec.reference import Gradients, family
from normspec.reference.family_dialect import (
    FamilyDialect,
    rms_norm_outside,
    rms_norm_outside_backward,
)

#: The clause prefix of each layer.
PREFIX: dict[FamilyKind, str] = {"layernorm": "ln", "rmsnorm": "rms"}
KINDS: tuple[FamilyKind, ...] = ("layernorm", "rmsnorm")
_NONFINITE = st.sampled_from([np.nan, np.inf, -np.inf])
_BOOLEANS = st.booleans()
#: Long slices in three draws of four (shrinking towards short ones).
_MOSTLY_LONG = st.sampled_from([False, True, True, True])
#: The profile's default eps in one case of four (dialects.md: *.default_eps).
_DEFAULT_EPS = st.sampled_from([False, False, False, True])


# --------------------------------------------------------------------------------------
# Expectations and bounds


def _parameters(case: FamilyCase) -> tuple[Array | None, Array | None]:
    """The weight and the bias the layer holds (``None``: it has none)."""
    if case.params is None:
        return None, None
    return case.params[0], case.params[1] if case.family.bias else None


def _scale(case: FamilyCase) -> Array | None:
    """RMSNorm's factor ``c + w`` (``None``: 1)."""
    weight, _ = _parameters(case)
    offset = case.family.scale_offset
    if weight is None:
        return None
    return offset + weight


def _outside(form: FamilyDialect) -> bool:
    return form.eps == "outside_root"


def expected_output(case: FamilyCase, form: FamilyDialect, x: Array | None = None) -> Array:
    """The reference's output for the case (or for ``x`` in its place) under the profile's
    dialect of the layer (``form``)."""
    values = case.x if x is None else x
    weight, bias = _parameters(case)
    shape, eps = case.normalized_shape, case.config.eps
    if case.family.kind == "layernorm":
        return family.layer_norm(values, shape, weight, bias, eps=eps)
    offset = case.family.scale_offset
    rms = rms_norm_outside if _outside(form) else family.rms_norm
    return rms(values, shape, weight, bias, eps=eps, scale_offset=offset)


def expected_gradients(case: FamilyCase, form: FamilyDialect, x: Array | None = None) -> Gradients:
    """The reference's dx, dweight, dbias for the case's cotangent."""
    values = case.x if x is None else x
    weight, _ = _parameters(case)
    shape, eps = case.normalized_shape, case.config.eps
    if case.family.kind == "layernorm":
        return family.layer_norm_backward(case.dy, values, shape, weight, eps=eps)
    offset = case.family.scale_offset
    rms = rms_norm_outside_backward if _outside(form) else family.rms_norm_backward
    return rms(case.dy, values, shape, weight, eps=eps, scale_offset=offset)


def output_bound(ctx: CheckContext, case: FamilyCase, form: FamilyDialect, x: Array) -> Array:
    precision = ctx.precision(case.config.dtype)
    weight, bias = _parameters(case)
    if case.family.kind == "layernorm":
        return layernorm_output_bound(
            precision, x, case.normalized_shape, weight, bias, case.config.eps
        )
    roundings = 1 if form.cast == "after_weight" else 2
    return rms_output_bound(
        precision,
        x,
        case.normalized_shape,
        _scale(case),
        bias,
        case.config.eps,
        outside_root=_outside(form),
        roundings=roundings,
    )


def gradient_bounds(
    ctx: CheckContext, case: FamilyCase, form: FamilyDialect, x: Array, expected: Gradients
) -> GradientBounds:
    precision = ctx.precision(case.config.dtype)
    shape, eps = case.normalized_shape, case.config.eps
    if case.family.kind == "layernorm":
        weight, _ = _parameters(case)
        return layernorm_backward_bounds(precision, x, case.dy, shape, weight, eps, expected)
    return rms_backward_bounds(
        precision, x, case.dy, shape, _scale(case), eps, expected, outside_root=_outside(form)
    )


# --------------------------------------------------------------------------------------
# Calling the layer, comparing


def draw(
    ctx: CheckContext, data: Any, kind: FamilyKind, *, default_eps: bool = False, **options: Any
) -> FamilyCase:
    """A case of the layer under the profile's dialect of it: its scale (``w``, ``1 + w``),
    and with ``default_eps`` (the value clauses) the profile's default eps in one case of
    four (dialects.md: family.*)."""
    case = ctx.draw_case(data, family=kind, **options)
    assert isinstance(case, FamilyCase)
    form = ctx.dialect.family_dialect(kind)
    eps = case.config.eps
    if default_eps and data.draw(_DEFAULT_EPS, label="the profile's default eps"):
        eps = form.default_eps_for(case.config.dtype)
    layer = replace(case.family, scale_offset=form.scale_offset if kind == "rmsnorm" else 0.0)
    config = replace(case.config, eps=eps, family=layer)
    found = ctx.use_case(replace(case, config=config))
    assert isinstance(found, FamilyCase)
    return found


def forward(ctx: CheckContext, case: FamilyCase) -> Array:
    """The layer's output for the case's input (a fresh layer with the case's parameters)."""
    layer = ctx.build(case)
    return ctx.shape_of("y", ctx.call("infer", layer.infer, case.x), case.x.shape)


def backward(ctx: CheckContext, case: FamilyCase) -> Gradients:
    """The layer's dx, dweight, dbias for the case's cotangent."""
    layer = ctx.build(case)
    grads: Gradients = ctx.call("vjp", layer.vjp, case.x, case.dy, training=False)
    return grads


def expect_output(
    ctx: CheckContext,
    case: FamilyCase,
    y: Array,
    *,
    clean: Array | None = None,
    mask: Array | None = None,
) -> None:
    """``y`` within the bound of the clause being checked (``clean``: the input whose
    expectation stands for the case's where ``mask`` selects)."""
    x = case.x if clean is None else clean
    form = ctx.dialect.family_dialect(case.family.kind)
    expected = expected_output(case, form, x)
    bound = output_bound(ctx, case, form, x)
    ctx.expect(_compare("y", y, expected, bound, case.config.dtype, mask))


def expect_gradients(
    ctx: CheckContext,
    case: FamilyCase,
    grads: Gradients,
    *,
    dx: bool = True,
    params: bool = True,
    clean: Array | None = None,
    mask: Array | None = None,
) -> None:
    """The gradients asked for within their bounds."""
    x = case.x if clean is None else clean
    form = ctx.dialect.family_dialect(case.family.kind)
    expected = expected_gradients(case, form, x)
    bounds = gradient_bounds(ctx, case, form, x, expected)
    dtype = case.config.dtype
    if dx:
        actual = ctx.shape_of("dx", grads.dx, case.x.shape)
        ctx.expect(_compare("dx", actual, expected.dx, bounds.dx, dtype, mask))
    if params and case.params is not None:
        shape = case.normalized_shape
        dweight = ctx.shape_of("dweight", grads.dgamma, shape)
        ctx.expect(_compare("dweight", dweight, expected.dgamma, bounds.dgamma, dtype, None))
        if case.family.bias:
            dbias = ctx.shape_of("dbias", grads.dbeta, shape)
            ctx.expect(_compare("dbias", dbias, expected.dbeta, bounds.dbeta, dtype, None))


def _compare(
    quantity: str, actual: Array, expected: Array, bound: Array, dtype: str, mask: Array | None
) -> Comparison:
    """:func:`compare` over the elements whose exact value the dtype can hold (conv.io.finite:
    beyond its largest finite number an infinity is the rounded result)."""
    chosen = np.ones(np.shape(expected), bool)
    chosen &= np.abs(expected) <= float_format(dtype).max
    if mask is not None:
        chosen &= mask
    return compare(quantity, actual, expected, bound, dtype, chosen)


def slice_mask(case: FamilyCase, index: int) -> Array:
    """True everywhere but in slice ``index`` (flat index over the leading axes)."""
    n = case.config.num_features
    mask = np.ones(case.x.size // n, dtype=bool)
    mask[index] = False
    return np.repeat(mask, n).reshape(case.x.shape)


def with_slice(case: FamilyCase, index: int, values: Callable[[Array], Array]) -> Array:
    """The case's input with slice ``index`` replaced by ``values(slice)``."""
    n = case.config.num_features
    matrix = np.array(case.x, dtype=np.float64).reshape(-1, n)
    matrix[index] = values(matrix[index])
    return arrange(matrix.reshape(case.x.shape), case.layout, case.x.ndim - 1)


def _slice_index(data: Any, case: FamilyCase, label: str) -> int:
    slices = case.x.size // case.config.num_features
    return int(data.draw(st.integers(0, max(slices - 1, 0)), label=label))


# --------------------------------------------------------------------------------------
# The check bodies, one per clause pair


def statistics(kind: FamilyKind) -> Body:
    def body(ctx: CheckContext, data: Any) -> None:
        case = draw(ctx, data, kind, affine=False, default_eps=True)
        expect_output(ctx, case, forward(ctx, case))

    return body


def output(kind: FamilyKind) -> Body:
    def body(ctx: CheckContext, data: Any) -> None:
        case = draw(ctx, data, kind, default_eps=True)
        expect_output(ctx, case, forward(ctx, case))

    return body


def accuracy(kind: FamilyKind) -> Body:
    def body(ctx: CheckContext, data: Any) -> None:
        conditioning = "ill" if kind == "layernorm" and data.draw(_BOOLEANS) else "well"
        long = data.draw(_MOSTLY_LONG, label="long slices")
        case = draw(ctx, data, kind, conditioning=conditioning, long_reductions=long)
        expect_output(ctx, case, forward(ctx, case))

    return body


def gradients_dx(kind: FamilyKind) -> Body:
    def body(ctx: CheckContext, data: Any) -> None:
        case = draw(ctx, data, kind, affine=None)
        expect_gradients(ctx, case, backward(ctx, case), params=False)

    return body


def gradients_params(kind: FamilyKind) -> Body:
    def body(ctx: CheckContext, data: Any) -> None:
        case = draw(ctx, data, kind)
        expect_gradients(ctx, case, backward(ctx, case), dx=False)

    return body


def degenerate(kind: FamilyKind) -> Body:
    """A constant slice (LayerNorm) or a slice of zeros (RMSNorm): finite, within bounds."""

    def flatten(values: Array) -> Array:
        return np.full_like(values, values[0] if kind == "layernorm" else 0.0)

    def body(ctx: CheckContext, data: Any) -> None:
        case = draw(ctx, data, kind, affine=None)
        index = _slice_index(data, case, "degenerate slice")
        case = ctx.use_case(replace(case, x=with_slice(case, index, flatten)))  # type: ignore[assignment]
        expect_output(ctx, case, forward(ctx, case))
        if ctx.capabilities.backward:
            expect_gradients(ctx, case, backward(ctx, case))

    return body


def nonfinite_isolated(kind: FamilyKind) -> Body:
    def body(ctx: CheckContext, data: Any) -> None:
        case = draw(ctx, data, kind, affine=None, min_slices=2)
        index = _slice_index(data, case, "poisoned slice")
        value = data.draw(_NONFINITE, label="value")
        position = data.draw(st.integers(0, case.config.num_features - 1), label="position")

        def poison(values: Array) -> Array:
            values = values.copy()
            values[position] = value
            return values

        clean = np.array(case.x, dtype=np.float64)
        case = ctx.use_case(replace(case, x=with_slice(case, index, poison)))  # type: ignore[assignment]
        mask = slice_mask(case, index)
        expect_output(ctx, case, forward(ctx, case), clean=clean, mask=mask)
        if ctx.capabilities.backward:
            grads = backward(ctx, case)
            expect_gradients(ctx, case, grads, params=False, clean=clean, mask=mask)

    return body


def params_shape(kind: FamilyKind) -> Body:
    def body(ctx: CheckContext, data: Any) -> None:
        case = draw(ctx, data, kind, affine=None)
        extra = data.draw(st.integers(1, 3), label="extra values on the last axis")
        shape = (*case.x.shape[:-1], case.x.shape[-1] + extra)
        wrong = np.zeros(shape)
        layer = ctx.build(case)
        raised, y = ctx.attempt("infer", layer.infer, wrong)
        if not raised:
            raise Violation(
                f"an input of shape {shape} was accepted by a layer of normalized_shape "
                f"{case.normalized_shape} (returned shape {np.shape(y)}); it must be rejected"
            )

    return body


#: eps values that are not positive finite numbers (ln.params.eps).
_INVALID_EPS = st.sampled_from([0.0, -1e-5, np.nan, np.inf])


def params_eps(kind: FamilyKind) -> Body:
    def body(ctx: CheckContext, data: Any) -> None:
        case = draw(ctx, data, kind, affine=None)
        eps = float(data.draw(_INVALID_EPS, label="eps"))
        case = ctx.use_case(replace(case, config=replace(case.config, eps=eps)))  # type: ignore[assignment]
        layer = ctx.attempt_build(case)
        if layer is None:
            return
        raised, _ = ctx.attempt("infer", layer.infer, case.x)
        if not raised:
            raise Violation(f"eps = {eps!r} was accepted: a layer built with it returned an output")

    return body


def _register() -> None:
    for kind in KINDS:
        p = PREFIX[kind]
        checked = (f"{p}.train.output",)
        check(f"{p}.train.statistics", training=False)(statistics(kind))
        check(f"{p}.train.output", depends_on=(f"{p}.train.statistics",), training=False)(
            output(kind)
        )
        check(f"{p}.backward.dx", needs=("backward",), depends_on=checked, training=False)(
            gradients_dx(kind)
        )
        check(f"{p}.backward.dparams", needs=("backward",), depends_on=checked, training=False)(
            gradients_params(kind)
        )
        check(f"{p}.accuracy.forward", depends_on=checked, training=False)(accuracy(kind))
        degenerate_id = "ln.degenerate.constant" if kind == "layernorm" else "rms.degenerate.zero"
        check(degenerate_id, depends_on=checked, training=False)(degenerate(kind))
        check(f"{p}.degenerate.nonfinite_isolated", depends_on=checked, training=False)(
            nonfinite_isolated(kind)
        )
        check(f"{p}.params.shape", training=False)(params_shape(kind))
        check(f"{p}.params.eps", training=False)(params_eps(kind))


_register()
