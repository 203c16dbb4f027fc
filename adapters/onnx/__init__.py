"""The ONNX adapters: the BatchNormalization operator of every opset through
``onnx.reference`` and ``onnxruntime`` (``op``; ``onnxruntime(opset=9)``), and a BN node of
a user's model file, ``model.onnx#Node`` (``file``). Declared here without importing onnx
(:mod:`normspec.adapters.declarations`)."""

from normspec.adapters.declarations import Adapters, BuiltinTarget

_OP = "normspec.adapters.onnx.op"
_FAMILY = "normspec.adapters.onnx.family"
_RUNTIME = ("onnx", "onnxruntime")

ADAPTERS = Adapters(
    targets=(
        BuiltinTarget(
            "onnx.reference",
            "onnx",
            ("onnx",),
            "onnx.reference.ReferenceEvaluator (opset 15)",
            factory=f"{_OP}:reference_evaluator",
        ),
        BuiltinTarget(
            "onnxruntime",
            "onnx",
            ("onnx", "onnxruntime"),
            "onnxruntime CPU (opset 15)",
            factory=f"{_OP}:onnxruntime_cpu",
        ),
        # LayerNormalization-17, RMSNormalization-23 (layernorm.md), GroupNormalization-21
        # and InstanceNormalization-6 (groupnorm.md)
        *(
            BuiltinTarget(
                f"{runtime}.{kind}",
                "onnx",
                needs,
                f"{label} ({runtime})",
                factory=f"{_FAMILY}:{runtime.replace('onnx.', '')}_{kind}",
                reported=False,  # `normspec report`'s matrix is batch normalization's
            )
            for runtime, needs in (("onnx.reference", ("onnx",)), ("onnxruntime", _RUNTIME))
            for kind, label in (
                ("layernorm", "LayerNormalization-17"),
                ("rmsnorm", "RMSNormalization-23"),
                ("groupnorm", "GroupNormalization-21"),
                ("instancenorm", "InstanceNormalization-6"),
            )
        ),
    ),
    file_loaders=((".onnx", "normspec.adapters.onnx.file:load_node"),),
)
