"""The PyTorch adapters: ``torch.nn`` modules (``module``), renorm-shaped modules
(``renorm``), LayerNorm- and RMSNorm-shaped modules and functions (``family``), GroupNorm-
and InstanceNorm-shaped ones (``grouped``), ``F.batch_norm`` (``functional``), synchronized modules on K processes
(``distributed``). Declared here without importing
torch (:mod:`normspec.adapters.declarations`)."""

from normspec.adapters.declarations import Adapters, BuiltinTarget, Recogniser

_HERE = "normspec.adapters.torch"

ADAPTERS = Adapters(
    targets=(
        BuiltinTarget("torch.nn:BatchNorm2d", "torch", ("torch",)),
        BuiltinTarget(
            "torch.functional",
            "torch",
            ("torch",),
            "torch.nn.functional.batch_norm",
            factory=f"{_HERE}.functional:FunctionalBatchNorm",
        ),
        # its sync.* clauses run on K processes on GPUs, and are not applicable on the CPU
        BuiltinTarget("torch.nn:SyncBatchNorm", "torch", ("torch",), "torch.nn.SyncBatchNorm"),
        # the normalization family (layernorm.md, groupnorm.md), in the report beside BN
        BuiltinTarget("torch.nn:LayerNorm", "torch", ("torch",), "torch.nn.LayerNorm"),
        BuiltinTarget("torch.nn:RMSNorm", "torch", ("torch",), "torch.nn.RMSNorm"),
        BuiltinTarget("torch.nn:GroupNorm", "torch", ("torch",), "torch.nn.GroupNorm"),
        BuiltinTarget("torch.nn:InstanceNorm2d", "torch", ("torch",), "torch.nn.InstanceNorm2d"),
    ),
    recognisers=(
        Recogniser("torch", f"{_HERE}.family:recognise"),  # LayerNorm, RMSNorm (layernorm.md)
        Recogniser("torch", f"{_HERE}.grouped:recognise"),  # GroupNorm, InstanceNorm
        Recogniser("torch", f"{_HERE}.distributed:recognise"),
        Recogniser("torch", f"{_HERE}.renorm:recognise"),
        Recogniser("torch", f"{_HERE}.module:recognise"),
    ),
    explainers=(
        Recogniser("torch", f"{_HERE}.renorm:explain"),
        Recogniser("torch", f"{_HERE}.module:explain"),
    ),
)
