"""``torch.nn.BatchNorm1d/2d/3d`` and every module class built like them, with no glue code.

A module class is recognised when its constructor takes ``num_features, eps, momentum,
affine, track_running_stats`` and an instance has the parameters ``weight``, ``bias`` and
the buffers ``running_mean``, ``running_var`` (``num_batches_tracked`` optional: the step
counter). Momentum is passed as given (the profile's convention; under the torch profile it
is alpha itself, and ``None`` is the cumulative average, bn.running.cumulative).

The input ranks a class takes are, in order of precedence: its ``normspec_ranks`` class
attribute; those of the torch class it derives from (1d: 2 and 3, 2d: 4, 3d: 5); the ranks
its ``_check_input_dim`` accepts; the ranks a forward pass accepts.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
from torch import nn

from normspec.adapters._common import ParameterPolicy
from normspec.adapters._torch import (
    BatchNormTensors,
    TorchImplementation,
    TorchLayer,
    parameter_dtype,
)
from normspec.adapters.protocol import Capabilities, LayerConfig, UnsupportedConfig

#: The class attribute a third-party module may set to declare its input ranks.
RANKS_ATTRIBUTE = "normspec_ranks"

CONSTRUCTOR_ARGUMENTS = ("num_features", "eps", "momentum", "affine", "track_running_stats")

_TORCH_RANKS: tuple[tuple[type[nn.Module], frozenset[int]], ...] = (
    (nn.BatchNorm1d, frozenset({2, 3})),
    (nn.BatchNorm2d, frozenset({4})),
    (nn.BatchNorm3d, frozenset({5})),
)

_ALL_RANKS = (2, 3, 4, 5)


def _construct(cls: type[nn.Module], **arguments: Any) -> nn.Module:
    return cls(
        **{"eps": 1e-5, "momentum": 0.1, "affine": True, "track_running_stats": True, **arguments}
    )


def _takes_batchnorm_arguments(cls: type) -> bool:
    try:
        signature = inspect.signature(cls)
        signature.bind(**{name: None for name in CONSTRUCTOR_ARGUMENTS})
    except (TypeError, ValueError):
        return False
    return True


def _has_batchnorm_tensors(module: nn.Module) -> bool:
    return (
        isinstance(getattr(module, "weight", None), nn.Parameter)
        and isinstance(getattr(module, "bias", None), nn.Parameter)
        and isinstance(getattr(module, "running_mean", None), torch.Tensor)
        and isinstance(getattr(module, "running_var", None), torch.Tensor)
    )


def _probe_input(num_features: int, rank: int) -> torch.Tensor:
    shape = (3, num_features) + (2,) * (rank - 2)
    return torch.linspace(-1.0, 1.0, int(np.prod(shape))).reshape(shape)


def module_ranks(cls: type[nn.Module], instance: nn.Module, num_features: int) -> frozenset[int]:
    """The input ranks a BatchNorm-like module class takes (see the module docstring)."""
    declared = getattr(cls, RANKS_ATTRIBUTE, None)
    if declared is not None:
        return frozenset(int(rank) for rank in declared)
    for base, ranks in _TORCH_RANKS:
        if issubclass(cls, base):
            return ranks
    check = getattr(instance, "_check_input_dim", None)
    accepted: set[int] = set()
    for rank in _ALL_RANKS:
        x = _probe_input(num_features, rank)
        try:
            if callable(check):
                check(x)
            else:
                with torch.no_grad():
                    y = instance.train()(x)
                if not isinstance(y, torch.Tensor) or y.shape != x.shape:
                    continue
        except Exception:  # a rejected rank, whatever the error
            continue
        accepted.add(rank)
    # A class that takes no rank at all is checked on every rank: its errors are reported.
    return frozenset(accepted) if accepted else frozenset(_ALL_RANKS)


class TorchModuleLayer(TorchLayer):
    """One module instance: ``module.train()`` / ``module.eval()`` and a call."""

    def __init__(
        self, module: nn.Module, config: LayerConfig, device: torch.device, parameters: torch.dtype
    ) -> None:
        super().__init__(config, device, parameters)
        self.module = module

    def tensors(self) -> BatchNormTensors:
        module = self.module
        return BatchNormTensors(
            weight=getattr(module, "weight", None),
            bias=getattr(module, "bias", None),
            running_mean=getattr(module, "running_mean", None),
            running_var=getattr(module, "running_var", None),
            num_batches_tracked=getattr(module, "num_batches_tracked", None),
        )

    def mutable_tensors(self) -> list[torch.Tensor]:
        """Every buffer of the module, whatever it is called."""
        return [buffer for buffer in self.module.buffers() if buffer is not None]

    def forward(self, x: torch.Tensor, *, training: bool) -> object:
        self.module.train(training)
        return self.module(x)


class TorchModuleImplementation(TorchImplementation):
    """A BatchNorm-like ``torch.nn.Module`` class under test.

    ``ranks`` overrides the detected input ranks; ``device`` defaults to
    ``$NORMSPEC_TORCH_DEVICE`` or the CPU; ``parameters`` says where a float16/bfloat16
    layer keeps its parameters and running statistics (``float32``, as under autocast,
    or ``input``, as after ``module.half()``).
    """

    def __init__(
        self,
        module_class: type[nn.Module],
        profile: str = "torch",
        *,
        device: str | torch.device | None = None,
        parameters: ParameterPolicy = "float32",
        ranks: frozenset[int] | None = None,
    ) -> None:
        super().__init__(profile, device=device, parameters=parameters)
        if not recognisable(module_class):
            raise TypeError(
                f"{module_class!r} is not a BatchNorm-like torch.nn.Module class: it needs "
                f"the constructor arguments {', '.join(CONSTRUCTOR_ARGUMENTS)} and the "
                "parameters weight, bias and buffers running_mean, running_var"
            )
        self.module_class = module_class
        probe = _construct(module_class, num_features=2)
        self.has_step_counter = isinstance(
            getattr(probe, "num_batches_tracked", None), torch.Tensor
        )
        self.ranks = ranks if ranks is not None else module_ranks(module_class, probe, 2)
        self.name = self.describe(f"{module_class.__module__}.{module_class.__qualname__}")

    def base_capabilities(self) -> Capabilities:
        notes = {
            "feature_axes": "torch modules take the features at axis 1; channels-last data "
            "is checked as a strided (torch.channels_last) layout",
            "renorm": "torch has no batch renormalization",
        }
        cumulative = self.has_step_counter and self.profile_has_cumulative_average()
        if not self.has_step_counter:
            notes["step_counter"] = "the module has no num_batches_tracked buffer"
            notes["cumulative_average"] = "without num_batches_tracked there is no momentum=None"
        elif not cumulative:
            notes["cumulative_average"] = f"profile {self.profile!r} defines no momentum=None"
        return Capabilities(
            ranks=self.ranks,
            feature_axes=("first",),
            cumulative_average=cumulative,
            untracked=True,
            without_affine=True,
            step_counter=self.has_step_counter,
            strided_input=True,
            notes=notes,
        )

    def make_layer(self, config: LayerConfig) -> TorchModuleLayer:
        try:
            module = _construct(
                self.module_class,
                num_features=config.num_features,
                eps=config.eps,
                momentum=config.momentum,
                affine=config.affine,
                track_running_stats=config.track_running_stats,
            )
        except (TypeError, ValueError) as problem:
            raise UnsupportedConfig(f"{self.module_class.__name__}: {problem}") from None
        dtype = parameter_dtype(config.dtype, self.parameters)
        module.to(device=self.device, dtype=dtype)
        return TorchModuleLayer(module, config, self.device, dtype)


def recognisable(obj: object) -> bool:
    """Whether ``obj`` is a BatchNorm-like ``torch.nn.Module`` class (not an instance)."""
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        return False
    if not _takes_batchnorm_arguments(obj):
        return False
    try:
        probe = _construct(obj, num_features=2)
    except Exception:  # a constructor that needs more than BatchNorm's arguments
        return False
    return _has_batchnorm_tensors(probe)


def recognise(obj: object, profile: str) -> TorchModuleImplementation | None:
    """The recogniser named in ``normspec.adapters.registry.RECOGNISERS``."""
    if not recognisable(obj):
        return None
    assert isinstance(obj, type) and issubclass(obj, nn.Module)
    return TorchModuleImplementation(obj, profile)
