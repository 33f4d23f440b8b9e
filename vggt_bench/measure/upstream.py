"""Upstream's own VGGT (facebookresearch/vggt), measured by the same code as ours (measure.run).

``model.impl=upstream`` builds upstream's modules from the same configuration (our config
dataclasses mirror upstream's constructor arguments), loads the same weights strictly (our seeded
random init, or the user's checkpoint) and exposes the interface measure.run calls on our model
(``configure``, ``aggregate``, ``__call__``, ``compute_dtype``, ``attention_report``). Upstream's
code is found by ``import vggt`` or at ``model.upstream_path=DIR`` and is never copied into this
project. NVTX / profiler ranges are added with forward hooks, under our stage names, so nsys and
torch-profiler tables compare stage by stage.

What upstream's code has no equivalent for (frame attention one frame at a time, global-to-frame
conversion, the lean/offload memory plans, per-block compile, kernels it cannot call) is an
``unavailable`` row with the reason, never a silent fallback. The one exception is a knob left at
its default that only says how *our* code runs (``memory_plan``, ``token_chunk``, ``frame_chunk``,
``prune_weights``): the row records what upstream runs instead (``memory_plan=upstream``) and says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib
import inspect
import os
import sys
from typing import Optional, Tuple

import torch
import torch.nn as nn

import vggt_model
from vggt_model import attention
from vggt_model.config import ExecutionConfig, VGGTConfig
from vggt_model.nvtx import OFF, Ranges

from ..core.errors import UserError

IMPLS = ("ours", "upstream")
HINT = ("get upstream's code with `pip install git+https://github.com/facebookresearch/vggt` (it needs einops and "
        "huggingface_hub), or give model.upstream_path=DIR, a checkout holding its vggt/ folder")
# Fingerprints (``fingerprint()``) of upstream sources we have measured, so rows can name the commit.
KNOWN = {"0f79af143381": "a288dd0f"}  # vggt/ of facebookresearch/vggt a288dd0f (as in the fork bsun0524/vggt)

# Our knobs that say only how our code runs; at their defaults upstream runs its own way.
AS_UPSTREAM = {"memory_plan": "upstream"}
NOT_APPLICABLE = ("token_chunk", "frame_chunk", "prune_weights", "approx_layers")
SDPA_BACKENDS = ("sdpa", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "sdpa_math")


# ---- finding it --------------------------------------------------------------------------------------
def _package_root(path: str) -> str:
    """The directory to put on sys.path: ``path`` if it holds ``vggt/``, its parent if it is ``vggt/``."""
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(os.path.join(path, "vggt", "models")):
        return path
    if os.path.basename(path) == "vggt" and os.path.isdir(os.path.join(path, "models")):
        return os.path.dirname(path)
    raise UserError(f"model.upstream_path={path} holds no vggt/models/ folder; {HINT}")


@functools.lru_cache(maxsize=None)
def locate(path: Optional[str]) -> Tuple[str, str]:
    """(source directory of upstream's ``vggt`` package, fingerprint); raises UserError with the fix."""
    if path:
        root = _package_root(path)
        if root not in sys.path:
            sys.path.insert(0, root)
    try:
        importlib.import_module("vggt.models.aggregator")
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing.split(".")[0] == "vggt":
            raise UserError(f"model.impl=upstream: upstream VGGT is not importable here; {HINT}")
        raise UserError(f"model.impl=upstream: upstream VGGT needs the package {missing!r} "
                        f"(pip install {missing.split('.')[0].replace('_', '-')})")
    package = sys.modules["vggt"]
    where = [p for p in getattr(package, "__path__", [])]
    if path:
        where = [p for p in where if os.path.abspath(p).startswith(_package_root(path))] or where
    source = os.path.abspath(where[0])
    return source, fingerprint(source)


def fingerprint(source: str) -> str:
    """A short hash of every ``.py`` file under upstream's package: which code was measured."""
    digest = hashlib.sha1()
    for folder, _, files in sorted(os.walk(source)):
        for name in sorted(f for f in files if f.endswith(".py")):
            full = os.path.join(folder, name)
            digest.update(os.path.relpath(full, source).encode())
            with open(full, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:12]


def describe(path: Optional[str]) -> str:
    """``<source> (fingerprint f, commit c)`` for the results row."""
    source, fp = locate(path)
    commit = KNOWN.get(fp)
    return f"{source} (sources {fp}{', commit ' + commit if commit else ''})"


# ---- which of our settings upstream can run ---------------------------------------------------------
def as_run(execution: ExecutionConfig) -> Tuple[ExecutionConfig, str]:
    """The settings upstream's code really runs with, and a note when a default was mapped.

    Knobs that only say how our code runs take upstream's own value when left at their default;
    anything else is kept, so ``why_unavailable`` can refuse it by name.
    """
    defaults = ExecutionConfig()
    changes, notes = {}, []
    for name, value in AS_UPSTREAM.items():
        current = getattr(execution, name)
        if current == getattr(defaults, name) and current != value:
            changes[name] = value
            notes.append(f"{name}={current} is ours; upstream's code keeps its own ({name}={value})")
    for name in NOT_APPLICABLE:
        changes[name] = getattr(defaults, name)
    note = "upstream's code: " + "; ".join(notes) if notes else ""
    return dataclasses.replace(execution, **changes), note


def why_unavailable(execution: ExecutionConfig) -> Optional[str]:
    """None when upstream's code can run these settings, else the reason."""
    ex = execution
    if ex.memory_plan != "upstream":
        return f"upstream's code has no memory_plan={ex.memory_plan} (it keeps its own: memory_plan=upstream)"
    if ex.frame_exec != "fused":
        return f"upstream's code runs frame attention over all frames in one call; frame_exec={ex.frame_exec} is ours"
    if ex.prune_depth:
        return "upstream's code has no global-to-frame conversion (prune_depth > 0 is ours)"
    if ex.approximations():
        return (f"upstream's code has no attention approximations ({', '.join(ex.approximations())} are ours; "
                f"leave them at their exact values)")
    if ex.compile != "off":
        return "per-block torch.compile is ours; upstream's code is measured as published (compile=off)"
    if ex.global_attention not in ("same", ex.attention):
        return "upstream's code uses one attention kernel everywhere (global_attention=same)"
    if ex.attention not in SDPA_BACKENDS + ("eager",):
        return (f"upstream's code calls F.scaled_dot_product_attention (or its explicit softmax path, attention=eager); "
                f"attention={ex.attention} has no equivalent there")
    return None


# ---- building it -------------------------------------------------------------------------------------
def _args(cls, config) -> dict:
    """The fields of one of our config dataclasses that ``cls``'s constructor takes."""
    accepted = inspect.signature(cls).parameters
    return {k: v for k, v in dataclasses.asdict(config).items() if k in accepted}


def _dinov2(config):
    from vggt.layers.attention import MemEffAttention
    from vggt.layers.block import Block
    from vggt.layers.vision_transformer import DinoVisionTransformer

    vit = DinoVisionTransformer(block_fn=functools.partial(Block, attn_class=MemEffAttention),
                                **_args(DinoVisionTransformer, config))
    vit.mask_token.requires_grad_(False)
    return vit


def build_module(cfg: VGGTConfig, part: str) -> nn.Module:
    """Upstream's aggregator (``part=aggregator``) or VGGT built from our config, parameters unset."""
    from vggt.models.aggregator import Aggregator

    agg_args = _args(Aggregator, cfg.aggregator)
    if cfg.patch_embed_vit is not None:
        agg_args["patch_embed"] = "conv"  # replaced below, as the reference cases were made
    aggregator = Aggregator(**agg_args)
    if cfg.patch_embed_vit is not None:
        aggregator.patch_embed = _dinov2(cfg.patch_embed_vit)
    if part == "aggregator":
        return aggregator
    from vggt.heads.camera_head import CameraHead
    from vggt.heads.dpt_head import DPTHead
    from vggt.heads.track_head import TrackHead
    from vggt.heads.track_modules.base_track_predictor import BaseTrackerPredictor
    from vggt.models.vggt import VGGT

    agg = cfg.aggregator
    net = VGGT(img_size=agg.img_size, patch_size=agg.patch_size, embed_dim=agg.embed_dim, enable_camera=False,
               enable_point=False, enable_depth=False, enable_track=False)
    net.aggregator = aggregator
    if cfg.camera_head is not None:
        net.camera_head = CameraHead(**_args(CameraHead, cfg.camera_head))
    for name in ("point_head", "depth_head"):
        if getattr(cfg, name) is not None:
            setattr(net, name, DPTHead(**_args(DPTHead, getattr(cfg, name))))
    if cfg.track_head is not None:
        track = TrackHead(**_args(TrackHead, cfg.track_head))
        if cfg.track_head.feature_extractor is not None:
            track.feature_extractor = DPTHead(**_args(DPTHead, cfg.track_head.feature_extractor))
        if cfg.track_head.tracker is not None:
            track.tracker = BaseTrackerPredictor(**_args(BaseTrackerPredictor, cfg.track_head.tracker))
        net.track_head = track
    return net


class UpstreamVGGT:
    """Upstream's model behind the interface measure.run uses on ours.

    ``state`` is a state dict with our (= the checkpoint's) names; for ``part=aggregator`` only the
    ``aggregator.`` entries are used. Precision: ``bf16_autocast`` runs the forward under autocast
    (upstream's own heads switch it off); ``bf16``/``fp16`` cast the module as upstream's code would.
    """

    def __init__(self, cfg: VGGTConfig, part: str, device, state: dict, dtype: str, tf32: bool):
        self.part = part
        # built on the device itself (upstream's init reads tensor values, so not on the meta device),
        # then overwritten with the weights
        with torch.device(device):
            module = build_module(cfg, part)
        module.to(device)
        if part == "aggregator":
            state = {k[len("aggregator."):]: v for k, v in state.items() if k.startswith("aggregator.")}
        vggt_model.checkpoint.check(module, state, "our weights, loaded into upstream's code")
        module.load_state_dict(state, strict=True)
        self.module = module.eval()
        self.precision = dtype
        if dtype in ("bf16", "fp16"):
            self.module.to({"bf16": torch.bfloat16, "fp16": torch.float16}[dtype])
        torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
        torch.backends.cudnn.allow_tf32 = bool(tf32)
        self.device = torch.device(device)
        self.execution = ExecutionConfig(memory_plan="upstream")
        self.sites = {}
        self._context = contextlib.nullcontext
        self._hooks = []
        self.ranges: Ranges = OFF

    # ---- what measure.run calls -------------------------------------------------------------------
    @property
    def compute_dtype(self) -> torch.dtype:
        return {"fp32": torch.float32, "bf16_autocast": torch.bfloat16, "bf16": torch.bfloat16,
                "fp16": torch.float16}[self.precision]

    def parameters(self):
        return self.module.parameters()

    def configure(self, execution: ExecutionConfig) -> "UpstreamVGGT":
        reason = why_unavailable(execution)
        if reason is not None:
            raise attention.BackendUnavailable(reason)
        from vggt.layers.attention import Attention

        backend = attention.get(execution.attention, self.device, self.compute_dtype, self._head_dim())
        for m in self.module.modules():
            if isinstance(m, Attention):
                m.fused_attn = execution.attention != "eager"
        self._context = backend.context if execution.attention != "eager" else contextlib.nullcontext
        self.sites = {"frame": backend, "global": backend}
        self.execution = execution
        self._set_ranges(Ranges(execution.nvtx))
        return self

    def attention_report(self) -> str:
        name = self.execution.attention
        return f"frame={name} global={name}" + (" (explicit softmax path)" if name == "eager" else "")

    def _head_dim(self) -> int:
        agg = self.module if self.part == "aggregator" else self.module.aggregator
        return agg.frame_blocks[0].attn.head_dim

    def _autocast(self):
        if self.precision == "bf16_autocast":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _inputs(self, images):
        if images.dim() == 4:
            images = images.unsqueeze(0)
        return images.to(self.compute_dtype) if self.precision in ("bf16", "fp16") else images

    def aggregate(self, images):
        with self._context(), self._autocast():
            agg = self.module if self.part == "aggregator" else self.module.aggregator
            return agg(self._inputs(images))

    def __call__(self, images, query_points=None, return_intermediates: bool = False):
        if self.part == "aggregator":
            raise ValueError("this upstream model was built for part=aggregator")
        with self._context(), self._autocast():
            return self.module(self._inputs(images), query_points)

    # ---- NVTX / profiler ranges through forward hooks -----------------------------------------------
    def _set_ranges(self, ranges: Ranges) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks, self.ranges = [], ranges
        if not ranges.enabled:
            return
        from vggt.layers.attention import Attention
        from vggt.layers.mlp import Mlp

        open_ranges = []

        def push(name):
            def hook(*_):
                cm = ranges(name)
                cm.__enter__()
                open_ranges.append(cm)
            return hook

        def pop(*_):
            open_ranges.pop().__exit__(None, None, None)

        def add(module, name, before=None, after=True):
            self._hooks.append(module.register_forward_pre_hook(before or push(name)))
            if after:
                self._hooks.append(module.register_forward_hook(pop))

        agg = self.module if self.part == "aggregator" else self.module.aggregator
        if self.part != "aggregator":
            add(self.module, "vggt")
            for name in ("camera_head", "depth_head", "point_head", "track_head"):
                if getattr(self.module, name, None) is not None:
                    add(getattr(self.module, name), name)
        add(agg, "aggregator")
        add(agg.patch_embed, "patch_embed")
        for block in getattr(agg.patch_embed, "blocks", []):
            add(block, "vit_block")
        for i, (frame, glob) in enumerate(zip(agg.frame_blocks, agg.global_blocks)):
            # one range per layer around its frame and global block, as ours
            self._hooks.append(frame.register_forward_pre_hook(push(f"layer_{i:02d}")))
            add(frame, "frame_block")
            add(glob, "global_block")
            self._hooks.append(glob.register_forward_hook(pop))
        for m in self.module.modules():
            if isinstance(m, Attention):
                add(m, "attention")
            elif isinstance(m, Mlp):
                add(m, "mlp")
