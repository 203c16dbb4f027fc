"""The TensorFlow adapters: ``tf.nn``'s batch normalization functions (``tf_nn``), and the
mechanism TensorFlow's and Keras' adapters share (``_tf``). Declared here without importing
TensorFlow (:mod:`normspec.adapters.declarations`)."""

from normspec.adapters.declarations import Adapters, BuiltinTarget

_NN = "normspec.adapters.tensorflow.tf_nn"

ADAPTERS = Adapters(
    targets=(
        BuiltinTarget(
            "tf.nn",
            "tf_keras",
            ("tensorflow",),
            "tf.nn.batch_normalization",
            factory=f"{_NN}:BatchNormalizationFunctional",
        ),
        BuiltinTarget(
            "tf.nn.batch_normalization",
            "tf_keras",
            ("tensorflow",),
            "tf.nn.batch_normalization",
            factory=f"{_NN}:BatchNormalizationFunctional",
            reported=False,
        ),
        BuiltinTarget(
            "tf.nn.fused_batch_norm",
            "torch",
            ("tensorflow",),
            "tf.compat.v1.nn.fused_batch_norm",
            factory=f"{_NN}:FusedBatchNormFunctional",
        ),
    ),
)
