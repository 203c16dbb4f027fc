"""Hypothesis strategies for synchronized batch normalization (spec: replicas.md).

A :class:`ReplicaCase` is a :class:`~normspec.conformance.strategies.Case` whose ``x`` and
``dy`` are the *concatenated batch* (the replicas' inputs joined along axis 0), with the
replicas' batch sizes and, for masked cases, which samples count. What the reference and the
accuracy bounds see is the concatenation of the counted samples (:meth:`ReplicaCase.counted`),
a single-device case; what the implementation sees is its slices (:meth:`ReplicaCase.parts`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st

from normspec.adapters.protocol import Array, Capabilities, DTypeName
from normspec.conformance.dtypes import round_to
from normspec.conformance.menu import Menu
from normspec.conformance.reuse import inline_composite, sampled
from normspec.conformance.strategies import (
    BatchNormCase,
    Case,
    Conditioning,
    Sizes,
    Wanted,
    affine_parameters,
    cotangents,
    dtypes,
    feature_values,
    free_settings,
    layer_config,
    trained_state,
)
from normspec.reference.dialects import Dialect

#: The most replicas a case has (sync.*: K = 1 to 4).
MAX_REPLICAS = 4
#: The largest batch size of one replica.
MAX_REPLICA_BATCH = 4


@dataclass(frozen=True)
class ReplicaCase(BatchNormCase):
    """A case on ``len(sizes)`` replicas; ``included`` (per sample of the concatenation, or
    ``None`` for no masks) says which samples count (sync.train.mask)."""

    sizes: tuple[int, ...] = (0,)
    included: Array | None = None

    @property
    def replicas(self) -> int:
        return len(self.sizes)

    def parts(self, array: Array) -> list[Array]:
        """``array`` (shaped like ``x``) cut into the replicas' slices, as fresh copies."""
        bounds = np.cumsum(self.sizes)[:-1]
        return [np.array(part) for part in np.split(array, bounds, axis=0)]

    def masks(self) -> list[Array] | None:
        """Per replica, a boolean mask of shape ``(b_k, 1, ..., 1)``, or ``None``."""
        if self.included is None:
            return None
        column = self.included.reshape((-1,) + (1,) * (self.x.ndim - 1)).astype(bool)
        return self.parts(column)

    def sample_mask(self) -> Array:
        """The counted samples of the concatenation, broadcastable to ``x``."""
        flags = np.ones(self.x.shape[0], bool) if self.included is None else self.included
        return flags.reshape((-1,) + (1,) * (self.x.ndim - 1)).astype(bool)

    def counted(self) -> BatchNormCase:
        """The single-device case of the counted samples (with zero cotangents elsewhere)."""
        keep = self.sample_mask().reshape(-1)
        return Case(
            self.config,
            self.rate,
            self.params,
            self.state,
            self.x[keep],
            self.dy[keep],
            "contiguous",
        )

    def summary(self) -> dict[str, Any]:
        found = super().summary()
        found["replica_batch_sizes"] = list(self.sizes)
        if self.included is not None:
            found["counted_samples"] = [m.reshape(-1).tolist() for m in self.parts(self.included)]
        return found


def replica_counts(
    min_replicas: int = 1, max_replicas: int = MAX_REPLICAS
) -> st.SearchStrategy[int]:
    """K, shrinking towards ``min_replicas``."""
    return st.integers(min_replicas, max_replicas)


@inline_composite
def replica_sizes(
    draw: st.DrawFn,
    replicas: int,
    *,
    empty: bool | None = False,
    min_total: int = 1,
    uneven: bool = True,
    max_batch: int = MAX_REPLICA_BATCH,
) -> tuple[int, ...]:
    """Uneven batch sizes: ``empty=False`` all at least 1, ``True`` at least one 0 (the
    others may be 0 too, but not all unless ``min_total`` is 0), ``None`` either.
    ``uneven=False``: one size, at least 1, for every replica (``empty`` is ignored).
    Sizes are at most ``max_batch`` but where ``min_total`` needs more."""
    if not uneven:
        low = max(1, -(-min_total // replicas))
        size = draw(st.integers(low, max(low, max_batch)))
        return (size,) * replicas
    low = 1 if empty is False else 0
    batch_sizes = st.integers(low, max_batch)
    sizes = [draw(batch_sizes) for _ in range(replicas)]
    zeroed = draw(st.integers(0, replicas - 1)) if empty else None
    if zeroed is not None:
        sizes[zeroed] = 0
    deficit = min_total - sum(sizes)
    if deficit > 0:
        sizes[1 if zeroed == 0 else 0] += deficit
    return tuple(sizes)


@st.composite
def replica_cases(
    draw: st.DrawFn,
    capabilities: Capabilities,
    dialect: Dialect,
    allowed_dtypes: Sequence[DTypeName],
    *,
    conditioning: Conditioning = "well",
    min_replicas: int = 1,
    empty: bool | None = False,
    masked: bool = False,
    rate: float | None = None,
    affine: bool | None = True,
    all_empty: bool = False,
    menu: Menu | None = None,
) -> ReplicaCase:
    """A whole case on K replicas (see :class:`ReplicaCase`).

    ``empty``: whether some replica has batch size 0 (``None``: drawn). ``masked``: some
    samples are masked out (their values far from the counted ones, so that counting them
    shows; in about half the cases every replica keeps a counted sample, in the others a
    replica may have all its samples masked out). ``all_empty``: every replica has batch
    size 0. At least two values per feature count otherwise (the unbiased estimate needs
    them). ``menu``: the setting, the replica count and the largest batch of a replica from
    the menu's replicated entries.
    """
    dtype = draw(dtypes(allowed_dtypes))
    wanted = Wanted(
        Sizes(max_batch=1, max_spatial=3), rate="drawn" if rate is None else rate, affine=affine
    ).within(capabilities)
    smallest = max(min_replicas, 2 if empty and not all_empty else 1)
    if menu is None:
        setting = draw(free_settings(capabilities, dialect, wanted))
        k, most = draw(replica_counts(smallest)), MAX_REPLICA_BATCH
    else:
        # the replicated entries whose replica count is enough (else the largest count)
        offered = menu.replica_settings(wanted)
        enough = [o for o in offered if o[1] >= smallest] or [max(offered, key=lambda o: o[1])]
        setting, k, most = draw(sampled(enough))
        k = max(k, smallest)
    # the single-device case's setting and parameters; its input, cotangent and state are
    # drawn below, for the concatenated batch
    config, held_rate = layer_config(setting, dialect, dtype, capabilities)
    features, axis = config.num_features, config.feature_axis
    params = draw(affine_parameters(features, dtype)) if setting.affine else None
    per_sample = math.prod(setting.shape[1:]) // features
    need = -(-2 // per_sample)  # samples for two values per feature
    if all_empty:
        sizes: tuple[int, ...] = (0,) * k
    else:
        # without uneven batches, only masked cases (padded by the adapter) differ in size
        uneven = capabilities.replica_uneven_batches or masked
        sizes = replica_sizes.inline(
            draw,
            k,
            empty=empty,
            min_total=need + (1 if masked else 0),
            uneven=uneven,
            max_batch=most,
        )
    total = sum(sizes)
    shape = (total, *setting.shape[1:])
    included = None
    if masked:
        # in about half the cases every replica keeps a counted sample: a replica whose
        # samples are all masked out counts as an empty one, and how the others are weighted
        # shows only where none is
        starts = np.cumsum((0, *sizes[:-1]))
        firsts = {int(start) for start, size in zip(starts, sizes, strict=True) if size}
        spare = total > len(firsts) and draw(st.booleans())
        candidates = [i for i in range(total) if not (spare and i in firsts)]
        order = draw(st.permutations(candidates))
        masked_out = draw(st.integers(1, min(len(candidates), total - need)))
        included = np.ones(total, bool)
        included[list(order[:masked_out])] = False
    x = feature_values.inline(draw, shape, axis, dtype, conditioning)
    if included is not None and (~included).any():
        # masked-out samples far from the counted ones: including them moves the statistics
        x[~included] = round_to(x[~included] * 4.0 + 8.0 * (1.0 + np.abs(x).max()), dtype)
    dy = round_to(cotangents.inline(draw, shape), dtype)
    if included is not None:
        dy[~included] = 0.0
    state = None
    if setting.tracked:  # near the counted samples' statistics
        state = trained_state(draw, x if included is None else x[included], axis, dtype)
    return ReplicaCase(
        config, held_rate, params, state, x, dy, "contiguous", sizes=sizes, included=included
    )
