"""Patch embeddings: the DINOv2 ViT with registers (VGGT-1B) and the simple conv one."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import DinoV2Config
from .layers import Block
from .nvtx import OFF, Ranges


class ConvPatchEmbed(nn.Module):
    """``[N, 3, H, W] -> [N, (H/p)*(W/p), C]`` by one strided convolution (upstream ``PatchEmbed``)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoV2(nn.Module):
    """DINOv2 ViT with register tokens; ``forward`` returns the normalised patch tokens ``[N, P, C]``.

    Token order inside: cls, registers, patches (row-major). The cls token and the patches
    carry the (interpolated) position embedding; the registers carry none.
    """

    def __init__(self, cfg: DinoV2Config):
        super().__init__()
        if cfg.ffn_layer != "mlp" or cfg.block_chunks != 0 or cfg.qk_norm:
            raise ValueError("only the DINOv2 variant VGGT uses is supported: ffn_layer='mlp', block_chunks=0, qk_norm=False")
        self.cfg = cfg
        self.patch_size = cfg.patch_size
        grid = cfg.img_size // cfg.patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, cfg.embed_dim))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, cfg.num_register_tokens, cfg.embed_dim)) if cfg.num_register_tokens else None
        )
        # Unused at inference, but part of the checkpoint.
        self.mask_token = nn.Parameter(torch.zeros(1, cfg.embed_dim), requires_grad=False)
        self.patch_embed = ConvPatchEmbed(cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        self.blocks = nn.ModuleList(
            Block(
                cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, proj_bias=cfg.proj_bias,
                ffn_bias=cfg.ffn_bias, init_values=cfg.init_values, norm_eps=1e-6,
            )
            for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)

    def position_embedding(self, rows: int, cols: int) -> torch.Tensor:
        """``[1, 1 + rows*cols, C]``: cls position plus the patch grid resized to ``rows x cols``.

        Bicubic with antialias, in float32, to an explicit size (interpolate_offset 0). Upstream
        skips the resize only for a square input whose grid equals the stored one.
        """
        n_stored = self.pos_embed.shape[1] - 1
        if rows * cols == n_stored and rows == cols:
            return self.pos_embed
        pos = self.pos_embed.float()
        side = int(n_stored**0.5)
        dim = pos.shape[-1]
        if self.cfg.interpolate_offset:
            resize = dict(scale_factor=((rows + self.cfg.interpolate_offset) / side, (cols + self.cfg.interpolate_offset) / side))
        else:
            resize = dict(size=(rows, cols))
        grid = F.interpolate(
            pos[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2),
            mode="bicubic", antialias=self.cfg.interpolate_antialias, **resize,
        )
        grid = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)
        return torch.cat((pos[:, :1], grid), dim=1).to(self.pos_embed.dtype)

    def forward(self, x: torch.Tensor, attend, ranges: Ranges = OFF) -> torch.Tensor:
        """``x [N, 3, H, W]`` (ImageNet-normalised) -> patch tokens ``[N, (H/p)*(W/p), C]``."""
        n, _, h, w = x.shape
        tokens = self.patch_embed(x)
        tokens = torch.cat((self.cls_token.expand(n, -1, -1), tokens), dim=1)
        tokens = tokens + self.position_embedding(h // self.patch_size, w // self.patch_size)
        if self.register_tokens is not None:
            tokens = torch.cat((tokens[:, :1], self.register_tokens.expand(n, -1, -1), tokens[:, 1:]), dim=1)
        for block in self.blocks:
            with ranges("vit_block"):
                tokens = block(tokens, attend, ranges=ranges)
        tokens = self.norm(tokens)
        return tokens[:, 1 + self.cfg.num_register_tokens :]
