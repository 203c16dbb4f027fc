"""A kernel author's LayerNorm, GroupNorm and InstanceNorm, with ``F.layer_norm``'s,
``F.group_norm``'s and ``F.instance_norm``'s signatures: ``normspec check
mykernels:layer_norm`` (``mykernels:group_norm``, ``mykernels:instance_norm``; run from this
directory) checks each with no glue code.

``layer_norm_float32`` is the same kernel with one common mistake: the statistics are
always taken in float32 (``x.float()``), float64 inputs included.
"""

import math

import torch


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a positive finite number, got {eps}")
    if tuple(x.shape[x.dim() - len(normalized_shape) :]) != tuple(normalized_shape):
        raise ValueError(f"x of shape {tuple(x.shape)} does not end in {normalized_shape}")
    dims = tuple(range(-len(normalized_shape), 0))
    wide = x.to(torch.promote_types(x.dtype, torch.float32))  # half inputs: float32 statistics
    centred = wide - wide.mean(dims, keepdim=True)
    y = centred * torch.rsqrt(centred.square().mean(dims, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(wide.dtype)
    if bias is not None:
        y = y + bias.to(wide.dtype)
    return y.to(x.dtype)


def layer_norm_float32(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    return layer_norm(x.float(), normalized_shape, weight, bias, eps).to(x.dtype)


def _check_eps(eps):
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a positive finite number, got {eps}")


def _normalize(x, groups, eps):
    """``x`` (N, C, *spatial) normalized per sample and group of consecutive channels, in
    float32 at least (half inputs: float32 statistics)."""
    wide = x.to(torch.promote_types(x.dtype, torch.float32))
    rows = wide.reshape(x.shape[0], groups, math.prod(x.shape[1:]) // groups)
    centred = rows - rows.mean(-1, keepdim=True)
    y = centred * torch.rsqrt(centred.square().mean(-1, keepdim=True) + eps)
    return y.reshape(x.shape)


def _affine(y, weight, bias):
    shape = (1, -1) + (1,) * (y.dim() - 2)
    if weight is not None:
        y = y * weight.to(y.dtype).reshape(shape)
    if bias is not None:
        y = y + bias.to(y.dtype).reshape(shape)
    return y


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    _check_eps(eps)
    if x.dim() < 2 or x.shape[1] % num_groups:
        raise ValueError(f"{num_groups} groups do not divide the channels of {tuple(x.shape)}")
    if weight is not None and weight.shape != (x.shape[1],):
        raise ValueError(f"weight of shape {tuple(weight.shape)} for {x.shape[1]} channels")
    return _affine(_normalize(x, num_groups, eps), weight, bias).to(x.dtype)


def instance_norm(
    x,
    running_mean=None,
    running_var=None,
    weight=None,
    bias=None,
    use_input_stats=True,
    momentum=0.1,
    eps=1e-5,
):
    _check_eps(eps)
    channels = x.shape[1]
    for tensor in (running_mean, running_var, weight, bias):
        if tensor is not None and tensor.shape != (channels,):
            raise ValueError(f"a per-channel tensor of shape {tuple(tensor.shape)}")
    wide = x.to(torch.promote_types(x.dtype, torch.float32))
    if not use_input_stats:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean, var = running_mean.to(wide.dtype), running_var.to(wide.dtype)
        y = (wide - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + eps)
        return _affine(y, weight, bias).to(x.dtype)
    if running_mean is not None and x.shape[0]:
        with torch.no_grad():
            rows = wide.detach().reshape(x.shape[0], channels, -1)
            n = rows.shape[-1]
            var = rows.var(-1, unbiased=False).mean(0) * (n / (n - 1) if n > 1 else 1.0)
            running_mean.lerp_(rows.mean(-1).mean(0).to(running_mean.dtype), momentum)
            running_var.lerp_(var.to(running_var.dtype), momentum)
    return _affine(_normalize(x, channels, eps), weight, bias).to(x.dtype)
