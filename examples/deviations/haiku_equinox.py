"""What haiku.BatchNorm and equinox.nn.BatchNorm fail, shown outside normspec.

    python examples/deviations/haiku_equinox.py

Each finding of ``normspec check haiku|equinox|equinox.ema`` (README: "Checking haiku and
equinox") is reproduced here with haiku, equinox, JAX and NumPy only, the way a user runs
the layers (``hk.transform_with_state``; ``eqx.nn.make_with_state`` and ``jax.vmap`` over
the batch with the layer's ``axis_name``), and the figures printed against float64
arithmetic written out by hand.
"""

from __future__ import annotations

import equinox as eqx
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np


def haiku_layer(decay: float = 0.9, eps: float = 1e-5) -> hk.TransformedWithState:
    def forward(x: jax.Array, is_training: bool) -> jax.Array:
        return hk.BatchNorm(True, True, decay, eps=eps)(x, is_training=is_training)

    return hk.transform_with_state(forward)


def equinox_layer(mode: str, momentum: float = 0.9, eps: float = 1e-5, dtype=jnp.float32):
    model, state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(
        1, "batch", eps=eps, momentum=momentum, mode=mode, dtype=dtype
    )

    def call(model, x, state, inference=False):
        run = jax.vmap(
            lambda x, s: model(x, s, inference=inference),
            axis_name="batch",
            in_axes=(0, None),
            out_axes=(0, None),
        )
        return run(x, state)

    return model, state, call


def haiku_step(x: jax.Array, decay: float = 0.9, eps: float = 1e-5):
    layer = haiku_layer(decay, eps)
    params, state = layer.init(None, jnp.zeros_like(x), is_training=True)
    y, state = layer.apply(params, state, None, x, is_training=True)
    return layer, params, state, y


def show(title: str, text: str) -> None:
    print(f"- {title}\n  {text}")


def main() -> None:
    print("haiku", hk.__version__, "equinox", eqx.__version__, "jax", jax.__version__)

    # haiku: the batch variance is E[x^2] - E[x]^2 (bn.accuracy.*, bn.degenerate.zero_variance)
    rng = np.random.default_rng(0)
    values = 1e4 + 0.01 * rng.standard_normal(64)
    x = jnp.asarray(values[:, None], jnp.float32)
    _, _, state, y = haiku_step(x)
    hidden = float(state["batch_norm/~/var_ema"]["hidden"][0, 0])
    show(
        "haiku, float32, 64 values of mean 1e4 and spread 0.01 (bn.accuracy.forward, .running)",
        f"batch variance E[x^2]-E[x]^2 = {hidden / 0.1:.4g}, exact {np.var(values):.4g}; "
        f"output NaN: {bool(jnp.isnan(y).any())}",
    )
    constant = jnp.full((60, 1), 100.1, jnp.float32)
    _, _, state, y = haiku_step(constant)
    show(
        "haiku, float32, 60 equal values 100.1 (bn.degenerate.zero_variance)",
        f"batch variance {float(state['batch_norm/~/var_ema']['hidden'][0, 0]) / 0.1:.4g} "
        f"(exact 0); output {np.asarray(y[:2, 0]).tolist()} where [0, 0] is right",
    )

    # haiku and equinox in float16: the backward overflows at a small variance (dx NaN)
    tiny = jnp.asarray([[0.0], [0.0043]], jnp.float16)
    layer = haiku_layer()
    params, state = layer.init(None, jnp.zeros_like(tiny), is_training=True)

    def haiku_out(x):
        return jnp.sum(layer.apply(params, state, None, x, is_training=True)[0] * 1.0)

    model, eqx_state, call = equinox_layer("batch", dtype=jnp.float16)
    eqx_dx = jax.grad(lambda x: jnp.sum(call(model, x, eqx_state)[0]))(tiny)
    show(
        "float16, x = [0, 0.0043] (var_B 4.6e-6), dy = 1 (bn.backward.train.dx, "
        "conv.layout.feature_axis, bn.degenerate.*)",
        f"dx haiku {np.asarray(jax.grad(haiku_out)(tiny)[:, 0]).tolist()}, equinox "
        f"{np.asarray(eqx_dx[:, 0]).tolist()}; exact [0, 0] (sum(dy * xhat) = 0); "
        f"(var + eps)^-1.5 / 2 = {0.5 * (4.6e-6 + 1e-5) ** -1.5:.3g} > float16 max 65504",
    )

    # both: an empty batch writes NaN into the statistics and counts a step
    empty = jnp.zeros((0, 1), jnp.float32)
    layer = haiku_layer()
    params, state = layer.init(None, jnp.zeros((2, 1)), is_training=True)
    _, after = layer.apply(params, state, None, empty, is_training=True)
    model, eqx_state, call = equinox_layer("batch")
    _, eqx_after = call(model, empty, eqx_state)
    show(
        "an empty batch (bn.degenerate.empty_batch)",
        f"haiku hidden mean {float(after['batch_norm/~/mean_ema']['hidden'][0, 0])}, counter "
        f"{int(after['batch_norm/~/mean_ema']['counter'])}; equinox hidden mean "
        f"{float(eqx_after.get(model.batch_state_index)[0][0])}, counter "
        f"{int(eqx_after.get(model.batch_counter))}",
    )

    # both: eps = 0 and a decay outside [0, 1] are accepted (bn.params.*)
    pair = jnp.asarray([[0.0], [1.0]], jnp.float32)
    wide = 10.0 * pair
    _, _, state, _ = haiku_step(wide, decay=1.5)
    model, eqx_state, call = equinox_layer("batch", momentum=1.5)
    _, eqx_after = call(model, wide, eqx_state)
    show(
        "decay 1.5, x = [0, 10] (bn.params.no_nan_state)",
        f"accepted; haiku hidden variance {float(state['batch_norm/~/var_ema']['hidden'][0, 0])}"
        f", equinox hidden variance {float(eqx_after.get(model.batch_state_index)[1][0])}",
    )
    haiku_step(pair, eps=0.0)
    equinox_layer("batch", eps=0.0)
    show("eps = 0 (bn.params.invalid)", "accepted by both constructors and their first step")

    # both: decay 1, outside the documented domain, divides by 1 - 1^t = 0 in inference
    layer, params, state, _ = haiku_step(pair, decay=1.0)
    y_haiku, _ = layer.apply(params, state, None, pair, is_training=False)
    model, eqx_state, call = equinox_layer("batch", momentum=1.0)
    _, eqx_after = call(model, pair, eqx_state)
    y_eqx, _ = call(model, pair, eqx_after, inference=True)
    show(
        "decay 1 (haiku documents [0, 1), equinox (0, 1)): inference after a step (conv.io.finite)",
        f"haiku {np.asarray(y_haiku[:, 0]).tolist()}, equinox {np.asarray(y_eqx[:, 0]).tolist()}",
    )

    # equinox, bfloat16: the batch mean is accumulated in bfloat16 (bn.accuracy.*)
    values = np.tile([64.0, 64.5], 28)
    model, eqx_state, call = equinox_layer("batch", dtype=jnp.bfloat16)
    y, _ = call(model, jnp.asarray(values[:, None], jnp.bfloat16), eqx_state)
    show(
        "equinox, bfloat16, 56 values alternating 64 and 64.5 (bn.accuracy.forward, .running)",
        f"output {np.asarray(y[:2, 0], np.float64).tolist()} where [-1, 1] is right "
        f"(mean {values.mean()}, variance {values.var()}, each exact in bfloat16)",
    )

    # equinox: the zero-debiased hidden variance starts at 1 (bn.running.initial under a
    # zero-debiased profile); inference after one step reads var_B + 9 for momentum 0.9
    model, eqx_state, call = equinox_layer("batch")
    _, eqx_after = call(model, pair, eqx_state)
    _, var = eqx_after.get(model.batch_state_index)
    show(
        "equinox mode='batch', one step on [0, 1] (var_B 0.25), momentum 0.9",
        f"new layer hidden variance {float(eqx_state.get(model.batch_state_index)[1][0])}; "
        f"inference reads {float(var[0]) / (1 - 0.9):.4g} (= 0.25 + 9), a zero-debiased "
        "average from 0 reads 0.25",
    )

    # equinox mode="ema": training normalizes with the updated running statistics
    model, eqx_state, call = equinox_layer("ema")
    _, first = call(model, pair, eqx_state)
    y, _ = call(model, pair + 1.0, first)
    show(
        "equinox mode='ema', second step on [1, 2] after [0, 1] (bn.train.output)",
        f"output {np.asarray(y[:, 0]).tolist()} where the batch statistics give [-1, 1]; "
        f"a new layer's running variance {float(eqx_state.get(model.ema_state_index)[1][0])}"
        " (bn.running.initial), and the first step replaces it with the batch's "
        "(bn.running.mean, .var)",
    )


if __name__ == "__main__":
    main()
