"""Precision and compilation, applied to a built model (neither changes the state dict)."""

from __future__ import annotations

import torch

from .config import COMPILE_MODES, PRECISIONS, ConfigError
from .vggt import VGGT

BLOCK_RECOMPILES = 64  # compiled entries of Block.forward kept per process (see apply_compile)


def set_precision(model: VGGT, precision: str, tf32: bool = False) -> VGGT:
    """``fp32``; ``bf16_autocast`` (upstream's way: fp32 weights, bf16 autocast in the aggregator
    and track head, the camera/depth/point heads in fp32); ``bf16``/``fp16`` (weights and
    activations in half precision everywhere).

    TF32 is a process-wide PyTorch switch for fp32 matmuls and convolutions on CUDA.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}
    model.to(dtype=half.get(precision, torch.float32))
    # The ImageNet constants are not weights: keep them exact in fp32.
    agg = model.aggregator
    agg._resnet_mean, agg._resnet_std = agg._resnet_mean.float(), agg._resnet_std.float()
    agg.reset_buffers()
    model.precision = precision
    torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
    torch.backends.cudnn.allow_tf32 = bool(tf32)
    return model


def apply_compile(model: VGGT, mode: str) -> VGGT:
    """``torch.compile`` every transformer block in place (state-dict names are kept).

    Blocks, not the whole model: the per-frame loops of sequential execution stay in Python,
    and each block compiles once per token count. ``mode`` is torch.compile's mode.
    """
    if mode not in COMPILE_MODES:
        raise ConfigError(f"unknown compile mode {mode!r}; choose one of {list(COMPILE_MODES)}")
    if mode == "off":
        return model
    # Every block shares Block.forward's code object, whose compiled entries dynamo caps at its recompile
    # limit (8 by default), past which it silently runs eager: each mode (frame blocks, the lean plan's
    # chunks, an approximation's qkv / q / finish parts) and each chunk length is an entry of its own.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, BLOCK_RECOMPILES)
    blocks = list(model.aggregator.frame_blocks) + list(model.aggregator.global_blocks)
    if hasattr(model.aggregator.patch_embed, "blocks"):
        blocks += list(model.aggregator.patch_embed.blocks)
    for block in blocks:
        block.compile(mode=None if mode == "default" else mode, dynamic=False)
    model.compile_mode = mode
    return model


class GraphedForward:
    """One CUDA graph of ``fn(images)`` for a fixed input shape, replayed on every call.

    For few frames the aggregator is launch-bound (thousands of small kernels); a graph
    replays them without the CPU in the loop. The input is copied into a static buffer and
    the returned outputs are the graph's static tensors (overwritten by the next call).
    """

    def __init__(self, fn, example: torch.Tensor, warmup: int = 2):
        if not example.is_cuda:
            raise ConfigError("CUDA graphs need a CUDA device (device=cuda)")
        self.fn = fn
        self.static_input = example.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # cuBLAS/cuDNN pick algorithms and workspaces outside capture
            for _ in range(warmup):
                fn(self.static_input)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_output = fn(self.static_input)

    def __call__(self, images: torch.Tensor):
        self.static_input.copy_(images)
        self.graph.replay()
        return self.static_output
