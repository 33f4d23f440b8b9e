"""The alternating-attention aggregator, with its execution strategies.

Tokens per frame: camera (1), registers (R), patches (row-major); ``P = 1 + R + h*w``.
Frame attention works on ``[B*S, P, C]``, global attention on ``[B, S*P, C]``.
"""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn

from . import approximate
from .config import AggregatorConfig, DinoV2Config, ExecutionConfig
from .dinov2 import ConvPatchEmbed, DinoV2
from .layers import Block, Rope2D, row_chunks
from .nvtx import OFF, Ranges
from .offload import HostLayer, Offloader

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Aggregator(nn.Module):
    """``images [B, S, 3, H, W]`` in [0, 1] -> list of ``depth`` layer outputs ``[B, S, P, 2C]`` (or None).

    Each kept entry is ``cat(frame_out, global_out)`` of that layer; layers not in
    ``cfg.cached_layers()`` are None, so the heads' layer indices keep their meaning and
    memory holds only what the heads read.
    """

    def __init__(self, cfg: AggregatorConfig, vit: Optional[DinoV2Config] = None):
        super().__init__()
        self.cfg = cfg
        C = cfg.embed_dim
        # Own parameters first: that is the checkpoint's order.
        self.camera_token = nn.Parameter(torch.randn(1, 2, 1, C) * 1e-6)
        self.register_token = nn.Parameter(torch.randn(1, 2, cfg.num_register_tokens, C) * 1e-6)
        self.patch_embed = DinoV2(vit) if vit is not None else ConvPatchEmbed(cfg.patch_size, 3, C)

        def blocks():
            return nn.ModuleList(
                Block(
                    C, cfg.num_heads, cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, proj_bias=cfg.proj_bias,
                    ffn_bias=cfg.ffn_bias, init_values=cfg.init_values, qk_norm=cfg.qk_norm,
                )
                for _ in range(cfg.depth)
            )

        self.frame_blocks = blocks()
        self.global_blocks = blocks()
        # Images are normalised inside the model; not in the checkpoint (non-persistent).
        self.register_buffer("_resnet_mean", torch.empty(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("_resnet_std", torch.empty(1, 1, 3, 1, 1), persistent=False)
        self.reset_buffers()
        self.cached = cfg.cached_layers()
        self.execution = ExecutionConfig()
        self.ranges: Ranges = OFF
        self.attend = None  # set by configure(): frame layers and the patch embed
        self.attend_global = None  # set by configure(): global layers
        self.context = None  # set by configure() for context_parallel > 1 (model.context_parallel)
        self.approx_kernel = None  # set by configure() for kv_keep, global_sparsity (approximate.KernelChoice)
        self._rope_cache = {}
        self.grid = (0, 0)  # the patch grid of the current forward (rows, cols): approximations read it

    def reset_buffers(self):
        """(Re)fill the normalisation constants, e.g. after ``to_empty``."""
        if self._resnet_mean.is_meta:
            return
        with torch.no_grad():
            self._resnet_mean.copy_(torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1))
            self._resnet_std.copy_(torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1))

    @property
    def patch_start_idx(self) -> int:
        return self.cfg.patch_start_idx

    # ---- pieces ---------------------------------------------------------------------------
    def special_tokens(self, B: int, S: int) -> torch.Tensor:
        """``[B*S, 1+R, C]``: index 0 of the camera/register tokens for frame 0, index 1 for the rest
        (sharded over ranks, frame 0 is on the first rank only)."""
        firsts = 1 if self.context is None or self.context.holds_first_frame else 0

        def per_frame(t):
            first = t[:, :1].expand(B, firsts, *t.shape[2:])
            rest = t[:, 1:].expand(B, S - firsts, *t.shape[2:])
            return torch.cat((first, rest), dim=1).reshape(B * S, *t.shape[2:])

        return torch.cat((per_frame(self.camera_token), per_frame(self.register_token)), dim=1)

    def rope_tables(self, rows: int, cols: int, device) -> Optional[Rope2D]:
        """RoPE for one frame: specials at (0, 0) (no rotation), patch (r, c) at (r+1, c+1).

        Cached per grid and device: the tables depend on the shape only, and building them
        each forward would add kernels (and, done naively, a host sync) to every call.
        """
        if self.cfg.rope_freq <= 0:
            return None
        key = (rows, cols, str(device))
        if key not in self._rope_cache:
            grid = torch.cartesian_prod(torch.arange(rows, device=device), torch.arange(cols, device=device)) + 1
            special = torch.zeros(self.patch_start_idx, 2, dtype=grid.dtype, device=device)
            self._rope_cache[key] = Rope2D(
                torch.cat((special, grid)), self.cfg.head_dim, self.cfg.rope_freq, max(rows, cols) + 1
            )
        return self._rope_cache[key]

    def frames_per_call(self, tokens_per_frame: int, total: int) -> int:
        """Frames per call of a frame-attention layer: ``frame_exec`` says (one, ``frame_chunk``, or
        all); under the lean and offload plans ``fused`` means as many as fit ``token_chunk`` tokens."""
        ex = self.execution
        if ex.frame_exec == "sequential":
            return 1
        if ex.frame_exec == "chunked":
            return ex.frame_chunk
        if ex.memory_plan != "upstream" and ex.token_chunk > 0:
            return max(1, ex.token_chunk // tokens_per_frame)
        return total

    def run_per_frame(self, block: Block, x: torch.Tensor, rope) -> torch.Tensor:
        """Apply ``block`` within each frame of ``x [B*S, P, C]`` as ``execution.frame_exec`` says."""
        step = self.frames_per_call(x.shape[1], x.shape[0])
        if step >= x.shape[0]:
            return block(x, self.attend, rope, self.ranges)
        out = None
        for start in range(0, x.shape[0], step):
            part = block(x[start : start + step], self.attend, rope, self.ranges)
            if out is None:  # the result's dtype, not the input's: a residual add can promote bf16 to fp32
                out = part.new_empty((x.shape[0],) + part.shape[1:])
            out[start : start + step] = part
        return out

    def run_per_frame_inplace(self, block: Block, x: torch.Tensor, rope) -> torch.Tensor:
        """The same, written into ``x`` itself, a chunk of frames at a time (lean and offload plans)."""
        for part in row_chunks(x.shape[0], self.frames_per_call(x.shape[1], x.shape[0])):
            block(x[part], self.attend, rope, self.ranges, mode="inplace")
        return x

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``images [B, S, 3, H, W]`` -> tokens ``[B*S, P, C]``: specials then patch tokens."""
        B, S, _, H, W = images.shape
        # normalised in fp32 whatever the input dtype (the constants stay fp32)
        x = ((images.float() - self._resnet_mean) / self._resnet_std).to(images.dtype).reshape(B * S, 3, H, W)
        if isinstance(self.patch_embed, DinoV2):
            patches = self.patch_embed(x, self.attend, self.ranges)
        else:
            patches = self.patch_embed(x)
        return torch.cat((self.special_tokens(B, S).to(patches.dtype), patches), dim=1)

    # ---- forward --------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> List[Optional[torch.Tensor]]:
        if self.execution.memory_plan == "upstream":
            return self._forward_upstream(images)
        return self._forward_lean(images, offload=self.execution.memory_plan == "offload")

    def _forward_upstream(self, images: torch.Tensor) -> List[Optional[torch.Tensor]]:
        """Upstream's way: every layer returns new tensors; each layer's frame and global outputs
        live until its concatenation."""
        B, S, _, H, W = images.shape
        p = self.cfg.patch_size
        ranges = self.ranges
        with ranges("patch_embed"):
            tokens = self.embed(images)  # [B*S, P, C]
        _, P, C = tokens.shape
        rope = self.rope_tables(H // p, W // p, images.device)
        self.grid = (H // p, W // p)

        outputs: List[Optional[torch.Tensor]] = []
        k = self.execution.prune_depth
        step = self.cfg.aa_block_size
        for group in range(self.cfg.depth // step):
            kept = {}
            # one range per layer (per group of aa_block_size layers), frame and global inside
            with ranges(f"layer_{group * step:02d}"):
                for kind in self.cfg.aa_order:
                    kept[kind] = []
                    for i in range(group * step, (group + 1) * step):
                        tokens = self._layer(kind, i, i < k, tokens, B, S, P, C, rope)
                        kept[kind].append(tokens)
            for j in range(step):
                if len(outputs) in self.cached:
                    outputs.append(self.keep_output(kept["frame"][j], kept["global"][j], (B, S, P, C)))
                else:
                    outputs.append(None)
        return outputs

    @staticmethod
    def new_output(like: torch.Tensor, shape) -> torch.Tensor:
        """An empty kept layer output ``[B, S, P, 2C]``. Every plan that keeps outputs on the device
        allocates them here (the memory profiler recognises them by it)."""
        B, S, P, C = shape
        return like.new_empty((B, S, P, 2 * C))

    def keep_output(self, frame_out: torch.Tensor, global_out: torch.Tensor, shape) -> torch.Tensor:
        """A kept layer output ``[B, S, P, 2C]``: ``cat(frame_out, global_out, -1)``."""
        B, S, P, C = shape
        out = self.new_output(frame_out, shape)
        out[..., :C] = frame_out.view(B, S, P, C)
        out[..., C:] = global_out.view(B, S, P, C)
        return out

    @staticmethod
    def snapshot(tokens: torch.Tensor, mover: Optional[Offloader]) -> torch.Tensor:
        """A copy of the residual stream as it is now, kept for a layer output (on the host under offload)."""
        return mover.snapshot(tokens) if mover else tokens.clone()

    def _forward_lean(self, images: torch.Tensor, offload: bool) -> List[Optional[torch.Tensor]]:
        """The same function in less memory.

        The patch embed runs over chunks of frames; every block is written into one residual stream
        in place, its per-token work over chunks of ``token_chunk`` tokens (a global layer holds only
        its keys and values whole). A kept layer's residual stream lives in the second half of its
        output buffer ``[B, S, P, 2C]`` (its first block's output is copied into the first half), so
        keeping a layer costs no tensor beyond the output itself. ``offload``: kept outputs are
        copied to pinned host memory on a side stream instead (``HostLayer``).
        """
        B, S, _, H, W = images.shape
        p = self.cfg.patch_size
        ranges = self.ranges
        ex = self.execution
        P = (H // p) * (W // p) + self.patch_start_idx
        chunk_frames = max(1, ex.token_chunk // P) if ex.token_chunk > 0 else B * S
        with ranges("patch_embed"):
            tokens = self._embed_chunked(images, chunk_frames)  # [B*S, P, C], the residual stream
        C = tokens.shape[-1]
        rope = self.rope_tables(H // p, W // p, images.device)
        self.grid = (H // p, W // p)
        rows = chunk_frames * P
        if self.cfg.aa_block_size != 1 or offload:
            return self._lean_by_snapshots(tokens, images.device, B, S, P, C, rope, rows, offload)
        first, second = self.cfg.aa_order
        outputs: List[Optional[torch.Tensor]] = []
        aliased = False  # tokens is a view into a kept output: copy it before changing it
        for i in range(self.cfg.depth):
            keep = i in self.cached
            with ranges(f"layer_{i:02d}"):
                promoted = tokens.dtype != self._stream_dtype(tokens.dtype)
                if promoted:  # the first block returns the stream in its own dtype, as upstream's does
                    tokens = self._layer(first, i, i < ex.prune_depth, tokens, B, S, P, C, rope)
                if keep:
                    out = self.new_output(tokens, (B, S, P, C))
                    if promoted:
                        out[..., :C] = tokens.view(B, S, P, C)
                    out[..., C:] = tokens.view(B, S, P, C)
                    tokens, aliased = out[..., C:].view(B * S, P, C), True
                elif aliased:
                    tokens, aliased = tokens.clone(memory_format=torch.contiguous_format), False
                if not promoted:
                    self._layer_inplace(first, i, tokens, B, S, P, C, rope, rows)
                    if keep:
                        out[..., :C] = tokens.view(B, S, P, C)
                self._layer_inplace(second, i, tokens, B, S, P, C, rope, rows)
            outputs.append(out if keep else None)
            out = None
        return outputs

    def _stream_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The residual stream's dtype after a block: ``x + ls(y)`` with a float32 LayerScale is
        float32 even where autocast made the patch tokens bf16 (a conv patch embed does)."""
        gamma = getattr(self.frame_blocks[0].ls1, "gamma", None)
        return dtype if gamma is None else torch.promote_types(dtype, gamma.dtype)

    def _lean_by_snapshots(self, tokens, device, B, S, P, C, rope, rows, offload):
        """The lean plan for groups of several layers (``aa_block_size`` > 1) and for ``offload``:
        a kept output is assembled from copies of the stream (on the host under offload)."""
        mover = Offloader(device) if offload else None
        order = self.cfg.aa_order
        aa = self.cfg.aa_block_size
        outputs: List[Optional[torch.Tensor]] = []
        for group in range(self.cfg.depth // aa):
            layers = range(group * aa, (group + 1) * aa)
            kept = {kind: {} for kind in order}
            with self.ranges(f"layer_{layers[0]:02d}"):
                for kind in order:
                    for i in layers:
                        if tokens.dtype != self._stream_dtype(tokens.dtype):  # the first block, as above
                            tokens = self._layer(kind, i, i < self.execution.prune_depth, tokens, B, S, P, C, rope)
                        else:
                            self._layer_inplace(kind, i, tokens, B, S, P, C, rope, rows)
                        if i in self.cached:
                            last = kind == order[-1] and i == layers[-1] and not mover  # assembled before tokens change
                            kept[kind][i] = tokens if last else self.snapshot(tokens, mover)
            for i in layers:
                if i not in self.cached:
                    outputs.append(None)
                    continue
                halves = kept["frame"].pop(i), kept["global"].pop(i)
                if mover:
                    outputs.append(HostLayer(*halves, (B, S, P, 2 * C), device, mover))
                else:
                    outputs.append(self.keep_output(*halves, (B, S, P, C)))
                del halves
        if mover:
            mover.finish()
        return outputs

    def _embed_chunked(self, images: torch.Tensor, chunk_frames: int) -> torch.Tensor:
        """``embed`` over chunks of frames, written into one tensor (specials filled once)."""
        B, S, _, H, W = images.shape
        frames = images.reshape(B * S, 3, H, W)
        mean, std = self._resnet_mean.view(1, 3, 1, 1), self._resnet_std.view(1, 3, 1, 1)
        start = self.patch_start_idx
        tokens = None
        for part in row_chunks(B * S, chunk_frames):
            x = ((frames[part].float() - mean) / std).to(images.dtype)
            if isinstance(self.patch_embed, DinoV2):
                patches = self.patch_embed(x, self.attend, self.ranges)
            else:
                patches = self.patch_embed(x)
            if tokens is None:
                tokens = patches.new_empty((B * S, start + patches.shape[1], patches.shape[2]))
            tokens[part, start:] = patches
            del x, patches
        tokens[:, :start] = self.special_tokens(B, S).to(tokens.dtype)
        return tokens

    def _layer_inplace(self, kind, i, tokens, B, S, P, C, rope, rows):
        ranges = self.ranges
        if kind == "frame":
            with ranges("frame_block"):
                self.run_per_frame_inplace(self.frame_blocks[i], tokens, rope)
        elif i < self.execution.prune_depth:  # global layer turned into frame attention
            block = self.global_blocks[i] if self.execution.prune_weights == "global" else self.frame_blocks[i]
            with ranges("converted_block"):
                self.run_per_frame_inplace(block, tokens, rope)
        elif self.context is not None:  # context parallel: the other ranks' frames join in (model/context_parallel.py)
            with ranges("global_block"):
                self.context.global_block(self.global_blocks[i], tokens.view(B, S * P, C), rope, ranges)
        else:
            with ranges("global_block"):
                self._global(i, tokens, B, S, P, C, rope, "chunked", rows)

    def _layer(self, kind, i, converted, tokens, B, S, P, C, rope):
        ranges = self.ranges
        if kind == "frame":
            with ranges("frame_block"):
                return self.run_per_frame(self.frame_blocks[i], tokens, rope)
        if converted:  # global layer turned into frame attention
            block = self.global_blocks[i] if self.execution.prune_weights == "global" else self.frame_blocks[i]
            with ranges("converted_block"):
                return self.run_per_frame(block, tokens, rope)
        with ranges("global_block"):
            return self._global(i, tokens, B, S, P, C, rope, "return").view(B * S, P, C)

    def _global(self, i, tokens, B, S, P, C, rope, mode, rows=0):
        """Global layer ``i`` over ``tokens [B*S, P, C]`` as one sequence per batch item; where an
        attention approximation is on for this layer, ``vggt_model.approximate`` runs it instead."""
        x = tokens.view(B, S * P, C)
        if self.execution.approximated(i, self.cfg.depth):
            layout = approximate.Layout(S, P, self.patch_start_idx, *self.grid)
            return approximate.global_layer(self.global_blocks[i], x, self.attend_global, rope, self.ranges,
                                            self.execution, layout, inplace=mode != "return", rows=rows,
                                            kernel=self.approx_kernel)
        return self.global_blocks[i](x, self.attend_global, rope, self.ranges, mode=mode, rows=rows)
