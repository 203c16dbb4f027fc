"""Hypothesis strategies for batch-renormalization cases (renorm.md), reusable in any library's tests.

The building blocks are public: :func:`symmetric_bounds` and :func:`independent_bounds` (the
two forms of the ``clipping`` dialect parameter, :func:`clipping_bounds` picks the
dialect's), :func:`schedules` (constant bounds, the paper's ramp and a switch, with the step
counter around the points where the bounds change), :func:`moving_set` (moving statistics
near the data, where the clipping is inactive, or far from it, where it is active), and the
composite :func:`renorm_cases`, which draws a whole renorm situation, a :class:`RenormCase`,
composed from them: the setting within a :class:`strategies.Wanted`, a schedule strategy,
and the moving statistics as :class:`Moving` asks (each checked when built).

Every array value (input, cotangent, parameters, moving statistics) is exactly representable
in the drawn dtype; bounds, eps and rates are float64 values as a user passes them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
from hypothesis import strategies as st

from normspec.adapters.protocol import Array, Capabilities, DTypeName, LayerConfig
from normspec.conformance.dtypes import float_format, round_to, round_to_normal
from normspec.conformance.menu import Constraints, Menu, feature_axis_for, partner_rate
from normspec.conformance.reuse import inline_composite, reused, sampled
from normspec.conformance.strategies import (
    PARAMETER_VALUES,
    SIGNS,
    WELL_CONDITIONED_RATIOS,
    Case,
    Conditioning,
    Layout,
    Sizes,
    Wanted,
    arrange,
    canonical_rates,
    check_case_options,
    cotangents,
    eps_values,
    feature_values,
    listed,
    require_argument,
    shapes,
    spread_exponents,
    values_of,
)
from normspec.reference import batch_statistics
from normspec.reference.dialects import Dialect
from normspec.reference.renorm import RenormConfig, RenormDialect, RenormStatistics
from normspec.reference.schedules import (
    BN_BOUNDS,
    PAPER_SCHEDULE,
    ConstantSchedule,
    LinearRamp,
    RenormBounds,
    Schedule,
    SwitchSchedule,
)

#: The kinds of schedule a case can carry (renorm.schedule.*).
ScheduleKind = Literal["constant", "paper", "switch"]
SCHEDULE_KINDS: tuple[ScheduleKind, ...] = ("constant", "paper", "switch")

#: Where a feature's moving statistics lie against its batch: ``exact`` (``r = 1, d = 0``
#: before clipping), ``near`` (``r`` within a factor 1.6 of 1, ``|d| <= 1``: the clipping of
#: bounds ``r_max >= 1.6, d_max >= 1`` is inactive), ``far`` (``r`` off by a factor 5.6 to
#: 100, ``|d|`` from 6 to 100: every finite bound of the strategies below clips), one bound
#: of the step's clipping active and the others not (``r_below``: ``r < r_min``,
#: ``r_above``: ``r > r_max``, ``d_below``: ``d < -d_max``, ``d_above``: ``d > d_max``) and,
#: under a floor on sigma, ``below_floor`` (a moving standard deviation under
#: ``sqrt(eps)``).
Regime = Literal["exact", "near", "far", "r_below", "r_above", "d_below", "d_above", "below_floor"]
#: The regimes that make one bound of the clipping active (:func:`moving_set`).
ONE_BOUND: tuple[Regime, ...] = ("r_below", "r_above", "d_below", "d_above")

#: The default largest batch and spatial sizes of a renorm case (smaller than batch norm's:
#: a renorm check does more per example; ``long_reductions`` draws long ones).
MAX_BATCH = 6
MAX_SPATIAL = 3
#: Arrays up to this size are drawn value by value (shrinkable), larger ones from a seed:
#: smaller than batch norm's limit, which keeps a renorm check fast while minimal examples
#: (a few values) still shrink value by value.
ELEMENTWISE_LIMIT = 12

_BOOLEANS = st.booleans()


#: Where a case's step counter lies against the points where its schedule's bounds change
#: (see :func:`schedules`).
Counter = Literal["steady", "any", "changing"]

#: The step counters at which the paper's bounds start or stop changing (renorm.schedule.paper).
PAPER_POINTS: tuple[int, ...] = (0, 5_000, 22_500, 25_000, 40_000)


def renorm_dialect(dialect: Dialect) -> RenormDialect:
    """The profile's renorm dialect; ``ValueError`` for a profile without batch renorm."""
    if dialect.renorm is None:
        raise ValueError(f"profile {dialect.name!r} has no batch renormalization")
    return dialect.renorm


def offered_schedules(dialect: Dialect) -> tuple[ScheduleKind, ...]:
    """The schedules a library of the dialect offers: those its warm-up form can express.

    ``none``: constant bounds; ``switch``: a switch too (at step 0 it is constant bounds);
    ``ramp``: the paper's ramps too (a ramp that starts and ends at one step is a switch).
    """
    warmup = renorm_dialect(dialect).warmup
    if warmup == "ramp":
        return ("constant", "paper", "switch")
    if warmup == "switch":
        return ("constant", "switch")
    return ("constant",)


_R_MAX = st.one_of(st.sampled_from([1.0, 3.0, 1.5, 5.0]), st.floats(1.0, 5.0))
_D_MAX = st.one_of(st.sampled_from([0.0, 5.0, 0.25, 1.0]), st.floats(0.0, 5.0))
#: Each key of tf_keras' ``renorm_clipping`` missing (an open side) in half the draws.
_RMIN_KEY = st.one_of(st.none(), st.sampled_from([1.0, 0.5, 0.2]) | st.floats(0.0, 1.0))
_RMAX_KEY = st.one_of(st.none(), st.sampled_from([1.0, 3.0, 1.5]) | st.floats(1.0, 5.0))
_DMAX_KEY = st.one_of(st.none(), st.sampled_from([0.0, 5.0, 0.5]) | st.floats(0.0, 5.0))


def symmetric_bounds() -> st.SearchStrategy[RenormBounds]:
    """The paper's bounds ``r in [1 / r_max, r_max]``, ``|d| <= d_max`` with ``r_max`` in
    ``[1, 5]`` and ``d_max`` in ``[0, 5]``; shrinks to batch norm (1, 0)."""
    return _SYMMETRIC


def _keras(r_min: float | None, r_max: float | None, d_max: float | None) -> RenormBounds:
    given = {"rmin": r_min, "rmax": r_max, "dmax": d_max}
    return RenormBounds.from_keras({k: v for k, v in given.items() if v is not None})


def independent_bounds() -> st.SearchStrategy[RenormBounds]:
    """tf_keras-style ``rmin``, ``rmax``, ``dmax``, each possibly missing (no clipping)."""
    return _INDEPENDENT


_SYMMETRIC = st.builds(RenormBounds.symmetric, _R_MAX, _D_MAX)
_INDEPENDENT = st.builds(_keras, _RMIN_KEY, _RMAX_KEY, _DMAX_KEY)
_EITHER = st.one_of(_SYMMETRIC, _INDEPENDENT)


def clipping_bounds(dialect: Dialect) -> st.SearchStrategy[RenormBounds]:
    """Constant bounds in the form the dialect takes them; the batch-norm reduction included.

    ``symmetric``: the paper's form only. ``independent``: any ``rmin``, ``rmax``, ``dmax``,
    the symmetric ones among them.
    """
    if renorm_dialect(dialect).clipping == "symmetric":
        return _SYMMETRIC
    return _EITHER


def menu_bounds(dialect: Dialect, menu: Menu) -> st.SearchStrategy[RenormBounds]:
    """Constant bounds among a menu's few (each a compiled program), in the dialect's form:
    the menu's ``(r_max, d_max)`` pairs; under ``independent`` clipping three forms, each
    with one pair in turn: all three bounds, ``r_min`` open, only ``rmin`` given (``r_max``,
    ``d_max`` open), so that every bound is given in one form and open in another. Shrinks
    to the first. Every bound stays active in the regimes of :func:`moving_set`, drawn
    against it.
    """
    independent = renorm_dialect(dialect).clipping != "symmetric"
    pairs = menu.renorm_bounds
    chosen = [RenormBounds.symmetric(r, d) for r, d in pairs]
    if independent:
        forms: list[Callable[[float, float], RenormBounds]] = [
            RenormBounds.symmetric,
            lambda r, d: _keras(None, r, d),
            lambda r, _: _keras(1 / r, None, None),
        ]
        chosen = [form(*pairs[k % len(pairs)]) for k, form in enumerate(forms)]
    return sampled(chosen)


_NEAR_A_POINT = st.booleans()
_OFFSET = st.integers(-2, 2)
_PAPER_POINT = st.sampled_from(PAPER_POINTS)
_ANY_STEP = st.integers(0, 10**6)
_PAPER_STEP = st.integers(0, 50_000)
#: The paper's schedule where ``bounds(t) == bounds(t + 1)``: up to 4,999 and from 40,000.
_PAPER_STEADY_STEP = st.one_of(
    st.sampled_from([0, 4_999, 40_000]), st.integers(0, 4_999), st.integers(40_000, 10**6)
)
_PAPER_BN_STEP = st.one_of(st.sampled_from([0, 4_999]), st.integers(0, 4_999))
_SWITCH_AT = st.one_of(st.sampled_from([2, 100, 100_000]), st.integers(2, 10**5))
_BEFORE_SWITCH = st.integers(2, 3)
#: The paper's bounds start changing after 5,000 and stop changing at 25,000 (d) and
#: 40,000 (r); between, they change at every step.
_PAPER_CHANGE = st.sampled_from([5_001, 22_500, 25_000, 40_000])
_BEFORE_CHANGE = st.integers(0, 3)


def schedules(
    dialect: Dialect,
    kinds: Sequence[ScheduleKind] | None = None,
    *,
    batchnorm: bool = False,
    bounds: RenormBounds | None = None,
    counter: Counter = "any",
    menu: Menu | None = None,
) -> st.SearchStrategy[tuple[Schedule, int]]:
    """A schedule and a step counter ``t`` (renorm.schedule.*), checked when built.

    ``kinds``: the kinds to draw from (default: those the dialect offers). ``counter``:
    ``any``: around the points where the schedule's bounds change (the paper's 5,000,
    22,500, 25,000 and 40,000; a switch step) or anywhere; ``steady``: only where the bounds
    of steps ``t`` and ``t + 1`` agree (steps that cannot tell a schedule evaluated at the
    wrong counter, renorm.schedule.step); ``changing``: a few steps before a change, so
    that a short sequence of steps crosses it. ``batchnorm``: the bounds at ``t`` and
    ``t + 1`` are ``r_max = 1, d_max = 0`` (renorm.train.reduces_to_bn). ``bounds``:
    constant bounds, these. ``menu``: bounds and switch steps among the menu's few
    (:func:`menu_bounds`), so that the schedules drawn are a few compiled programs.
    """
    require_argument(
        kinds is None or (bool(kinds) and set(kinds) <= set(SCHEDULE_KINDS)),
        f"kinds={kinds!r} must be some of {SCHEDULE_KINDS}",
    )
    require_argument(counter in get_args(Counter), f"counter={counter!r} is unknown")
    return _schedules(
        dialect, kinds, batchnorm=batchnorm, bounds=bounds, counter=counter, menu=menu
    )


@reused
@st.composite
def _schedules(
    draw: st.DrawFn,
    dialect: Dialect,
    kinds: Sequence[ScheduleKind] | None,
    *,
    batchnorm: bool,
    bounds: RenormBounds | None,
    counter: Counter,
    menu: Menu | None,
) -> tuple[Schedule, int]:
    drawn_bounds = clipping_bounds(dialect) if menu is None else menu_bounds(dialect, menu)
    switch_at = _SWITCH_AT if menu is None else sampled(menu.switch_steps)
    kind = draw(sampled(kinds or offered_schedules(dialect))) if bounds is None else "constant"

    def near(point: int) -> int:
        return max(point + draw(_OFFSET), 0)

    if kind == "constant":
        if bounds is None:
            bounds = BN_BOUNDS if batchnorm else draw(drawn_bounds)
        steps = near(draw(_PAPER_POINT)) if draw(_NEAR_A_POINT) else draw(_ANY_STEP)
        return ConstantSchedule(bounds), steps
    if kind == "paper":
        ramp: LinearRamp = PAPER_SCHEDULE
        if batchnorm:
            return ramp, draw(_PAPER_BN_STEP)
        if counter == "steady":
            return ramp, draw(_PAPER_STEADY_STEP)
        if counter == "changing":
            return ramp, draw(_PAPER_CHANGE) - draw(_BEFORE_CHANGE)
        return ramp, near(draw(_PAPER_POINT)) if draw(_NEAR_A_POINT) else draw(_PAPER_STEP)
    at = draw(switch_at)
    after = draw(drawn_bounds)
    if batchnorm:
        return SwitchSchedule(at, after), max(at - draw(_BEFORE_SWITCH), 0)
    if counter == "changing":
        return SwitchSchedule(at, after), max(at - draw(_BEFORE_CHANGE), 0)
    steps = near(at) if draw(_NEAR_A_POINT) else draw(st.integers(0, 2 * at + 2))
    if counter == "steady" and steps == at - 1:
        steps = at
    return SwitchSchedule(at, after), steps


@reused
def _just(regime: Regime) -> st.SearchStrategy[Regime]:
    return st.just(regime)


def _regimes(sigma_floor: str, average: str) -> st.SearchStrategy[Regime]:
    if sigma_floor == "sqrt_eps" and average == "std":
        return _REGIMES_FLOORED
    return _REGIMES


#: The one-bound regimes with twice the weight of the others: each bound of the clipping
#: (or an open side's symmetric counterpart) is active for a feature, alone, in 2/11 of the
#: draws (2/12 under a floor on sigma), and in half the ``far`` ones besides; the shares
#: measured per side are in tests/conformance/test_renorm_boundaries.py.
_REGIMES: st.SearchStrategy[Regime] = st.sampled_from(
    ["near", "far", "exact", *ONE_BOUND, *ONE_BOUND]
)
_REGIMES_FLOORED: st.SearchStrategy[Regime] = st.sampled_from(
    ["near", "far", "exact", *ONE_BOUND, *ONE_BOUND, "below_floor"]
)
_UNIT = st.floats(-1.0, 1.0)
_FRACTION = st.floats(0.0, 1.0)
_NEAR_LOG_R = st.floats(-0.2, 0.2)
_BELOW_FLOOR = st.sampled_from([0.0, 0.5, 1.0])
#: How far beyond an active bound: a factor 1.25 to 10 for ``r``, 0.25 to 10 for ``d``.
_BEYOND_LOG_R = st.floats(0.1, 1.0)
_BEYOND_D = st.floats(0.25, 10.0)
#: Where within a bound's interval an inactive ``r`` or ``d`` lies: its middle 80 %.
_WITHIN = st.floats(0.1, 0.9)


def _far(sign: float, fraction: float, low: float, high: float) -> float:
    """A value of ``[low, high]`` (``fraction`` of the way) with the given sign."""
    return sign * (low + (high - low) * fraction)


def clipping_thresholds(bounds: RenormBounds) -> tuple[float | None, float | None]:
    """Where ``r`` is clipped below and above; for an open side, where a symmetric reading
    of the other bound would clip it (``1 / r_max``, ``1 / r_min``); ``None``: neither."""
    finite_max = math.isfinite(bounds.r_max)
    low = bounds.r_min if bounds.r_min > 0 else (1 / bounds.r_max if finite_max else None)
    high = bounds.r_max if finite_max else (1 / bounds.r_min if bounds.r_min > 0 else None)
    return low, high


def _one_bound(draw: st.DrawFn, regime: Regime, bounds: RenormBounds) -> tuple[float, float] | None:
    """``(log10 r_u, d_u)`` with the one bound ``regime`` names active and ``r`` and ``d``
    otherwise inside the bounds; ``None`` where the bounds have no such side.

    Where one side of ``r`` is open (``r_min = 0``, or an infinite ``r_max``), ``r`` goes
    beyond the symmetric counterpart of the other (``1 / r_max``, ``1 / r_min``): the point
    at which a library that reads the bounds symmetrically would clip, and must not.
    """
    lowest = math.log10(bounds.r_min) if bounds.r_min > 0 else -0.2
    highest = math.log10(bounds.r_max) if math.isfinite(bounds.r_max) else 0.2
    log_r = lowest + (highest - lowest) * draw(_WITHIN)
    reach = bounds.d_max if math.isfinite(bounds.d_max) else 1.0
    d_u = reach * (2 * draw(_WITHIN) - 1)
    low, high = clipping_thresholds(bounds)
    if regime == "r_below":
        if low is None:
            return None
        log_r = math.log10(low) - draw(_BEYOND_LOG_R)
    elif regime == "r_above":
        if high is None:
            return None
        log_r = math.log10(high) + draw(_BEYOND_LOG_R)
    else:
        if not math.isfinite(bounds.d_max):
            return None
        d_u = (bounds.d_max + draw(_BEYOND_D)) * (-1 if regime == "d_below" else 1)
    return log_r, d_u


@inline_composite
def moving_set(
    draw: st.DrawFn,
    batch_mean: Array,
    batch_std: Array,
    dtype: DTypeName,
    eps: float,
    *,
    average: str,
    sigma_floor: str = "none",
    regime: Regime | Sequence[Regime] | None = None,
    bounds: RenormBounds = BN_BOUNDS,
) -> tuple[Array, Array]:
    """One set of moving statistics ``(mean, spread)`` placed against a batch.

    Per feature, the moving ``sigma`` is ``sigma_B / r_u`` and the moving mean
    ``mu_B - d_u * sigma`` for an ``(r_u, d_u)`` drawn in the feature's :data:`Regime`
    (``regime`` forces one for every feature, or gives the ones to draw from), against the
    clipping ``bounds`` of the step (a regime of :data:`ONE_BOUND` for a side the bounds do
    not have is ``far``). The spread is ``sigma`` when the dialect averages the standard
    deviation, else the variance ``sigma^2 - eps`` (at least 0).
    """
    fmt = float_format(dtype)
    limit = fmt.max / 64
    features = batch_mean.shape[0]
    means, spreads = np.empty(features), np.empty(features)
    if regime is None:
        regimes = _regimes(sigma_floor, average)
    elif isinstance(regime, str):
        regimes = _just(regime)
    else:
        regimes = sampled(regime)
    for c in range(features):
        chosen = draw(regimes)
        placed = _one_bound(draw, chosen, bounds) if chosen in ONE_BOUND else None
        if chosen in ONE_BOUND and placed is None:
            chosen = "far"
        if placed is not None:
            log_r, d_u = placed
        elif chosen == "exact":
            log_r, d_u = 0.0, 0.0
        elif chosen == "far":
            log_r = _far(draw(SIGNS), draw(_FRACTION), 0.75, 2.0)
            d_u = _far(draw(SIGNS), draw(_FRACTION), 6.0, 100.0)
        else:
            log_r, d_u = draw(_NEAR_LOG_R), draw(_UNIT)
        centre = float(batch_mean[c]) if math.isfinite(batch_mean[c]) else 0.0
        spread_b = float(batch_std[c]) if math.isfinite(batch_std[c]) else 1.0
        # tiny r_min: 10^log_r would underflow (the moving sigma then hits the limit)
        sigma = min(spread_b * 10.0 ** min(-log_r, 300.0), limit)
        if chosen == "below_floor":
            sigma = math.sqrt(eps) * draw(_BELOW_FLOOR)
        means[c] = float(np.clip(centre - d_u * sigma, -limit, limit))
        spreads[c] = sigma if average == "std" else min(max(sigma * sigma - eps, 0.0), limit)
    mean = round_to(means, dtype)
    spread = round_to(spreads, dtype)
    if average == "std" and sigma_floor == "none":
        # a positive sigma stays positive in the dtype (renorm.params.sigma)
        spread = np.where(spread > 0, spread, round_to(np.float64(fmt.smallest_normal), dtype))
    return mean, spread


_BATCH = st.integers(2, MAX_BATCH)
_SPATIAL = st.integers(1, MAX_SPATIAL)
_SEED = st.integers(0, 2**32 - 1)


@reused
@st.composite
def batches(
    draw: st.DrawFn,
    rank: int,
    feature_axis: int,
    num_features: int,
    dtype: DTypeName,
    shapes: Sequence[tuple[int, ...]] | None = None,
) -> Array:
    """A well-conditioned batch for a layer of the given shape, cheaply: at least two values
    per feature, each feature with its own spread and mean as :func:`strategies.
    feature_values` draws them, the values from a seed (for a sequence of steps).
    ``shapes``: the input shapes to draw from (a menu's, :meth:`Menu.shapes`, the first
    where shrinking ends); else any."""
    if shapes is None:
        shape = [draw(_BATCH), *(draw(_SPATIAL) for _ in range(rank - 2))]
        shape.insert(feature_axis, num_features)
    else:
        shape = list(draw(sampled(shapes)))
    exponents = spread_exponents(dtype)
    spread = np.array([10.0 ** draw(exponents) for _ in range(num_features)])
    centre = values_of(draw, WELL_CONDITIONED_RATIOS, num_features) * spread
    z = np.random.default_rng(draw(_SEED)).uniform(-1.0, 1.0, size=shape)
    bshape = [1] * rank
    bshape[feature_axis] = num_features
    return round_to(centre.reshape(bshape) + spread.reshape(bshape) * z, dtype)


@dataclass(frozen=True)
class RenormCase(Case[RenormStatistics]):
    """A batch-renormalization case: ``config.renorm`` is the canonical
    :class:`RenormConfig` (schedule, rates, dialect); ``state`` the moving statistics the
    layer starts from (both sets and the step counter); ``rate`` the canonical ``alpha`` of
    the (inference) moving statistics.
    """

    state: RenormStatistics

    @property
    def renorm(self) -> RenormConfig:
        renorm = self.config.renorm
        if renorm is None:  # pragma: no cover - a RenormCase always has one
            raise ValueError("a renorm case without a renorm config")
        return renorm

    @property
    def bounds(self) -> RenormBounds:
        """The clipping bounds of a training step from :attr:`state` (renorm.schedule.step)."""
        return self.renorm.schedule.bounds(self.state.steps)

    def state_summary(self) -> dict[str, Any]:
        """The renorm settings and the moving statistics, for :meth:`Case.summary`."""
        cfg = self.renorm
        bounds = self.bounds
        return {
            "average": cfg.average,
            "statistics": cfg.statistics,
            "sigma_floor": cfg.sigma_floor,
            "correction_rate": cfg.correction_rate,
            "schedule": repr(cfg.schedule),
            "bounds": {"r_min": bounds.r_min, "r_max": bounds.r_max, "d_max": bounds.d_max},
            "moving_mean": listed(self.state.mean),
            "moving_spread": listed(self.state.spread),
            "correction_mean": listed(self.state.correction_mean),
            "correction_spread": listed(self.state.correction_spread),
            "steps": self.state.steps,
        }


def batch_moments(x: Array, feature_axis: int, eps: float) -> tuple[Array, Array]:
    """``(mu_B, sigma_B)`` of ``x`` (zeros and ones for an empty batch)."""
    features = x.shape[feature_axis]
    if x.size == 0:
        return np.zeros(features), np.ones(features)
    stats = batch_statistics(x, feature_axis)
    return stats.mean, np.sqrt(stats.var + eps)


#: The sizes of a renorm case unless a clause asks for others (:data:`MAX_BATCH`,
#: :data:`MAX_SPATIAL`; :data:`strategies.LONG_SIZES` for long reductions).
RENORM_SIZES = Sizes(max_batch=MAX_BATCH, max_spatial=MAX_SPATIAL)


@dataclass(frozen=True)
class Moving:
    """How a renorm case's moving statistics are drawn (renorm.moving.*, renorm.train.*).

    ``regime``: where they lie against the batch, one :data:`Regime` or those to draw from
    per feature and per set (``None``: all, see :func:`moving_set`). ``rates``: the
    canonical rates a set's rate is drawn from (``None``: :func:`strategies.canonical_rates`,
    under a menu the menu's). ``menu_rate``: under a menu, the (inference) set's rate as a
    function of the entry's, in place of a draw from ``rates`` (one program per entry). ``correction_rate``: the correction set's, fixed (``statistics
    = separate`` only). ``same_sets``: under ``statistics = separate``, the correction set
    equal to the inference set and its rate the same (which set is read, or moved with
    which rate, cannot show; renorm.moving.separate is checked on its own).
    """

    regime: Regime | tuple[Regime, ...] | None = None
    rates: st.SearchStrategy[float] | None = None
    menu_rate: Callable[[float], float] | None = None
    correction_rate: float | None = None
    same_sets: bool = False

    def __post_init__(self) -> None:
        known = get_args(Regime)
        chosen = (self.regime,) if isinstance(self.regime, str) else self.regime or known
        require_argument(
            bool(chosen) and set(chosen) <= set(known), f"regime={self.regime!r} is unknown"
        )
        require_argument(
            self.correction_rate is None or 0.0 <= self.correction_rate <= 1.0,
            f"correction_rate={self.correction_rate!r} must be an update rate in [0, 1]",
        )


def renorm_cases(
    capabilities: Capabilities,
    dialect: Dialect,
    allowed_dtypes: Sequence[DTypeName],
    wanted: Wanted | None = None,
    *,
    conditioning: Conditioning = "well",
    layout: Layout | None = None,
    schedule: st.SearchStrategy[tuple[Schedule, int]] | None = None,
    moving: Moving | None = None,
    menu: Menu | None = None,
) -> st.SearchStrategy[RenormCase]:
    """A whole renorm case under the profile's renorm dialect, checked when built.

    The input, parameters, cotangent, dtype and eps are drawn from the building blocks of
    :func:`strategies.cases` as it draws them, within ``wanted`` (:class:`strategies.
    Wanted`; its ``rate`` is the inference set's, drawn or fixed, never cumulative; its
    default sizes :data:`RENORM_SIZES` and positions every supported one; arrays above
    :data:`ELEMENTWISE_LIMIT` values, and the cotangent always, come from a seed). Then:

    * ``schedule``: the schedule and step counter (default :func:`schedules` of the
      dialect, under ``menu`` the menu's bounds and switch steps);
    * ``moving``: how the moving statistics and their rates are drawn (:class:`Moving`);
    * ``menu``: the setting (rank, axis, features, shape, rate, eps, affine) from a run's
      :class:`~normspec.conformance.menu.Menu`, as :func:`strategies.cases` draws it, and
      the correction rate among the menu's rates (unless ``moving.rates`` asks for
      others): a few compiled programs per run.
    """
    check_case_options(allowed_dtypes, conditioning, layout)
    wanted = wanted or Wanted()
    require_argument(wanted.rate != "cumulative", "a renorm layer has no cumulative-average mode")
    require_argument(wanted.track is True, "a renorm layer always keeps its moving statistics")
    renorm_dialect(dialect)
    return _renorm_cases(
        capabilities,
        dialect,
        allowed_dtypes,
        wanted.within(capabilities, RENORM_SIZES, capabilities.feature_axes),
        conditioning=conditioning,
        layout=layout,
        schedule=schedules(dialect, menu=menu) if schedule is None else schedule,
        moving=moving or Moving(),
        menu=menu,
    )


@st.composite
def _renorm_cases(
    draw: st.DrawFn,
    capabilities: Capabilities,
    dialect: Dialect,
    allowed_dtypes: Sequence[DTypeName],
    wanted: Constraints,
    *,
    conditioning: Conditioning,
    layout: Layout | None,
    schedule: st.SearchStrategy[tuple[Schedule, int]],
    moving: Moving,
    menu: Menu | None,
) -> RenormCase:
    renorm = renorm_dialect(dialect)
    rates = moving.rates
    rate_strategy = rates if rates is not None else canonical_rates(dialect)
    rate = wanted.rate
    dtypes = sampled(allowed_dtypes)
    if menu is None:
        if rate is None:
            rate = draw(rate_strategy, label="rate")
        dtype = draw(dtypes)
        ranks = sorted(capabilities.ranks)
        rank = draw(sampled(ranks))
        positions = list(wanted.positions)
        feature_axis = feature_axis_for(rank, draw(sampled(positions)))
        low, high = wanted.min_features, wanted.max_features
        features = low if low == high else draw(st.integers(low, high))
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
        x = feature_values.inline(draw, shape, feature_axis, dtype, conditioning, ELEMENTWISE_LIMIT)
        is_affine = draw(_BOOLEANS) if wanted.affine is None else wanted.affine
        eps = draw(eps_values(dialect))
    else:
        dtype = draw(dtypes)
        setting = draw(menu.settings(wanted))
        rank, feature_axis, features = setting.rank, setting.feature_axis, setting.features
        shape = setting.shape
        if rate is None and moving.menu_rate is not None and setting.rate is not None:
            rate = moving.menu_rate(setting.rate)
        elif rate is None:
            rate = draw(rates, label="rate") if rates is not None else setting.rate
        if rates is None:  # the correction set's rate the entry's own (one program each)
            offered = sorted({s.rate for s in menu.choices(wanted) if s.rate is not None})
            rate_strategy = st.just(partner_rate(setting.rate, offered))
        x = feature_values.inline(draw, shape, feature_axis, dtype, conditioning, ELEMENTWISE_LIMIT)
        is_affine, eps = setting.affine, setting.eps
    assert rate is not None  # a renorm layer always keeps moving statistics
    params = None
    if is_affine:
        gamma = values_of(draw, PARAMETER_VALUES, features)
        beta = values_of(draw, PARAMETER_VALUES, features)
        params = (round_to_normal(gamma, dtype), round_to_normal(beta, dtype))
    dy = round_to(cotangents.inline(draw, shape), dtype)
    chosen: Layout = layout or "contiguous"
    x = arrange(x, chosen, feature_axis)
    drawn_schedule, step = draw(schedule)
    separate = renorm.statistics == "separate"
    correction_rate = moving.correction_rate
    if separate and moving.same_sets:
        correction_rate = rate
    elif separate and correction_rate is None:
        correction_rate = draw(rate_strategy, label="correction rate")
    batch_mean, batch_std = batch_moments(x, feature_axis, eps)

    def one_set() -> tuple[Array, Array]:
        return moving_set.inline(
            draw,
            batch_mean,
            batch_std,
            dtype,
            eps,
            average=renorm.average,
            sigma_floor=renorm.sigma_floor,
            regime=moving.regime,
            bounds=drawn_schedule.bounds(step),
        )

    mean, spread = one_set()
    correction: tuple[Array, Array] | tuple[None, None] = (None, None)
    if separate:
        correction = (mean, spread) if moving.same_sets else one_set()
    state = RenormStatistics(mean, spread, step, *correction)
    renorm_config = RenormConfig(
        num_features=features,
        schedule=drawn_schedule,
        feature_axis=feature_axis,
        eps=eps,
        rate=rate,
        average=renorm.average,
        statistics=renorm.statistics,
        correction_rate=correction_rate if separate else None,
        sigma_floor=renorm.sigma_floor,
        affine=is_affine,
    )
    config = LayerConfig(
        num_features=features,
        rank=rank,
        feature_axis=feature_axis,
        dtype=dtype,
        eps=eps,
        momentum=dialect.momentum_from_rate(rate),
        affine=is_affine,
        track_running_stats=True,
        renorm=renorm_config,
    )
    return RenormCase(config, rate, params, state, x, dy, chosen)


__all__ = [
    "ONE_BOUND",
    "PAPER_POINTS",
    "RENORM_SIZES",
    "SCHEDULE_KINDS",
    "Counter",
    "Moving",
    "Regime",
    "RenormCase",
    "ScheduleKind",
    "batch_moments",
    "batches",
    "clipping_bounds",
    "clipping_thresholds",
    "independent_bounds",
    "menu_bounds",
    "moving_set",
    "offered_schedules",
    "renorm_cases",
    "renorm_dialect",
    "schedules",
    "symmetric_bounds",
]
