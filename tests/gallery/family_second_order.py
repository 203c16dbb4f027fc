"""LayerNorm, RMSNorm, GroupNorm and InstanceNorm kernels whose backward is written by hand,
as a kernel author writes a ``torch.autograd.Function`` around a fused forward: one correct,
and the known-bad ones whose first-order gradients are right and whose double backward is
not.

Each is a function of ``F.layer_norm``'s, ``F.rms_norm``'s, ``F.group_norm``'s or
``F.instance_norm``'s signature (recognised by the torch family adapters with no glue). The forward and the backward compute in float32 at
least; the backward is written in torch operations, so autograd differentiates it
(``*.backward.second_order``). The bugs:

* :func:`saved_statistics_layer_norm`: the backward normalizes with the mean and
  ``1 / sqrt(var + eps)`` the forward saved, computed without autograd: the derivative of
  the backward treats the statistics as constants;
* :func:`detached_weight_group_norm`: the backward multiplies ``dy`` by a detached weight:
  the gradient in the weight of ``S`` keeps only its ``dweight`` path;
* :func:`saved_statistics_rms_norm` and :func:`saved_statistics_instance_norm`: the first
  mistake in an RMSNorm kernel (its saved ``1 / sqrt(mean(x^2) + eps)``) and an InstanceNorm
  kernel.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F


class _Normalize(torch.autograd.Function):
    """``xhat * w`` over rows of ``n`` consecutive values (a slice is a run of ``x`` in C
    order), ``w`` the weight spread over ``x``'s shape; the backward by hand. ``centered``:
    LayerNorm's ``xhat`` (GroupNorm, InstanceNorm), else RMSNorm's (no mean)."""

    @staticmethod
    def _statistics(rows: torch.Tensor, eps: float, centered: bool) -> Any:
        mean = rows.mean(1, keepdim=True) if centered else torch.zeros_like(rows[:, :1])
        return mean, torch.rsqrt((rows - mean).square().mean(1, keepdim=True) + eps)

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        w: torch.Tensor,
        n: int,
        eps: float,
        variant: str,
        centered: bool = True,
    ) -> Any:  # type: ignore[override]
        wide = x.to(torch.promote_types(x.dtype, torch.float32))
        rows = wide.reshape(-1, n)
        mean, rstd = _Normalize._statistics(rows, eps, centered)
        ctx.save_for_backward(x, w, mean, rstd)
        ctx.n, ctx.eps, ctx.variant, ctx.centered = n, eps, variant, centered
        y = ((rows - mean) * rstd).reshape(x.shape) * w.to(wide.dtype)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> Any:  # type: ignore[override]
        x, w, saved_mean, saved_rstd = ctx.saved_tensors
        n, variant = ctx.n, ctx.variant
        wide = torch.promote_types(x.dtype, torch.float32)
        rows = x.to(wide).reshape(-1, n)
        if variant == "saved_statistics":
            mean, rstd = saved_mean, saved_rstd
        else:
            mean, rstd = _Normalize._statistics(rows, ctx.eps, ctx.centered)
        xhat = (rows - mean) * rstd
        weight = w.detach() if variant == "detached_weight" else w
        upstream = dy.to(wide).reshape(-1, n)
        g = upstream * weight.to(wide).reshape(-1, n)
        centred_g = g - g.mean(1, keepdim=True) if ctx.centered else g
        dx = rstd * (centred_g - xhat * (g * xhat).mean(1, keepdim=True))
        dw = (upstream * xhat).reshape(x.shape)
        return dx.reshape(x.shape).to(x.dtype), dw.to(w.dtype), None, None, None, None


def _layer_norm(
    variant: str,
    x: torch.Tensor,
    normalized_shape: Any,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    centered: bool = True,
) -> torch.Tensor:
    shape = tuple(normalized_shape)
    if not eps > 0 or eps == float("inf") or tuple(x.shape[x.dim() - len(shape) :]) != shape:
        raise ValueError(f"invalid eps {eps} or an input of shape {tuple(x.shape)} for {shape}")
    w = torch.ones(shape, dtype=x.dtype, device=x.device) if weight is None else weight
    n = math.prod(shape)
    y = _Normalize.apply(x, w.expand(x.shape), n, eps, variant, centered)
    return y if bias is None else y + bias


def _group_norm(
    variant: str,
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> torch.Tensor:
    channels = x.shape[1]
    if not eps > 0 or eps == float("inf") or channels % num_groups:
        raise ValueError(f"invalid eps {eps} or {num_groups} groups of {channels} channels")
    per_channel = (1, channels) + (1,) * (x.dim() - 2)
    w = torch.ones(channels, dtype=x.dtype, device=x.device) if weight is None else weight
    n = channels // num_groups * math.prod(x.shape[2:])
    y = _Normalize.apply(x, w.reshape(per_channel).expand(x.shape), n, eps, variant)
    return y if bias is None else y + bias.reshape(per_channel)


def _instance_norm(
    variant: str,
    x: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    use_input_stats: bool,
    momentum: float,
    eps: float,
) -> torch.Tensor:
    """InstanceNorm as GroupNorm with a group per channel; the running statistics (their
    update, and inference from them) are ``F.instance_norm``'s."""
    if not use_input_stats:
        return F.instance_norm(x, running_mean, running_var, weight, bias, False, momentum, eps)
    if running_mean is not None:
        with torch.no_grad():
            F.instance_norm(x, running_mean, running_var, None, None, True, momentum, eps)
    return _group_norm(variant, x, x.shape[1], weight, bias, eps)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):  # type: ignore[no-untyped-def]
    """The correct LayerNorm kernel: its backward recomputes the statistics from ``x``."""
    return _layer_norm("correct", x, normalized_shape, weight, bias, eps)


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):  # type: ignore[no-untyped-def]
    """The correct GroupNorm kernel (InstanceNorm with one group per channel)."""
    return _group_norm("correct", x, num_groups, weight, bias, eps)


def rms_norm(x, normalized_shape, weight=None, eps=1e-5):  # type: ignore[no-untyped-def]
    """The correct RMSNorm kernel."""
    return _layer_norm("correct", x, normalized_shape, weight, None, eps, centered=False)


def instance_norm(  # type: ignore[no-untyped-def]
    x,
    running_mean=None,
    running_var=None,
    weight=None,
    bias=None,
    use_input_stats=True,
    momentum=0.1,
    eps=1e-5,
):
    """The correct InstanceNorm kernel."""
    return _instance_norm(
        "correct", x, running_mean, running_var, weight, bias, use_input_stats, momentum, eps
    )


def saved_statistics_layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):  # type: ignore[no-untyped-def]
    """The backward reads the forward's saved mean and rstd, constants to autograd
    (ln.backward.second_order)."""
    return _layer_norm("saved_statistics", x, normalized_shape, weight, bias, eps)


def saved_statistics_group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):  # type: ignore[no-untyped-def]
    """The same mistake in a GroupNorm kernel (gn.backward.second_order)."""
    return _group_norm("saved_statistics", x, num_groups, weight, bias, eps)


def detached_weight_layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):  # type: ignore[no-untyped-def]
    """The backward multiplies ``dy`` by a detached weight (ln.backward.second_order)."""
    return _layer_norm("detached_weight", x, normalized_shape, weight, bias, eps)


def detached_weight_group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):  # type: ignore[no-untyped-def]
    """The same mistake in a GroupNorm kernel (gn.backward.second_order)."""
    return _group_norm("detached_weight", x, num_groups, weight, bias, eps)


def saved_statistics_rms_norm(x, normalized_shape, weight=None, eps=1e-5):  # type: ignore[no-untyped-def]
    """The backward reads the forward's saved ``1 / sqrt(mean(x^2) + eps)``
    (rms.backward.second_order)."""
    return _layer_norm("saved_statistics", x, normalized_shape, weight, None, eps, centered=False)


def saved_statistics_instance_norm(  # type: ignore[no-untyped-def]
    x,
    running_mean=None,
    running_var=None,
    weight=None,
    bias=None,
    use_input_stats=True,
    momentum=0.1,
    eps=1e-5,
):
    """The backward reads the forward's saved statistics (in.backward.second_order)."""
    return _instance_norm(
        "saved_statistics",
        x,
        running_mean,
        running_var,
        weight,
        bias,
        use_input_stats,
        momentum,
        eps,
    )


#: ``(function, clause)``: the correct kernels and the clause prefix each is checked under
CORRECT = ((layer_norm, "ln"), (rms_norm, "rms"), (group_norm, "gn"), (instance_norm, "in"))
#: ``(function, the clause it is caught under)``
BUGS = (
    (saved_statistics_layer_norm, "ln.backward.second_order"),
    (saved_statistics_group_norm, "gn.backward.second_order"),
    (detached_weight_layer_norm, "ln.backward.second_order"),
    (detached_weight_group_norm, "gn.backward.second_order"),
    (saved_statistics_rms_norm, "rms.backward.second_order"),
    (saved_statistics_instance_norm, "in.backward.second_order"),
)
