"""VGGT: images of a scene -> cameras, depth maps, point maps and tracks in one forward pass."""

from __future__ import annotations

import contextlib
from typing import Dict, Optional

import torch
import torch.nn as nn

from . import approximate, attention, fp8
from .aggregator import Aggregator
from .camera_head import CameraHead, pose_encoding_to_extri_intri
from .config import ExecutionConfig, VGGTConfig
from .context_parallel import ContextParallel
from .dpt_head import DPTHead
from .layers import LayerScale
from .nvtx import OFF, Ranges
from .track_head import TrackHead



class InputError(ValueError):
    """Input tensors do not fit the model; the message names the constraint."""


class VGGT(nn.Module):
    """The whole model. ``VGGT(VGGTConfig())`` is VGGT-1B with upstream's state-dict names.

    Execution settings (``configure``), precision and compilation (``model.execution``) are
    applied to a built model; none of them changes the state dict.
    """

    def __init__(self, config: Optional[VGGTConfig] = None):
        super().__init__()
        self.config = config = (config or VGGTConfig()).validate()
        self.aggregator = Aggregator(config.aggregator, config.vit_config())
        self.camera_head = CameraHead(config.camera_head) if config.camera_head else None
        self.point_head = DPTHead(config.point_head) if config.point_head else None
        self.depth_head = DPTHead(config.depth_head) if config.depth_head else None
        self.track_head = TrackHead(config.track_head) if config.track_head else None
        self.precision = "fp32"
        self.execution = ExecutionConfig()
        self.ranges: Ranges = OFF
        self._context = attention.BACKENDS["sdpa"].context
        self.sites = {"frame": attention.BACKENDS["sdpa"], "global": attention.BACKENDS["sdpa"]}
        self.aggregator.attend = self.aggregator.attend_global = attention.sdpa
        self._head_attend = attention.sdpa
        self.context: Optional[ContextParallel] = None  # context_parallel > 1: this rank's share of the group

    # ---- execution ------------------------------------------------------------------------
    @property
    def compute_dtype(self) -> torch.dtype:
        return {"fp32": torch.float32, "bf16_autocast": torch.bfloat16, "bf16": torch.bfloat16, "fp16": torch.float16}[
            self.precision
        ]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _site_backend(self, name: str, site: str, head_dims):
        """The backend (or ``Auto``) for one call site; refuse one that cannot run here."""
        if name == attention.AUTO:
            common = None
            for hd in head_dims:
                names = [b.name for b in attention.auto_candidates(self.device, self.compute_dtype, hd)]
                common = names if common is None else [n for n in common if n in names]
            return attention.Auto(site, [attention.BACKENDS[n] for n in common or []])
        for hd in head_dims:
            backend = attention.get(name, self.device, self.compute_dtype, hd)
        return backend

    def configure(self, execution: ExecutionConfig, process_group=None) -> "VGGT":
        """Hand the model its execution settings; refuse a backend that cannot run here.

        Attention per call site: ``attention`` at the frame layers (and converted ones), the DINOv2
        patch embed and the camera head; ``global_attention`` (``same``: as ``attention``) at the
        global layers. Precision and compile are applied when the model is built (``set_precision``,
        ``apply_compile``), not here. ``context_parallel > 1``: this process is one rank of
        ``process_group`` (default: the whole torch.distributed world), which must have that many.
        """
        agg = self.config.aggregator
        execution.validate(agg.depth)
        vit = self.config.vit_config()
        frame_dims = sorted({agg.head_dim} | ({vit.embed_dim // vit.num_heads} if vit is not None else set()))
        frame = self._site_backend(execution.attention, "frame", frame_dims)
        name = execution.global_attention
        if name == "same" or (name == execution.attention and name != attention.AUTO):
            glob = frame
        else:
            glob = self._site_backend(name, "global", [agg.head_dim])
        self.sites = {"frame": frame, "global": glob}
        if execution.kv_keep != 1.0 or execution.global_sparsity != 0.0:  # how they run, beside the backends
            self.sites["approx"] = approximate.KernelChoice(execution.approx_kernel, self.device, self.compute_dtype,
                                                            agg.head_dim)
        self.aggregator.approx_kernel = self.sites.get("approx")
        self._set_linear_precision(execution.linear_precision)
        self.execution = execution
        self.ranges = Ranges(execution.nvtx)
        self.aggregator.execution = execution
        self.aggregator.ranges = self.ranges
        if glob is frame:  # one kernel choice for the whole forward: its context once, plain calls
            self._context = frame.context
            self.aggregator.attend = self.aggregator.attend_global = frame.fn
        else:  # each site enters its own kernel choice per call
            self._context = contextlib.nullcontext
            self.aggregator.attend, self.aggregator.attend_global = frame.run, glob.run
        self._head_attend = frame.run
        self.context = None
        if execution.context_parallel > 1:  # each rank its frames; the global layers attend across ranks
            self.context = ContextParallel(execution.context_parallel, agg.num_heads, execution.token_chunk,
                                           process_group, self.ranges)
            self.aggregator.attend_global = self.context.wrap(self.aggregator.attend_global)
        self.aggregator.context = self.context
        return self

    def _set_linear_precision(self, precision: str) -> None:
        """FP8 linear layers where they run (``model.fp8``); else refuse with the reason, as an unavailable
        attention backend is refused."""
        if precision == "fp8":
            why = fp8.why_unavailable(self.device, self.compute_dtype)
            if why is None and self.precision != "bf16":
                why = f"model.linear_precision=fp8 runs on bf16 weights: use model.dtype=bf16 (not {self.precision})"
            if why:
                raise attention.BackendUnavailable(why)
        fp8.set_linear_precision(self, precision)

    def attention_report(self) -> str:
        """What each site ran: ``frame=sdpa_cudnn global=flash_attn4`` (``auto(...)``: chosen by timing)."""
        return " ".join(f"{site}={backend.label()}" for site, backend in self.sites.items())

    def _autocast(self, enabled: bool):
        if self.precision == "bf16_autocast":
            return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)
        return contextlib.nullcontext()

    # ---- inputs ---------------------------------------------------------------------------
    def check_inputs(self, images: torch.Tensor, query_points: Optional[torch.Tensor] = None):
        """Normalise shapes to ``[B, S, 3, H, W]`` / ``[B, N, 2]`` and refuse what the model cannot take."""
        if images.dim() == 4:
            images = images.unsqueeze(0)
        if images.dim() != 5:
            raise InputError(f"images must be [S, 3, H, W] or [B, S, 3, H, W], got shape {tuple(images.shape)}")
        B, S, C, H, W = images.shape
        p = self.config.aggregator.patch_size
        if B < 1 or S < 1:
            raise InputError(f"need at least one batch item and one frame, got B={B}, S={S}")
        if self.context is not None and S < self.context.ranks:
            raise InputError(f"context_parallel={self.context.ranks} needs at least as many frames (every rank holds "
                             f"whole frames), got S={S}")
        if C != 3:
            raise InputError(f"images must have 3 (RGB) channels, got {C}")
        if H % p or W % p or H < p or W < p:
            raise InputError(f"image height and width must be positive multiples of {p}, got {H} x {W}")
        if query_points is not None:
            if query_points.dim() == 2:
                query_points = query_points.unsqueeze(0)
            if query_points.dim() != 3 or query_points.shape[-1] != 2 or query_points.shape[0] != B:
                raise InputError(f"query_points must be [N, 2] or [B={B}, N, 2], got {tuple(query_points.shape)}")
            x, y = query_points[..., 0], query_points[..., 1]
            if not bool(((x >= 0) & (x <= W - 1) & (y >= 0) & (y <= H - 1)).all()):
                raise InputError(f"query points must lie inside the image: 0 <= x <= {W - 1}, 0 <= y <= {H - 1} (pixels)")
        return images, query_points

    # ---- forward --------------------------------------------------------------------------
    def aggregate(self, images: torch.Tensor):
        """``[B, S, 3, H, W]`` -> (layer outputs, patch_start_idx), under the model's precision and backend.

        With context parallelism every rank passes the whole scene and gets its own frames' layer
        outputs ``[B, S_r, P, 2C]`` (``self.context.gather_frames`` collects them)."""
        images, _ = self.check_inputs(images)
        if self.context is not None:
            images = self.context.shard(images)
        if self.precision in ("bf16", "fp16"):
            images = images.to(self.compute_dtype)
        with self.ranges("aggregator"), self._autocast(True), self._context():
            return self.aggregator(images), self.aggregator.patch_start_idx

    def forward(
        self, images: torch.Tensor, query_points: Optional[torch.Tensor] = None, return_intermediates: bool = False,
        aggregated: Optional[tuple] = None,
    ) -> Dict[str, torch.Tensor]:
        """Run the aggregator and every built head.

        Args:
            images: ``[S, 3, H, W]`` or ``[B, S, 3, H, W]`` in [0, 1]; H, W multiples of the patch size.
            query_points: ``[N, 2]`` or ``[B, N, 2]`` pixel (x, y) in frame 0, for the track head.
            return_intermediates: also return ``aggregated_tokens`` and ``track_feature_maps``.
            aggregated: ``aggregate(images)``'s output for these images, already computed under this
                configuration: the heads run on it and the aggregator does not run again (a benchmark
                measuring drift reuses its last timed forward's).

        Returns a dict: ``pose_enc [B, S, 9]``, ``pose_enc_list`` (per iteration), ``extrinsic
        [B, S, 3, 4]``, ``intrinsic [B, S, 3, 3]``, ``depth [B, S, H, W, 1]``, ``depth_conf [B, S, H, W]``,
        ``world_points [B, S, H, W, 3]``, ``world_points_conf``, and with query points ``track
        [B, S, N, 2]``, ``track_list``, ``vis [B, S, N]``, ``conf [B, S, N]``.

        With context parallelism (``configure``) every rank passes the whole scene and returns the
        same complete outputs; ``aggregated_tokens`` holds the rank's own frames.
        """
        images, query_points = self.check_inputs(images, query_points)
        with self.ranges("vggt"):
            tokens, start = self.aggregate(images) if aggregated is None else aggregated
            gather = None
            if self.context is not None:  # the heads run on this rank's frames; their outputs are gathered
                images, gather = self.context.shard(images), self.context.gather_frames
            whole = gather or (lambda t: t)
            if self.precision in ("bf16", "fp16"):
                images = images.to(self.compute_dtype)
            out: Dict[str, torch.Tensor] = {}
            # Upstream runs the camera, depth and point heads with autocast off (fp32).
            with self._autocast(False):
                if self.camera_head is not None:
                    with self.ranges("camera_head"):
                        # its trunk attends across every frame's camera token: gathered under context parallelism
                        cameras = tokens if gather is None else [gather(tokens[-1][:, :, :1])]
                        poses = self.camera_head(cameras, self._head_attend, self.ranges)
                    out["pose_enc"], out["pose_enc_list"] = poses[-1], poses
                    out["extrinsic"], out["intrinsic"] = pose_encoding_to_extri_intri(poses[-1], images.shape[-2:])
                if self.depth_head is not None:
                    with self.ranges("depth_head"):
                        out["depth"], out["depth_conf"] = map(whole, self.depth_head(tokens, images, start))
                if self.point_head is not None:
                    with self.ranges("point_head"):
                        out["world_points"], out["world_points_conf"] = map(whole, self.point_head(tokens, images, start))
            if self.track_head is not None and query_points is not None:
                with self.ranges("track_head"), self._autocast(True):
                    track_list, vis, conf, fmaps = self.track_head(tokens, images, start, query_points, gather)
                out.update(track=track_list[-1], track_list=track_list, vis=vis, conf=conf)
                if return_intermediates:
                    out["track_feature_maps"] = fmaps
            if return_intermediates:
                out["aggregated_tokens"] = tokens
        return out


# ---- building -------------------------------------------------------------------------------
def init_random_(model: nn.Module, seed: int) -> nn.Module:
    """Fill every parameter deterministically from ``seed`` (works after ``to_empty``).

    Standard layers take their own ``reset_parameters``; LayerScale its init value; other raw
    parameters (tokens, position embeddings) N(0, 0.02^2). The camera head's field-of-view
    bias starts at 1 rad so that relu(FoV) > 0 and random intrinsics stay finite.
    """
    torch.manual_seed(seed)
    covered = set()
    with torch.no_grad():
        for m in model.modules():
            reset = getattr(m, "reset_parameters", None) or getattr(m, "_reset_parameters", None)
            if isinstance(m, LayerScale):
                m.gamma.fill_(m.init_values)
            elif callable(reset) and not isinstance(m, VGGT):
                reset()
            else:
                continue
            covered.update(id(p) for p in m.parameters())
        for p in model.parameters():
            if id(p) not in covered:
                p.normal_(0.0, 0.02)
        camera = getattr(model, "camera_head", None)
        if camera is not None:
            camera.pose_branch.fc2.bias[7:9] += 1.0
    return model


def build(config: Optional[VGGTConfig] = None, device="cpu", seed: int = 0) -> VGGT:
    """A randomly initialised model built directly on ``device`` (no CPU copy of the weights)."""
    with torch.device("meta"):
        model = VGGT(config)
    model.to_empty(device=device)
    model.aggregator.reset_buffers()
    return init_random_(model, seed).eval()
