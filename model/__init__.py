"""vggt-bench's own VGGT: state-dict compatible with the official checkpoint, with execution knobs.

    import model
    net = model.VGGT(model.VGGTConfig())            # VGGT-1B (random init on the CPU)
    net = model.build(model.VGGTConfig(), "cuda")    # same, initialised directly on the GPU
    model.checkpoint.load(net, "model.pt")           # strict
    model.set_precision(net, "bf16_autocast")
    net.configure(model.ExecutionConfig(frame_exec="fused", prune_depth=4, attention="sdpa"))
"""

from . import attention, checkpoint
from .config import (
    AggregatorConfig,
    CameraHeadConfig,
    ConfigError,
    DinoV2Config,
    DPTHeadConfig,
    ExecutionConfig,
    TrackerConfig,
    TrackHeadConfig,
    VGGTConfig,
)
from .vggt import VGGT, InputError, build, init_random_
from .execution import COMPILE_MODES, PRECISIONS, GraphedForward, apply_compile, set_precision

__all__ = [
    "AggregatorConfig", "CameraHeadConfig", "ConfigError", "DinoV2Config", "DPTHeadConfig", "ExecutionConfig",
    "TrackerConfig", "TrackHeadConfig", "VGGTConfig", "PRECISIONS", "VGGT", "InputError", "build",
    "init_random_", "set_precision", "apply_compile", "GraphedForward", "COMPILE_MODES", "attention", "checkpoint",
]
