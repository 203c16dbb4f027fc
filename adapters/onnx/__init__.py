"""The ONNX adapters: the BatchNormalization operator of every opset through
``onnx.reference`` and ``onnxruntime`` (``op``; ``onnxruntime(opset=9)``), and a BN node of
a user's model file, ``model.onnx#Node`` (``file``). Declared here without importing onnx
(:mod:`normspec.adapters.declarations`)."""

from normspec.adapters.declarations import Adapters, BuiltinTarget

_OP = "normspec.adapters.onnx.op"

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
    ),
    file_loaders=((".onnx", "normspec.adapters.onnx.file:load_node"),),
)
