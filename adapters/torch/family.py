"""LayerNorm and RMSNorm on torch, with no glue code (spec: layernorm.md).

Recognised, by :func:`recognise`:

* a ``torch.nn.Module`` class whose constructor takes ``normalized_shape``, ``eps`` and
  ``elementwise_affine`` (``torch.nn.LayerNorm``, ``torch.nn.RMSNorm`` and clones), with the
  parameters ``weight`` (and ``bias``, where its constructor takes ``bias``);
* a function with ``F.layer_norm``'s signature, ``(input, normalized_shape, weight, bias,
  eps)``, or ``F.rms_norm``'s, ``(input, normalized_shape, weight, eps)``: the kernel
  author's ``normspec check mykernels:layer_norm``. The second parameter must be named
  ``normalized_shape``.

The layer is RMSNorm when the class or function name contains ``rms`` or it takes no
``bias``; LayerNorm otherwise. Parameters are kept in the input's dtype (``module.half()``);
the weights are set as they are stored, so a Gemma-style module (``(1 + w) * xhat``) is
checked under a profile whose ``rmsnorm.scale`` is ``1 + w``, with no code. The layers have no
mode and no state: ``infer`` and ``train_step`` are the same forward.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, TypeVar

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
from normspec.adapters.torch._torch import (
    device_versions,
    differentiable,
    double_backward,
    from_torch,
    resolve_device,
    to_torch,
)
from normspec.adapters.torch._torch import torch_dtype as dtype_of
from normspec.reference import Gradients
from normspec.reference.second_order import SecondOrderGradients

MODULE_ARGUMENTS = ("normalized_shape", "eps", "elementwise_affine")
TargetT = TypeVar("TargetT", bound="TorchTarget")


def _parameter_names(obj: Any) -> list[str] | None:
    try:
        target = getattr(obj, "__init__") if isinstance(obj, type) else obj  # noqa: B009
        names = list(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return None
    return names[1:] if isinstance(obj, type) and names[:1] == ["self"] else names


def kind_of(obj: object) -> tuple[FamilyKind, bool] | None:
    """``(kind, is_module)`` of a LayerNorm/RMSNorm module class or function, else ``None``."""
    names = _parameter_names(obj)
    if names is None:
        return None
    is_module = isinstance(obj, type) and issubclass(obj, nn.Module)
    if is_module:
        if not all(n in names for n in MODULE_ARGUMENTS):
            return None
    elif not (callable(obj) and len(names) >= 4 and names[1] == "normalized_shape"):
        return None
    title = getattr(obj, "__name__", "").lower()
    rms = "rms" in title or "bias" not in names
    return ("rmsnorm" if rms else "layernorm"), is_module


class FamilyLayer:
    """One LayerNorm or RMSNorm layer: its weight and bias tensors and the call."""

    def __init__(
        self,
        call: Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None], object],
        config: LayerConfig,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
    ) -> None:
        self.call, self.config = call, config
        self.weight, self.bias = weight, bias
        self.dtype = dtype_of(config.dtype)
        self.device = weight.device if weight is not None else torch.device("cpu")

    @property
    def family(self) -> FamilyConfig:
        assert self.config.family is not None
        return self.config.family

    def set_parameters(self, gamma: Array, beta: Array) -> None:
        with torch.no_grad():
            if self.weight is not None:
                self.weight.copy_(torch.from_numpy(np.array(gamma, dtype=np.float64)))
            if self.bias is not None:
                self.bias.copy_(torch.from_numpy(np.array(beta, dtype=np.float64)))

    def set_state(self, state: State) -> None:
        raise UnsupportedConfig("a LayerNorm or RMSNorm layer keeps no statistics")

    def state(self) -> State | None:
        return None

    def infer(self, x: Array) -> Array:
        with torch.no_grad():
            y = self.call(to_torch(x, self.dtype, self.device), self.weight, self.bias)
        return from_torch(y, shape=x.shape, dtype=self.dtype, what="the output")

    train_step = infer

    def vjp(self, x: Array, dy: Array, *, training: bool) -> Gradients:
        inputs = to_torch(x, self.dtype, self.device).requires_grad_(True)
        cotangent = to_torch(dy, self.dtype, self.device)
        params = [p for p in (self.weight, self.bias) if p is not None]
        with torch.enable_grad():
            for p in params:
                p.requires_grad_(True)
            y = self.call(inputs, self.weight, self.bias)
            from_torch(y, shape=x.shape, dtype=self.dtype, what="the output")
            assert isinstance(y, torch.Tensor)
            grads = torch.autograd.grad(y, [inputs, *params], cotangent, allow_unused=True)
        found = dict(zip(("dx", *("dweight", "dbias")[: len(params)]), grads, strict=True))
        shape = self.family.normalized_shape

        def gradient(name: str, of: torch.Tensor | None) -> Array:
            if of is None:
                return np.zeros(shape)
            grad = found.get(name)
            value = torch.zeros_like(of) if grad is None else grad
            return from_torch(value, shape=of.shape, dtype=of.dtype, what=name)

        return Gradients(
            gradient("dx", inputs), gradient("dweight", self.weight), gradient("dbias", self.bias)
        )

    def second_order_vjp(
        self, x: Array, dy: Array, v: Array, v_gamma: Array, v_beta: Array
    ) -> SecondOrderGradients:
        """Double backward (ln/rms/gn/in.backward.second_order): the vjp by
        ``torch.autograd.grad(create_graph=True)``, then the gradient of ``S = sum(v * dx) +
        sum(v_gamma * dweight) + sum(v_beta * dbias)`` in x, the weight and dy (the BN
        adapters' mechanism, :func:`_torch.double_backward`); a gradient that does not
        depend on an input is zero."""
        inputs = to_torch(x, self.dtype, self.device).requires_grad_(True)
        cotangent = to_torch(dy, self.dtype, self.device).requires_grad_(True)
        params = [p for p in (self.weight, self.bias) if p is not None]
        weights = [to_torch(v, self.dtype, self.device)]
        for values, p in ((v_gamma, self.weight), (v_beta, self.bias)):
            if p is not None:
                weights.append(to_torch(np.asarray(values).reshape(p.shape), p.dtype, p.device))
        with differentiable(params):
            second = double_backward(
                lambda t: self.call(t, self.weight, self.bias),
                inputs,
                params,
                cotangent,
                weights,
                self.dtype,
            )

        def gradient(grad: torch.Tensor | None, of: torch.Tensor, name: str) -> Array:
            value = torch.zeros_like(of) if grad is None else grad
            return from_torch(value, shape=of.shape, dtype=of.dtype, what=name)

        d_weight = (
            gradient(second[1], self.weight, "d_weight")
            if self.weight is not None
            else np.zeros(np.shape(v_gamma))
        )
        return SecondOrderGradients(
            gradient(second[0], inputs, "d_x"), d_weight, gradient(second[-1], cotangent, "d_dy")
        )


class TorchTarget:
    """A torch module class or function of one family layer kind under test: what the
    LayerNorm/RMSNorm (:class:`TorchFamily`) and GroupNorm/InstanceNorm
    (:class:`~normspec.adapters.torch.grouped.TorchGrouped`) adapters share."""

    def __init__(
        self,
        target: Any,
        kind: FamilyKind,
        *,
        module: bool,
        arguments: Mapping[str, Any] | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        self.target, self.kind, self.module = target, kind, module
        self.arguments = dict(arguments or {})
        self.device = resolve_device(device)
        what = "class" if module else "function"
        title = f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', target)}"
        self.name = f"{title} ({kind} {what}, torch {torch.__version__}, {self.device})"
        self.takes_bias = "bias" in (_parameter_names(target) or [])

    def versions(self) -> Mapping[str, str]:
        return device_versions(self.device)

    def with_double_backward(self, caps: Capabilities, config: LayerConfig) -> Capabilities:
        """``caps`` with double_backward set by one double backward of a tiny layer built for
        ``config`` (float64, two slices of two values or more); why it failed goes to
        ``notes["double_backward"]``."""
        family = self.family_of(config)
        grouped = (2, config.num_features, *([3] * (config.rank - 2)))
        shape = grouped if not family.normalized_shape else (2, *family.normalized_shape)
        x = (np.arange(float(np.prod(shape))) % 5).reshape(shape)
        ones = np.ones(shape)
        try:
            layer: FamilyLayer = self.build(config)  # type: ignore[attr-defined]
            param = np.ones(tuple(layer.weight.shape) if layer.weight is not None else (0,))
            layer.second_order_vjp(x, ones, ones, param, param)
        except Exception as error:  # autograd cannot differentiate the backward
            reason = f"{type(error).__name__}: {error}".splitlines()[0]
            note = f"its backward is not differentiable: {reason}"
            return replace(
                caps, double_backward=False, notes={**caps.notes, "double_backward": note}
            )
        return replace(caps, double_backward=True)

    def family_of(self, config: LayerConfig) -> FamilyConfig:
        """The configuration's layer, refused unless it is of this target's kind."""
        family = config.family
        if family is None or family.kind != self.kind:
            raise UnsupportedConfig(f"only {self.kind} layers")
        return family


def recogniser(
    kind_of: Callable[[object], tuple[FamilyKind, bool] | None],
    adapter: Callable[..., TargetT],
) -> Callable[..., TargetT | None]:
    """A recogniser (``ADAPTERS``) of the objects ``kind_of`` tells the kind of, each driven
    by ``adapter``."""

    def recognise(
        obj: object, profile: str, arguments: Mapping[str, Any] | None = None
    ) -> TargetT | None:
        found = kind_of(obj)
        if found is None:
            return None
        kind, module = found
        if arguments and not module:
            raise ValueError("a function takes no constructor arguments")
        return adapter(obj, kind, module=module, arguments=arguments)

    return recognise


class TorchFamily(TorchTarget):
    """A torch LayerNorm/RMSNorm module class or function under test."""

    def capabilities(self) -> Capabilities:
        caps = Capabilities(
            dtypes=frozenset(ALL_DTYPES),
            batchnorm=False,
            layernorm=self.kind == "layernorm",
            rmsnorm=self.kind == "rmsnorm",
            training=False,
            untracked=True,
            without_affine=True,
            elementwise_bias=self.takes_bias,
            notes={"batchnorm": f"it is a {self.kind} layer", "renorm": f"a {self.kind} layer"},
        )
        family = FamilyConfig(self.kind, (3,), self.takes_bias)
        probe = LayerConfig(
            2, 2, 1, "float64", 1e-5, None, track_running_stats=False, family=family
        )
        return self.with_double_backward(caps, probe)

    def build(self, config: LayerConfig) -> FamilyLayer:
        family = self.family_of(config)
        if family.bias and not self.takes_bias:
            raise UnsupportedConfig("the layer takes no bias")
        dtype = dtype_of(config.dtype)
        return (
            self._module_layer(config, dtype)
            if self.module
            else self._function_layer(config, dtype)
        )

    def build_with_default_eps(self, config: LayerConfig) -> FamilyLayer:
        """The layer built without an eps: the library's default (``normspec identify``
        measures it; ``config.eps`` is ignored)."""
        layer = self.build(config)
        if self.module:
            return self._module_layer(config, dtype_of(config.dtype), default_eps=True)
        shape, function = list(layer.family.normalized_shape), self.target
        if self.kind == "layernorm":
            return FamilyLayer(
                lambda x, w, b: function(x, shape, w, b), config, layer.weight, layer.bias
            )
        return FamilyLayer(lambda x, w, b: function(x, shape, w), config, layer.weight, layer.bias)

    def _module_layer(
        self, config: LayerConfig, dtype: torch.dtype, *, default_eps: bool = False
    ) -> FamilyLayer:
        family = config.family
        assert family is not None
        given: dict[str, Any] = {**self.arguments, "elementwise_affine": config.affine}
        if self.takes_bias:
            given["bias"] = family.bias
        if not default_eps:
            given["eps"] = config.eps
        module = self.target(list(family.normalized_shape), **given)
        module.to(device=self.device, dtype=dtype)
        weight = getattr(module, "weight", None)
        bias = getattr(module, "bias", None) if family.bias else None
        return FamilyLayer(lambda x, w, b: module(x), config, weight, bias)

    def _function_layer(self, config: LayerConfig, dtype: torch.dtype) -> FamilyLayer:
        family = config.family
        assert family is not None
        shape, eps, function = list(family.normalized_shape), config.eps, self.target

        def tensor(value: float) -> torch.Tensor | None:
            if not config.affine:
                return None
            return torch.full(family.normalized_shape, value, dtype=dtype, device=self.device)

        weight, bias = tensor(1.0), tensor(0.0) if family.bias else None
        if self.kind == "layernorm":
            return FamilyLayer(lambda x, w, b: function(x, shape, w, b, eps), config, weight, bias)
        return FamilyLayer(lambda x, w, b: function(x, shape, w, eps), config, weight, bias)


#: The recogniser this package declares (``ADAPTERS``): LayerNorm and RMSNorm.
recognise = recogniser(kind_of, TorchFamily)
