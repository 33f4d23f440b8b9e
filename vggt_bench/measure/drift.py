"""Output drift: how far a point's outputs move from a reference on the same weights and inputs.

Two references, each computed once per workload and kept on the host (a drift sweep over settings
pays one reference forward per frame count, not one per point):

* ``drift_vs_eager``: the last layer's tokens against our eager fp32 model (``eager_reference``);
  it covers what claims the same function (compile, CUDA graph, backends, plans, upstream's code).
* ``measure_drift``: each output (tokens, and with heads camera pose, depth, world points) against
  the exact model, every approximation at its exact value (``exact_outputs``), also saved under a
  sweep's ``drift_reference/`` so a resumed or split sweep reuses them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Optional

import torch

import vggt_model
from vggt_model.config import ExecutionConfig

from ..core.results import atomic_write
from . import build
from .point import Point


def _last_layer(out, net) -> torch.Tensor:
    tokens = out[0] if isinstance(out, tuple) else out["aggregated_tokens"]
    last = vggt_model.materialize(tokens[-1]).float()
    context = getattr(net, "context", None)  # upstream's model has none
    return last if context is None else context.gather_frames(last)  # every rank's frames


def drift_vs_eager(point: Point, fn, net, images, heads: bool, last=None) -> float:
    """Relative L2 distance of this setting's last layer tokens from the exact reference: our model,
    the same weights (in fp32, as built or loaded) and inputs, run eagerly in fp32 (SDPA, upstream's
    plan, no compile, no CUDA graph). It covers what claims the same function (compile, CUDA graph,
    each backend, each plan, upstream's code) and, for half precision, the rounding too. The reference
    is computed once per weights and inputs (``eager_reference``), not once per point. ``last``: the
    last timed forward's aggregator output, when kept (``timing.KeepLast``)."""
    if point.part == "aggregator":
        out = last if last is not None else fn()  # the timed callable itself: a CUDA graph's replay, compiled blocks
        test = _last_layer(out, net)
    else:
        test = _last_layer(net.aggregate(images), net)
    return relative_l2(test.cpu(), eager_reference(point, images, heads))


_EAGER: dict = {}  # the eager fp32 model's last layer tokens (host) for one weights-and-inputs key


def _workload(point: Point) -> dict:
    """What any reference output depends on besides the execution: the weights and the inputs."""
    return {"impl": point.impl, "arch": point.arch, "device": point.device, "seed": point.seed,
            "checkpoint": point.checkpoint, "frames": point.frames, "batch": point.batch, "height": point.height,
            "width": point.width, "inputs": point.inputs, "input_seed": point.input_seed,
            "image_mode": point.image_mode}


def _digest(what: dict) -> str:
    return hashlib.sha1(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def workload_key(point: Point, heads: bool) -> str:
    """The eager reference's key: weights and inputs (random weights depend on which modules are
    built, hence ``heads``)."""
    return _digest({**_workload(point), "heads": heads})


def eager_reference(point: Point, images, heads: bool) -> torch.Tensor:
    """The last layer's tokens of our eager fp32 model on ``point``'s weights and inputs, on the host:
    built and run for the first point of a workload, reused by the next ones (a drift sweep over
    settings pays one fp32 forward per frame count, not one per point)."""
    key = workload_key(point, heads)
    if key not in _EAGER:
        _EAGER.clear()
        build.free_memory()
        ref_net = build.build_weights(point, heads)
        ref_net.configure(ExecutionConfig(memory_plan="upstream", attention="sdpa"))
        _EAGER[key] = _last_layer(ref_net.aggregate(images.float()), ref_net).cpu()
        del ref_net
        build.free_memory()
    return _EAGER[key]


# ---- output drift of an approximation ---------------------------------------------------------------
# column -> what it compares: the last layer's tokens, or a head's output
DRIFT_COLUMNS = {"drift_tokens_rel": "tokens", "drift_pose_rel": "pose_enc", "drift_depth_rel": "depth",
                 "drift_points_rel": "world_points"}
_REFERENCE: dict = {}  # the exact model's outputs per (weights, inputs, exact execution), on the host
DRIFT_REFERENCE_DIR = "drift_reference"  # under a sweep's out: those outputs, one .pt per reference_key


def drift_outputs(net: vggt_model.VGGT, images, aggregated=None) -> dict:
    """The outputs drift is measured on, as fp32 host tensors: the last layer's tokens, and with heads
    the camera pose encoding, depth and world points (no tracks). ``aggregated``: ``net.aggregate(images)``
    under the configuration measured, when a timed forward already computed it (the heads run on it)."""
    if net.camera_head is None and net.depth_head is None and net.point_head is None:
        return {"tokens": _last_layer(aggregated if aggregated is not None else net.aggregate(images), net).cpu()}
    out = net(images, return_intermediates=True, aggregated=aggregated)
    found = {"tokens": _last_layer(out, net).cpu()}  # every rank's frames under context parallelism
    for name in ("pose_enc", "depth", "world_points"):
        if name in out:
            found[name] = out[name].float().cpu()
    return found


def relative_l2(test: torch.Tensor, ref: torch.Tensor) -> float:
    """``||test - ref|| / ||ref||`` in fp64, a slice at a time (outputs of 800 frames are GBs)."""
    num = den = 0.0
    for a, b in zip(test.reshape(-1).split(1 << 24), ref.reshape(-1).split(1 << 24)):
        a, b = a.double(), b.double()
        num += float(((a - b) ** 2).sum())
        den += float((b * b).sum())
    if den == 0:
        return 0.0 if num == 0 else math.inf
    return math.sqrt(num / den)


def reference_key(point: Point) -> str:
    """What the exact outputs of a point depend on: the weights, the inputs and the exact execution."""
    return _digest({**_workload(point), "execution": dataclasses.asdict(point.execution.exact())})


def measure_drift(net: vggt_model.VGGT, point: Point, images, reference_dir: Optional[str] = None,
                  test: Optional[dict] = None) -> dict:
    """Drift columns of a point whose execution is not exact: each output's relative L2 against the
    exact model (every approximation at its exact value, everything else as the point) on the same
    weights and inputs. The exact outputs are computed once per workload and kept on the host, and
    with ``reference_dir`` also saved there (``<key>.pt``), so later processes (a resumed or split
    sweep) reuse them instead of running the exact model again. ``test``: this point's
    ``drift_outputs``, when already computed."""
    test = test if test is not None else drift_outputs(net, images)
    ref = exact_outputs(net, point, images, reference_dir)
    row = {col: relative_l2(test[name], ref[name]) if name in test and name in ref else math.nan
           for col, name in DRIFT_COLUMNS.items()}
    row["drift_rel"] = row["drift_tokens_rel"]
    return row


def exact_outputs(net: vggt_model.VGGT, point: Point, images, reference_dir: Optional[str] = None,
                  aggregated=None) -> dict:
    """The exact model's drift outputs for ``point``'s weights and inputs: from this process's cache,
    else from ``reference_dir``, else computed (and saved there). ``aggregated``: the aggregator's
    output of an exact point's timed forward, reused (only when ``point`` is exact)."""
    if aggregated is not None and not point.execution.is_exact():
        raise ValueError("exact_outputs reuses the aggregator output of an exact point only")
    ex = point.execution
    key = reference_key(point)
    path = os.path.join(reference_dir, f"{key}.pt") if reference_dir else None
    if key not in _REFERENCE:
        _REFERENCE.clear()
        if path and os.path.isfile(path):
            _REFERENCE[key] = torch.load(path, map_location="cpu", weights_only=True)
        else:
            net.configure(ex.exact())
            try:
                _REFERENCE[key] = drift_outputs(net, images, aggregated)
            finally:
                net.configure(ex)
            if path:
                os.makedirs(reference_dir, exist_ok=True)
                atomic_write(path, lambda f: torch.save(_REFERENCE[key], f))
    return _REFERENCE[key]
