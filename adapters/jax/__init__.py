"""The JAX adapters: Flax linen and nnx (and renorm-shaped linen and nnx modules, ``flax_renorm``),
haiku, equinox, and functions written in JAX
(``functional``), on one mechanism (``_jax``); with what only they need: the host devices
the ``sync.*`` clauses ask XLA for (``devices``) and JAX's persistent compilation cache
(``compile_cache``). Declared here without importing JAX
(:mod:`normspec.adapters.declarations`)."""

from normspec.adapters.declarations import Adapters, BuiltinTarget, Recogniser

_HERE = "normspec.adapters.jax"
#: The LayerNorm/RMSNorm targets: (module, package, profile) (``family``).
_FAMILY = (
    ("flax.linen", "flax", "flax"),
    ("flax.nnx", "flax", "flax"),
    ("haiku", "haiku", "haiku"),
    ("equinox.nn", "equinox", "equinox_batch"),  # eps=1e-5 (measured: identify)
)
_FAMILY_PACKAGES = ("flax", "haiku", "equinox")

ADAPTERS = Adapters(
    targets=(
        BuiltinTarget(
            "flax.linen",
            "flax",
            ("jax", "flax"),
            "flax.linen.BatchNorm",
            factory=f"{_HERE}.flax_linen:linen_batchnorm",
        ),
        BuiltinTarget(
            "flax.linen.two_pass",
            "flax",
            ("jax", "flax"),
            "flax.linen.BatchNorm(use_fast_variance=False)",
            factory=f"{_HERE}.flax_linen:linen_batchnorm_two_pass",
            reported=False,
        ),
        BuiltinTarget(
            "flax.nnx",
            "flax",
            ("jax", "flax"),
            "flax.nnx.BatchNorm",
            factory=f"{_HERE}.flax_nnx:nnx_batchnorm",
        ),
        BuiltinTarget(
            "flax.nnx.two_pass",
            "flax",
            ("jax", "flax"),
            "flax.nnx.BatchNorm(use_fast_variance=False)",
            factory=f"{_HERE}.flax_nnx:nnx_batchnorm_two_pass",
            reported=False,
        ),
        # zero-debiased moving averages; equinox's default mode="ema" fits no dialect (its
        # training normalizes with the updated running averages), checked under flax's
        BuiltinTarget(
            "haiku",
            "haiku",
            ("jax", "haiku"),
            "haiku.BatchNorm",
            factory=f"{_HERE}.haiku_module:haiku_batchnorm",
        ),
        BuiltinTarget(
            "equinox",
            "equinox_batch",
            ("jax", "equinox"),
            'equinox.nn.BatchNorm(mode="batch")',
            factory=f"{_HERE}.equinox_module:equinox_batchnorm",
        ),
        BuiltinTarget(
            "equinox.ema",
            "flax",
            ("jax", "equinox"),
            'equinox.nn.BatchNorm(mode="ema")',
            factory=f"{_HERE}.equinox_module:equinox_batchnorm_ema",
        ),
        # LayerNorm, RMSNorm (layernorm.md), GroupNorm and Flax's InstanceNorm (groupnorm.md),
        # recognised by their constructors; not in `normspec report` yet (its matrix is
        # batch normalization's)
        *(
            BuiltinTarget(f"{library}:{name}", profile, ("jax", package), reported=False)
            for library, package, profile in _FAMILY
            for name in ("LayerNorm", "RMSNorm", "GroupNorm")
        ),
        *(
            BuiltinTarget(f"flax.{api}:InstanceNorm", "flax", ("jax", "flax"), reported=False)
            for api in ("linen", "nnx")
        ),
    ),
    recognisers=(
        *(Recogniser(package, f"{_HERE}.family:recognise") for package in _FAMILY_PACKAGES),
        Recogniser("flax", f"{_HERE}.flax_renorm:recognise"),
        Recogniser("flax", f"{_HERE}.flax_linen:recognise"),
        Recogniser("flax", f"{_HERE}.flax_nnx:recognise"),
        Recogniser("haiku", f"{_HERE}.haiku_module:recognise"),
        Recogniser("equinox", f"{_HERE}.equinox_module:recognise"),
        Recogniser("jax", f"{_HERE}.functional:recognise"),
    ),
)
