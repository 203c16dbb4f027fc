"""``torch.nn.functional.batch_norm`` with explicit running-statistic tensors.

The built-in target ``torch.functional``. The layer owns ``running_mean``/``running_var``
(or none, untracked) and ``weight``/``bias`` (or none, affine=False) and calls
``F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)`` as a
user's module would: an untracked layer normalizes with batch statistics in inference too
(``training=True`` with no running tensors, bn.infer.untracked). ``F.batch_norm`` takes a
float momentum only and keeps no step counter: no cumulative average (bn.running.cumulative
and bn.running.steps are not applicable).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from normspec.adapters._common import ParameterPolicy
from normspec.adapters.protocol import Capabilities, LayerConfig
from normspec.adapters.torch._torch import BatchNormTensors, TorchImplementation, TorchLayer


class FunctionalLayer(TorchLayer):
    """The tensors of one layer, and the call of ``F.batch_norm`` on them."""

    def __init__(self, config: LayerConfig, device: torch.device, parameters: torch.dtype):
        super().__init__(config, device, parameters)
        n, kind = config.num_features, parameters
        affine, tracked = config.affine, config.track_running_stats
        self.weight = (
            torch.ones(n, dtype=kind, device=device, requires_grad=True) if affine else None
        )
        self.bias = (
            torch.zeros(n, dtype=kind, device=device, requires_grad=True) if affine else None
        )
        self.running_mean = torch.zeros(n, dtype=kind, device=device) if tracked else None
        self.running_var = torch.ones(n, dtype=kind, device=device) if tracked else None

    def tensors(self) -> BatchNormTensors:
        return BatchNormTensors(self.weight, self.bias, self.running_mean, self.running_var, None)

    def forward(self, x: torch.Tensor, *, training: bool) -> object:
        momentum = self.config.momentum
        assert momentum is not None  # FunctionalBatchNorm.build rejects None
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            training or self.running_mean is None,
            momentum,
            self.config.eps,
        )


class FunctionalBatchNorm(TorchImplementation):
    """``normspec check torch.functional --profile torch``: ``F.batch_norm`` under test.

    ``device`` defaults to ``$NORMSPEC_TORCH_DEVICE`` or the CPU; ``parameters`` as for
    :class:`normspec.adapters.torch.module.TorchModuleImplementation`.
    """

    def __init__(
        self,
        profile: str = "torch",
        *,
        device: str | torch.device | None = None,
        parameters: ParameterPolicy | None = None,
    ) -> None:
        super().__init__(profile, device=device, parameters=parameters)
        self.name = self.describe("torch.nn.functional.batch_norm")

    def base_capabilities(self) -> Capabilities:
        return Capabilities(
            ranks=frozenset({2, 3, 4, 5}),
            feature_axes=("first",),
            cumulative_average=False,
            untracked=True,
            without_affine=True,
            step_counter=False,
            strided_input=True,
            notes={
                "cumulative_average": "F.batch_norm takes a float momentum; momentum=None is "
                "the modules' cumulative average, computed from their num_batches_tracked",
                "step_counter": "F.batch_norm keeps no step counter",
                "feature_axes": "F.batch_norm takes the features at axis 1",
                "renorm": "torch has no batch renormalization",
            },
        )

    def make_layer(self, config: LayerConfig) -> FunctionalLayer:
        return FunctionalLayer(config, self.device, self.parameter_dtype(config.dtype))
