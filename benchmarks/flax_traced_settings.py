"""Whether Flax's BatchNorm computes bitwise the same with eps and momentum traced.

    python benchmarks/flax_traced_settings.py

A JAX adapter compiles one program per layer configuration: eps and momentum are Python
floats, static in the program, as in a user's program (README: "Implementations that
compile per shape"). Passed as traced scalars instead, one program would serve every eps
and momentum of a shape, but only if the layer computes exactly the same. Flax's BatchNorm
uses them in ``momentum * ra + (1 - momentum) * stat`` and ``var + epsilon``, where a Python
float is weakly typed: rounded to the other operand's dtype, ``1 - momentum`` computed in
double first. The traced stand-ins below do the same (``1 - momentum`` rounded on the host
from double; each scalar rounded to the operand's dtype), and this script compares
``flax.linen.BatchNorm`` and ``flax.nnx.BatchNorm`` jitted both ways, bit for bit: the
training and inference outputs, the new statistics and the gradients, over the four dtypes
(float64 in x64 mode), common and arbitrary momenta, the menu's eps values, several shapes
and scales. It prints the settings that differ (none, with flax 0.12.8 and jax 0.10.2).
"""

from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen, nnx
from jax.tree_util import tree_leaves

MOMENTA = (0.0, 1.0, 0.9, 0.5, 0.99, 0.3141)
EPS = (1e-5, 1e-3, 2.0**-4, 1.0)
SHAPES = ((2, 1), (5, 3), (4, 3, 3, 2))


class Traced:
    """A traced scalar standing in for a Python float: ``v * a``, ``a + v`` (``v`` in
    ``a``'s dtype) and ``1 - v`` (``complement``, computed on the host in double)."""

    def __init__(self, value: jax.Array, complement: jax.Array | None = None) -> None:
        self.value, self.complement = value, complement

    def __mul__(self, other: jax.Array) -> jax.Array:
        return self.value.astype(other.dtype) * other

    __rmul__ = __mul__

    def __radd__(self, other: jax.Array) -> jax.Array:
        return other + self.value.astype(other.dtype)

    def __rsub__(self, one: float) -> Traced:
        assert one == 1 and self.complement is not None
        return Traced(self.complement)


def forward(
    api: str, dtype: Any, training: bool, eps: Any, momentum: Any, variables: Any, x: jax.Array
) -> Any:
    """The layer's output and new statistics."""
    parameter_dtype = jnp.float64 if dtype == np.float64 else jnp.float32
    options = dict(axis=-1, dtype=dtype, param_dtype=parameter_dtype)
    params, stats = variables
    if api == "linen":
        module = linen.BatchNorm(
            use_running_average=not training, momentum=momentum, epsilon=eps, **options
        )
        return module.apply({"params": params, "batch_stats": stats}, x, mutable=["batch_stats"])
    layer = nnx.BatchNorm(
        x.shape[-1], use_running_average=not training, rngs=nnx.Rngs(0), **options
    )
    for variable, value in ((layer.scale, params["scale"]), (layer.bias, params["bias"])):
        variable[...] = value
    layer.mean[...], layer.var[...] = stats["mean"], stats["var"]
    layer.momentum, layer.epsilon = momentum, eps
    y = layer(x)
    return y, {"mean": layer.mean[...], "var": layer.var[...]}


def step(api: str, dtype: Any, training: bool, settings: tuple[Any, Any] | None) -> Any:
    """The jitted call: output, statistics and gradients; eps and momentum static
    (``settings``) or traced (``None``: the last three arguments)."""

    def run(variables: Any, x: jax.Array, dy: jax.Array, *scalars: jax.Array) -> Any:
        eps, momentum = settings or (Traced(scalars[0]), Traced(scalars[1], scalars[2]))

        def differentiated(params: Any, inputs: jax.Array) -> Any:
            return forward(api, dtype, training, eps, momentum, (params, variables[1]), inputs)

        (y, stats), pullback = jax.vjp(differentiated, variables[0], x)
        return y, stats, pullback((dy, jax.tree_util.tree_map(jnp.zeros_like, stats)))

    return jax.jit(run)


def scalars(dtype: Any, eps: float, momentum: float) -> list[jax.Array]:
    """eps, momentum and ``1 - momentum`` (in double, as Python computes it), as arrays."""
    kind = np.float64 if dtype == np.float64 else np.float32
    return [jnp.asarray(kind(v)) for v in (eps, momentum, np.float64(1.0) - momentum)]


def case(dtype: Any, shape: tuple[int, ...], seed: int) -> tuple[Any, ...]:
    """The variables (parameters, statistics), an input and a cotangent, drawn."""
    rng = np.random.default_rng(seed)
    scale, offset = rng.choice([1e-3, 1.0, 100.0]), rng.choice([0.0, 5.0, 1e3])
    x = jnp.asarray((rng.normal(size=shape) * scale + offset).astype(dtype))
    dy = jnp.asarray(rng.normal(size=shape).astype(dtype))
    parameter_dtype = jnp.float64 if dtype == np.float64 else jnp.float32
    features = shape[-1]

    def vector(values: Any) -> jax.Array:
        return jnp.asarray(values, parameter_dtype)

    params = {"scale": vector(rng.normal(size=features)), "bias": vector(rng.normal(size=features))}
    stats = {
        "mean": vector(rng.normal(size=features)),
        "var": vector(rng.uniform(0.1, 3, features)),
    }
    return (params, stats), x, dy


def same_bits(a: Any, b: Any) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def main() -> None:
    differ, total = [], 0
    dtypes = (np.float32, np.float16, jnp.bfloat16, np.float64)
    for api, dtype, training in itertools.product(("linen", "nnx"), dtypes, (True, False)):
        with jax.enable_x64(dtype == np.float64):
            traced = step(api, dtype, training, None)  # one program for every setting
            momenta = MOMENTA if training else MOMENTA[2:3]  # inference does not use it
            for shape, momentum, eps in itertools.product(SHAPES, momenta, EPS):
                total += 1
                variables, x, dy = case(dtype, shape, total)
                plain = step(api, dtype, training, (eps, momentum))(variables, x, dy)
                got = traced(variables, x, dy, *scalars(dtype, eps, momentum))
                pairs = zip(tree_leaves(plain), tree_leaves(got), strict=True)
                if not all(same_bits(a, b) for a, b in pairs):
                    differ.append((api, np.dtype(dtype).name, training, shape, momentum, eps))
    print(f"{len(differ)} of {total} settings differ bitwise (jax {jax.__version__})")
    for setting in differ:
        print("  ", setting)


if __name__ == "__main__":
    main()
