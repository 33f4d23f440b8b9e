"""FLOPs of one forward (2 per multiply-add), from the configuration and shapes.

The aggregator and camera head are counted analytically: linear layers and attention
matmuls, as ``torch.utils.flop_counter.FlopCounterMode`` counts them (elementwise ops,
norms, softmax and RoPE are not counted). Global layers converted to frame attention are
counted as frame attention; global layers under an attention approximation (kv_keep, merge_ratio,
global_sparsity) count the attention it computes (``vggt_model.approximate.attention_flops``). DPT and track heads, which are convolution pyramids, are
counted by ``FlopCounterMode`` on the meta device (no memory, no compute).
"""

from __future__ import annotations

import functools
from typing import Dict, Optional

import torch

from vggt_model.config import ExecutionConfig, VGGTConfig


def _block_linear(d: int, hidden: int, tokens: int) -> int:
    """qkv (3d^2) + proj (d^2) + mlp (2 d hidden), 2 FLOPs per multiply-add, per token."""
    return 2 * tokens * (4 * d * d + 2 * d * hidden)


def _attention(d: int, seq: int) -> int:
    """QK^T and AV: 2 * (2 seq^2 d)."""
    return 4 * seq * seq * d


def aggregator_flops(cfg: VGGTConfig, height: int, width: int, frames: int, batch: int = 1, prune_depth: int = 0,
                     execution: Optional[ExecutionConfig] = None) -> Dict[str, int]:
    """``{patch_embed, frame_blocks, global_blocks, total}`` FLOPs of the aggregator (``execution``: the
    attention approximations it runs, if any)."""
    agg = cfg.aggregator
    p = agg.patch_size
    patches = (height // p) * (width // p)
    n_frames = batch * frames
    T = patches + agg.patch_start_idx
    d, hidden = agg.embed_dim, int(agg.embed_dim * agg.mlp_ratio)

    vit = cfg.vit_config()
    if vit is None:
        patch_embed = 2 * patches * d * 3 * p * p * n_frames
    else:
        dv, hv = vit.embed_dim, int(vit.embed_dim * vit.mlp_ratio)
        Tv = patches + 1 + vit.num_register_tokens
        per_frame = vit.depth * (_block_linear(dv, hv, Tv) + _attention(dv, Tv)) + 2 * patches * dv * 3 * p * p
        patch_embed = per_frame * n_frames

    frame_layer = n_frames * (_block_linear(d, hidden, T) + _attention(d, T))
    global_layer = n_frames * _block_linear(d, hidden, T) + batch * _attention(d, frames * T)
    k = prune_depth
    frame_blocks = agg.depth * frame_layer
    global_blocks = k * frame_layer + (agg.depth - k) * global_layer
    if execution is not None and execution.approximations():
        from vggt_model import approximate

        layout = approximate.Layout(frames, T, agg.patch_start_idx, height // p, width // p)
        approximated = sum(execution.replace(prune_depth=k).approximated(i, agg.depth) for i in range(agg.depth))
        cheaper = batch * (_attention(d, frames * T) - approximate.attention_flops(layout, d, execution))
        global_blocks -= approximated * cheaper
    return {
        "patch_embed": patch_embed,
        "frame_blocks": frame_blocks,
        "global_blocks": global_blocks,
        "total": patch_embed + frame_blocks + global_blocks,
    }


def camera_head_flops(cfg: VGGTConfig, frames: int, batch: int = 1) -> int:
    cam = cfg.camera_head
    if cam is None:
        return 0
    d, hidden = cam.dim_in, int(cam.dim_in * cam.mlp_ratio)
    S = frames
    per_iter = (
        2 * S * 9 * d                       # embed_pose
        + 2 * S * d * 3 * d                 # adaLN modulation
        + cam.trunk_depth * (_block_linear(d, hidden, S) + _attention(d, S))
        + 2 * S * (d * (d // 2) + (d // 2) * 9)  # pose branch
    )
    return batch * cam.num_iterations * per_iter


@functools.lru_cache(maxsize=64)
def _counted_heads(cfg_key: str, height: int, width: int, frames: int, batch: int, query_points: int) -> Dict[str, int]:
    from torch.utils.flop_counter import FlopCounterMode

    from vggt_model.dpt_head import DPTHead
    from vggt_model.track_head import TrackHead

    cfg = _CONFIGS[cfg_key]
    agg = cfg.aggregator
    P = (height // agg.patch_size) * (width // agg.patch_size) + agg.patch_start_idx
    out = {}
    with torch.device("meta"):
        layers = [
            torch.empty(batch, frames, P, 2 * agg.embed_dim) if i in agg.cached_layers() else None
            for i in range(agg.depth)
        ]
        images = torch.empty(batch, frames, 3, height, width)
        for name in ("depth_head", "point_head"):
            head_cfg = getattr(cfg, name)
            if head_cfg is None:
                continue
            head = DPTHead(head_cfg)
            with FlopCounterMode(display=False) as counter:
                head(layers, images, agg.patch_start_idx)
            out[name] = counter.get_total_flops()
        if cfg.track_head is not None and query_points > 0:
            head = TrackHead(cfg.track_head)
            queries = torch.zeros(batch, query_points, 2)
            with FlopCounterMode(display=False) as counter:
                head(layers, images, agg.patch_start_idx, queries)
            out["track_head"] = counter.get_total_flops()
    return out


_CONFIGS: Dict[str, VGGTConfig] = {}


def head_flops(cfg: VGGTConfig, height: int, width: int, frames: int, batch: int = 1, query_points: int = 0) -> Dict[str, int]:
    """FLOPs of each head that a full forward runs."""
    key = repr(cfg.to_dict())
    _CONFIGS[key] = cfg
    out = {"camera_head": camera_head_flops(cfg, frames, batch)}
    out.update(_counted_heads(key, height, width, frames, batch, query_points))
    return out


def forward_flops(cfg: VGGTConfig, part: str, height: int, width: int, frames: int, batch: int = 1,
                  prune_depth: int = 0, query_points: int = 0, execution: Optional[ExecutionConfig] = None) -> int:
    """FLOPs of the timed part: ``aggregator`` or ``full`` (aggregator plus the heads it runs)."""
    total = aggregator_flops(cfg, height, width, frames, batch, prune_depth, execution)["total"]
    if part == "full":
        total += sum(head_flops(cfg, height, width, frames, batch, query_points).values())
    return total
