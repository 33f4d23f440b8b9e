"""Iterative point tracker (upstream ``BaseTrackerPredictor``, from CoTracker / VGGSfM).

Given query points in frame 0 and per-frame feature maps, the tracker starts every track at
its query position in all S frames and refines it ``iters`` times. Each iteration samples a
local correlation window around the current positions at several pyramid levels, embeds the
motion so far, and lets a transformer (``UpdateFormer``) that alternates attention over time
(per track) and over tracks (through a few learned "virtual" tracks) predict a coordinate
update and a feature update per track and frame.

Shapes: B batch, S frames, N tracks, C feature channels, HH x WW feature map. Coordinates
are (x, y). Inside ``Tracker.forward`` they are in feature-map pixels (input pixels / stride);
the outputs are in input-image pixels.

Parameter names and registration order follow upstream so that the official checkpoint loads
strictly (including upstream's spelling ``updateformer.virual_tracks``).
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import TrackerConfig
from .layers import Mlp


# ---- sampling -------------------------------------------------------------------------------
def bilinear_sample(input: torch.Tensor, coords: torch.Tensor, padding_mode: str) -> torch.Tensor:
    """``grid_sample`` with pixel coordinates: ``input [B, C, H, W]``, ``coords [B, Ho, Wo, 2]``
    (x, y; 0 is the first pixel centre, W-1 the last) -> ``[B, C, Ho, Wo]``.

    The coordinates are cast to ``input``'s dtype before normalising, as upstream does (under
    bf16 this quantises them; kept for fidelity).
    """
    H, W = input.shape[-2:]
    coords = coords.to(input.dtype)
    # filled on the device: torch.tensor([...], device=cuda) or scale[1] = v would be a
    # synchronizing host-to-device copy
    scale = torch.full((2,), 2 / max(W - 1, 1), device=coords.device, dtype=coords.dtype)
    scale[1:].fill_(2 / max(H - 1, 1))
    return F.grid_sample(input, coords * scale - 1, mode="bilinear", padding_mode=padding_mode, align_corners=True)


def sample_points(input: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear features at points (border padding): ``input [B, C, H, W]``, ``points [B, N, 2]``
    -> ``[B, N, C]``."""
    out = bilinear_sample(input, points.unsqueeze(2), padding_mode="border")  # [B, C, N, 1]
    return out.squeeze(3).transpose(1, 2)


# ---- embeddings -----------------------------------------------------------------------------
def flow_embedding(flows: torch.Tensor, dim: int) -> torch.Tensor:
    """Sin/cos embedding of 2D flows: ``[..., 2]`` -> ``[..., 2 * dim]`` in float32.

    Per coordinate (x then y), ``dim`` channels interleave sin and cos of ``flow * f_k`` with
    ``f_k = 2k * 1000 / dim``, k < dim/2. Upstream builds it in float32 whatever the input.
    """
    freqs = torch.arange(0, dim, 2, device=flows.device, dtype=torch.float32) * (1000.0 / dim)  # [dim/2]
    angles = flows.float().unsqueeze(-1) * freqs  # [..., 2, dim/2]
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-3)


def sincos_1d(pos: torch.Tensor, dim: int) -> torch.Tensor:
    """``[M]`` positions -> ``[M, dim]``: sin then cos of ``pos * 10000^(-k/(dim/2))``.

    Computed in float64 and returned as float32, as upstream.
    """
    half = dim // 2
    omega = 1.0 / 10000.0 ** (torch.arange(half, dtype=torch.float64, device=pos.device) / half)
    angles = torch.outer(pos.to(torch.float64), omega)
    return torch.cat((angles.sin(), angles.cos()), dim=1).float()


def sincos_pos_table(dim: int, height: int, width: int, device) -> torch.Tensor:
    """2D sin/cos position table ``[1, dim, height, width]`` (float32).

    The first ``dim/2`` channels embed the column (x), the rest the row (y). Upstream builds
    the full ``height * width`` grid; the table is separable, so only the two axes are
    evaluated here and broadcast (same values).
    """
    half = dim // 2
    emb_x = sincos_1d(torch.arange(width, device=device, dtype=torch.float32), half)  # [W, dim/2]
    emb_y = sincos_1d(torch.arange(height, device=device, dtype=torch.float32), half)  # [H, dim/2]
    table = torch.cat(
        (emb_x.T.unsqueeze(1).expand(half, height, width), emb_y.T.unsqueeze(2).expand(half, height, width)), dim=0
    )
    return table.unsqueeze(0)


# ---- correlation ----------------------------------------------------------------------------
class CorrPyramid:
    """Multi-level correlation lookups between track features and feature maps.

    Level 0 is the feature maps; each further level halves them with a 2x2 average pool
    (floor). For each track and frame, ``sample`` correlates the track's feature with every
    pixel of the frame's map (dot product / sqrt(C)) and reads a ``(2r+1) x (2r+1)`` window of
    that volume around the track's position (bilinear, zeros outside).
    """

    def __init__(self, fmaps: torch.Tensor, num_levels: int, radius: int):
        """``fmaps [B, S, C, HH, WW]``."""
        B, S, C, H, W = fmaps.shape
        if min(H, W) < 2 ** (num_levels - 1):
            raise ValueError(f"a {num_levels}-level correlation pyramid needs feature maps of at least "
                             f"{2 ** (num_levels - 1)} pixels a side, got {H}x{W}")
        self.levels = [fmaps]
        for _ in range(num_levels - 1):
            pooled = F.avg_pool2d(self.levels[-1].reshape(B * S, C, H, W), kernel_size=2, stride=2)
            H, W = pooled.shape[-2:]
            self.levels.append(pooled.reshape(B, S, C, H, W))
        # Window offsets, [2r+1, 2r+1, 2]. Upstream builds them as (dy, dx) pairs but adds them
        # to (x, y) coordinates, so the first window axis moves x: the flattened window is
        # x-major. corr_mlp's weights are trained on this order.
        r = torch.linspace(-radius, radius, 2 * radius + 1, device=fmaps.device, dtype=fmaps.dtype)
        self.offsets = torch.stack(torch.meshgrid(r, r, indexing="ij"), dim=-1)
        self.norm = math.sqrt(C)

    def sample(self, targets: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """``targets [B, S, N, C]``, ``coords [B, S, N, 2]`` (level-0 pixels)
        -> ``[B, S, N, levels * (2r+1)^2]``."""
        B, S, N, C = targets.shape
        window = self.offsets.to(coords.dtype)
        k = window.shape[0]
        out = []
        for i, fmaps in enumerate(self.levels):
            H, W = fmaps.shape[-2:]
            # the whole volume [B, S, N, H*W] of this level, as upstream computes it
            corr = torch.matmul(targets, fmaps.view(B, S, C, H * W)) / self.norm
            grid = coords.reshape(B * S * N, 1, 1, 2) / (2**i) + window.view(1, k, k, 2)
            sampled = bilinear_sample(corr.reshape(B * S * N, 1, H, W), grid, padding_mode="zeros")
            out.append(sampled.view(B, S, N, k * k))
        return torch.cat(out, dim=-1)


# ---- transformer ----------------------------------------------------------------------------
class AttnBlock(nn.Module):
    """Self-attention block ``[B, L, D] -> [B, L, D]``.

    Upstream's quirk: both residuals start from the *normalised* input, i.e.
    ``x = norm1(x); x = x + attn(x); x = x + mlp(norm2(x))``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        x = x + self.attn(x, x, x)[0]
        return x + self.mlp(self.norm2(x))


class CrossAttnBlock(nn.Module):
    """Cross-attention block: ``x [B, L, D]`` attends to ``context [B, M, D]`` -> ``[B, L, D]``.

    Same normalised-residual quirk as ``AttnBlock``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        context = self.norm_context(context)
        x = x + self.cross_attn(x, context, context)[0]
        return x + self.mlp(self.norm2(x))


class UpdateFormer(nn.Module):
    """Upstream ``EfficientUpdateFormer``: ``[B, N, S, in_dim] -> [B, N, S, out_dim]``.

    Every layer attends over the S frames of each track (time block). With space attention,
    ``num_virtual_tracks`` learned tokens per frame are appended to the N tracks; after a time
    block, the virtual tracks read from the real ones, attend among themselves, and the real
    tracks read back from them, so tracks exchange information at O(N * V) cost.
    """

    def __init__(
        self,
        space_depth: int,
        time_depth: int,
        input_dim: int,
        hidden_size: int,
        output_dim: int,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        add_space_attn: bool = True,
        num_virtual_tracks: int = 64,
    ):
        super().__init__()
        self.add_space_attn = add_space_attn
        self.num_virtual_tracks = num_virtual_tracks
        self.input_norm = nn.LayerNorm(input_dim)
        self.input_transform = nn.Linear(input_dim, hidden_size)
        self.output_norm = nn.LayerNorm(hidden_size)
        self.flow_head = nn.Linear(hidden_size, output_dim)
        if add_space_attn:
            # upstream's spelling, kept for the checkpoint
            self.virual_tracks = nn.Parameter(torch.randn(1, num_virtual_tracks, 1, hidden_size))
        else:
            self.virual_tracks = None
        self.time_blocks = nn.ModuleList(
            AttnBlock(hidden_size, num_heads, mlp_ratio) for _ in range(time_depth)
        )
        if add_space_attn:
            self.space_virtual_blocks = nn.ModuleList(
                AttnBlock(hidden_size, num_heads, mlp_ratio) for _ in range(space_depth)
            )
            self.space_point2virtual_blocks = nn.ModuleList(
                CrossAttnBlock(hidden_size, num_heads, mlp_ratio) for _ in range(space_depth)
            )
            self.space_virtual2point_blocks = nn.ModuleList(
                CrossAttnBlock(hidden_size, num_heads, mlp_ratio) for _ in range(space_depth)
            )
            assert 0 < space_depth <= time_depth, "space_depth must be in 1..time_depth"
            # a space step follows every `space_every`-th time block
            self.space_every = time_depth // space_depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, N, S, in_dim]`` -> ``[B, N, S, out_dim]``."""
        tokens = self.input_transform(self.input_norm(x))  # [B, N, S, D]
        init_tokens = tokens
        B, N, S, D = tokens.shape
        V = self.num_virtual_tracks if self.add_space_attn else 0
        if V:
            tokens = torch.cat((tokens, self.virual_tracks.expand(B, V, S, D)), dim=1)  # [B, N+V, S, D]
        j = 0
        for i, time_block in enumerate(self.time_blocks):
            tokens = time_block(tokens.reshape(B * (N + V), S, D)).view(B, N + V, S, D)
            if V and i % self.space_every == 0:
                space = tokens.transpose(1, 2).reshape(B * S, N + V, D)
                points, virtual = space[:, :N], space[:, N:]
                virtual = self.space_virtual2point_blocks[j](virtual, points)
                virtual = self.space_virtual_blocks[j](virtual)
                points = self.space_point2virtual_blocks[j](points, virtual)
                tokens = torch.cat((points, virtual), dim=1).view(B, S, N + V, D).transpose(1, 2)
                j += 1
        tokens = tokens[:, :N] + init_tokens
        return self.flow_head(self.output_norm(tokens))


# ---- tracker --------------------------------------------------------------------------------
class Tracker(nn.Module):
    """Upstream ``BaseTrackerPredictor`` (inference path)."""

    def __init__(self, cfg: TrackerConfig):
        super().__init__()
        self.cfg = cfg
        latent = cfg.latent_dim
        self.stride = cfg.stride
        self.latent_dim = latent
        self.corr_levels = cfg.corr_levels
        self.corr_radius = cfg.corr_radius
        self.max_scale = cfg.max_scale
        self.predict_conf = cfg.predict_conf
        self.flow_emb_dim = latent // 2
        # [flow embedding (latent) + flow / max_scale twice (4), correlation feature, track feature]
        self.transformer_dim = 3 * latent + 4

        self.corr_mlp = Mlp(cfg.corr_levels * (2 * cfg.corr_radius + 1) ** 2, cfg.hidden_size, latent)
        # [0]: added to frame 0 (the query frame), [1]: to every other frame
        self.query_ref_token = nn.Parameter(torch.randn(1, 2, self.transformer_dim))
        self.updateformer = UpdateFormer(
            space_depth=cfg.depth if cfg.use_spaceatt else 0,
            time_depth=cfg.depth,
            input_dim=self.transformer_dim,
            hidden_size=cfg.hidden_size,
            output_dim=latent + 2,
            num_heads=cfg.num_heads,
            mlp_ratio=4.0,
            add_space_attn=cfg.use_spaceatt,
            num_virtual_tracks=cfg.num_virtual_tracks,
        )
        self.fmap_norm = nn.LayerNorm(latent)
        self.ffeat_norm = nn.GroupNorm(1, latent)
        self.ffeat_updater = nn.Sequential(nn.Linear(latent, latent), nn.GELU())
        self.vis_predictor = nn.Sequential(nn.Linear(latent, 1))
        if cfg.predict_conf:
            self.conf_predictor = nn.Sequential(nn.Linear(latent, 1))

    def forward(
        self, query_points: torch.Tensor, fmaps: torch.Tensor, iters: int
    ) -> Tuple[List[torch.Tensor], torch.Tensor, Optional[torch.Tensor]]:
        """Track ``query_points`` through the frames of ``fmaps``.

        Args:
            query_points: ``[B, N, 2]`` pixel (x, y) in frame 0 of the input images.
            fmaps: ``[B, S, C, HH, WW]`` feature maps at input resolution / stride, C = latent_dim.
            iters: number of refinement iterations.

        Returns:
            coord_preds: ``iters`` tensors ``[B, S, N, 2]``, input-image pixels (frame 0 is
                always the query).
            vis: ``[B, S, N]`` visibility after sigmoid.
            conf: ``[B, S, N]`` confidence after sigmoid, or None without ``predict_conf``.
        """
        B, N, _ = query_points.shape
        _, S, C, HH, WW = fmaps.shape
        assert query_points.shape[-1] == 2 and C == self.latent_dim
        dtype = self.query_ref_token.dtype  # the updateformer's input dtype

        fmaps = self.fmap_norm(fmaps.permute(0, 1, 3, 4, 2)).permute(0, 1, 4, 2, 3)
        # coordinates stay in (at least) float32 whatever the compute dtype
        queries = query_points.to(torch.promote_types(query_points.dtype, torch.float32)) / float(self.stride)
        coords = queries.unsqueeze(1).repeat(1, S, 1, 1)  # [B, S, N, 2]

        query_feats = sample_points(fmaps[:, 0], queries)  # [B, N, C]
        track_feats = query_feats.unsqueeze(1).repeat(1, S, 1, 1)  # [B, S, N, C]
        corr_pyramid = CorrPyramid(fmaps, self.corr_levels, self.corr_radius)

        # Constant across iterations (frame 0 stays at the query): the position embedding of
        # each query, sampled from the feature-grid table, and the query/other-frame tokens.
        table = sincos_pos_table(self.transformer_dim, HH, WW, fmaps.device)
        pos_emb = sample_points(table, queries.reshape(1, B * N, 2)).view(B * N, 1, self.transformer_dim)
        ref = self.query_ref_token
        ref_tokens = torch.cat((ref[:, :1], ref[:, 1:].expand(-1, S - 1, -1)), dim=1)  # [1, S, D]

        coord_preds = []
        for _ in range(iters):
            corrs = corr_pyramid.sample(track_feats, coords)  # [B, S, N, L]
            corr_feats = self.corr_mlp(corrs.transpose(1, 2).reshape(B * N, S, -1))  # [BN, S, C]

            flows = (coords - coords[:, :1]).transpose(1, 2).reshape(B * N, S, 2)  # motion since frame 0
            flows_scaled = flows / self.max_scale
            feats = track_feats.transpose(1, 2).reshape(B * N, S, C)
            x = torch.cat(
                (flow_embedding(flows, self.flow_emb_dim), flows_scaled, flows_scaled, corr_feats, feats), dim=2
            )
            x = x + pos_emb
            x = (x + ref_tokens.to(x.dtype)).to(dtype)

            delta = self.updateformer(x.view(B, N, S, self.transformer_dim))  # [B, N, S, 2 + C]
            delta_coords = delta[..., :2]
            delta_feats = delta[..., 2:].reshape(B * N * S, C)

            feats = self.ffeat_updater(self.ffeat_norm(delta_feats)) + feats.reshape(B * N * S, C)
            track_feats = feats.view(B, N, S, C).transpose(1, 2)  # [B, S, N, C]

            coords = coords + delta_coords.transpose(1, 2)
            coords[:, 0] = queries  # the query frame is not updated
            coord_preds.append(coords * self.stride)

        flat_feats = track_feats.reshape(B * S * N, C)
        vis = torch.sigmoid(self.vis_predictor(flat_feats).view(B, S, N))
        conf = torch.sigmoid(self.conf_predictor(flat_feats).view(B, S, N)) if self.predict_conf else None
        return coord_preds, vis, conf
