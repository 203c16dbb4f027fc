"""Synchronized batch normalization written the way a library does it, and known-bad variants.

:class:`NumpySyncBatchNorm` simulates K replicas in one process, as a data-parallel library
arranges them: two all-reduces give the global statistics (counts and sums, then the sums of
deviations from that first mean and of their squares: a corrected two-pass algorithm across
replicas), and the backward all-reduces the sums of ``dy`` and ``dy * xhat``. It is independent of :mod:`normspec.reference.replicas`. Its single-device
layers (the ``bn.*`` clauses) are the reference's.

Each bug overrides one hook (``count``, ``exchange``, ``statistics_for``, ``bessel_count``,
``reduce``) the way a
distributed implementation plausibly gets it wrong and declares ``expected_clauses``, the
first being the clause it is attributed to. ``SYNC_BUGS`` lists them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from normspec.adapters.protocol import Array, Capabilities, LayerConfig, State, UnsupportedConfig
from normspec.adapters.reference import ReferenceImplementation
from normspec.reference import Gradients, RunningStatistics

#: Per feature: count, mean and centred sum of squares of one replica's values.
Local = tuple[Array, Array, Array]


@dataclass
class _Batch:
    """One replica's values as a ``(values, C)`` matrix, with the mask in the same shape."""

    values: Array
    counted: Array


def _matrix(array: Array, axis: int) -> Array:
    return np.moveaxis(array, axis, -1).reshape(-1, array.shape[axis])


def _unmatrix(matrix: Array, like: Array, axis: int) -> Array:
    moved = np.moveaxis(np.empty_like(like), axis, -1)
    return np.moveaxis(matrix.reshape(moved.shape), -1, axis)


class NumpySyncBatchNorm(ReferenceImplementation):
    """The correct implementation (torch dialect: momentum is alpha, unbiased with N)."""

    expected_clauses: ClassVar[tuple[str, ...]] = ()
    #: the parameter gradients it returns (dialects.md: replica_param_gradients)
    param_gradients: ClassVar[str] = "partial"

    def __init__(self) -> None:
        super().__init__("torch")
        self.name = f"gallery.{type(self).__name__}"

    def capabilities(self) -> Capabilities:
        return replace(
            super().capabilities(),
            dtypes=frozenset({"float64"}),
            replica_param_gradients="reduced" if self.param_gradients == "reduced" else "partial",
        )

    def build_replicated(self, config: LayerConfig, replicas: int) -> SyncLayer:  # type: ignore[override]
        if config.renorm is not None:
            raise UnsupportedConfig("batch normalization only")
        return SyncLayer(self, config, replicas)

    # ------------------------------------------------------------------ hooks
    def count(self, batch: _Batch) -> Array:
        """A replica's count per feature: its values that count."""
        return batch.counted.sum(axis=0).astype(np.float64)

    def exchange(self, batches: Sequence[_Batch]) -> tuple[Array, Array, Array]:
        """The global mean, biased variance and count, by two all-reduces: the counts and
        sums give a first mean ``m``; the sums of ``x - m`` and ``(x - m)^2`` around it give
        the corrected two-pass statistics (accurate on ill-conditioned features)."""
        total = np.sum([self.count(b) for b in batches], axis=0)
        sums = np.sum([np.where(b.counted, b.values, 0.0).sum(axis=0) for b in batches], axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            m = np.where(total > 0, sums / total, 0.0)
            c1 = np.sum([np.where(b.counted, b.values - m, 0.0).sum(axis=0) for b in batches], 0)
            c2 = np.sum(
                [np.where(b.counted, (b.values - m) ** 2, 0.0).sum(axis=0) for b in batches], 0
            )
            corr = np.where(total > 0, c1 / total, 0.0)
            var = np.where(total > 0, np.maximum(c2 - c1 * corr, 0.0) / total, 0.0)
        return m + corr, var, total

    def local(self, batch: _Batch) -> Local:
        """Count, mean and centred sum of squares of one replica on its own (0 / 0 = NaN for
        an empty replica: only the bugs use them)."""
        n = self.count(batch)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(batch.counted, batch.values, 0.0).sum(axis=0) / n
        m2 = np.where(batch.counted, (batch.values - mean) ** 2, 0.0).sum(axis=0)
        return n, mean, m2

    def statistics_for(self, replica: int, batches: Sequence[_Batch]) -> tuple[Array, Array, Array]:
        """The statistics replica ``replica`` normalizes with: the global ones."""
        return self.exchange(batches)

    def bessel_count(self, total: Array, local: Array) -> Array:
        """The count of Bessel's correction of the running variance: the global one."""
        return total

    #: whether a step in which no replica has a value leaves the state alone
    skips_empty_update: ClassVar[bool] = True

    def reduce(self, partials: Sequence[Array]) -> list[Array]:
        """An all-reduce (sum): every replica gets the total."""
        total = np.sum(partials, axis=0)
        return [total.copy() for _ in partials]


class SyncLayer:
    """One layer on K simulated replicas: each keeps its own parameters and state."""

    def __init__(self, owner: NumpySyncBatchNorm, config: LayerConfig, replicas: int) -> None:
        self.owner, self.config, self.replicas = owner, config, replicas
        features = config.num_features
        self.gamma, self.beta = np.ones(features), np.zeros(features)
        initial = RunningStatistics.initial(features) if config.track_running_stats else None
        self.own: list[RunningStatistics | None] = [initial] * replicas

    def set_parameters(self, gamma: Array, beta: Array) -> None:
        self.gamma, self.beta = np.array(gamma), np.array(beta)

    def set_state(self, state: State) -> None:
        assert isinstance(state, RunningStatistics)
        self.own = [state] * self.replicas

    def states(self) -> list[State | None]:
        return list(self.own)

    def _statistics(
        self, xs: Sequence[Array], masks: Sequence[Array] | None
    ) -> tuple[list[_Batch], list[tuple[Array, Array, Array]]]:
        """Each replica's values, what it contributes, and the statistics it normalizes with."""
        axis = self.config.feature_axis
        batches = []
        for k, x in enumerate(xs):
            mask = np.ones(x.shape, bool) if masks is None else np.broadcast_to(masks[k], x.shape)
            batches.append(_Batch(_matrix(x, axis), _matrix(mask, axis)))
        return batches, [self.owner.statistics_for(k, batches) for k in range(len(xs))]

    def _xhat(self, batch: _Batch, mean: Array, var: Array) -> Array:
        return (batch.values - mean) / np.sqrt(var + self.config.eps)

    def train_step(self, xs: Sequence[Array], masks: Sequence[Array] | None = None) -> list[Array]:
        batches, stats = self._statistics(xs, masks)
        axis = self.config.feature_axis
        ys = [
            _unmatrix(self.gamma * self._xhat(b, mean, var) + self.beta, x, axis)
            for b, x, (mean, var, _) in zip(batches, xs, stats, strict=True)
        ]
        if self.owner.skips_empty_update and not np.any(stats[0][2] > 0):
            return ys
        for k, state in enumerate(self.own):
            if state is None:
                continue
            mean, var, total = stats[k]
            alpha = (
                1.0 / (state.steps + 1) if self.config.momentum is None else self.config.momentum
            )
            count = self.owner.bessel_count(total, self.owner.count(batches[k]))
            with np.errstate(invalid="ignore", divide="ignore"):
                unbiased = var * count / (count - 1)
            self.own[k] = RunningStatistics(
                state.mean + alpha * (mean - state.mean),
                np.maximum(state.var + alpha * (unbiased - state.var), 0.0),
                state.steps + 1,
            )
        return ys

    def vjp(
        self, xs: Sequence[Array], dys: Sequence[Array], masks: Sequence[Array] | None = None
    ) -> list[Gradients]:
        batches, stats = self._statistics(xs, masks)
        axis = self.config.feature_axis
        mean, var, total = stats[0]
        inv = 1.0 / np.sqrt(var + self.config.eps)
        xhats = [self._xhat(b, mean, var) for b in batches]
        cots = [
            np.where(b.counted, _matrix(dy, axis), 0.0) for b, dy in zip(batches, dys, strict=True)
        ]
        s1 = [dy.sum(axis=0) for dy in cots]
        s2 = [(dy * xh).sum(axis=0) for dy, xh in zip(cots, xhats, strict=True)]
        g1, g2 = self.owner.reduce(s1), self.owner.reduce(s2)
        result = []
        for k, (b, dy, xh, x) in enumerate(zip(batches, cots, xhats, xs, strict=True)):
            with np.errstate(invalid="ignore", divide="ignore"):
                dx = self.gamma * inv * (dy - g1[k] / total - xh * g2[k] / total)
            dx = np.where(b.counted, dx, 0.0)
            reduced = self.owner.param_gradients == "reduced"
            result.append(
                Gradients(
                    _unmatrix(dx, x, axis), g2[k] if reduced else s2[k], g1[k] if reduced else s1[k]
                )
            )
        return result


# ------------------------------------------------------------------------- the bugs


class UnweightedMeanOfMeans(NumpySyncBatchNorm):
    """The global mean is the plain average of the replicas' means (right only for equal
    batch sizes), the variance the average of their variances plus the spread of the means."""

    expected_clauses = (
        "sync.train.output",
        "sync.train.statistics",
        "sync.running.mean",
        "sync.running.var",
    )

    def exchange(self, batches: Sequence[_Batch]) -> tuple[Array, Array, Array]:
        gathered = [self.local(b) for b in batches if np.all(self.count(b) > 0)]
        means = np.array([mu for _, mu, _ in gathered])
        local_vars = np.array([m2 / n for n, _, m2 in gathered])
        mean = means.mean(axis=0)
        var = local_vars.mean(axis=0) + ((means - mean) ** 2).mean(axis=0)
        return mean, var, np.sum([self.count(b) for b in batches], axis=0)


class LocalStatistics(NumpySyncBatchNorm):
    """No synchronization at all: every replica normalizes with its own statistics (plain
    BatchNorm under data parallelism, where SyncBatchNorm was forgotten)."""

    expected_clauses = (
        "sync.train.output",
        "sync.train.statistics",
        "sync.running.mean",
        "sync.running.var",
    )

    def statistics_for(self, replica: int, batches: Sequence[_Batch]) -> tuple[Array, Array, Array]:
        return self.exchange([batches[replica]])


class LocalCountBessel(NumpySyncBatchNorm):
    """The running variance's Bessel correction uses the replica's own count n_k / (n_k - 1),
    not N / (N - 1): each replica ends up with a different running variance."""

    # a replica with one value (0 / 0) or none (0 / -1) breaks every clause that reads the state
    expected_clauses = (
        "sync.running.var",
        "sync.train.statistics",
        "sync.train.mask",
        "sync.degenerate.empty_replica",
        "sync.accuracy.concatenated",
    )

    def bessel_count(self, total: Array, local: Array) -> Array:
        return local


class WithinReplicaVarianceOnly(NumpySyncBatchNorm):
    """``var_G = (1/N) sum_k n_k var_k``: the spread of the replicas' means is left out."""

    expected_clauses = ("sync.train.output", "sync.train.statistics", "sync.running.var")

    def exchange(self, batches: Sequence[_Batch]) -> tuple[Array, Array, Array]:
        mean, _, total = super().exchange(batches)
        within = np.sum([self.local(b)[2] for b in batches], axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return mean, within / total, total


class BackwardWithoutAllReduce(NumpySyncBatchNorm):
    """The forward is synchronized, the backward is not: each replica's dx uses only its
    own sums of dy and dy * xhat (divided by the global count)."""

    expected_clauses = (
        "sync.backward.dx",
        "sync.train.mask",
        "sync.degenerate.empty_replica",
        "sync.accuracy.concatenated",
    )

    def reduce(self, partials: Sequence[Array]) -> list[Array]:
        return [p.copy() for p in partials]


class AllReducedParamGradientsUndeclared(NumpySyncBatchNorm):
    """Every replica returns the all-reduced dgamma, dbeta but declares ``partial``."""

    expected_clauses = (
        "sync.backward.dparams",
        "sync.train.mask",
        "sync.degenerate.empty_replica",
        "sync.accuracy.concatenated",
    )

    def build_replicated(self, config: LayerConfig, replicas: int) -> SyncLayer:  # type: ignore[override]
        layer = super().build_replicated(config, replicas)
        original = layer.vjp

        def vjp(
            xs: Sequence[Array], dys: Sequence[Array], masks: Sequence[Array] | None = None
        ) -> list[Gradients]:
            grads = original(xs, dys, masks)
            dgamma = np.sum([g.dgamma for g in grads], axis=0)
            dbeta = np.sum([g.dbeta for g in grads], axis=0)
            return [Gradients(g.dx, dgamma, dbeta) for g in grads]

        layer.vjp = vjp  # type: ignore[method-assign]
        return layer


class MaskedValuesCounted(NumpySyncBatchNorm):
    """The mask keeps the masked-out values out of the sums, but a replica's count is its
    batch size: masked-out values count as zeros."""

    expected_clauses = ("sync.train.mask",)

    def count(self, batch: _Batch) -> Array:
        return np.full(batch.values.shape[1], float(batch.values.shape[0]))


class EmptyReplicaNaN(NumpySyncBatchNorm):
    """The first all-reduce exchanges count-weighted local means ``n_k * (s_k / n_k)``: an
    empty replica's ``0 / 0`` poisons the global mean."""

    # a replica whose values are all masked out is empty too
    expected_clauses = (
        "sync.degenerate.empty_replica",
        "sync.train.mask",
        "sync.accuracy.concatenated",
    )

    def exchange(self, batches: Sequence[_Batch]) -> tuple[Array, Array, Array]:
        weighted = np.sum([n * mu for n, mu, _ in map(self.local, batches)], axis=0)
        mean, var, total = super().exchange(batches)
        with np.errstate(invalid="ignore"):
            return mean + 0.0 * weighted, var, total


class AllEmptyUpdates(NumpySyncBatchNorm):
    """A step in which no replica has a value still updates the running statistics (with
    the zeros an empty combination gives) and counts a step."""

    expected_clauses = ("sync.degenerate.all_empty",)
    skips_empty_update = False


class ReducedDeclared(NumpySyncBatchNorm):
    """Correct under the ``reduced`` dialect: all-reduced parameter gradients, declared."""

    param_gradients = "reduced"


SYNC_BUGS: tuple[type[NumpySyncBatchNorm], ...] = (
    UnweightedMeanOfMeans,
    LocalStatistics,
    LocalCountBessel,
    WithinReplicaVarianceOnly,
    BackwardWithoutAllReduce,
    AllReducedParamGradientsUndeclared,
    MaskedValuesCounted,
    EmptyReplicaNaN,
    AllEmptyUpdates,
)
SYNC_CORRECT: tuple[type[NumpySyncBatchNorm], ...] = (NumpySyncBatchNorm, ReducedDeclared)
