"""GroupNorm and InstanceNorm on torch, with no glue code (spec: groupnorm.md).

Recognised, by :func:`recognise`:

* a ``torch.nn.Module`` class whose constructor takes ``num_groups``, ``num_channels``,
  ``eps`` and ``affine`` (``torch.nn.GroupNorm`` and clones): GroupNorm;
* a ``torch.nn.Module`` class named ``*Instance*`` whose constructor takes ``num_features``,
  ``eps``, ``momentum``, ``affine`` and ``track_running_stats`` (``torch.nn.InstanceNorm1d``,
  ``2d``, ``3d``): InstanceNorm, of the rank its ``_get_no_batch_dim`` says, with or without
  running statistics (``train()`` for a training step, ``eval()`` for inference);
* a function with ``F.group_norm``'s signature, ``(input, num_groups, weight, bias, eps)``,
  or ``F.instance_norm``'s, ``(input, running_mean, running_var, weight, bias,
  use_input_stats, momentum, eps)``: ``normspec check mykernels:group_norm``.

Parameters and running statistics are kept in the input's dtype (``module.half()``); the
momentum is torch's (the profile's ``update_rate``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from normspec.adapters.protocol import (
    ALL_DTYPES,
    Array,
    Capabilities,
    FamilyConfig,
    FamilyKind,
    LayerConfig,
    State,
    UnsupportedConfig,
)
from normspec.adapters.torch._torch import from_torch, to_torch
from normspec.adapters.torch._torch import torch_dtype as dtype_of
from normspec.adapters.torch.family import FamilyLayer, TorchTarget, _parameter_names, recogniser
from normspec.reference import RunningStatistics

GROUP_ARGUMENTS = ("num_groups", "num_channels", "eps", "affine")
INSTANCE_ARGUMENTS = ("num_features", "eps", "momentum", "affine", "track_running_stats")
#: ``(x, weight, bias, training)``: one call of the layer in a mode
ModeCall = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None, bool], object]


def kind_of(obj: object) -> tuple[FamilyKind, bool] | None:
    """``(kind, is_module)`` of a GroupNorm/InstanceNorm module class or function."""
    names = _parameter_names(obj)
    if names is None:
        return None
    if isinstance(obj, type) and issubclass(obj, nn.Module):
        if all(n in names for n in GROUP_ARGUMENTS):
            return "groupnorm", True
        instance = "instance" in obj.__name__.lower()
        if instance and all(n in names for n in INSTANCE_ARGUMENTS):
            return "instancenorm", True
        return None
    if isinstance(obj, type) or not callable(obj) or len(names) < 4:
        return None  # another library's class (flax.nnx.GroupNorm(num_features, num_groups))
    if names[1] == "num_groups":
        return "groupnorm", False
    if names[1:3] == ["running_mean", "running_var"] and "use_input_stats" in names:
        return "instancenorm", False
    return None


def _ranks(obj: object, kind: FamilyKind) -> frozenset[int]:
    """InstanceNorm{1,2,3}d take inputs of one rank (their unbatched form aside)."""
    spatial = getattr(obj, "_get_no_batch_dim", None)
    if kind == "instancenorm" and spatial is not None:
        try:
            return frozenset({int(spatial(None)) + 1})
        except Exception:  # a clone's method may need an instance
            pass
    return frozenset({3, 4, 5} if kind == "instancenorm" else {2, 3, 4, 5})


class GroupedLayer(FamilyLayer):
    """One GroupNorm or InstanceNorm layer: inference and training calls, and an
    InstanceNorm's running statistics where tracked (``running``: its two tensors)."""

    def __init__(
        self,
        call: ModeCall,
        config: LayerConfig,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        running: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> None:
        super().__init__(lambda x, w, b: call(x, w, b, False), config, weight, bias)
        self.mode_call, self.running = call, running

    def set_state(self, state: State) -> None:
        if self.running is None or not isinstance(state, RunningStatistics):
            raise UnsupportedConfig(f"this {self.family.kind} layer keeps no running statistics")
        with torch.no_grad():
            for tensor, values in zip(self.running, (state.mean, state.var), strict=True):
                tensor.copy_(torch.from_numpy(np.array(values, dtype=np.float64)))

    def state(self) -> State | None:
        if self.running is None:
            return None
        mean, var = (
            from_torch(t, shape=t.shape, dtype=t.dtype, what=name)
            for t, name in zip(self.running, ("running_mean", "running_var"), strict=True)
        )
        return RunningStatistics(mean, var)

    def train_step(self, x: Array) -> Array:
        with torch.no_grad():
            y = self.mode_call(to_torch(x, self.dtype, self.device), self.weight, self.bias, True)
        return from_torch(y, shape=x.shape, dtype=self.dtype, what="the output")


class TorchGrouped(TorchTarget):
    """A torch GroupNorm/InstanceNorm module class or function under test."""

    def capabilities(self) -> Capabilities:
        ranks = _ranks(self.target, self.kind)
        caps = Capabilities(
            dtypes=frozenset(ALL_DTYPES),
            ranks=ranks,
            batchnorm=False,
            groupnorm=self.kind == "groupnorm",
            instancenorm=self.kind == "instancenorm",
            instance_running_stats=self.kind == "instancenorm",
            training=False,
            untracked=True,
            without_affine=True,
            notes={"batchnorm": f"it is a {self.kind} layer", "renorm": f"a {self.kind} layer"},
        )
        family = FamilyConfig(
            self.kind, (), True, num_groups=2 if self.kind == "instancenorm" else 1
        )
        rank = min(ranks)
        probe = LayerConfig(
            2, rank, 1, "float64", 1e-5, None, track_running_stats=False, family=family
        )
        return self.with_double_backward(caps, probe)

    def build(self, config: LayerConfig) -> GroupedLayer:
        self.family_of(config)
        dtype = dtype_of(config.dtype)
        if self.module:
            return self._module_layer(config, dtype)
        return self._function_layer(config, dtype)

    def build_with_default_eps(self, config: LayerConfig) -> GroupedLayer:
        """The module built without an eps: the library's default (``normspec identify``
        measures it); modules only."""
        self.family_of(config)
        if not self.module:
            raise UnsupportedConfig("a function: its default eps is not measured")
        return self._module_layer(config, dtype_of(config.dtype), default_eps=True)

    def _module_layer(
        self, config: LayerConfig, dtype: torch.dtype, *, default_eps: bool = False
    ) -> GroupedLayer:
        assert config.family is not None
        given: dict[str, Any] = {**self.arguments, "affine": config.affine}
        if not default_eps:
            given["eps"] = config.eps
        if self.kind == "groupnorm":
            module = self.target(config.family.num_groups, config.num_features, **given)
        else:
            given.update(momentum=config.momentum, track_running_stats=config.track_running_stats)
            module = self.target(config.num_features, **given)
        module.to(device=self.device, dtype=dtype)

        def call(x: torch.Tensor, w: Any, b: Any, training: bool) -> object:
            module.train(training)
            return module(x)

        weight = getattr(module, "weight", None) if config.affine else None
        bias = getattr(module, "bias", None) if config.affine else None
        running = None
        if config.track_running_stats:
            running = (module.running_mean, module.running_var)
        return GroupedLayer(call, config, weight, bias, running)

    def _function_layer(self, config: LayerConfig, dtype: torch.dtype) -> GroupedLayer:
        assert config.family is not None
        eps, function, channels = config.eps, self.target, config.num_features

        def tensor(value: float) -> torch.Tensor:
            return torch.full((channels,), value, dtype=dtype, device=self.device)

        weight = tensor(1.0) if config.affine else None
        bias = tensor(0.0) if config.affine else None
        if self.kind == "groupnorm":
            groups = config.family.num_groups

            def grouped(x: torch.Tensor, w: Any, b: Any, training: bool) -> object:
                return function(x, groups, w, b, eps)

            return GroupedLayer(grouped, config, weight, bias, None)
        track = config.track_running_stats
        running = (tensor(0.0), tensor(1.0)) if track else None
        momentum = config.momentum if config.momentum is not None else 0.1

        def instance(x: torch.Tensor, w: Any, b: Any, training: bool) -> object:
            mean, var = running if running is not None else (None, None)
            return function(
                x,
                running_mean=mean,
                running_var=var,
                weight=w,
                bias=b,
                use_input_stats=training or not track,
                momentum=momentum,
                eps=eps,
            )

        return GroupedLayer(instance, config, weight, bias, running)


#: The recogniser this package declares (``ADAPTERS``): GroupNorm and InstanceNorm.
recognise = recogniser(kind_of, TorchGrouped)


__all__ = ["GroupedLayer", "TorchGrouped", "kind_of", "recognise"]
