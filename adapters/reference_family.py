"""The reference's LayerNorm and RMSNorm (:mod:`normspec.reference.family`) as a protocol
layer: ``normspec check reference`` checks them too (layernorm.md)."""

from __future__ import annotations

import numpy as np

from normspec.adapters.protocol import Array, FamilyConfig, LayerConfig, State, UnsupportedConfig
from normspec.reference import Gradients, family


class ReferenceFamilyLayer:
    """A float64 LayerNorm or RMSNorm layer (``LayerConfig.family``): no mode, no state."""

    def __init__(self, config: LayerConfig) -> None:
        if config.family is None:
            raise UnsupportedConfig("not a LayerNorm or RMSNorm configuration")
        self.config = config
        self.family: FamilyConfig = config.family
        self.weight: Array | None = None
        self.bias: Array | None = None

    def set_parameters(self, gamma: Array, beta: Array) -> None:
        self.weight = np.array(gamma, dtype=np.float64)
        self.bias = np.array(beta, dtype=np.float64) if self.family.bias else None

    def set_state(self, state: State) -> None:
        raise UnsupportedConfig("a LayerNorm or RMSNorm layer keeps no statistics")

    def state(self) -> State | None:
        return None

    def infer(self, x: Array) -> Array:
        shape, eps = self.family.normalized_shape, self.config.eps
        if self.family.kind == "layernorm":
            return family.layer_norm(x, shape, self.weight, self.bias, eps=eps)
        offset = self.family.scale_offset
        return family.rms_norm(x, shape, self.weight, self.bias, eps=eps, scale_offset=offset)

    train_step = infer

    def vjp(self, x: Array, dy: Array, *, training: bool) -> Gradients:
        shape, eps = self.family.normalized_shape, self.config.eps
        if self.family.kind == "layernorm":
            return family.layer_norm_backward(dy, x, shape, self.weight, eps=eps)
        offset = self.family.scale_offset
        return family.rms_norm_backward(dy, x, shape, self.weight, eps=eps, scale_offset=offset)
