"""The reference's normalization family (:mod:`normspec.reference.family`) as a protocol
layer: ``normspec check reference`` checks them too (layernorm.md, groupnorm.md)."""

from __future__ import annotations

import numpy as np

from normspec.adapters.protocol import Array, FamilyConfig, LayerConfig, State, UnsupportedConfig
from normspec.reference import Gradients, RunningStatistics, family
from normspec.reference.dialects import Dialect
from normspec.reference.family_second_order import FamilySlices, family_double_backward
from normspec.reference.second_order import SecondOrderGradients


class ReferenceFamilyLayer:
    """A float64 LayerNorm, RMSNorm, GroupNorm or InstanceNorm layer
    (``LayerConfig.family``): no mode and no state, but an InstanceNorm layer that tracks
    running statistics (``LayerConfig.track_running_stats``, in.running.update), under
    the ``dialect``'s update rate and variance estimator."""

    def __init__(self, config: LayerConfig, dialect: Dialect) -> None:
        if config.family is None:
            raise UnsupportedConfig("not a normalization-family configuration")
        self.config, self.dialect = config, dialect
        self.family: FamilyConfig = config.family
        self.weight: Array | None = None
        self.bias: Array | None = None
        self.tracks = config.track_running_stats and self.family.kind == "instancenorm"
        if config.track_running_stats and not self.tracks:
            raise UnsupportedConfig(f"a {self.family.kind} layer keeps no statistics")
        channels = config.num_features
        self.running = RunningStatistics(np.zeros(channels), np.ones(channels))

    def set_parameters(self, gamma: Array, beta: Array) -> None:
        self.weight = np.array(gamma, dtype=np.float64)
        self.bias = np.array(beta, dtype=np.float64) if self.family.bias else None

    def set_state(self, state: State) -> None:
        if not self.tracks or not isinstance(state, RunningStatistics):
            raise UnsupportedConfig(f"a {self.family.kind} layer keeps no running statistics")
        self.running = RunningStatistics(
            np.array(state.mean, dtype=np.float64), np.array(state.var, dtype=np.float64)
        )

    def state(self) -> State | None:
        return self.running if self.tracks else None

    def _forward(self, x: Array) -> Array:
        eps, kind = self.config.eps, self.family.kind
        if kind in ("groupnorm", "instancenorm"):
            groups = self.family.num_groups if kind == "groupnorm" else np.shape(x)[1]
            return family.group_norm(x, groups, self.weight, self.bias, eps=eps)
        shape = self.family.normalized_shape
        if kind == "layernorm":
            return family.layer_norm(x, shape, self.weight, self.bias, eps=eps)
        offset = self.family.scale_offset
        return family.rms_norm(x, shape, self.weight, self.bias, eps=eps, scale_offset=offset)

    def infer(self, x: Array) -> Array:
        if not self.tracks:
            return self._forward(x)
        mean, var = self.running.mean, self.running.var
        eps = self.config.eps
        return family.instance_norm_inference(x, mean, var, self.weight, self.bias, eps=eps)

    def train_step(self, x: Array) -> Array:
        y = self._forward(x)
        if self.tracks:
            rate = self.dialect.rate_from_momentum(self.config.momentum)
            assert rate is not None
            estimator = self.dialect.running_variance
            self.running = family.instance_running_update(self.running, x, rate, estimator)
        return y

    def vjp(self, x: Array, dy: Array, *, training: bool) -> Gradients:
        eps, kind = self.config.eps, self.family.kind
        if kind in ("groupnorm", "instancenorm"):
            groups = self.family.num_groups if kind == "groupnorm" else np.shape(x)[1]
            return family.group_norm_backward(dy, x, groups, self.weight, eps=eps)
        shape = self.family.normalized_shape
        if kind == "layernorm":
            return family.layer_norm_backward(dy, x, shape, self.weight, eps=eps)
        offset = self.family.scale_offset
        return family.rms_norm_backward(dy, x, shape, self.weight, eps=eps, scale_offset=offset)

    def second_order_vjp(
        self, x: Array, dy: Array, v: Array, v_gamma: Array, v_beta: Array
    ) -> SecondOrderGradients:
        """The closed form of ln/rms/gn/in.backward.second_order: the check compares it with
        finite differences of the reference's backward."""
        shape, kind = np.shape(x), self.family.kind
        if kind in ("groupnorm", "instancenorm"):
            groups = self.family.num_groups if kind == "groupnorm" else shape[1]
            slices = FamilySlices.group_norm(shape, groups)
        elif kind == "layernorm":
            slices = FamilySlices.layer_norm(shape, self.family.normalized_shape)
        else:
            offset = self.family.scale_offset
            slices = FamilySlices.rms_norm(shape, self.family.normalized_shape, offset=offset)
        v_weight = v_gamma if self.weight is not None else None
        v_bias = v_beta if self.bias is not None else None
        return family_double_backward(
            x, dy, v, v_weight, v_bias, self.weight, slices, eps=self.config.eps
        )
