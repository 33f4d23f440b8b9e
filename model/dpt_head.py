"""DPT head: dense prediction (depth, world points, or track features) from four layer outputs."""

from __future__ import annotations


import torch
import torch.nn as nn
import torch.nn.functional as F

from .camera_head import activate
from .config import DPTHeadConfig

# F.interpolate indexes with 32-bit ints; upstream splits larger calls along the batch.
_INTERP_MAX_ELEMENTS = 1610612736


def interpolate(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear, align_corners=True, split along the batch when the output is too large."""
    n = size[0] * size[1] * x.shape[0] * x.shape[1]
    if n <= _INTERP_MAX_ELEMENTS:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    chunks = torch.chunk(x, n // _INTERP_MAX_ELEMENTS + 1, dim=0)
    return torch.cat([F.interpolate(c, size=size, mode="bilinear", align_corners=True) for c in chunks]).contiguous()


def uv_sincos_embedding(channels: int, rows: int, cols: int, aspect: float, dtype, device) -> torch.Tensor:
    """``[channels, rows, cols]`` sin/cos embedding of a uv grid spanning the image diagonal.

    The grid is built in ``dtype``; the sin/cos in float64 (as upstream), returned as float32.
    Channels: x embedding (sin, cos) then y embedding (sin, cos), frequencies ``100^(-k/(C/4))``.
    """
    diag = (aspect**2 + 1.0) ** 0.5
    span_x, span_y = aspect / diag, 1.0 / diag
    xs = torch.linspace(-span_x * (cols - 1) / cols, span_x * (cols - 1) / cols, cols, dtype=dtype, device=device)
    ys = torch.linspace(-span_y * (rows - 1) / rows, span_y * (rows - 1) / rows, rows, dtype=dtype, device=device)
    quarter = channels // 4
    omega = 1.0 / 100.0 ** (torch.arange(quarter, dtype=torch.float64, device=device) / quarter)

    def sincos(pos):  # [M] -> [M, C/2]
        angles = torch.outer(pos.double(), omega)
        return torch.cat((angles.sin(), angles.cos()), dim=1).float()

    emb_x = sincos(xs).unsqueeze(0).expand(rows, -1, -1)  # [rows, cols, C/2]
    emb_y = sincos(ys).unsqueeze(1).expand(-1, cols, -1)
    return torch.cat((emb_x, emb_y), dim=-1).permute(2, 0, 1)


class ResidualConvUnit(nn.Module):
    """``conv2(relu(conv1(relu(x)))) + relu(x)``.

    Upstream's ReLU is in place on the input, so its skip connection adds relu(x), not x.
    """

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x):
        x = F.relu(x)
        return self.conv2(F.relu(self.conv1(x))) + x


class FusionBlock(nn.Module):
    def __init__(self, features: int, has_residual: bool = True):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        if has_residual:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)
        self.has_residual = has_residual

    def forward(self, x, skip=None, size=None):
        if self.has_residual:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        size = size if size is not None else (x.shape[-2] * 2, x.shape[-1] * 2)
        return self.out_conv(interpolate(x, size))


class DPTHead(nn.Module):
    """Four cached layers ``[B, S, P, 2C]`` -> dense maps at input resolution / down_ratio.

    Returns ``(preds [B, S, H, W, output_dim-1], conf [B, S, H, W])`` or, with
    ``feature_only``, features ``[B, S, features, H/down, W/down]``. Frames are processed in
    chunks of ``frames_chunk_size`` to bound memory; results do not depend on the chunking.
    """

    def __init__(self, cfg: DPTHeadConfig):
        super().__init__()
        self.cfg = cfg
        oc, feat = cfg.out_channels, cfg.features
        self.norm = nn.LayerNorm(cfg.dim_in)
        self.projects = nn.ModuleList(nn.Conv2d(cfg.dim_in, c, 1) for c in oc)
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(oc[0], oc[0], kernel_size=4, stride=4),
                nn.ConvTranspose2d(oc[1], oc[1], kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(oc[3], oc[3], kernel_size=3, stride=2, padding=1),
            ]
        )
        scratch = nn.Module()
        for i, c in enumerate(oc, start=1):
            setattr(scratch, f"layer{i}_rn", nn.Conv2d(c, feat, 3, padding=1, bias=False))
        scratch.refinenet1 = FusionBlock(feat)
        scratch.refinenet2 = FusionBlock(feat)
        scratch.refinenet3 = FusionBlock(feat)
        scratch.refinenet4 = FusionBlock(feat, has_residual=False)
        if cfg.feature_only:
            scratch.output_conv1 = nn.Conv2d(feat, feat, 3, padding=1)
        else:
            scratch.output_conv1 = nn.Conv2d(feat, feat // 2, 3, padding=1)
            scratch.output_conv2 = nn.Sequential(
                nn.Conv2d(feat // 2, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, cfg.output_dim, 1)
            )
        self.scratch = scratch

    def forward(self, aggregated: list, images: torch.Tensor, patch_start_idx: int):
        B, S = images.shape[:2]
        chunk = self.cfg.frames_chunk_size
        if not chunk or chunk >= S:
            return self._forward_frames(aggregated, images, patch_start_idx, 0, S)
        parts = [self._forward_frames(aggregated, images, patch_start_idx, s, min(s + chunk, S)) for s in range(0, S, chunk)]
        if self.cfg.feature_only:
            return torch.cat(parts, dim=1)
        return torch.cat([p[0] for p in parts], dim=1), torch.cat([p[1] for p in parts], dim=1)

    def _pos_embed(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        emb = uv_sincos_embedding(x.shape[1], x.shape[2], x.shape[3], W / H, x.dtype, x.device)
        return x + (emb * 0.1).to(x.dtype)

    def _forward_frames(self, aggregated, images, patch_start_idx, s0, s1):
        B, _, _, H, W = images.shape
        S = s1 - s0
        p = self.cfg.patch_size
        rows, cols = H // p, W // p
        feats = []
        for level, layer in enumerate(self.cfg.intermediate_layer_idx):
            x = aggregated[layer][:, s0:s1, patch_start_idx:]
            x = self.norm(x.reshape(B * S, rows * cols, x.shape[-1]))
            x = x.permute(0, 2, 1).reshape(B * S, -1, rows, cols)
            x = self.projects[level](x)
            if self.cfg.pos_embed:
                x = self._pos_embed(x, H, W)
            feats.append(self.resize_layers[level](x))

        sc = self.scratch
        l1, l2, l3, l4 = (getattr(sc, f"layer{i}_rn")(f) for i, f in enumerate(feats, start=1))
        out = sc.refinenet4(l4, size=l3.shape[2:])
        out = sc.refinenet3(out, l3, size=l2.shape[2:])
        out = sc.refinenet2(out, l2, size=l1.shape[2:])
        out = sc.refinenet1(out, l1)
        out = sc.output_conv1(out)
        down = self.cfg.down_ratio
        out = interpolate(out, (int(rows * p / down), int(cols * p / down)))
        if self.cfg.pos_embed:
            out = self._pos_embed(out, H, W)
        if self.cfg.feature_only:
            return out.view(B, S, *out.shape[1:])
        out = sc.output_conv2(out).permute(0, 2, 3, 1)  # [B*S, H, W, output_dim]
        preds = activate(out[..., :-1], self.cfg.activation)
        conf = activate_conf(out[..., -1], self.cfg.conf_activation)
        return preds.view(B, S, *preds.shape[1:]), conf.view(B, S, *conf.shape[1:])


def activate_conf(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "expp1":
        return 1 + x.exp()
    if kind == "expp0":
        return x.exp()
    if kind == "sigmoid":
        return torch.sigmoid(x)
    raise ValueError(f"unknown conf_activation {kind!r}")
