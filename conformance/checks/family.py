"""Checks of the family's chapters (layernorm.md: ln.*, rms.*; groupnorm.md: gn.*, in.*).

The four layers share every check body: each clause of one has its twin in the others
(``ln.train.output``, ``rms.train.output``, ``gn.train.output``, ...), registered here for
every kind but the degenerate slice (constant for the centred layers, zero for RMSNorm), and
the clauses only GroupNorm or InstanceNorm have (``gn.params.groups``, the empty batch,
InstanceNorm's running statistics). Every check needs the capability of its layer
(``layernorm``, ``rmsnorm``, ``groupnorm``, ``instancenorm``) and no training mode (the
layers have none: ``Layer.infer`` is the forward). Cases are drawn by
:func:`strategies_family.family_cases` and :func:`strategies_family.group_cases`,
expectations come from :mod:`normspec.reference.family` and the tolerances from
:mod:`tolerance_family`.

Attribution: ``*.train.statistics`` is checked without affine parameters, ``*.train.output``
with them (and depends on it), the gradients depend on the output, the degenerate slices and
the accuracy clause on the value clauses of the same forward; the double backward
(``*.backward.second_order``, small cases, where ``double_backward`` is offered) on ``dx``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from normspec.adapters.protocol import (
    Array,
    Capabilities,
    DTypeName,
    FamilyKind,
    SecondOrderLayer,
)
from normspec.conformance.checks import Body, check
from normspec.conformance.context import CheckContext, Violation
from normspec.conformance.dtypes import round_to
from normspec.conformance.menu_family import FamilyEntry, FamilyWants, family_menu
from normspec.conformance.menu_group import GroupEntry, group_menu
from normspec.conformance.strategies import arrange, standard_values
from normspec.conformance.strategies_family import (
    EPS_VALUES,
    GROUPED,
    FamilyCase,
    held_eps,
)
from normspec.conformance.tolerance import (
    GradientBounds,
    Moments,
    compare,
    inference_output_bound,
)
from normspec.conformance.tolerance_family import (
    SecondOrderArguments,
    Slices,
    instance_running_bounds,
    layernorm_backward_bounds,
    layernorm_output_bound,
    rms_backward_bounds,
    rms_output_bound,
    second_order_family_bounds,
)
from normspec.reference import Gradients, family
from normspec.reference.dialects import Dialect
from normspec.reference.family_dialect import (
    FamilyDialect,
    rms_norm_outside,
    rms_norm_outside_backward,
)
from normspec.reference.family_second_order import (
    FamilySlices,
    family_second_order_differences,
)

#: The clause prefix of each layer.
PREFIX: dict[FamilyKind, str] = {
    "layernorm": "ln",
    "rmsnorm": "rms",
    "groupnorm": "gn",
    "instancenorm": "in",
}
KINDS: tuple[FamilyKind, ...] = ("layernorm", "rmsnorm", "groupnorm", "instancenorm")
_NONFINITE = st.sampled_from([np.nan, np.inf, -np.inf])
_BOOLEANS = st.booleans()
#: The degenerate slice's eps: the case's, or half the time the smallest drawn (where
#: ``1 / sqrt(eps)`` is largest: BERT's 1e-12, 0 in float16).
_DEGENERATE_EPS = st.sampled_from([None, 1e-12])
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


def inside_root(
    capabilities: Capabilities, dialect: Dialect, dtypes: tuple[DTypeName, ...]
) -> str | None:
    """Applicability of rms.backward.second_order: the dialect's eps inside the root. With
    eps outside, the second derivative of ``sqrt(mean(x^2))`` has a kink at 0 whose scale is
    the slice's own, which the differences' step does not resolve: not specified yet."""
    if _outside(dialect.family_dialect("rmsnorm")):
        return (
            "the second order of RMSNorm with eps outside the root is not specified yet "
            "(the differences' step does not resolve the kink of sqrt(mean(x^2)) at 0)"
        )
    return None


def _view(case: FamilyCase) -> Slices:
    """The case's input as slices (tolerance_family)."""
    if case.grouped:
        return Slices.grouped(case.x.shape, case.family.num_groups)
    return Slices.of(case.x.shape, case.normalized_shape)


def expected_output(case: FamilyCase, form: FamilyDialect, x: Array | None = None) -> Array:
    """The reference's output for the case (or for ``x`` in its place) under the profile's
    dialect of the layer (``form``)."""
    values = case.x if x is None else x
    weight, bias = _parameters(case)
    shape, eps = case.normalized_shape, case.config.eps
    if case.grouped:
        return family.group_norm(values, case.family.num_groups, weight, bias, eps=eps)
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
    if case.grouped:
        groups = case.family.num_groups
        return family.group_norm_backward(case.dy, values, groups, weight, eps=eps)
    if case.family.kind == "layernorm":
        return family.layer_norm_backward(case.dy, values, shape, weight, eps=eps)
    offset = case.family.scale_offset
    rms = rms_norm_outside_backward if _outside(form) else family.rms_norm_backward
    return rms(case.dy, values, shape, weight, eps=eps, scale_offset=offset)


def output_bound(ctx: CheckContext, case: FamilyCase, form: FamilyDialect, x: Array) -> Array:
    precision = ctx.precision(case.config.dtype)
    weight, bias = _parameters(case)
    if case.family.kind != "rmsnorm":
        return layernorm_output_bound(precision, x, _view(case), weight, bias, case.config.eps)
    roundings = 1 if form.cast == "after_weight" else 2
    return rms_output_bound(
        precision,
        x,
        _view(case),
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
    view, eps = _view(case), case.config.eps
    if case.family.kind != "rmsnorm":
        weight, _ = _parameters(case)
        return layernorm_backward_bounds(precision, x, case.dy, view, weight, eps, expected)
    return rms_backward_bounds(
        precision, x, case.dy, view, _scale(case), eps, expected, outside_root=_outside(form)
    )


# --------------------------------------------------------------------------------------
# Calling the layer, comparing


def draw(
    ctx: CheckContext,
    data: Any,
    kind: FamilyKind,
    *,
    default_eps: bool = False,
    eps: float | None = None,
    simple: bool = False,
    small: bool = False,
    **options: Any,
) -> FamilyCase:
    """A case of the layer under the profile's dialect of it: its scale (``w``, ``1 + w``),
    and with ``default_eps`` (the value clauses) the profile's default eps in one case of
    four (dialects.md: family.*); ``eps``: that eps. Under a run's menu (an implementation
    that compiles per configuration) a case's configuration comes from the family's menu
    (:mod:`menu_family`, :mod:`menu_group`; ``simple``: its first entries only). ``small``:
    at most :data:`SMALL_VALUES` values (the menu's entries that small, else drawn so)."""
    if kind in GROUPED:
        grouped = _group_entries(ctx, kind, eps, simple, options)
        if small:
            grouped = _small(data, grouped, _small_group_entry(ctx.capabilities, kind))
        grouped_case = ctx.draw_case(data, kind, fixed_eps=eps, entries=grouped, **options)
        assert isinstance(grouped_case, FamilyCase)
        return grouped_case
    form = ctx.dialect.family_dialect(kind)
    default = default_eps and data.draw(_DEFAULT_EPS, label="the profile's default eps")
    fixed = form.default_eps_for(ctx.dtypes[0]) if default else eps
    entries = _menu_entries(ctx, kind, fixed, simple, options)
    if small:
        entries = _small(data, entries, _small_layer_entry(ctx.capabilities))
    case = ctx.draw_case(data, kind, fixed_eps=fixed, entries=entries, **options)
    assert isinstance(case, FamilyCase)
    config = case.config
    if default:  # the case's own dtype's (one of several dtypes drawn at once)
        config = replace(config, eps=held_eps(ctx.capabilities, form.default_eps_for(config.dtype)))
    layer = replace(case.family, scale_offset=form.scale_offset if kind == "rmsnorm" else 0.0)
    found = ctx.use_case(replace(case, config=replace(config, family=layer)))
    assert isinstance(found, FamilyCase)
    return found


def _menu_entries(
    ctx: CheckContext, kind: FamilyKind, eps: float | None, simple: bool, options: Any
) -> list[FamilyEntry] | None:
    """The family menu's entries for the options (None: no menu, drawn freely)."""
    menu = ctx.menu
    if menu is None:
        return None
    capabilities = ctx.capabilities
    family = family_menu(
        menu.seed,
        menu.size,
        ctx.dialect.family_dialect(kind).default_eps_for(ctx.dtypes[0]),
        without_affine=capabilities.without_affine,
        bias=capabilities.elementwise_bias,
    )
    return family.choices(_wants(ctx, eps, options), simple=simple)


def _group_entries(
    ctx: CheckContext, kind: FamilyKind, eps: float | None, simple: bool, options: Any
) -> list[GroupEntry] | None:
    """The grouped menu's entries for the options (None: no menu, drawn freely)."""
    menu = ctx.menu
    if menu is None:
        return None
    instance = kind == "instancenorm"
    ranks = tuple(sorted(r - 2 for r in ctx.capabilities.ranks if r >= (3 if instance else 2)))
    grouped = group_menu(
        menu.seed,
        menu.size,
        ctx.dialect.family_dialect(kind).default_eps_for(ctx.dtypes[0]),
        instance=instance,
        spatial_ranks=ranks,
        without_affine=ctx.capabilities.without_affine,
    )
    wants = replace(_wants(ctx, eps, options), min_group_values=options.get("min_group_values", 2))
    return grouped.choices(wants, simple=simple)


#: The most values of a ``small`` case (a double backward's: its expectation costs twelve
#: evaluations of a slice's backward per value).
SMALL_VALUES = 144
Small = TypeVar("Small", FamilyEntry, GroupEntry)
_SMALL_SIZES = st.integers(1, 3)


def _small(data: Any, entries: list[Small] | None, free: st.SearchStrategy[Small]) -> list[Small]:
    """The menu's entries of at most :data:`SMALL_VALUES` values (its first if none is), or
    without a menu one drawn from ``free``."""
    if entries is None:
        return [data.draw(free, label="a small configuration")]
    fitting = [e for e in entries if int(np.prod(e.shape, dtype=np.int64)) <= SMALL_VALUES]
    return fitting or entries[:1]


@st.composite
def _small_layer_entry(draw: st.DrawFn, capabilities: Capabilities) -> FamilyEntry:
    """A LayerNorm or RMSNorm configuration of at most 144 values."""
    normalized = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=2)))
    leading = tuple(draw(st.lists(_SMALL_SIZES, max_size=2)))
    affine = draw(st.booleans()) if capabilities.without_affine else True
    bias = affine and capabilities.elementwise_bias and draw(st.booleans())
    return FamilyEntry(leading, normalized, draw(EPS_VALUES), affine, bias)


@st.composite
def _small_group_entry(draw: st.DrawFn, capabilities: Capabilities, kind: FamilyKind) -> GroupEntry:
    """A GroupNorm or InstanceNorm configuration of at most 144 values, two per group at
    least."""
    instance = kind == "instancenorm"
    ranks = sorted(r - 2 for r in capabilities.ranks if r >= (3 if instance else 2))
    spatial = [draw(_SMALL_SIZES) for _ in range(draw(st.sampled_from(ranks)))]
    width = 1 if instance else draw(st.integers(1, 2))
    batch, groups = draw(st.integers(1, 2)), draw(_SMALL_SIZES)
    while batch * groups * width * int(np.prod(spatial, dtype=np.int64)) > SMALL_VALUES:
        spatial[spatial.index(max(spatial))] -= 1
    if width * int(np.prod(spatial, dtype=np.int64)) < 2:
        if spatial:
            spatial[-1] = 2
        else:
            width = 2
    affine = draw(st.booleans()) if capabilities.without_affine else True
    return GroupEntry(batch, groups, width, tuple(spatial), draw(EPS_VALUES), affine)


def _wants(ctx: CheckContext, eps: float | None, options: Any) -> FamilyWants:
    """What the draw's options ask of a menu entry."""
    affine = options.get("affine", True)
    return FamilyWants(
        affine=None if affine is None and ctx.capabilities.without_affine else affine is not False,
        long_reductions=options.get("long_reductions", False),
        min_slices=options.get("min_slices", 1),
        eps=eps,
    )


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
    ctx.expect(compare("y", y, expected, bound, case.config.dtype, mask))


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
        ctx.expect(compare("dx", actual, expected.dx, bounds.dx, dtype, mask))
    if params and case.params is not None:
        shape = case.param_shape
        dweight = ctx.shape_of("dweight", grads.dgamma, shape)
        ctx.expect(compare("dweight", dweight, expected.dgamma, bounds.dgamma, dtype, None))
        if case.family.bias:
            dbias = ctx.shape_of("dbias", grads.dbeta, shape)
            ctx.expect(compare("dbias", dbias, expected.dbeta, bounds.dbeta, dtype, None))


def slice_mask(case: FamilyCase, index: int) -> Array:
    """True everywhere but in slice ``index`` (the ``index``-th run of a slice's values)."""
    n = case.slice_size
    mask = np.ones(case.x.size // n, dtype=bool)
    mask[index] = False
    return np.repeat(mask, n).reshape(case.x.shape)


def with_slice(case: FamilyCase, index: int, values: Callable[[Array], Array]) -> Array:
    """The case's input with slice ``index`` replaced by ``values(slice)``."""
    matrix = np.array(case.x, dtype=np.float64).reshape(-1, case.slice_size)
    matrix[index] = values(matrix[index])
    axis = 1 if case.grouped else case.x.ndim - 1
    return arrange(matrix.reshape(case.x.shape), case.layout, axis)


def _slice_index(data: Any, case: FamilyCase, label: str) -> int:
    slices = case.x.size // case.slice_size
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
        conditioning = "ill" if kind != "rmsnorm" and data.draw(_BOOLEANS) else "well"
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
        return np.full_like(values, 0.0 if kind == "rmsnorm" else values[0])

    def body(ctx: CheckContext, data: Any) -> None:
        single: dict[str, Any] = {"min_group_values": 1} if kind == "groupnorm" else {}
        eps = data.draw(_DEGENERATE_EPS, label="eps")
        case = draw(ctx, data, kind, affine=None, eps=eps, **single)
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
        position = data.draw(st.integers(0, case.slice_size - 1), label="position")

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
    """An input of the wrong trailing sizes (LayerNorm, RMSNorm) or channels (GroupNorm,
    InstanceNorm, a layer with parameters: still a multiple of the groups) is rejected."""

    def body(ctx: CheckContext, data: Any) -> None:
        grouped = kind in GROUPED
        case = draw(ctx, data, kind, affine=True if grouped else None, simple=True)
        extra = data.draw(st.integers(1, 3), label="extra values on the checked axis")
        axis = 1 if grouped else case.x.ndim - 1
        extra *= case.family.num_groups if kind == "groupnorm" else 1
        shape = tuple(size + extra * (a == axis) for a, size in enumerate(case.x.shape))
        wrong = np.zeros(shape)
        layer = ctx.build(case)
        raised, y = ctx.attempt("infer", layer.infer, wrong)
        if not raised:
            built = case.param_shape if grouped else case.normalized_shape
            raise Violation(
                f"an input of shape {shape} was accepted by a layer built for {built} "
                f"(returned shape {np.shape(y)}); it must be rejected"
            )

    return body


#: eps values that are not positive finite numbers (ln.params.eps).
_INVALID_EPS = st.sampled_from([0.0, -1e-5, np.nan, np.inf])


def params_eps(kind: FamilyKind) -> Body:
    def body(ctx: CheckContext, data: Any) -> None:
        case = draw(ctx, data, kind, affine=None, simple=True)
        eps = float(data.draw(_INVALID_EPS, label="eps"))
        case = ctx.use_case(replace(case, config=replace(case.config, eps=eps)))  # type: ignore[assignment]
        layer = ctx.attempt_build(case)
        if layer is None:
            return
        raised, _ = ctx.attempt("infer", layer.infer, case.x)
        if not raised:
            raise Violation(f"eps = {eps!r} was accepted: a layer built with it returned an output")

    return body


def params_groups(ctx: CheckContext, data: Any) -> None:
    """gn.params.groups: a number of groups that does not divide the channels is refused."""
    case = draw(ctx, data, "groupnorm", affine=None)
    channels = case.config.num_features
    wrong = data.draw(
        st.integers(2, channels + 1).filter(lambda g: channels % g != 0), label="groups"
    )
    family_config = replace(case.family, num_groups=wrong)
    case = ctx.use_case(replace(case, config=replace(case.config, family=family_config)))  # type: ignore[assignment]
    layer = ctx.attempt_build(case)
    if layer is None:
        return
    raised, y = ctx.attempt("infer", layer.infer, case.x)
    if not raised:
        raise Violation(
            f"{wrong} groups of {channels} channels were accepted (returned shape "
            f"{np.shape(y)}); groups of unequal size must be rejected"
        )


def empty_batch(kind: FamilyKind) -> Body:
    """An empty batch: an empty output and dx, zero parameter gradients."""

    def body(ctx: CheckContext, data: Any) -> None:
        case = draw(ctx, data, kind, affine=None, batch=0)
        y = forward(ctx, case)
        if y.size:
            raise Violation(f"an empty batch gave an output of {y.size} values")
        if not ctx.capabilities.backward:
            return
        grads = backward(ctx, case)
        ctx.shape_of("dx", grads.dx, case.x.shape)
        if case.params is not None:
            zeros = np.zeros(case.param_shape)
            for name, value in (("dweight", grads.dgamma), ("dbias", grads.dbeta)):
                if name == "dbias" and not case.family.bias:
                    continue
                actual = ctx.shape_of(name, value, case.param_shape)
                ctx.expect(compare(name, actual, zeros, zeros, case.config.dtype, None))

    return body


def running_update(ctx: CheckContext, data: Any) -> None:
    """in.running.update: a training step normalizes by the instances' statistics and moves
    the running statistics towards their mean over the batch."""
    case = draw(ctx, data, "instancenorm", affine=None, track=True)
    assert case.state is not None and case.rate is not None
    layer = ctx.build(case)
    y = ctx.shape_of("y", ctx.call("train_step", layer.train_step, case.x), case.x.shape)
    expect_output(ctx, case, y)
    after = ctx.state_of(layer)
    if after is None:
        raise Violation("the layer reports no running statistics after a training step")
    estimator = ctx.dialect.running_variance
    expected = family.instance_running_update(case.state, case.x, case.rate, estimator)
    bounds = instance_running_bounds(
        ctx.precision(case.config.dtype),
        case.x,
        case.rate,
        Moments(case.state.mean, case.state.var),
        Moments(expected.mean, expected.var),
        unbiased=estimator == "unbiased",
    )
    dtype, channels = case.config.dtype, (case.config.num_features,)
    mean = ctx.shape_of("running_mean", after.mean, channels)
    var = ctx.shape_of("running_var", after.var, channels)
    ctx.expect(compare("running_mean", mean, expected.mean, bounds.mean, dtype, None))
    ctx.expect(compare("running_var", var, expected.var, bounds.var, dtype, None))


def infer_running(ctx: CheckContext, data: Any) -> None:
    """in.infer.output: inference by the running statistics, which it leaves unchanged."""
    case = draw(ctx, data, "instancenorm", affine=None, track=True)
    assert case.state is not None
    state = case.state
    layer = ctx.build(case)
    y = ctx.shape_of("y", ctx.call("infer", layer.infer, case.x), case.x.shape)
    weight, bias = _parameters(case)
    eps, dtype = case.config.eps, case.config.dtype
    expected = family.instance_norm_inference(case.x, state.mean, state.var, weight, bias, eps=eps)
    bound = inference_output_bound(
        ctx.precision(dtype), case.x, state.mean, state.var, weight, bias, eps, 1
    )
    ctx.expect(compare("inference output y", y, expected, bound, dtype, None))
    after = ctx.state_of(layer)
    if after is not None and not (
        np.array_equal(after.mean, state.mean) and np.array_equal(after.var, state.var)
    ):
        raise Violation("inference changed the running statistics")


def _second_order_cotangents(
    ctx: CheckContext, data: Any, case: FamilyCase
) -> tuple[Array, Array, Array]:
    """``v`` (input-shaped), ``v_weight`` and ``v_bias`` (parameter-shaped; zero without the
    parameter), values of the case's dtype."""
    dtype = case.config.dtype
    v = round_to(data.draw(standard_values(case.x.shape, stream=2), label="v"), dtype)
    vector = hnp.arrays(
        np.float64, case.param_shape, elements=st.floats(-1.0, 1.0), fill=st.nothing()
    )
    zeros = np.zeros(case.param_shape)
    with_weight = case.params is not None
    v_weight = round_to(data.draw(vector, label="v_weight"), dtype) if with_weight else zeros
    v_bias = round_to(data.draw(vector, label="v_bias"), dtype) if case.family.bias else zeros
    ctx.notes.update(v=v.tolist(), v_weight=v_weight.tolist(), v_bias=v_bias.tolist())
    return v, v_weight, v_bias


def _second_order_slices(case: FamilyCase, form: FamilyDialect) -> FamilySlices:
    shape = case.x.shape
    if case.grouped:
        return FamilySlices.group_norm(shape, case.family.num_groups)
    if case.family.kind == "layernorm":
        return FamilySlices.layer_norm(shape, case.normalized_shape)
    return FamilySlices.rms_norm(
        shape, case.normalized_shape, offset=case.family.scale_offset, outside_root=_outside(form)
    )


def second_order(kind: FamilyKind) -> Body:
    """``*.backward.second_order``: small cases; the expected values are central differences
    of the reference's backward (:mod:`normspec.reference.family_second_order`)."""

    def body(ctx: CheckContext, data: Any) -> None:
        case = draw(ctx, data, kind, affine=None, small=True)
        v, v_weight, v_bias = _second_order_cotangents(ctx, data, case)
        layer = ctx.build(case)
        ctx.require(
            isinstance(layer, SecondOrderLayer),
            "the implementation declares double_backward, but its layer has no second_order_vjp",
        )
        assert isinstance(layer, SecondOrderLayer)
        got = ctx.call(
            "second_order_vjp", layer.second_order_vjp, case.x, case.dy, v, v_weight, v_bias
        )
        form = ctx.dialect.family_dialect(case.family.kind)
        slices = _second_order_slices(case, form)
        weight, _ = _parameters(case)
        eps, dtype = case.config.eps, case.config.dtype
        expected = family_second_order_differences(
            case.x, case.dy, v, v_weight, v_bias, weight, slices, eps=eps
        )
        arguments = SecondOrderArguments(case.x, case.dy, v, _scale(case), v_weight, v_bias)
        bounds = second_order_family_bounds(
            ctx.precision(dtype),
            arguments,
            _view(case),
            eps,
            expected,
            centered=slices.centered,
            outside_root=slices.outside_root,
        )
        names = ("d_x", "d_weight", "d_dy") if case.params is not None else ("d_x", "d_dy")
        fields = {"d_x": "dx", "d_weight": "dgamma", "d_dy": "ddy"}
        shapes = {"d_x": case.x.shape, "d_weight": case.param_shape, "d_dy": case.x.shape}
        for name in names:
            actual = ctx.shape_of(name, getattr(got, fields[name], None), shapes[name])
            want, bound = getattr(expected.values, fields[name]), getattr(bounds, fields[name])
            ctx.expect(compare(f"second order {name}", actual, want, bound, dtype, None))

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
        check(
            f"{p}.backward.second_order",
            needs=("backward", "double_backward"),
            depends_on=(f"{p}.backward.dx",),
            applies=inside_root if kind == "rmsnorm" else None,
            training=False,
        )(second_order(kind))
        check(f"{p}.accuracy.forward", depends_on=checked, training=False)(accuracy(kind))
        degenerate_id = "rms.degenerate.zero" if kind == "rmsnorm" else f"{p}.degenerate.constant"
        check(degenerate_id, depends_on=checked, training=False)(degenerate(kind))
        check(f"{p}.degenerate.nonfinite_isolated", depends_on=checked, training=False)(
            nonfinite_isolated(kind)
        )
        check(f"{p}.params.shape", training=False)(params_shape(kind))
        check(f"{p}.params.eps", training=False)(params_eps(kind))
        if kind in GROUPED:
            check(f"{p}.degenerate.empty_batch", depends_on=checked, training=False)(
                empty_batch(kind)
            )
    check("gn.params.groups", training=False)(params_groups)
    running = ("instance_running_stats",)
    check("in.running.update", needs=running, depends_on=("in.train.output",), training=False)(
        running_update
    )
    check("in.infer.output", needs=running, training=False)(infer_running)


_register()
