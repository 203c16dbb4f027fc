"""A run's menu of layer settings, for implementations that compile per shape.

An implementation that compiles one program per layer configuration and input shape (JAX,
and any implementation that declares ``Capabilities.compiles_per_shape``) spends a freely
drawn check compiling: nearly every example brings a new momentum, eps or shape, and a
program compiled for one example serves no other. Under a :class:`Menu`, the *setting* of
every case (rank, feature axis, features, input shape, update rate, eps, affine, tracking)
comes from a few entries fixed for the run by its seed and dtype and shared by all clauses,
so that one compilation serves many examples; the values, parameters, statistic states and
cotangents stay free (README: "Implementations that compile per shape").

The first entry is the simplest setting, where shrinking ends; the others spread over the
implementation's ranks, batch sizes 1 and 2, a spatial axis of size 1 among others, common
and arbitrary rates and the dialect's eps values. Besides them come the variants the implementation supports, one entry each: the
other feature-axis position, a layer without affine parameters, one without running
statistics (drawn only by the clauses that allow them). A clause's constraints
(:class:`Constraints`) select the entries that meet them; when none does, the first entries
are adapted to them. Shapes are fitted to a clause's limits (``min_count``, ``max_batch``,
``max_spatial``), which changes the shape but not the program. Another seed draws another
menu: each run's cost is bounded, and coverage grows across runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from hypothesis import strategies as st

from normspec.adapters.protocol import Capabilities, FeatureAxisPosition
from normspec.reference.dialects import Dialect

#: The update rates alpha a check tries first (then any rate in [0, 1]); the first lies in
#: every dialect's momentum domain.
COMMON_RATES: tuple[float, ...] = (0.1, 0.0, 1.0, 0.5, 0.01, 0.9)
#: Entries of a menu per dtype when an implementation compiles per shape (besides the
#: variants: the other feature-axis position, no affine parameters, no running statistics).
DEFAULT_MENU_SIZE = 4
#: Entries adapted to a clause's constraints when no entry meets them; also the most
#: entries whose shape a clause's limits change (each a new compilation).
ADAPTED_ENTRIES = 2
#: The most spatial axes of an input (rank 5).
MAX_SPATIAL_AXES = 3
#: The largest batch and spatial sizes of a case, and of one with long reductions.
MAX_BATCH, MAX_SPATIAL = 8, 5
LONG_MAX_BATCH, LONG_MAX_SPATIAL = 64, 12
#: Batch and spatial sizes of the entries for long reductions (accuracy clauses).
LONG_BATCHES, LONG_SPATIAL = (16, LONG_MAX_BATCH), (4, LONG_MAX_SPATIAL)
#: Entries for long reductions, besides the others.
LONG_ENTRIES = 2
#: (replicas, per-replica batch) of the replicated entries (sync.*).
REPLICA_LAYOUTS: tuple[tuple[int, int], ...] = ((2, 1), (4, 2))
#: Renorm clipping bounds ``(r_max, d_max)`` of a menu (part of a compiled program): the
#: first fixed, the others drawn from the seed, each at least ``r_max = 1.6, d_max = 1`` (the
#: ``near`` regime of renorm stays unclipped) and every bound reachable by the regimes drawn
#: against it.
RENORM_BOUNDS: tuple[tuple[float, float], ...] = ((3.0, 5.0),)
RENORM_BOUNDS_DRAWN = 1
#: Steps of a menu's renorm switches (warm-up): the first fixed, the others from the seed.
SWITCH_STEPS: tuple[int, ...] = (100,)
SWITCH_STEPS_DRAWN = 1


def eps_choices(dialect: Dialect) -> list[float]:
    """Positive eps: the dialect's default first, then values that meet realistic variances."""
    return [dialect.default_eps, 1e-5, 1e-3, 2.0**-4, 1.0]


def partner_rate(rate: float | None, offered: Sequence[float]) -> float:
    """The rate paired with ``rate`` among ``offered`` (sorted, not empty): the next one
    after it, cyclically (``rate`` itself only where it is the one offered; the first where
    it is not offered). A second rate a case draws from a menu entry (renorm's correction
    set's) is then one per entry, one program, and differs from the entry's own."""
    if rate is None or rate not in offered:
        return offered[0]
    return offered[(list(offered).index(rate) + 1) % len(offered)]


def feature_axis_for(rank: int, position: str) -> int:
    """The feature axis at ``position`` (``first``: axis 1, ``last``: the last axis)."""
    return 1 if position == "first" else rank - 1


def fitted_shape(
    batch: int,
    spatial: Sequence[int],
    feature_axis: int,
    features: int,
    *,
    min_count: int,
    max_batch: int,
) -> tuple[int, ...]:
    """The input of ``batch`` samples of ``spatial`` sizes with ``features`` at
    ``feature_axis``, the batch limited to ``max_batch`` but raised until ``min_count``
    values per feature."""
    smallest = -(-min_count // int(np.prod(spatial, dtype=np.int64)))
    shape = [min(max(batch, smallest), max(smallest, max_batch)), *spatial]
    shape.insert(feature_axis, features)
    return tuple(shape)


@dataclass(frozen=True)
class Setting:
    """What a case's layer and input look like, before any value is drawn."""

    rank: int
    feature_axis: int
    features: int
    shape: tuple[int, ...]
    rate: float | None  # the canonical alpha (None: cumulative)
    eps: float
    affine: bool
    tracked: bool


@dataclass(frozen=True)
class Constraints:
    """What a clause asks of a setting (see :func:`strategies.cases`).

    ``affine``/``tracked``: the value required, or ``None`` for either. ``rate``: the rate
    required when ``fixed_rate`` (``None``: the cumulative average).
    """

    positions: tuple[FeatureAxisPosition, ...]
    min_features: int = 1
    max_features: int = 4
    min_count: int = 2
    max_batch: int = MAX_BATCH
    max_spatial: int = MAX_SPATIAL
    long_reductions: bool = False
    fixed_rate: bool = False
    rate: float | None = None
    affine: bool | None = True
    tracked: bool | None = True


@dataclass(frozen=True)
class Entry:
    """One menu entry: a setting before a clause's limits are applied."""

    rank: int
    position: FeatureAxisPosition
    features: int
    batch: int
    spatial: tuple[int, ...]  # MAX_SPATIAL_AXES sizes; a rank-r input uses the first r - 2
    rate: float | None
    eps: float
    affine: bool = True
    tracked: bool = True

    @property
    def values_per_sample(self) -> int:
        """Features times spatial sizes: the values of one sample of the entry's input."""
        return self.features * int(np.prod(self.spatial[: self.rank - 2], dtype=np.int64))

    def meets(self, wanted: Constraints) -> bool:
        """Whether the entry's program fits the constraints as it is."""
        return (
            self.position in wanted.positions
            and wanted.min_features <= self.features <= wanted.max_features
            and (not wanted.fixed_rate or self.rate == wanted.rate)
            and wanted.affine in (None, self.affine)
            and wanted.tracked in (None, self.tracked)
        )

    def adapted(self, wanted: Constraints) -> Entry:
        """The entry changed as little as possible to meet the constraints."""
        return replace(
            self,
            position=self.position if self.position in wanted.positions else wanted.positions[0],
            features=min(max(self.features, wanted.min_features), wanted.max_features),
            rate=wanted.rate if wanted.fixed_rate else self.rate,
            affine=self.affine if wanted.affine is None else wanted.affine,
            tracked=self.tracked if wanted.tracked is None else wanted.tracked,
        )

    def setting(self, wanted: Constraints) -> Setting:
        """The setting of this entry with its shape fitted to the constraints' limits."""
        spatial = [min(s, wanted.max_spatial) for s in self.spatial[: self.rank - 2]]
        axis = feature_axis_for(self.rank, self.position)
        shape = fitted_shape(
            self.batch,
            spatial,
            axis,
            self.features,
            min_count=wanted.min_count,
            max_batch=wanted.max_batch,
        )
        return Setting(
            rank=self.rank,
            feature_axis=axis,
            features=self.features,
            shape=shape,
            rate=self.rate,
            eps=self.eps,
            affine=self.affine,
            tracked=self.tracked,
        )


@dataclass(frozen=True)
class ReplicaLayout:
    """A replicated entry: a menu entry on ``replicas`` replicas of ``batch`` samples each
    (the block every device takes; padded with masked-out samples where batches differ)."""

    entry: Entry
    replicas: int
    batch: int


@dataclass(frozen=True)
class Menu:
    """The entries one run draws every case's setting from (per dtype)."""

    entries: tuple[Entry, ...]
    long_entries: tuple[Entry, ...]
    replica_layouts: tuple[ReplicaLayout, ...]
    #: Renorm's compiled parameters (``strategies_renorm``): bounds ``(r_max, d_max)``, the
    #: steps at which a switch schedule leaves batch norm.
    renorm_bounds: tuple[tuple[float, float], ...] = RENORM_BOUNDS
    switch_steps: tuple[int, ...] = SWITCH_STEPS
    #: the seed and size it was generated from (other chapters' menus derive from them:
    #: :mod:`menu_family`)
    seed: int = 0
    size: int = DEFAULT_MENU_SIZE

    @classmethod
    def generate(cls, capabilities: Capabilities, dialect: Dialect, seed: int, size: int) -> Menu:
        """``size`` entries (at least one) and the variants, derived from ``seed`` alone."""
        if size < 1:
            raise ValueError(f"a menu has at least one entry, not {size}")
        rng = np.random.default_rng(seed)
        ranks = sorted(capabilities.ranks)
        primary = capabilities.feature_axes[0]
        eps = eps_choices(dialect)
        rates = [rate for rate in COMMON_RATES[1:] if dialect.allows_rate(rate)]
        rng.shuffle(rates)
        entries = [Entry(ranks[0], primary, 1, 2, (1,) * MAX_SPATIAL_AXES, COMMON_RATES[0], eps[0])]
        # every rank in turn (the others than the first entry's first, shuffled), batch
        # sizes 1 and 2 first, arbitrary rates among the common ones
        order = [*rng.permutation(ranks[1:]), ranks[0]]
        for k in range(1, size):
            rank = int(order[(k - 1) % len(order)])
            spatial = [int(s) for s in rng.integers(1, MAX_SPATIAL + 1, MAX_SPATIAL_AXES)]
            if k % 3 == 0 and rank > 2:  # a size-1 spatial axis (ambiguous strides)
                spatial[int(rng.integers(rank - 2))] = 1
            entries.append(
                Entry(
                    rank=rank,
                    position=primary,
                    features=int(rng.integers(1, 5)),
                    batch=k if k <= 2 else int(rng.integers(1, MAX_BATCH + 1)),
                    spatial=tuple(spatial),
                    rate=float(rng.uniform()) if k % 3 == 0 else rates[(k - 1) % len(rates)],
                    eps=eps[int(rng.integers(len(eps)))],
                )
            )
        long_entries = tuple(
            replace(
                entries[k % len(entries)],
                batch=int(rng.integers(*LONG_BATCHES)),
                spatial=tuple(int(s) for s in rng.integers(*LONG_SPATIAL, MAX_SPATIAL_AXES)),
            )
            for k in range(LONG_ENTRIES)
        )
        replicated = tuple(
            ReplicaLayout(entries[k % len(entries)], replicas, batch)
            for k, (replicas, batch) in enumerate(REPLICA_LAYOUTS)
        )
        bounds = RENORM_BOUNDS + tuple(
            (round(float(rng.uniform(1.6, 5.0)), 2), round(float(rng.uniform(1.0, 5.0)), 2))
            for _ in range(RENORM_BOUNDS_DRAWN)
        )
        switches = SWITCH_STEPS + tuple(
            int(rng.integers(2, 10**5)) for _ in range(SWITCH_STEPS_DRAWN)
        )
        return cls(
            (*entries, *_variants(entries, capabilities)),
            long_entries,
            replicated,
            bounds,
            switches,
            seed,
            size,
        )

    def choices(self, wanted: Constraints) -> list[Setting]:
        """The settings a clause with these constraints draws from, the simplest first.

        Of the entries whose shape the clause's limits change (a single value, a small
        batch), only the first :data:`ADAPTED_ENTRIES`.
        """
        pool = self.long_entries if wanted.long_reductions else self.entries
        usual = replace(
            wanted,
            min_count=2,
            max_batch=LONG_MAX_BATCH if wanted.long_reductions else MAX_BATCH,
            max_spatial=LONG_MAX_SPATIAL if wanted.long_reductions else MAX_SPATIAL,
        )
        chosen: list[Setting] = []
        reshaped = 0
        for entry in _fitting(pool, wanted):
            setting = entry.setting(wanted)
            if setting.shape != entry.setting(usual).shape:
                if reshaped == ADAPTED_ENTRIES:
                    continue
                reshaped += 1
            chosen.append(setting)
        return list(dict.fromkeys(chosen))

    def settings(self, wanted: Constraints) -> st.SearchStrategy[Setting]:
        """:meth:`choices` as a strategy (shrinking towards the first)."""
        return st.sampled_from(self.choices(wanted))

    def replica_settings(self, wanted: Constraints) -> list[tuple[Setting, int, int]]:
        """(setting of one sample, replicas, per-replica batch) of the replicated entries."""
        chosen: list[tuple[Setting, int, int]] = []
        for layout in self.replica_layouts:
            entry = layout.entry if layout.entry.meets(wanted) else layout.entry.adapted(wanted)
            chosen.append((entry.setting(wanted), layout.replicas, layout.batch))
        return chosen

    def shapes(self, shape: tuple[int, ...], feature_axis: int) -> list[tuple[int, ...]]:
        """Input shapes for the layer that took ``shape`` (bn.running.sequence): that one,
        a smaller last batch, and those of the menu's entries of its rank."""
        rank, features = len(shape), shape[feature_axis]
        own = tuple(n for a, n in enumerate(shape) if a not in (0, feature_axis))
        sizes: list[tuple[int, Sequence[int]]] = [(shape[0] // 2, own)]
        sizes += [(e.batch, e.spatial[: rank - 2]) for e in self.entries if e.rank == rank]
        others = (
            fitted_shape(b, s, feature_axis, features, min_count=2, max_batch=b) for b, s in sizes
        )
        return list(dict.fromkeys([shape, *others]))


def _variants(entries: list[Entry], capabilities: Capabilities) -> list[Entry]:
    """The variants the implementation supports: the other feature-axis position (with at
    least two features: one cannot show which axis it lies on), no affine parameters, no
    running statistics; one each, made from the entries with the most values per sample
    first (the first entry last), whose settings show the most."""
    changes: list[Callable[[Entry], Entry]] = []
    if len(capabilities.feature_axes) > 1:
        other = capabilities.feature_axes[1]
        changes.append(
            lambda entry: replace(entry, position=other, features=max(2, entry.features))
        )
    if capabilities.without_affine:
        changes.append(lambda entry: replace(entry, affine=False))
    if capabilities.untracked:
        changes.append(lambda entry: replace(entry, tracked=False))
    richest = sorted(entries[1:], key=lambda e: -e.values_per_sample) + entries[:1]
    return [change(richest[k % len(richest)]) for k, change in enumerate(changes)]


def _fitting(pool: Sequence[Entry], wanted: Constraints) -> list[Entry]:
    """The entries that meet the constraints, else the first ones adapted to them."""
    meeting = [e for e in pool if e.meets(wanted)]
    return meeting or [e.adapted(wanted) for e in pool[:ADAPTED_ENTRIES]]
