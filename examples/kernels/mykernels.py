"""A kernel author's LayerNorm, with ``F.layer_norm``'s signature: ``normspec check
mykernels:layer_norm`` (run from this directory) checks it with no glue code.

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
