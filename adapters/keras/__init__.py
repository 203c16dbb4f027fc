"""The Keras adapters: Keras 3's and tf_keras' layers on TensorFlow (``keras_layer``, on
TensorFlow's mechanism, :mod:`normspec.adapters.tensorflow`), Keras 3 on its JAX, PyTorch
and NumPy backends (``backend``, each in a worker started with its ``KERAS_BACKEND``), and
what both share (``_keras``). Declared here without importing Keras
(:mod:`normspec.adapters.declarations`)."""

from normspec.adapters.declarations import Adapters, BuiltinTarget, Recogniser

_LAYER = "normspec.adapters.keras.keras_layer"
_BACKEND = "normspec.adapters.keras.backend"
#: The one recogniser: dispatches on Keras' backend (keras_layer or backend).
_RECOGNISE = "normspec.adapters.keras._keras:recognise"
_KERAS = ("tensorflow", "keras")
_TF_KERAS = ("tensorflow", "tf_keras")
#: Keras 3's other backends: (backend, the library it needs besides keras).
_BACKENDS = (("jax", ("jax",)), ("torch", ("torch",)), ("numpy", ()))
_FAMILY = "normspec.adapters.keras.family"


def _family_on(backend: str, needs: tuple[str, ...]) -> tuple[BuiltinTarget, ...]:
    """``keras.layernorm.BACKEND``, ``keras.rmsnorm.BACKEND`` (layernorm.md) and
    ``keras.groupnorm.BACKEND`` (groupnorm.md): Keras 3's
    layers in a worker started with ``KERAS_BACKEND=BACKEND``."""
    return tuple(
        BuiltinTarget(
            f"keras.{kind}.{backend}",
            "keras",
            ("keras", *needs),
            f"keras.layers.{name} ({backend})",
            factory=f"{_FAMILY}:{factory}",
            reported=False,  # `normspec report`'s matrix is batch normalization's
            environment={"KERAS_BACKEND": backend},
        )
        for kind, name, factory in (
            ("layernorm", "LayerNormalization", "layer_normalization"),
            ("rmsnorm", "RMSNormalization", "rms_normalization"),
            ("groupnorm", "GroupNormalization", "group_normalization"),
        )
    )


def _on_backend(backend: str, needs: tuple[str, ...]) -> tuple[BuiltinTarget, ...]:
    """``keras.BACKEND`` (reported) and ``keras.renorm.BACKEND``: Keras 3's layer in a worker
    started with ``KERAS_BACKEND=BACKEND``."""
    environment = {"KERAS_BACKEND": backend}
    return (
        BuiltinTarget(
            f"keras.{backend}",
            "keras",
            ("keras", *needs),
            f"keras.layers.BatchNormalization ({backend})",
            factory=f"{_BACKEND}:keras_{backend}",
            environment=environment,
        ),
        BuiltinTarget(
            f"keras.renorm.{backend}",
            "tf_keras",
            ("keras", *needs),
            f"keras.layers.BatchNormalization(renorm=True) ({backend})",
            factory=f"{_BACKEND}:keras_renorm_{backend}",
            reported=False,
            environment=environment,
        ),
    )


ADAPTERS = Adapters(
    targets=(
        BuiltinTarget(
            "keras",
            "keras",
            _KERAS,
            "keras.layers.BatchNormalization",
            factory=f"{_LAYER}:keras_batchnorm",
        ),
        BuiltinTarget(
            "keras.tensorflow",
            "keras",
            _KERAS,
            "keras.layers.BatchNormalization (tensorflow)",
            factory=f"{_LAYER}:keras_batchnorm",
            reported=False,
        ),
        BuiltinTarget(
            "keras.renorm",
            "tf_keras",
            _KERAS,
            "keras.layers.BatchNormalization(renorm=True)",
            factory=f"{_LAYER}:keras_renorm",
            reported=False,
        ),
        *(target for backend, needs in _BACKENDS for target in _on_backend(backend, needs)),
        BuiltinTarget(
            "tf_keras",
            "tf_keras",
            _TF_KERAS,
            "tf_keras.layers.BatchNormalization",
            factory=f"{_LAYER}:tf_keras_nonfused",
        ),
        BuiltinTarget(
            "tf_keras.nonfused",
            "tf_keras",
            _TF_KERAS,
            "tf_keras.layers.BatchNormalization(fused=False)",
            factory=f"{_LAYER}:tf_keras_nonfused",
            reported=False,
        ),
        BuiltinTarget(
            "tf_keras.fused",
            "tf_keras_fused",
            _TF_KERAS,
            "tf_keras.layers.BatchNormalization(fused=True)",
            factory=f"{_LAYER}:tf_keras_fused",
        ),
        BuiltinTarget(
            "tf_keras.renorm",
            "tf_keras",
            _TF_KERAS,
            "tf_keras.layers.BatchNormalization(renorm=True)",
            factory=f"{_LAYER}:tf_keras_renorm",
        ),
        *_family_on("tensorflow", ("tensorflow",)),
        *(target for backend, needs in _BACKENDS for target in _family_on(backend, needs)),
        BuiltinTarget("tf_keras.layers:LayerNormalization", "tf_keras", _TF_KERAS, reported=False),
        BuiltinTarget("tf_keras.layers:GroupNormalization", "tf_keras", _TF_KERAS, reported=False),
    ),
    recognisers=(
        Recogniser("keras", f"{_FAMILY}:recognise"),  # LayerNorm, RMSNorm, GroupNorm
        Recogniser("tf_keras", f"{_FAMILY}:recognise"),
        Recogniser("keras", _RECOGNISE),
        Recogniser("tf_keras", _RECOGNISE),
    ),
)
