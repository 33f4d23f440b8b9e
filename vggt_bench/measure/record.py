"""The record of one measured point (``Measurement``), in named parts, and the row it makes.

Like ``torch.utils.benchmark``'s ``Measurement``, a record holds what was measured, typed: the
point, the environment it ran in, its timing, memory, the machine's state (telemetry), the ranks
that ran it together, what attention ran and its output drift. ``to_row()`` is the one place they
become the results table's columns (``core.schema.RESULT_COLUMNS``), with what follows from them:
FLOPs and rates (``derived_columns``) and how far to trust the row (``noise.columns``).

A point that did not run (status oom, unavailable or error) has a status and a message and no
measured parts: its row has none of their columns, as it never had.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from . import flops, gpus, noise
from .point import Point
from .timing import percentile

NAN = float("nan")


@dataclass
class Timing:
    """The timed calls: latency statistics (ms), the median's 95% CI and the point's cold costs."""

    warmup: int
    repeats: int
    latency_ms_median: float
    latency_ms_p10: float
    latency_ms_p90: float
    latency_ms_mean: float
    latency_ms_min: float
    latency_ms_samples: str  # JSON list of every timed call's latency (ms, to 0.1 us), in call order
    ci95_low_ms: float
    ci95_high_ms: float
    rel_ci95: float
    stopped_by: str
    first_call_ms: float
    compile_s: float

    @classmethod
    def of(cls, warmup: int, times_ms: List[float], ci: dict, cold: dict) -> "Timing":
        """From the latencies of the timed calls, ``timing.ci_columns`` (or an adaptive run's
        ``columns()``) and ``timing.cold_columns``."""
        return cls(warmup=warmup, repeats=len(times_ms), latency_ms_median=statistics.median(times_ms),
                   latency_ms_p10=percentile(times_ms, 0.1), latency_ms_p90=percentile(times_ms, 0.9),
                   latency_ms_mean=statistics.fmean(times_ms), latency_ms_min=min(times_ms),
                   latency_ms_samples=json.dumps([round(float(t), 4) for t in times_ms]), **ci, **cold)


@dataclass
class Memory:
    """What the point held (GiB): the GPU allocator's peaks (NaN on the CPU) and the process's peak RSS."""

    static_gib: float          # allocated before the forward (weights, inputs)
    peak_rss_gib: float
    peak_alloc_gib: float
    act_gib: float             # peak_alloc_gib - static_gib
    peak_reserved_gib: float
    device_mem_gib: float      # the GPU's memory, or the machine's on the CPU


@dataclass
class Ranks:
    """The ranks that ran the forward together (``ranks.rank_columns``); one rank: no collectives."""

    world_size: int
    comm_ms: float
    comm_mib: float
    rank_peak_gib_max: float
    rank_peak_gib_mean: float
    # CPU ranks: the sibling ranks' CPU time, moved from the other processes' share to this
    # measurement's (None: telemetry's shares stand)
    cpu_other_share: Optional[float] = None
    cpu_self_share: Optional[float] = None

    def columns(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class Attention:
    """What each attention call site ran, and what ``attention=auto`` timed to choose (JSON, "" without)."""

    attention_ran: str
    attention_auto: str


@dataclass
class Drift:
    """Output drift (relative L2): against the eager fp32 model, and per output against the exact
    model (``drift.measure_drift``); NaN where not measured."""

    drift_rel: float = NAN
    drift_vs_eager: float = NAN
    drift_tokens_rel: float = NAN
    drift_pose_rel: float = NAN
    drift_depth_rel: float = NAN
    drift_points_rel: float = NAN


@dataclass
class Measurement:
    """One point's result. ``run.measure`` fills the measured parts; ``run.run_point`` adds the
    experiment, the environment, the parameters of the model held and the wall time."""

    point: Point
    status: str = "ok"                 # schema.STATUSES
    message: str = ""
    timing: Optional[Timing] = None
    memory: Optional[Memory] = None
    telemetry: Optional[Dict[str, object]] = None  # telemetry.COLUMNS, from telemetry.Meter
    ranks: Optional[Ranks] = None
    attention: Optional[Attention] = None
    drift: Optional[Drift] = None
    params: float = NAN                # parameters of the model measured (NaN: none held)
    experiment: str = ""
    environment: Dict[str, object] = field(default_factory=dict)  # env.environment and upstream_source
    wall_s: Optional[float] = None     # seconds the whole point took (build, warm-up, timing)

    def to_row(self) -> dict:
        """The results table's row of this point."""
        row = {**point_columns(self.point, self.experiment), **self.environment,
               "status": self.status, "message": self.message}
        for part in (self.timing, self.memory):
            if part is not None:
                row.update(dataclasses.asdict(part))
        if self.telemetry is not None:
            row.update(self.telemetry)
        if self.ranks is not None:
            row.update(self.ranks.columns())
        for part in (self.attention, self.drift):
            if part is not None:
                row.update(dataclasses.asdict(part))
        ran = self.status == "ok" and self.timing is not None
        row.update(derived_columns(self.point, self.timing.latency_ms_median if ran else None,
                                   str(row.get("gpu_name", ""))))
        row["params"] = self.params
        row.update(noise.columns(row))
        if self.wall_s is not None:
            row["wall_s"] = self.wall_s
        return row

    def __getitem__(self, column: str):
        """One column of ``to_row()``: a record reads like its row."""
        return self.to_row()[column]


def point_columns(point: Point, experiment: str) -> dict:
    """The columns that say which point a row is, measured or not: its id, the experiment, its knobs
    and its weights."""
    return {"point_id": point.point_id, "experiment": experiment, **point.knobs(),
            "random_weights": point.checkpoint is None, "checkpoint": point.checkpoint or ""}


_ELEMENT_BYTES = {"fp32": 4, "bf16_autocast": 4, "bf16": 2, "fp16": 2}  # the residual stream's dtype


def kept_bytes(point: Point) -> int:
    """Bytes of the layer outputs the aggregator keeps for the heads: ``len(cached)`` x
    ``[B, S, P, 2C]`` in the residual stream's dtype (fp32 under bf16 autocast)."""
    agg = point.model_config().aggregator
    tokens = (point.height // agg.patch_size) * (point.width // agg.patch_size) + agg.patch_start_idx
    per_layer = point.batch * point.frames * tokens * 2 * agg.embed_dim * _ELEMENT_BYTES[point.execution.dtype]
    return len(agg.cached_layers()) * per_layer


def derived_columns(point: Point, median: Optional[float], gpu_name: str) -> dict:
    """FLOPs, rates and sizes that follow from the point and its median latency (ms; None when the
    point did not run)."""
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
    if median:
        out["fps"] = point.frames * point.batch / (median / 1e3)
        out["achieved_tflops"] = out["flops"] / (median / 1e3) / 1e12
        devices = point.execution.context_parallel  # the ranks' devices together
        out["frac_of_peak"] = out["achieved_tflops"] / (peak * devices) if peak == peak else math.nan
    return out
