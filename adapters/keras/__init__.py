"""The Keras adapters: Keras 3's and tf_keras' layers (``keras_layer``), on TensorFlow's
mechanism (:mod:`normspec.adapters.tensorflow`). Declared here without importing Keras
(:mod:`normspec.adapters.declarations`)."""

from normspec.adapters.declarations import Adapters, BuiltinTarget, Recogniser

_LAYER = "normspec.adapters.keras.keras_layer"
_KERAS = ("tensorflow", "keras")
_TF_KERAS = ("tensorflow", "tf_keras")

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
            "keras.renorm",
            "tf_keras",
            _KERAS,
            "keras.layers.BatchNormalization(renorm=True)",
            factory=f"{_LAYER}:keras_renorm",
            reported=False,
        ),
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
    ),
    recognisers=(
        Recogniser("keras", f"{_LAYER}:recognise"),
        Recogniser("tf_keras", f"{_LAYER}:recognise"),
    ),
)
