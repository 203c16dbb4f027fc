"""A run's menu of GroupNorm and InstanceNorm settings, for implementations that compile per
configuration (groupnorm.md; README: "Implementations that compile per shape").

The grouped counterpart of :mod:`menu_family`, chosen from by the same
:meth:`menu_family.FamilyMenu.choices`. An entry fixes what a program is compiled for: the
batch, the groups and their channels, the spatial sizes, eps, and whether the layer has
per-channel parameters; values, parameters, running statistics and layouts stay free.

The first entry is the simplest (one sample, one group, the fewest spatial axes of size 1:
one value per group for ``gn.degenerate.constant`` where rank 2 is accepted; InstanceNorm
two values; the profile's default eps); GroupNorm's next is one channel of two values on a
spatial axis (its channels grown, a layer that does not check ``C`` broadcasts its weight:
``gn.params.shape``); the next has two groups at least (GroupNorm: of two channels each,
where strided groups show); ``size - 2`` others are drawn as free cases are; then the
variants without parameters (of the first, the two-group one and the richest) and
:data:`menu_family.LONG_ENTRIES` entries with one long spatial axis (of the first and the
two-group one: ``gn.accuracy.forward``). Clauses whose wants no entry meets adapt the first
:data:`menu.ADAPTED_ENTRIES` (eps replaced, parameters set, samples or values added).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from normspec.conformance.menu_family import (
    ENTRY_EPS,
    LONG_ENTRIES,
    LONG_SIZES,
    FamilyMenu,
    FamilyWants,
)


@dataclass(frozen=True)
class GroupEntry:
    """One GroupNorm or InstanceNorm configuration: ``(batch, groups * width, *spatial)``."""

    batch: int
    groups: int
    width: int
    spatial: tuple[int, ...]
    eps: float
    affine: bool = True

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.batch, self.groups * self.width, *self.spatial)

    @property
    def slices(self) -> int:
        return self.batch * self.groups

    @property
    def group_values(self) -> int:
        return self.width * int(np.prod(self.spatial, dtype=np.int64))

    def meets(self, wants: FamilyWants) -> bool:
        return (
            wants.affine in (None, self.affine)
            and self.slices >= wants.min_slices
            and self.group_values >= wants.min_group_values
            and (wants.eps is None or self.eps == wants.eps)
        )

    def adapted(self, wants: FamilyWants) -> GroupEntry:
        """The entry changed as little as possible to meet the wants."""
        batch, width, spatial = self.batch, self.width, self.spatial
        if self.slices < wants.min_slices:
            batch = -(-wants.min_slices // self.groups)
        if self.group_values < wants.min_group_values:
            if spatial:
                spatial = (*spatial[:-1], spatial[-1] * wants.min_group_values)
            else:
                width *= wants.min_group_values
        return replace(
            self,
            batch=batch,
            width=width,
            spatial=spatial,
            eps=self.eps if wants.eps is None else wants.eps,
            affine=self.affine if wants.affine is None else wants.affine,
        )


@lru_cache(maxsize=64)
def group_menu(
    seed: int,
    size: int,
    default_eps: float,
    *,
    instance: bool,
    spatial_ranks: tuple[int, ...],
    without_affine: bool,
) -> FamilyMenu[GroupEntry]:
    """The menu of ``size`` entries (at least one) and the variants, from ``seed`` alone;
    ``spatial_ranks``: the numbers of spatial axes the implementation accepts (sorted)."""
    rng = np.random.default_rng([seed, 0x474E])  # apart from the other menus' streams
    eps = [float(e) for e in rng.permutation(ENTRY_EPS)]
    least = 2 if instance else 1  # values of a group: InstanceNorm's two at least

    def entry(batch: int, groups: int, width: int, rank: int, e: float) -> GroupEntry:
        spatial = tuple(int(s) for s in rng.integers(1, 5, rank))
        made = GroupEntry(batch, groups, width, spatial, e)
        return made if made.group_values >= 2 else made.adapted(FamilyWants(min_group_values=2))

    first = GroupEntry(1, 1, 1, (1,) * spatial_ranks[0], default_eps)
    # one channel of two values, with a spatial axis where accepted (a channel added to
    # it: broadcast by a layer that does not check C, gn.params.shape)
    axis = (1,) if 1 in spatial_ranks else first.spatial
    two = replace(first, spatial=axis).adapted(FamilyWants(min_group_values=2))
    entries = list(dict.fromkeys([first.adapted(FamilyWants(min_group_values=least)), two]))
    second = entries[-1]
    for k in range(1, max(size, 1)):
        groups = int(rng.integers(2 if k == 1 else 1, 5))
        width = 1 if instance or rng.uniform() < 0.5 else int(rng.integers(1, 4))
        width = 2 if k == 1 and not instance else width  # groups of consecutive channels
        batch = 1 if rng.uniform() < 0.5 else int(rng.integers(1, 4))
        rank = int(spatial_ranks[int(rng.integers(len(spatial_ranks)))])
        entries.append(entry(batch, groups, width, rank, eps[(k - 1) % len(eps)]))
        if k == 1:
            second = entries[-1]
    richest = max(entries, key=lambda e: int(np.prod(e.shape, dtype=np.int64)))
    variants: list[GroupEntry] = []
    if without_affine:
        plain = dict.fromkeys([entries[0], second, richest])
        variants = [replace(e, affine=False) for e in plain]
    long_entries = []
    for k in range(LONG_ENTRIES):  # the longest first, then any long size
        base = (entries[0], second)[k % 2]
        long = LONG_SIZES[-1] if k == 0 else LONG_SIZES[int(rng.integers(len(LONG_SIZES)))]
        spatial = list(base.spatial) or [1] * max(spatial_ranks)
        if spatial:
            spatial[int(rng.integers(len(spatial)))] = long
        long_entries.append(replace(base, spatial=tuple(spatial)))
    return FamilyMenu(tuple(entries), tuple(variants), tuple(long_entries))


__all__ = ["GroupEntry", "group_menu"]
