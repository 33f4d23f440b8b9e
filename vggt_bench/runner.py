"""Measure one configuration: build (or reuse) the model, warm up, time, record one row.

A failed point is data: out-of-memory, an unavailable backend and any other error each
become a row with a status, and the caller goes on to the next point.
"""

from __future__ import annotations

import gc
import math
import os
import resource
import statistics
import sys
import time
import traceback
import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional

import torch

import vggt_model
from vggt_model import attention
from vggt_model.config import ConfigError, ExecutionConfig, VGGTConfig, knob_fields
from vggt_model.inputs import IMAGE_EXTENSIONS, image_folder, synthetic_images

from . import distributed, env, flops, gpus, noise, telemetry, timing, upstream
from .core.config import execution_config
from .core.errors import UserError, one_line
from .core.results import point_id
from .core.schema import WORKLOAD

PARTS = ("aggregator", "full")
IMAGE_MODES = ("crop", "pad")


# ---- resolving a configuration ---------------------------------------------------------------
@dataclass
class Point:
    """A fully resolved configuration (no ``auto`` left): the workload, and how the model runs."""

    arch: str
    device: str
    frames: int
    batch: int
    height: int
    width: int
    part: str
    query_points: int
    inputs: str
    execution: ExecutionConfig
    checkpoint: Optional[str] = None
    seed: int = 0
    image_mode: str = "crop"
    input_seed: int = 0
    impl: str = "ours"
    upstream_path: Optional[str] = None
    note: str = ""  # said in the row's message (e.g. what upstream's code runs instead of a default)

    def knobs(self) -> dict:
        """Every column that identifies the point: workload fields, then the execution knobs."""
        return {**{k: getattr(self, k) for k in WORKLOAD}, **dataclasses.asdict(self.execution)}

    @property
    def point_id(self) -> str:
        return point_id(self.knobs())

    def model_config(self) -> VGGTConfig:
        return VGGTConfig.named(self.arch)


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device={name} but no CUDA GPU is visible to PyTorch {torch.__version__}; use device=cpu or device=auto")
        return name
    if name != "cpu":
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    return name


def resolve(cfg) -> Point:
    """Turn a (Hydra) BenchConfig into a Point, refusing bad values with one-line errors."""
    m, i = cfg.model, cfg.inputs
    device = resolve_device(str(cfg.device))
    on_gpu = device.startswith("cuda")
    arch = m.arch if m.arch != "auto" else ("vggt1b" if on_gpu else "small")
    dtype = m.dtype if m.dtype != "auto" else ("bf16_autocast" if on_gpu else "fp32")
    # CPU: small frames, so per-frame launch overhead (what fusing removes) stays visible
    height = i.height if i.height is not None else (336 if on_gpu else 70)
    width = i.width if i.width is not None else (518 if on_gpu else 112)
    if int(cfg.frames) < 1:
        raise UserError(f"frames must be >= 1, got frames={cfg.frames}")
    if int(i.batch) < 1:
        raise UserError(f"inputs.batch must be >= 1, got {i.batch}")
    if cfg.part not in PARTS:
        raise UserError(f"unknown part {cfg.part!r}; choose one of {list(PARTS)}")
    if i.mode not in IMAGE_MODES:
        raise UserError(f"unknown inputs.mode {i.mode!r}; choose one of {list(IMAGE_MODES)}")
    try:
        mcfg = VGGTConfig.named(arch)
        execution = execution_config(m, dtype=dtype).validate(mcfg.aggregator.depth, prefix="model.")
    except ConfigError as exc:
        raise UserError(str(exc))
    if execution.cuda_graph and not on_gpu:
        raise UserError("model.cuda_graph=true needs a CUDA GPU (device=cuda); CUDA graphs do not exist on the CPU")
    p = mcfg.aggregator.patch_size
    if i.image_dir is not None:
        height, width = _image_size(i.image_dir, i.mode)
    if height % p or width % p or height < p or width < p:
        raise UserError(f"inputs.height and inputs.width must be positive multiples of {p}, got {height} x {width}")
    if int(cfg.measure.repeats) < 1 or int(cfg.measure.warmup) < 0:
        raise UserError(f"measure.repeats must be >= 1 and measure.warmup >= 0, got {cfg.measure.repeats}, {cfg.measure.warmup}")
    if m.checkpoint is not None and not os.path.isfile(m.checkpoint):
        raise UserError(f"model.checkpoint not found: {m.checkpoint} (give the path of model.pt or a .safetensors file)")
    if m.impl not in upstream.IMPLS:
        raise UserError(f"unknown model.impl {m.impl!r}; choose one of {list(upstream.IMPLS)}")
    distributed.check(execution.context_parallel, int(cfg.frames), mcfg.aggregator.num_heads, device)
    note = ""
    if m.impl == "upstream":
        upstream.locate(m.upstream_path)  # one line naming how to get it, before anything runs
        execution, note = upstream.as_run(execution)
    return Point(
        arch=arch, device=device, frames=int(cfg.frames), batch=int(i.batch), height=int(height), width=int(width),
        part=cfg.part, query_points=int(i.query_points),
        inputs=os.path.abspath(i.image_dir) if i.image_dir else "synthetic", execution=execution,
        checkpoint=m.checkpoint, seed=int(m.seed), image_mode=i.mode, input_seed=int(i.seed), impl=m.impl,
        upstream_path=m.upstream_path, note=note,
    )


# ---- model cache: building VGGT-1B costs seconds, so points that share weights reuse it --------
_CACHE: dict = {}
# Knobs applied when the model is built (precision, compile): a point that changes one rebuilds.
BUILD_KNOBS = [f.name for f in knob_fields(ExecutionConfig) if f.metadata["applied"] == "build"]


def get_model(point: Point, heads: bool = False) -> vggt_model.VGGT:
    """The model of ``point``, built once and reused by the points that share its weights.

    ``part=aggregator`` builds the aggregator only, unless ``heads``: then the heads are built too
    (held, not timed) so that output drift can be measured on cameras, depth and points.
    """
    ex = point.execution
    heads = heads or point.part == "full"
    key = (point.impl, point.arch, point.device, point.seed, point.checkpoint, heads,
           *(getattr(ex, k) for k in BUILD_KNOBS))
    if _CACHE.get("key") != key:
        _CACHE.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
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
        _CACHE.update(key=key, model=net)
    return _CACHE["model"]


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


# ---- timing ----------------------------------------------------------------------------------
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


def _sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def time_forward(fn, device: str, warmup: int, repeats: int):
    """Latencies (ms) of ``repeats`` calls after ``warmup`` untimed ones.

    GPU: CUDA events around each call; CPU: a wall clock (CPU work is synchronous).
    """
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


class KeepLast:
    """``fn`` timed ``calls`` times, keeping the output of the last call only (``output``): a drift
    measurement reads the aggregator's output of the last timed forward instead of running the
    aggregator once more (at 800 frames a forward is minutes). Earlier outputs are dropped as soon as
    each call returns, so no call runs beside a previous call's output and the peak memory measured
    is the same as without it."""

    def __init__(self, fn: Callable[[], object], calls: int):
        self.fn, self.calls, self.made, self.output = fn, calls, 0, None

    def __call__(self):
        out = self.fn()
        self.made += 1
        if self.made == self.calls:
            self.output = out
        return None


def _percentile(values, q):
    values = sorted(values)
    if len(values) == 1:
        return values[0]
    pos = (len(values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def _reset_peak_rss() -> bool:
    """Linux lets a process reset its peak RSS (VmHWM) by writing 5 to clear_refs."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_gib() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 2**30
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        "out of memory" in text.lower() or "can't allocate memory" in text or isinstance(exc, MemoryError)
    )


def free_memory():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _last_layer(out, net) -> torch.Tensor:
    tokens = out[0] if isinstance(out, tuple) else out["aggregated_tokens"]
    last = vggt_model.materialize(tokens[-1]).float()
    context = getattr(net, "context", None)  # upstream's model has none
    return last if context is None else context.gather_frames(last)  # every rank's frames


def _drift_vs_eager(point: Point, fn, net, images, heads: bool, last=None) -> float:
    """Relative L2 distance of this setting's last layer tokens from the exact reference: our model,
    the same weights (in fp32, as built or loaded) and inputs, run eagerly in fp32 (SDPA, upstream's
    plan, no compile, no CUDA graph). It covers what claims the same function (compile, CUDA graph,
    each backend, each plan, upstream's code) and, for half precision, the rounding too. The reference
    is computed once per weights and inputs (``eager_reference``), not once per point. ``last``: the
    last timed forward's aggregator output, when kept (``KeepLast``)."""
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
    import hashlib
    import json

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
        free_memory()
        ref_net = build_weights(point, heads)
        ref_net.configure(ExecutionConfig(memory_plan="upstream", attention="sdpa"))
        _EAGER[key] = _last_layer(ref_net.aggregate(images.float()), ref_net).cpu()
        del ref_net
        free_memory()
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
                from .core.results import atomic_write

                os.makedirs(reference_dir, exist_ok=True)
                atomic_write(path, lambda f: torch.save(_REFERENCE[key], f))
    return _REFERENCE[key]


def _auto_timings(net) -> str:
    """JSON of what ``auto`` measured per site and shape: ``{site: {"q [..] k [..] dtype": {backend: ms or why}}}``."""
    import json

    timings = {}
    for site, backend in net.sites.items():
        for key, results in getattr(backend, "timings", {}).items():
            q, k, dtype = key
            label = f"q {list(q)} k {list(k)} {dtype}"
            timings.setdefault(site, {})[label] = {n: (round(t, 4) if isinstance(t, float) else t) for n, t in results.items()}
    return json.dumps(timings) if timings else ""


@dataclasses.dataclass(frozen=True)
class Measurement:
    """How every point is measured: the ``measure`` config group, and where drift's exact outputs are
    kept. ``warmup`` untimed calls, then ``repeats`` timed ones (with ``adaptive``: at least that
    many, until the median's CI converges); with ``drift`` the drift columns against the exact
    model, and with ``eager_reference`` also ``drift_vs_eager`` against the eager fp32 model;
    ``reference_dir``: where the exact model's drift outputs are saved for later processes."""

    warmup: int = 1
    repeats: int = 3
    drift: bool = False
    eager_reference: bool = True
    adaptive: Optional[timing.AdaptiveSettings] = None
    reference_dir: Optional[str] = None

    @classmethod
    def from_config(cls, measure, out: Optional[str] = None) -> "Measurement":
        """From a ``measure`` config group; ``out``: the results directory (drift's exact outputs go to
        ``<out>/drift_reference/``). Raises ``timing.SettingsError`` for bad adaptive settings."""
        return cls(warmup=int(measure.warmup), repeats=int(measure.repeats), drift=bool(measure.drift),
                   eager_reference=bool(measure.eager_reference),
                   adaptive=timing.adaptive_settings(measure),
                   reference_dir=os.path.join(out, DRIFT_REFERENCE_DIR) if out else None)


def measure(point: Point, how: Measurement) -> dict:
    """All measurement columns of one point (status ``ok``), or raise; ``how`` says how (warm-up,
    repeats, drift)."""
    warmup, repeats, drift, adaptive = how.warmup, how.repeats, how.drift, how.adaptive
    device = point.device
    why = distributed.unavailable(point)  # what context parallelism does not combine with
    if why:
        return {"status": "unavailable", "message": why}
    with torch.inference_mode():
        # with drift on, the heads are held (not timed) at every point, so every row of the sweep
        # holds the same weights and drift covers cameras, depth and points
        heads = drift and point.impl == "ours"
        net = get_model(point, heads=heads)
        ex = point.execution
        if ex.memory_plan == "offload" and ex.cuda_graph:
            return {"status": "unavailable", "message": (
                "memory_plan=offload copies to host memory on a side stream, which is not captured into a "
                "CUDA graph here; use model.cuda_graph=false")}
        try:
            net.configure(ex)
        except attention.BackendUnavailable as exc:
            return {"status": "unavailable", "message": str(exc)}
        if ex.compile != "off":
            # Compiled code is cached per code object, shared by every point of the process:
            # without a reset, new shapes recompile until dynamo's recompile limit and then
            # silently run eager. Each point compiles afresh (in its warm-up, untimed).
            torch._dynamo.reset()
        images, queries = make_inputs(point)
        free_memory()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(device)
            static = torch.cuda.memory_allocated(device) / 2**30
        else:
            static = math.nan
        _reset_peak_rss()
        # Built after the reset: a CUDA graph's capture allocates its memory pool here.
        built = time.perf_counter()
        fn = forward_fn(net, point, images, queries)
        _sync(device)
        built = (time.perf_counter() - built) * 1e3
        warm = timing.warm_up(fn, device, warmup)
        warm.setup_ms = built
        distributed.start_window(net)
        meter = telemetry.Meter(device).start()
        last = None
        if adaptive is not None:
            run = timing.time_adaptive(fn, device, adaptive)
            times, stats = run.times_ms, run.columns()
        else:
            # with drift on, the last timed forward's aggregator output is kept and the drift outputs
            # are read from it (the heads run on it): no further aggregator forward for drift. Not
            # for a CUDA graph's replay (its static outputs live in the graph's pool, freed before
            # drift is measured) nor for the whole model (its output is the heads').
            timed = (KeepLast(fn, repeats) if drift and point.impl == "ours" and point.part == "aggregator"
                     and not ex.cuda_graph else fn)
            times = time_forward(timed, device, 0, repeats)
            last = timed.output if isinstance(timed, KeepLast) else None
            del timed
            stats = timing.ci_columns(times)
        stats.update(meter.stop(), **timing.cold_columns(warm, times, ex.compile != "off"))
        message = point.note
        if ex.memory_plan == "offload" and not device.startswith("cuda"):
            message = "memory_plan=offload on the CPU: the kept outputs are in host memory already (ran as lean)"
        row = {
            "status": "ok", "message": message, "warmup": warmup, "repeats": len(times),
            "latency_ms_median": statistics.median(times), "latency_ms_p10": _percentile(times, 0.1),
            "latency_ms_p90": _percentile(times, 0.9), "latency_ms_mean": statistics.fmean(times),
            "latency_ms_min": min(times), "static_gib": static, "peak_rss_gib": _peak_rss_gib(),
            **stats,
        }
        if device.startswith("cuda"):
            row["peak_alloc_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            row["act_gib"] = row["peak_alloc_gib"] - static
            row["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
            row["device_mem_gib"] = torch.cuda.get_device_properties(device).total_memory / 2**30
        else:
            row["peak_alloc_gib"] = row["peak_reserved_gib"] = row["act_gib"] = math.nan
            row["device_mem_gib"] = env.machine_memory_gib()
        row.update(distributed.rank_columns(net, row, len(times)))  # every rank's memory and collectives
        row["attention_ran"] = net.attention_report()
        row["attention_auto"] = _auto_timings(net)
        row["drift_rel"] = math.nan
        row["drift_vs_eager"] = (_drift_vs_eager(point, fn, net, images, heads or point.part == "full", last)
                                 if drift and how.eager_reference else math.nan)
        row.update({col: math.nan for col in DRIFT_COLUMNS})
        reference_dir = how.reference_dir
        if drift and point.impl == "ours" and (not ex.is_exact() or reference_dir):
            del fn
            fn = None
            free_memory()
            if ex.is_exact():  # the exact point of a sweep keeps its outputs for the others' drift
                exact_outputs(net, point, images, reference_dir, last)
            else:
                test = drift_outputs(net, images, last)
                last = None  # this point's layer outputs are not held while the exact ones are computed
                row.update(measure_drift(net, point, images, reference_dir, test))
        del images, queries, fn, last
    return row


_ELEMENT_BYTES = {"fp32": 4, "bf16_autocast": 4, "bf16": 2, "fp16": 2}  # the residual stream's dtype


def kept_bytes(point: Point) -> int:
    """Bytes of the layer outputs the aggregator keeps for the heads: ``len(cached)`` x
    ``[B, S, P, 2C]`` in the residual stream's dtype (fp32 under bf16 autocast)."""
    agg = point.model_config().aggregator
    tokens = (point.height // agg.patch_size) * (point.width // agg.patch_size) + agg.patch_start_idx
    per_layer = point.batch * point.frames * tokens * 2 * agg.embed_dim * _ELEMENT_BYTES[point.execution.dtype]
    return len(agg.cached_layers()) * per_layer


def derived(point: Point, row: dict, gpu_name: str) -> dict:
    """FLOPs, rates and sizes that follow from the point and its latency."""
    cfg = point.model_config()
    agg = cfg.aggregator
    out = {
        "tokens_per_frame": (point.height // agg.patch_size) * (point.width // agg.patch_size) + agg.patch_start_idx,
    }
    # a float: at millions of frames the count passes 2**63 and would not fit an int64 column
    out["flops"] = float(flops.forward_flops(
        cfg, point.part, point.height, point.width, point.frames, point.batch, point.execution.prune_depth,
        point.query_points, point.execution,
    ))
    out["kept_gib"] = kept_bytes(point) / 2**30
    on_host = point.execution.memory_plan == "offload" and point.device.startswith("cuda")
    out["host_gib"] = out["kept_gib"] if on_host else 0.0
    peak, source = gpus.peak_tflops(gpu_name, point.execution.dtype, point.execution.tf32)
    out["peak_tflops"], out["peak_source"] = peak, source
    median = row.get("latency_ms_median")
    if row.get("status") == "ok" and median:
        out["fps"] = point.frames * point.batch / (median / 1e3)
        out["achieved_tflops"] = out["flops"] / (median / 1e3) / 1e12
        devices = point.execution.context_parallel  # the ranks' devices together
        out["frac_of_peak"] = out["achieved_tflops"] / (peak * devices) if peak == peak else math.nan
    return out


def run_point(point: Point, how: Measurement, experiment: str = "") -> dict:
    """One complete result row, measured as ``how`` says. Never raises for a failure of the point itself."""
    t0 = time.perf_counter()
    dev = torch.device(point.device)
    row = {"point_id": point.point_id, "experiment": experiment, **point.knobs(), **env.environment(dev)}
    row["random_weights"] = point.checkpoint is None
    row["checkpoint"] = point.checkpoint or ""
    row["upstream_source"] = upstream.describe(point.upstream_path) if point.impl == "upstream" else ""
    try:
        if point.execution.context_parallel > 1:  # N ranks measure it together (vggt_bench/distributed.py)
            row.update(distributed.measure_point(point, how))
        else:
            row.update(measure(point, how))
    except vggt_model.checkpoint.CheckpointError as exc:
        raise UserError(str(exc))
    except Exception as exc:  # a point's failure is a result; Ctrl-C and SystemExit (a launcher's requeue) pass
        if is_oom(exc):
            row.update(status="oom", message=one_line(exc))
        else:
            row.update(status="error", message=one_line(exc))
            traceback.print_exc(file=sys.stderr)
    finally:
        free_memory()
    row.update(derived(point, row, row.get("gpu_name", "")))
    if "model" in _CACHE:
        row["params"] = sum(p.numel() for p in _CACHE["model"].parameters())
    row.setdefault("params", math.nan)  # context parallel: from rank 0
    row.update(noise.columns(row))
    row["wall_s"] = time.perf_counter() - t0
    return row


def _image_size(folder: str, mode: str):
    """(H, W) the image folder's frames have after upstream's preprocessing."""
    from vggt_model.inputs import list_images, load_images

    try:
        files = list_images(folder)
    except FileNotFoundError as exc:
        raise UserError(f"inputs.image_dir: {exc}")
    try:
        h, w = load_images(files, mode).shape[-2:]
    except Exception as exc:  # a file that is not an image, or one PIL cannot decode
        raise UserError(f"inputs.image_dir: cannot read the images in {folder} ({one_line(exc)}); "
                        f"give a folder of {', '.join(IMAGE_EXTENSIONS)} images")
    return int(h), int(w)
