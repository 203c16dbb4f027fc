"""Hypothesis strategies for batch-normalization inputs, reusable in any library's tests.

The building blocks are public: :func:`dtypes`, :func:`shapes`, :func:`feature_values`,
:func:`memory_layouts`, :func:`running_statistics`, :func:`affine_parameters`; a clause's
wishes for a case's setting, composed from small pieces (:class:`Sizes`, feature-axis
positions, :data:`RateChoice`, affine and tracking: :class:`Wanted`); :func:`settings`,
which draws a setting within them, and :func:`case_of`, which draws its values. The
composite :func:`cases` draws a whole checkable batch-norm situation (config, parameters,
state, input, cotangent) from them. Every value is exactly representable in the drawn dtype.
Arrays of up to :data:`ELEMENTWISE_LIMIT` values are drawn value by value, longer ones in a
few draws (:func:`values_of`, :func:`standard_values`), cotangents from a seed
(:func:`cotangents`). Arguments are checked when a strategy is built (``InvalidArgument``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar, get_args

import numpy as np
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from normspec.adapters.protocol import (
    Array,
    Capabilities,
    DTypeName,
    FeatureAxisPosition,
    LayerConfig,
)
from normspec.conformance.dtypes import round_to, round_to_normal
from normspec.conformance.menu import (
    COMMON_RATES,
    LONG_MAX_BATCH,
    LONG_MAX_SPATIAL,
    MAX_BATCH,
    MAX_SPATIAL,
    Constraints,
    Menu,
    Setting,
    eps_choices,
    feature_axis_for,
    fitted_shape,
)
from normspec.conformance.reuse import inline_composite, reused, sampled
from normspec.reference import RunningStatistics, debias_factor
from normspec.reference.dialects import Dialect
from normspec.reference.renorm import RenormStatistics

Conditioning = Literal["well", "ill"]
Layout = Literal["contiguous", "strided", "channels_last", "transposed"]

#: Decimal exponent ranges of a feature's spread per dtype: squares of deviations, their
#: sums and the running variance stay finite and above the subnormal range.
SPREAD_EXPONENTS: dict[str, tuple[int, int]] = {
    "float64": (-30, 30),
    "float32": (-6, 6),
    "float16": (-1, 1),
    "bfloat16": (-6, 6),
}

#: Largest decimal exponent of (feature mean / spread) for ill-conditioned draws.
OFFSET_EXPONENTS: dict[str, int] = {"float64": 9, "float32": 5, "float16": 2, "bfloat16": 2}

#: Above this many values an array is drawn from a few drawn parameters expanded with NumPy
#: (:func:`seeded_values`) instead of elementwise: drawing each value through Hypothesis
#: costs tens of microseconds, and arrays of 17 to 64 values drawn one by one were most of a
#: check's time. Shrinking reaches arrays this small, so minimal examples stay elementwise.
ELEMENTWISE_LIMIT = 16

#: A report shows the values of an example's arrays up to this size.
SHOWN_LIMIT = 64

# Strategies drawn from in every case, built once (Hypothesis validates each new strategy
# object on its first draw).
UNIT_VALUES = st.floats(-1.0, 1.0, allow_subnormal=False)
PARAMETER_VALUES = st.floats(-2.0, 2.0)
SIGNS = st.sampled_from([1.0, -1.0])
WELL_CONDITIONED_RATIOS = st.floats(-4.0, 4.0)
_AWAY = st.floats(-2.75, 2.75)
_SMALL_BATCHES = st.sampled_from([1, 2])
_SEEDS = st.integers(0, 2**32 - 1)
#: The step counters of a zero-debiased state, the first steps (where the debias factor
#: differs most from 1) often.
_DEBIASED_STEPS = st.one_of(st.integers(0, 4), st.integers(0, 10**6))


def values_of(draw: st.DrawFn, elements: st.SearchStrategy[float], size: int) -> Array:
    """``size`` values from ``elements``: drawn one by one (each shrinks on its own) up to
    :data:`ELEMENTWISE_LIMIT`; beyond, that many are drawn and the rest come from a drawn
    seed, uniform between the least and the greatest drawn (any length in a few draws)."""
    drawn = np.array([draw(elements) for _ in range(min(size, ELEMENTWISE_LIMIT))], dtype=float)
    if size <= ELEMENTWISE_LIMIT:
        return drawn
    rest = np.random.default_rng(draw(_SEEDS)).uniform(
        drawn.min(), drawn.max(), size - ELEMENTWISE_LIMIT
    )
    return np.concatenate([drawn, rest])


def dtypes(allowed: Sequence[DTypeName]) -> st.SearchStrategy[DTypeName]:
    """One of the allowed dtypes, shrinking towards the first (conv.io.shape_dtype)."""
    return sampled(allowed)


@reused
@st.composite
def shapes(
    draw: st.DrawFn,
    *,
    rank: int,
    feature_axis: int,
    num_features: int,
    min_count: int = 2,
    max_batch: int = MAX_BATCH,
    max_spatial: int = MAX_SPATIAL,
) -> tuple[int, ...]:
    """An input shape with at least ``min_count`` values per feature (batch x spatial;
    bn.degenerate.single_value draws one).

    Batch sizes 1 and 2 and spatial sizes 1 are reachable; shrinking goes to the smallest.
    """
    spatial = [draw(st.integers(1, max_spatial)) for _ in range(rank - 2)]
    # batch sizes 1 and 2 are where implementations break: draw them often
    wanted = draw(_batch_sizes(max(1, max_batch)))
    return fitted_shape(
        wanted, spatial, feature_axis, num_features, min_count=min_count, max_batch=max_batch
    )


@reused
def _batch_sizes(max_batch: int) -> st.SearchStrategy[int]:
    return st.one_of(_SMALL_BATCHES, st.integers(1, max_batch))


@inline_composite
def standard_values(
    draw: st.DrawFn,
    shape: tuple[int, ...],
    elementwise_limit: int = ELEMENTWISE_LIMIT,
    *,
    stream: int = 0,
) -> Array:
    """Values in [-1, 1]: elementwise (shrinkable) when small, from a seeded generator when large.

    ``elementwise_limit``: the largest size drawn elementwise. ``stream``: arrays of one
    case get their own (the input 0, a cotangent 1, ...): shrinking drives every drawn seed
    to the same value, and one stream would then make the cotangent proportional to the
    input, where the exact ``dx`` nearly cancels.
    """
    size = int(np.prod(shape, dtype=np.int64))
    if size <= elementwise_limit:
        # every element is drawn (filling most of an array with one value, as hypothesis'
        # arrays() does by default, would make zero-variance features the rule)
        return values_of(draw, UNIT_VALUES, size).reshape(shape)
    seed = draw(_SEEDS)
    return np.random.default_rng([seed, stream] if stream else seed).uniform(-1.0, 1.0, size=shape)


@inline_composite
def cotangents(draw: st.DrawFn, shape: tuple[int, ...], stream: int = 1) -> Array:
    """A cotangent ``dy`` (values in [-1, 1]) from a drawn seed, one draw whatever its size:
    a check reads it only as a generic direction, and its elementwise draws were a fifth of
    a case's. ``stream`` as in :func:`standard_values`."""
    return standard_values.inline(draw, shape, 0, stream=stream)


@inline_composite
def feature_values(
    draw: st.DrawFn,
    shape: tuple[int, ...],
    feature_axis: int,
    dtype: DTypeName,
    conditioning: Conditioning = "well",
    elementwise_limit: int = ELEMENTWISE_LIMIT,
) -> Array:
    """An input whose features have their own spread and mean, rounded to ``dtype``
    (bn.train.output; ``ill`` for bn.accuracy.*).

    ``well``: the mean is at most 4 spreads from zero (condition number kappa <= ~5).
    ``ill``: the mean is 10^k spreads from zero, up to the dtype's limit (conventions:
    accuracy model), the case where a one-pass variance loses its digits. Features whose
    drawn values are all equal have zero variance.
    """
    features = shape[feature_axis]
    exponents = spread_exponents(dtype)
    spread = np.array([10.0 ** draw(exponents) for _ in range(features)])
    if conditioning == "well":
        ratio = values_of(draw, WELL_CONDITIONED_RATIOS, features)
    else:
        top = OFFSET_EXPONENTS[dtype]
        ratio = np.array(
            [draw(SIGNS) * 10.0 ** draw(_offset_exponents(top)) for _ in range(features)]
        )
    z = standard_values.inline(draw, shape, elementwise_limit)
    bshape = [1] * len(shape)
    bshape[feature_axis] = features
    x = (ratio * spread).reshape(bshape) + spread.reshape(bshape) * z
    return round_to(x, dtype)


@reused
def spread_exponents(dtype: DTypeName) -> st.SearchStrategy[int]:
    """The decimal exponents of a feature's spread in ``dtype`` (:data:`SPREAD_EXPONENTS`)."""
    return st.integers(*SPREAD_EXPONENTS[dtype])


@reused
def _offset_exponents(top: int) -> st.SearchStrategy[int]:
    return st.one_of(st.just(top), st.integers(1, top))


@reused
def memory_layouts(rank: int) -> st.SearchStrategy[Layout]:
    """The memory arrangements an input can arrive in (conv.layout.memory)."""
    options: list[Layout] = ["strided", "transposed"]
    if rank >= 3:
        options.append("channels_last")
    return st.sampled_from(options)


def arrange(x: Array, layout: Layout, feature_axis: int) -> Array:
    """The same values as ``x`` in the given memory layout, as a (possibly strided) view."""
    if layout == "contiguous":
        return np.ascontiguousarray(x)
    if layout == "strided":
        buffer = np.zeros((*x.shape[:-1], 2 * x.shape[-1]))
        view = buffer[..., ::2]
        view[...] = x
        return view
    if layout == "transposed":
        return np.asfortranarray(x)
    moved = np.ascontiguousarray(np.moveaxis(x, feature_axis, -1))
    return np.moveaxis(moved, -1, feature_axis)


@reused
@st.composite
def affine_parameters(draw: st.DrawFn, num_features: int, dtype: DTypeName) -> tuple[Array, Array]:
    """gamma and beta in [-2, 2] (zero and negative gamma included), normal numbers of the
    dtype or zero (:func:`dtypes.round_to_normal`; bn.train.affine)."""
    gamma = values_of(draw, PARAMETER_VALUES, num_features)
    beta = values_of(draw, PARAMETER_VALUES, num_features)
    return round_to_normal(gamma, dtype), round_to_normal(beta, dtype)


def running_statistics_of(
    draw: st.DrawFn,
    num_features: int,
    dtype: DTypeName,
    *,
    near: Array | None = None,
    scale: Array | None = None,
    max_steps: int = 10**6,
) -> RunningStatistics:
    """A valid state: any mean, a positive variance, any step counter (bn.running.*,
    bn.infer.output), drawn with a composite's ``draw`` (:func:`running_statistics` is
    its strategy; one with arrays for arguments would be built, and validated by
    Hypothesis, at every example).

    With ``near``/``scale`` (per-feature centre and spread of the data), the mean lies
    within a few spreads of the data and the variance within a factor 100 of the spread's
    square, as the state of a trained layer would.
    """
    centre = np.zeros(num_features) if near is None else near
    spread = np.ones(num_features) if scale is None else scale

    # kept away from the batch's own statistics, so that confusing the two shows: |v| in
    # [0.25, 3], either sign, in one draw
    def away() -> float:
        value = draw(_AWAY)
        return float(math.copysign(abs(value) + 0.25, value))

    offset = np.array([away() for _ in range(num_features)])
    log_ratio = np.array([away() for _ in range(num_features)]) * (2.0 / 3.0)
    mean = round_to(centre + offset * spread, dtype)
    var = np.maximum(round_to(spread**2 * 10.0**log_ratio, dtype), 0.0)
    steps = draw(st.integers(0, max_steps))
    return RunningStatistics(mean, var, steps)


def trained_state(
    draw: st.DrawFn, data: Array, feature_axis: int, dtype: DTypeName
) -> RunningStatistics:
    """:func:`running_statistics_of` near the per-feature mean and spread of ``data``, as a
    trained layer's state would be (any state where ``data`` is empty)."""
    features = data.shape[feature_axis]
    if not data.size:
        return running_statistics_of(draw, features, dtype)
    axes = tuple(a for a in range(data.ndim) if a != feature_axis)
    near = np.mean(data, axis=axes)
    scale = np.maximum(np.std(data, axis=axes), 1e-3)
    return running_statistics_of(draw, features, dtype, near=near, scale=scale)


#: The strategy of :func:`running_statistics_of`: ``running_statistics(num_features, dtype,
#: near=..., scale=..., max_steps=...)``.
running_statistics = st.composite(running_statistics_of)


@st.composite
def zero_debiased_state(
    draw: st.DrawFn, averages: RunningStatistics, rate: float, dtype: DTypeName
) -> RunningStatistics:
    """The state of a zero-debiased layer (dialects.md: ``running_average``) whose
    inference reads ``averages``: a step counter ``t`` (small ones often) and the hidden
    averages ``c_t * averages``, rounded to ``dtype`` (subnormals to zero)."""
    steps = draw(_DEBIASED_STEPS)
    factor = debias_factor(rate, steps)
    mean = round_to_normal(averages.mean * factor, dtype)
    var = np.maximum(round_to_normal(averages.var * factor, dtype), 0.0)
    return RunningStatistics(mean, var, steps)


@reused
def canonical_rates(dialect: Dialect | None = None) -> st.SearchStrategy[float]:
    """Update rates alpha in [0, 1], the common ones first; with a dialect, only those
    whose momentum lies in its ``momentum_domain`` (bn.running.mean, bn.running.var)."""
    if dialect is None or dialect.momentum_domain == "[0, 1]":
        return st.one_of(st.sampled_from(COMMON_RATES), st.floats(0.0, 1.0))
    common = [rate for rate in COMMON_RATES if dialect.allows_rate(rate)]
    return st.one_of(st.sampled_from(common), st.floats(0.0, 1.0).filter(dialect.allows_rate))


def eps_values(dialect: Dialect) -> st.SearchStrategy[float]:
    """Positive eps: the dialect's default first, then values that meet realistic variances
    (bn.train.output, bn.infer.output)."""
    return sampled(eps_choices(dialect))


#: The statistic state a case starts from: running statistics (BN, sync, ghost) or moving
#: ones (renorm); the protocol's ``State``.
StateT = TypeVar("StateT", RunningStatistics, RenormStatistics)


@dataclass(frozen=True)
class Case(Generic[StateT]):
    """One drawn situation of any chapter: what to build, set and feed.

    ``state`` is the statistic state the layer is set to (``None``: a layer that keeps
    none); a chapter's case type fixes its kind (:class:`strategies_renorm.RenormCase`).
    """

    config: LayerConfig
    rate: float | None  # the canonical alpha (None: cumulative)
    params: tuple[Array, Array] | None
    state: StateT | None
    x: Array
    dy: Array
    layout: Layout

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly description of the case (the minimal example in a report)."""
        small = self.x.size <= SHOWN_LIMIT
        return {
            "dtype": self.config.dtype,
            "shape": list(self.x.shape),
            "feature_axis": self.config.feature_axis,
            "layout": self.layout,
            "eps": self.config.eps,
            "momentum": self.config.momentum,
            "alpha": self.rate,
            "affine": self.config.affine,
            "gamma": listed(self.params[0]) if self.params else None,
            "beta": listed(self.params[1]) if self.params else None,
            **self.state_summary(),
            "x": listed(self.x) if small else f"{self.x.size} values, omitted",
            "dy": listed(self.dy) if small else f"{self.dy.size} values, omitted",
        }

    def state_summary(self) -> dict[str, Any]:
        """The state part of :meth:`summary`: the running statistics (BN)."""
        state: Any = self.state
        return {
            "track_running_stats": self.config.track_running_stats,
            "running_mean": listed(state.mean) if state else None,
            "running_var": listed(state.var) if state else None,
            "steps": state.steps if state else None,
        }


#: A case of the chapters whose layers keep running statistics (BN, sync, ghost).
BatchNormCase = Case[RunningStatistics]


def listed(array: Array | None) -> Any:
    """An array as nested lists for a report (``None`` stays ``None``)."""
    return None if array is None else array.tolist()


#: How a case's update rate is chosen: a fixed canonical ``alpha``, ``drawn`` (the common
#: rates first, within the dialect's momentum domain), or ``cumulative`` (momentum ``None``).
RateChoice = float | Literal["drawn", "cumulative"]


def require_argument(condition: bool, message: str) -> None:
    """Raise Hypothesis' ``InvalidArgument`` unless ``condition``: a strategy's arguments are
    checked when it is built, not when it is first drawn from."""
    if not condition:
        raise InvalidArgument(message)


@dataclass(frozen=True)
class Sizes:
    """How large a case's input is (conventions: reductions; bn.degenerate.*): at least
    ``min_count`` values per feature, batch and spatial sizes up to ``max_batch`` and
    ``max_spatial`` (``None``: the chapter's, batch norm's :data:`~menu.MAX_BATCH` and
    :data:`~menu.MAX_SPATIAL`), ``features`` the fewest and most features;
    :data:`LONG_SIZES` for the long reductions of the accuracy clauses (*.accuracy.*)."""

    min_count: int = 2
    max_batch: int | None = None
    max_spatial: int | None = None
    features: tuple[int, int] = (1, 4)
    long_reductions: bool = False

    def __post_init__(self) -> None:
        require_argument(self.min_count >= 1, f"min_count={self.min_count} must be at least 1")
        require_argument(
            self.max_batch is None or self.max_batch >= 0,
            f"max_batch={self.max_batch} must be at least 0",
        )
        require_argument(
            self.max_spatial is None or self.max_spatial >= 1,
            f"max_spatial={self.max_spatial} must be at least 1",
        )
        low, high = self.features
        require_argument(
            1 <= low <= high, f"features={self.features} must be (low, high), 1 <= low <= high"
        )

    @classmethod
    def fixed_features(cls, features: int, **sizes: Any) -> Sizes:
        """Sizes with exactly ``features`` features."""
        return cls(features=(features, features), **sizes)


def _first(*sizes: int | None) -> int:
    """The first size given."""
    return next(size for size in sizes if size is not None)


#: The long reductions of the accuracy clauses (bn.accuracy.*, renorm.accuracy.*).
LONG_SIZES = Sizes(max_batch=LONG_MAX_BATCH, max_spatial=LONG_MAX_SPATIAL, long_reductions=True)
_FEATURE_POSITIONS = get_args(FeatureAxisPosition)


@dataclass(frozen=True)
class Wanted:
    """What a clause asks of its cases' setting, whatever the implementation (a
    :class:`~normspec.conformance.menu.Constraints` once :meth:`within` its capabilities).

    ``sizes``: :class:`Sizes`. ``positions``: the feature-axis positions to draw from
    (``None``: the chapter's, batch norm's primary one; conv.layout.* asks for every
    supported one). ``rate``: :data:`RateChoice` (bn.running.*).
    ``affine``/``track``: the setting required, or ``None`` to draw it where the
    implementation supports both (bn.params.*, bn.running.untracked).
    """

    sizes: Sizes = Sizes()
    positions: tuple[FeatureAxisPosition, ...] | None = None
    rate: RateChoice = "drawn"
    affine: bool | None = True
    track: bool | None = True

    def __post_init__(self) -> None:
        if isinstance(self.rate, str):
            require_argument(self.rate in ("drawn", "cumulative"), f"rate={self.rate!r} is unknown")
        else:
            require_argument(
                not isinstance(self.rate, bool) and 0.0 <= self.rate <= 1.0,
                f"rate={self.rate!r} must be an update rate in [0, 1]",
            )
        if self.positions is not None:
            require_argument(
                bool(self.positions) and set(self.positions) <= set(_FEATURE_POSITIONS),
                f"positions={self.positions!r} must be some of {_FEATURE_POSITIONS}",
            )

    def within(
        self,
        capabilities: Capabilities,
        sizes: Sizes | None = None,
        positions: Sequence[FeatureAxisPosition] | None = None,
    ) -> Constraints:
        """The constraints on a setting for ``capabilities``; ``sizes`` (the largest batch
        and spatial sizes) and ``positions`` the chapter's defaults (batch norm's:
        :data:`~menu.MAX_BATCH`, :data:`~menu.MAX_SPATIAL` and the primary position)."""
        size, default = self.sizes, sizes or Sizes()
        chosen = self.positions or positions or capabilities.feature_axes[:1]
        return Constraints(
            positions=tuple(chosen),
            min_features=size.features[0],
            max_features=size.features[1],
            min_count=size.min_count,
            max_batch=_first(size.max_batch, default.max_batch, MAX_BATCH),
            max_spatial=_first(size.max_spatial, default.max_spatial, MAX_SPATIAL),
            long_reductions=size.long_reductions,
            fixed_rate=self.rate != "drawn",
            rate=None if isinstance(self.rate, str) else self.rate,
            affine=None
            if self.affine is None and capabilities.without_affine
            else self.affine is not False,
            tracked=None
            if self.track is None and capabilities.untracked
            else self.track is not False,
        )


@reused
@st.composite
def free_settings(
    draw: st.DrawFn, capabilities: Capabilities, dialect: Dialect, wanted: Constraints
) -> Setting:
    """A setting drawn freely within the constraints (no :class:`~menu.Menu`)."""
    rank = draw(sampled(sorted(capabilities.ranks)))
    feature_axis = feature_axis_for(rank, draw(sampled(wanted.positions)))
    features = draw(st.integers(wanted.min_features, wanted.max_features))
    shape = draw(
        shapes(
            rank=rank,
            feature_axis=feature_axis,
            num_features=features,
            min_count=wanted.min_count,
            max_batch=wanted.max_batch,
            max_spatial=wanted.max_spatial,
        )
    )
    return Setting(
        rank=rank,
        feature_axis=feature_axis,
        features=features,
        shape=shape,
        rate=wanted.rate if wanted.fixed_rate else draw(canonical_rates(dialect)),
        eps=draw(eps_values(dialect)),
        affine=draw(st.booleans()) if wanted.affine is None else wanted.affine,
        tracked=draw(st.booleans()) if wanted.tracked is None else wanted.tracked,
    )


@reused
def settings(
    capabilities: Capabilities, dialect: Dialect, wanted: Constraints, menu: Menu | None
) -> st.SearchStrategy[Setting]:
    """Settings within the constraints: from the menu if there is one, else free."""
    if menu is not None:
        return menu.settings(wanted)
    return free_settings(capabilities, dialect, wanted)


def held_setting(
    capabilities: Capabilities, dialect: Dialect, eps: float, rate: float | None
) -> tuple[float, float | None, float | None]:
    """``(eps, momentum, rate)`` a layer holds for a drawn eps and canonical rate: its own
    (``Capabilities.held_setting``), or the drawn ones as values of
    ``Capabilities.setting_dtype``, the rate being then the one the held momentum means."""
    momentum = None if rate is None else dialect.momentum_from_rate(rate)
    if capabilities.held_setting is None and capabilities.setting_dtype == "float64":
        return eps, momentum, rate
    if capabilities.held_setting is not None:
        eps, momentum = capabilities.held_setting
    else:
        eps = float(round_to(eps, capabilities.setting_dtype))
        if momentum is not None:
            momentum = float(round_to(momentum, capabilities.setting_dtype))
    return eps, momentum, dialect.rate_from_momentum(momentum) if momentum is not None else None


def case_of(
    draw: st.DrawFn,
    setting: Setting,
    dialect: Dialect,
    dtype: DTypeName,
    *,
    conditioning: Conditioning = "well",
    layout: Layout | None = None,
    capabilities: Capabilities | None = None,
) -> BatchNormCase:
    """The case of a setting: its input, parameters, state and cotangent drawn; eps and
    momentum those the layer holds (:func:`held_setting`, given its ``capabilities``)."""
    shape, feature_axis, features = setting.shape, setting.feature_axis, setting.features
    x = feature_values.inline(draw, shape, feature_axis, dtype, conditioning)
    params = draw(affine_parameters(features, dtype)) if setting.affine else None
    state = None
    if setting.tracked:
        state = trained_state(draw, x, feature_axis, dtype)
        if dialect.running_average == "zero_debiased" and setting.rate is not None:
            state = draw(zero_debiased_state(state, setting.rate, dtype))
    dy = round_to(cotangents.inline(draw, shape), dtype)
    chosen: Layout = layout or "contiguous"
    config, rate = layer_config(setting, dialect, dtype, capabilities)
    return Case(config, rate, params, state, arrange(x, chosen, feature_axis), dy, chosen)


def layer_config(
    setting: Setting, dialect: Dialect, dtype: DTypeName, capabilities: Capabilities | None = None
) -> tuple[LayerConfig, float | None]:
    """The layer a setting builds in ``dtype`` and the rate it updates with, eps and
    momentum those it holds (:func:`held_setting`, given its ``capabilities``)."""
    eps, momentum, rate = held_setting(
        capabilities or Capabilities(), dialect, setting.eps, setting.rate
    )
    config = LayerConfig(
        num_features=setting.features,
        rank=setting.rank,
        feature_axis=setting.feature_axis,
        dtype=dtype,
        eps=eps,
        momentum=momentum,
        affine=setting.affine,
        track_running_stats=setting.tracked,
    )
    return config, rate


def check_case_options(
    allowed_dtypes: Sequence[DTypeName], conditioning: Conditioning, layout: Layout | None
) -> None:
    """The options every chapter's case strategy shares, checked when it is built."""
    require_argument(bool(allowed_dtypes), "allowed_dtypes is empty: no dtype to draw")
    require_argument(
        conditioning in get_args(Conditioning), f"conditioning={conditioning!r} is unknown"
    )
    require_argument(layout is None or layout in get_args(Layout), f"layout={layout!r} is unknown")


def cases(
    capabilities: Capabilities,
    dialect: Dialect,
    allowed_dtypes: Sequence[DTypeName],
    wanted: Wanted | None = None,
    *,
    conditioning: Conditioning = "well",
    layout: Layout | None = None,
    menu: Menu | None = None,
) -> st.SearchStrategy[BatchNormCase]:
    """A whole batch-norm case (bn.*, conv.*, ghost.*) for a capability set and a dialect:
    a dtype, a setting within ``wanted`` (default ``Wanted()``; :func:`settings`: from ``menu``, a run's
    :class:`~normspec.conformance.menu.Menu`, for an implementation that compiles per
    shape, else free) and its values (:func:`case_of`: input of the given ``conditioning``
    in ``layout``, parameters, state, cotangent). The arguments are checked here
    (``InvalidArgument``). Other chapters have their own strategies:
    :func:`~normspec.conformance.strategies_renorm.renorm_cases`,
    :func:`~normspec.conformance.strategies_family.family_cases`,
    :func:`~normspec.conformance.strategies_family.group_cases`,
    :func:`~normspec.conformance.strategies_replicas.replica_cases`.
    """
    check_case_options(allowed_dtypes, conditioning, layout)
    require_argument(
        wanted is None or isinstance(wanted, Wanted), f"wanted={wanted!r} is no Wanted"
    )
    return _cases(
        capabilities,
        dialect,
        allowed_dtypes,
        (wanted or Wanted()).within(capabilities),
        conditioning=conditioning,
        layout=layout,
        menu=menu,
    )


@st.composite
def _cases(
    draw: st.DrawFn,
    capabilities: Capabilities,
    dialect: Dialect,
    allowed_dtypes: Sequence[DTypeName],
    wanted: Constraints,
    *,
    conditioning: Conditioning,
    layout: Layout | None,
    menu: Menu | None,
) -> BatchNormCase:
    dtype = draw(dtypes(allowed_dtypes))
    setting = draw(settings(capabilities, dialect, wanted, menu))
    return case_of(
        draw,
        setting,
        dialect,
        dtype,
        conditioning=conditioning,
        layout=layout,
        capabilities=capabilities,
    )
