"""vggt-bench's own VGGT: state-dict compatible with the official checkpoint, with execution knobs.

    import vggt_model
    net = vggt_model.VGGT(vggt_model.VGGTConfig())            # VGGT-1B (random init on the CPU)
    net = vggt_model.build(vggt_model.VGGTConfig(), "cuda")    # same, initialised directly on the GPU
    vggt_model.checkpoint.load(net, "model.pt")                # strict
    vggt_model.set_precision(net, "bf16_autocast")
    net.configure(vggt_model.ExecutionConfig(frame_exec="fused", prune_depth=4, attention="sdpa"))

The repository folder is ``model/``; it is installed under the import name ``vggt_model``.
"""

from . import attention, checkpoint
from .config import (
    COMPILE_MODES,
    PRECISIONS,
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
from .offload import HostLayer, materialize
from .vggt import VGGT, InputError, build, init_random_
from .execution import GraphedForward, apply_compile, set_precision

__all__ = [
    "AggregatorConfig", "CameraHeadConfig", "ConfigError", "DinoV2Config", "DPTHeadConfig", "ExecutionConfig",
    "TrackerConfig", "TrackHeadConfig", "VGGTConfig", "PRECISIONS", "VGGT", "InputError", "build",
    "init_random_", "HostLayer", "materialize", "set_precision", "apply_compile", "GraphedForward", "COMPILE_MODES", "attention", "checkpoint",
]
