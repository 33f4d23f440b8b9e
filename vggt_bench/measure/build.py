"""Building what a point runs: its model (kept for the next points that share its weights), its
inputs and the forward that is timed.

Building VGGT-1B costs seconds, so a process holds one model (``MODELS``) and reuses it for every
point with the same weights and build-time knobs; a point that needs another one frees it first
(two would double the GPU memory held).
"""

from __future__ import annotations

import gc
from typing import Callable, Optional

import torch

import vggt_model
from vggt_model.config import ExecutionConfig, knob_fields
from vggt_model.inputs import image_folder, synthetic_images

from . import upstream
from .point import Point

# Knobs applied when the model is built (precision, compile): a point that changes one rebuilds.
BUILD_KNOBS = [f.name for f in knob_fields(ExecutionConfig) if f.metadata["applied"] == "build"]


class ModelCache:
    """The one model this process holds, and the key (weights and build knobs) it was built for."""

    def __init__(self):
        self.key: Optional[tuple] = None
        self.model: Optional[vggt_model.VGGT] = None

    def get(self, point: Point, heads: bool = False) -> vggt_model.VGGT:
        """The model of ``point``, built once and reused by the points that share its weights.

        ``part=aggregator`` builds the aggregator only, unless ``heads``: then the heads are built too
        (held, not timed) so that output drift can be measured on cameras, depth and points.
        """
        ex = point.execution
        heads = heads or point.part == "full"
        key = (point.impl, point.arch, point.device, point.seed, point.checkpoint, heads,
               *(getattr(ex, k) for k in BUILD_KNOBS))
        if self.key != key:
            self.key = self.model = None
            free_memory()
            net = build_weights(point, heads)
            if point.impl == "upstream":  # the same weights, strictly, in upstream's own modules
                state = net.state_dict()
                cfg = net.config
                del net
                net = upstream.UpstreamVGGT(cfg, point.part, point.device, state, ex.dtype, ex.tf32)
                del state
            else:
                vggt_model.set_precision(net, ex.dtype, ex.tf32)
                vggt_model.apply_compile(net, ex.compile)
            self.key, self.model = key, net
        return self.model

    def params(self) -> Optional[int]:
        """Parameters of the model held (None when none is)."""
        return None if self.model is None else sum(p.numel() for p in self.model.parameters())


MODELS = ModelCache()


def build_weights(point: Point, heads: bool) -> vggt_model.VGGT:
    """Our model of ``point`` in fp32 with its weights (the checkpoint's, else random from ``seed``),
    the heads only with ``heads``. Random weights depend on which modules are built: the eager
    reference of ``drift_vs_eager`` is built by this same call, so it holds the same weights."""
    cfg = point.model_config()
    if not heads:  # heads are not timed: do not hold their weights
        cfg.camera_head = cfg.depth_head = cfg.point_head = cfg.track_head = None
    net = vggt_model.build(cfg, point.device, point.seed)
    if point.checkpoint:
        state = vggt_model.checkpoint.read_state_dict(point.checkpoint)
        if not heads:
            state = {k: v for k, v in state.items() if k.startswith("aggregator.")}
        vggt_model.checkpoint.check(net, state, point.checkpoint)
        net.load_state_dict(state, strict=True)
    return net


def make_inputs(point: Point):
    if point.inputs == "synthetic":
        images = synthetic_images(point.frames, point.height, point.width, point.batch, point.input_seed, point.device)
    else:
        images = image_folder(point.inputs, point.frames, point.image_mode, point.batch, point.device)
    queries = None
    if point.part == "full" and point.query_points > 0:
        gen = torch.Generator().manual_seed(point.input_seed + 1)
        H, W = images.shape[-2:]
        queries = (torch.rand(point.batch, point.query_points, 2, generator=gen) * torch.tensor([W - 1, H - 1])).to(point.device)
    return images, queries


def forward_fn(net: vggt_model.VGGT, point: Point, images, queries) -> Callable[[], object]:
    if point.part == "aggregator":
        step = net.aggregate
    else:
        def step(x):
            return net(x, queries)
    if point.execution.cuda_graph:
        graphed = vggt_model.GraphedForward(step, images)
        return lambda: graphed(images)
    return lambda: step(images)


def free_memory():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
