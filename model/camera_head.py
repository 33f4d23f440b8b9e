"""Camera head: iterative refinement of a 9-D pose encoding from the camera tokens."""

from __future__ import annotations

from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import CameraHeadConfig
from .layers import Block, Mlp
from .nvtx import OFF, Ranges


def activate(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "linear":
        return x
    if kind == "inv_log":
        return torch.sign(x) * torch.expm1(torch.abs(x))
    if kind == "exp":
        return torch.exp(x)
    if kind == "relu":
        return F.relu(x)
    raise ValueError(f"unknown activation {kind!r}")


class CameraHead(nn.Module):
    """Last layer's camera tokens ``[B, S, 2C]`` -> pose encodings ``[B, S, 9]``, one per iteration.

    The encoding is T (3), quaternion xyzw (4, not normalised), fov_h, fov_w. The trunk
    attends across the S camera tokens of each batch item.
    """

    def __init__(self, cfg: CameraHeadConfig):
        super().__init__()
        if cfg.pose_encoding_type != "absT_quaR_FoV":
            raise ValueError(f"unsupported pose_encoding_type {cfg.pose_encoding_type!r}")
        self.cfg = cfg
        dim, target = cfg.dim_in, 9
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, target))
        self.trunk = nn.ModuleList(
            Block(dim, cfg.num_heads, cfg.mlp_ratio, init_values=cfg.init_values) for _ in range(cfg.trunk_depth)
        )
        self.token_norm = nn.LayerNorm(dim)
        self.trunk_norm = nn.LayerNorm(dim)
        self.embed_pose = nn.Linear(target, dim)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim))
        self.adaln_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim, dim // 2, target)

    def activate_pose(self, enc: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        return torch.cat(
            (activate(enc[..., :3], c.trans_act), activate(enc[..., 3:7], c.quat_act), activate(enc[..., 7:], c.fl_act)),
            dim=-1,
        )

    def forward(self, aggregated: list, attend, ranges: Ranges = OFF) -> List[torch.Tensor]:
        tokens = self.token_norm(aggregated[-1][:, :, 0])  # [B, S, 2C]; normalised once
        B, S, _ = tokens.shape
        raw = None  # running pre-activation pose encoding
        out = []
        for _ in range(self.cfg.num_iterations):
            source = self.empty_pose_tokens.expand(B, S, -1) if raw is None else raw.detach()
            shift, scale, gate = self.poseLN_modulation(self.embed_pose(source)).chunk(3, dim=-1)
            x = gate * (self.adaln_norm(tokens) * (1 + scale) + shift) + tokens
            for block in self.trunk:
                x = block(x, attend, ranges=ranges)
            delta = self.pose_branch(self.trunk_norm(x))
            raw = delta if raw is None else raw + delta
            out.append(self.activate_pose(raw))
        return out


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Quaternions ``[..., 4]`` (x, y, z, w; need not be unit) -> rotation matrices ``[..., 3, 3]``."""
    i, j, k, r = torch.unbind(q, -1)
    two_s = 2.0 / (q * q).sum(-1)
    m = torch.stack(
        (
            1 - two_s * (j * j + k * k), two_s * (i * j - k * r), two_s * (i * k + j * r),
            two_s * (i * j + k * r), 1 - two_s * (i * i + k * k), two_s * (j * k - i * r),
            two_s * (i * k - j * r), two_s * (j * k + i * r), 1 - two_s * (i * i + j * j),
        ),
        -1,
    )
    return m.reshape(q.shape[:-1] + (3, 3))


def pose_encoding_to_extri_intri(pose_enc: torch.Tensor, image_hw):
    """``[B, S, 9]`` -> extrinsics ``[B, S, 3, 4]`` (OpenCV camera-from-world) and intrinsics ``[B, S, 3, 3]``.

    The principal point is the image centre; focal lengths come from the fields of view.
    """
    H, W = image_hw
    T, quat, fov_h, fov_w = pose_enc[..., :3], pose_enc[..., 3:7], pose_enc[..., 7], pose_enc[..., 8]
    extrinsic = torch.cat((quaternion_to_matrix(quat), T[..., None]), dim=-1)
    intrinsic = torch.zeros(pose_enc.shape[:2] + (3, 3), device=pose_enc.device)
    intrinsic[..., 0, 0] = (W / 2.0) / torch.tan(fov_w / 2.0)
    intrinsic[..., 1, 1] = (H / 2.0) / torch.tan(fov_h / 2.0)
    intrinsic[..., 0, 2] = W / 2
    intrinsic[..., 1, 2] = H / 2
    intrinsic[..., 2, 2] = 1.0
    return extrinsic, intrinsic
