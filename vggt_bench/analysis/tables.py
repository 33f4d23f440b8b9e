"""The results and profile tables as tidy DataFrames, and every analysis of them.

DataFrame in, DataFrame out (the HolisticTraceAnalysis way): figures (``vggt_bench.report.plots``),
the notebook and the findings read these functions and nothing else, so each piece of analysis
(which rows are comparable, the exact model's rows, fused-vs-sequential pairs, conversion against
k=0, time per stage, launches per frame layer) is defined once.

Which knobs split a table into incomparable *contexts*, which are drawn as *series* and which are
*approximations* (fixed at their exact value outside the figures about them) is derived from the
model's own knob metadata (``vggt_model.config.knob``), so a new knob needs no change here.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import field
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from vggt_model.config import APPROX, APPROXIMATE_ATTENTION, ExecutionConfig, knob_fields

from ..core.schema import (
    EXECUTION, GPU_ACTIVITY_COLUMNS, KNOBS, MEASUREMENTS, NVTX_RANGE_COLUMNS, PROFILE_GRID_COLUMNS, RESULT_COLUMNS,
)

# ---- which knob plays which part -------------------------------------------------------------------
_KNOB_TYPE = {f.name: (f.type if isinstance(f.type, str) else f.type.__name__) for f in knob_fields(ExecutionConfig)}
# drawn side by side within one figure: which code (ours or upstream's), how it holds memory, how
# frame attention is batched, which kernels run
SERIES = ["impl", "memory_plan", "frame_exec", "frame_chunk", "attention", "global_attention"]
APPROXIMATIONS = [f.name for f in knob_fields(ExecutionConfig) if f.metadata["fidelity"] == APPROX]
EXACT_VALUE = {f.name: f.metadata["exact"] for f in knob_fields(ExecutionConfig)
               if f.metadata["fidelity"] == APPROX and f.metadata["exact"] is not None}
# What sets a workload (the same work): rows of different workloads are never compared.
WORKLOAD_CONTEXT = ["device", "gpu_name", "arch", "height", "width", "batch", "part", "inputs"]
# What makes two rows incomparable in a figure: the workload, and every knob that is neither a
# series nor an approximation (precision, compile, CUDA graph, NVTX, ...). One figure per combination.
CONTEXT = WORKLOAD_CONTEXT[:-1] + [k for k in EXECUTION if k not in SERIES + APPROXIMATIONS] + ["inputs"]
FRAME_EXEC_ORDER = ["fused", "sequential", "chunked"]
RANGE_STAGES = ["patch_embed", "frame_block", "global_block", "converted_block"]  # NVTX ranges of the aggregator
HEADS = ["camera_head", "depth_head", "point_head", "track_head"]
STAGES = RANGE_STAGES + ["heads", "other"]

INT_COLUMNS = ["frames", "batch", "height", "width", "query_points", "iterations"] + [
    k for k, t in _KNOB_TYPE.items() if t == "int"]
BOOL_KNOBS = [k for k, t in _KNOB_TYPE.items() if t == "bool"]  # absent (older tables) means off
BOOL_COLUMNS = BOOL_KNOBS + ["random_weights", "disagree", "profiled", "noisy", "backs_claim"]
TEXT_COLUMNS = [
    "point_id", "experiment", "arch", "device", "part", "inputs", "gpu_name", "driver", "torch_version",
    "cuda_version", "cudnn_version", "python_version", "cpu", "git_commit", "host", "timestamp", "checkpoint",
    "status", "message", "peak_source", "tag", "profiler", "range", "domain", "impl", "noise_reason", "claim_note", "gpu_uuid",
    "attention_ran", "upstream_source",
    "profile_status", "profile_message", "stage", "source",
] + [k for k, t in _KNOB_TYPE.items() if t == "str"]
FLOAT_KNOBS = [k for k, t in _KNOB_TYPE.items() if t == "float"]

PROFILE_SUMMARY = "profile_summary.csv"


PROFILE_RANGES = "profile_ranges.csv"
PROFILE_GRID = "profile_grid"  # .parquet and .csv: one tidy table across a profiled sweep (profile_grid())

# What makes two rows incomparable: one figure per combination present.


@dataclass
class Tables:
    """The tidy tables of one results directory (empty frames where a table is absent)."""

    results: pd.DataFrame
    profile_summary: pd.DataFrame = field(default_factory=pd.DataFrame)
    profile_ranges: pd.DataFrame = field(default_factory=pd.DataFrame)
    profile_grid: pd.DataFrame = field(default_factory=pd.DataFrame)


def _coerce(frame: pd.DataFrame) -> pd.DataFrame:
    """Types the report relies on, whatever Parquet/CSV made of all-missing columns."""
    frame = frame.copy()
    numeric = set(MEASUREMENTS) | set(GPU_ACTIVITY_COLUMNS) | set(NVTX_RANGE_COLUMNS) | {
        "gpu_mem_gib", "kernels_per_frame_layer", "launches", *INT_COLUMNS, *FLOAT_KNOBS}
    numeric -= set(TEXT_COLUMNS) | set(BOOL_COLUMNS)
    for col in frame.columns:
        if col in numeric:
            frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
        elif col in BOOL_COLUMNS:
            frame[col] = frame[col].map(as_bool).astype("object")
        elif col in TEXT_COLUMNS:
            frame[col] = frame[col].map(lambda v: "" if missing(v) else str(v)).astype("object")
    return frame.copy()  # consolidated: the column-by-column writes above fragment it


def missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def as_bool(value):
    if missing(value):
        return None
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def tidy_results(frame: pd.DataFrame) -> pd.DataFrame:
    """The results table with every RESULT_COLUMNS column present and numeric columns as floats.

    Tables from before a column existed get its meaning: ``impl`` ours, ``memory_plan`` upstream
    (the only plan there was), and the noise columns (``noisy``, ``backs_claim`` ...) computed from what
    the rows hold.
    """
    frame = frame.copy()
    # tables from before the noise columns: computed from what the rows hold; from before backs_claim:
    # that one from the rows' own noisy verdict
    missing_noise = "noisy" not in frame.columns or frame["noisy"].isna().all()
    missing_claim = "backs_claim" not in frame.columns or frame["backs_claim"].isna().all()
    for col, old_value in (("impl", "ours"), ("memory_plan", "upstream")):
        if col not in frame.columns:
            frame[col] = old_value
    absent = [c for c in RESULT_COLUMNS if c not in frame.columns]
    if absent:  # added at once: one column at a time fragments the frame
        frame = pd.concat([frame, pd.DataFrame({c: [None] * len(frame) for c in absent}, index=frame.index)], axis=1)
    if missing_noise and len(frame):
        from ..measure.noise import flag_noisy

        frame = flag_noisy(frame)
    elif missing_claim and len(frame):
        from ..measure.noise import claim

        said = [claim(r, r.get("noisy") is True or r.get("noisy") == 1) for r in frame.to_dict("records")]
        frame["backs_claim"], frame["claim_note"] = [b for b, _ in said], [n for _, n in said]
    frame = _coerce(frame)
    for col in BOOL_KNOBS + ["noisy", "backs_claim"]:
        frame[col] = frame[col].map(lambda v: False if v is None else v).astype(object)
    frame["context_parallel"] = frame["context_parallel"].fillna(1.0)  # tables from before it: one rank
    for col in APPROXIMATE_ATTENTION:  # absent (older tables): those ran the exact attention
        frame[col] = frame[col].fillna(EXACT_VALUE[col])
    frame["approx_layers"] = frame["approx_layers"].replace("", "all")
    # older tables measured drift on the last layer's tokens only, as drift_rel (then against k=0)
    frame["drift_tokens_rel"] = frame["drift_tokens_rel"].fillna(frame["drift_rel"])
    return frame.copy()  # one block per dtype again: callers add columns without pandas' fragmentation warning


def trusted(frame: pd.DataFrame) -> pd.DataFrame:
    """``ok`` rows whose timing is not flagged noisy: what conclusions may be drawn from."""
    ok = ok_rows(frame)
    return ok[~ok["noisy"].fillna(False).astype(bool)] if "noisy" in ok else ok


def tidy_profile(frame: pd.DataFrame) -> pd.DataFrame:
    """A profile table (summary or ranges) with knob columns present and typed."""
    frame = frame.copy()
    for col in KNOBS + ["tag", "profiler", "iterations"]:
        if col not in frame.columns:
            frame[col] = None
    frame = _coerce(frame)
    for col in BOOL_KNOBS:
        frame[col] = frame[col].map(lambda v: False if v is None else v).astype(object)
    frame["iterations"] = frame["iterations"].fillna(1.0).clip(lower=1.0)
    return frame


def read_csv(path: str) -> pd.DataFrame:
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return pd.DataFrame()
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def load_tables(out_dir: str) -> Tables:
    """Results and (where present) profile tables of ``out_dir``.

    Profile tables are looked for in ``<out>/`` and then ``<out>/profiles/``.
    Raises FileNotFoundError when there is no results table.
    """
    from ..core.results import load_results

    results = tidy_results(load_results(out_dir))
    profiles = {}
    for name in (PROFILE_SUMMARY, PROFILE_RANGES):
        for folder in (out_dir, os.path.join(out_dir, "profiles")):
            table = read_csv(os.path.join(folder, name))
            if len(table):
                break
        profiles[name] = tidy_profile(table) if len(table) else pd.DataFrame()
    return Tables(results, profiles[PROFILE_SUMMARY], profiles[PROFILE_RANGES], read_grid(out_dir))


def read_grid(out_dir: str) -> pd.DataFrame:
    """``<out>/profile_grid.parquet`` (else ``.csv``) as written by a profiled sweep, tidied;
    an empty frame when there is none."""
    path = os.path.join(out_dir, PROFILE_GRID + ".parquet")
    if os.path.exists(path):
        table = pd.read_parquet(path)
    else:
        table = read_csv(os.path.join(out_dir, PROFILE_GRID + ".csv"))
    return tidy_grid(table) if len(table) else pd.DataFrame()


def ok_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows that measured a latency (``status == "ok"``)."""
    if frame.empty:
        return frame
    return frame[(frame["status"] == "ok") & frame["latency_ms_median"].notna()]


def contexts(frame: pd.DataFrame, across: Sequence[str] = ()) -> List[Tuple[dict, pd.DataFrame]]:
    """``[(context, rows)]``, one per combination of CONTEXT values, most ``ok`` rows first.
    ``across``: CONTEXT columns a figure draws side by side (``context_parallel``), not split on."""
    if frame.empty:
        return []
    cols = [c for c in CONTEXT if c in frame.columns and c not in across]
    keys = pd.DataFrame({f"_ctx_{c}": frame[c].map(lambda v: "" if missing(v) else v) for c in cols}, index=frame.index)
    keyed = pd.concat([frame, keys], axis=1)  # at once: column by column fragments a wide frame
    groups = []
    for key, rows in keyed.groupby([f"_ctx_{c}" for c in cols], sort=True, dropna=False):
        rows = rows.drop(columns=[f"_ctx_{c}" for c in cols])
        n_ok = int((rows["status"] == "ok").sum()) if "status" in rows else len(rows)
        groups.append((dict(zip(cols, key)), rows, n_ok))
    groups.sort(key=lambda g: -g[2])
    return [(ctx, rows) for ctx, rows, _ in groups]


def context_slug(context: dict, varying: Sequence[str]) -> str:
    """File-name suffix naming the context values that vary across a directory."""
    parts = []
    if "height" in varying or "width" in varying:
        parts.append(f"{int_text(context.get('height'))}x{int_text(context.get('width'))}")
    for col in varying:
        if col in ("height", "width", "device"):
            continue
        value = context.get(col)
        if col == "gpu_name":
            value = value or "cpu"
        elif col == "batch":
            value = f"b{int_text(value)}"
        elif col == "tf32":
            value = "tf32" if value else "notf32"
        elif col == "compile":
            value = f"compile-{value}"
        elif col == "cuda_graph":
            value = "cudagraph" if value else "nocudagraph"
        elif col == "context_parallel":
            value = f"cp{int_text(value)}"
        if isinstance(value, float) and value.is_integer():  # an int knob read back as a float column
            value = int(value)
        parts.append(str(value))
    slug = "_".join(parts)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", slug).strip("-")


def one_context(frame: pd.DataFrame, across: Sequence[str] = ()) -> Tuple[pd.DataFrame, str]:
    groups = contexts(frame, across)
    if len(groups) <= 1:
        return frame, ""
    ctx, rows = groups[0]
    return rows, f"table mixes {len(groups)} settings; drew {context_line(rows)} (render_figures draws each)"


def int_text(value) -> str:
    try:
        return str(int(value))
    except (TypeError, ValueError):
        return "?"


def device_label(frame: pd.DataFrame) -> str:
    """The GPU's name, or "CPU"."""
    names = sorted({n for n in frame.get("gpu_name", pd.Series(dtype=object)) if isinstance(n, str) and n})
    if names:
        return " / ".join(names)
    devices = {d for d in frame.get("device", pd.Series(dtype=object)) if isinstance(d, str)}
    return "GPU (name not recorded)" if any(d.startswith("cuda") for d in devices) else "CPU"


def context_line(frame: pd.DataFrame) -> str:
    """``device · arch · dtype · HxW`` (+ batch, compile, TF32 where not default) of the rows."""

    def values(col, fmt=str):
        if col not in frame:
            return []
        return sorted({fmt(v) for v in frame[col] if not missing(v) and v != ""})

    parts = [device_label(frame)]
    parts += [" / ".join(values("arch"))] if values("arch") else []
    parts += [" / ".join(values("dtype")) or "dtype ?"]
    res = sorted({f"{int_text(h)}×{int_text(w)}" for h, w in zip(frame.get("height", []), frame.get("width", []))})
    parts += [" / ".join(res) + " px"] if res else []
    batches = values("batch", int_text)
    if batches and batches != ["1"]:
        parts.append("batch " + " / ".join(batches))
    compiles = values("compile")
    if compiles and compiles != ["off"]:
        parts.append("compile " + " / ".join(compiles))
    if True in set(frame.get("tf32", [])) and "fp32" in values("dtype"):
        parts.append("TF32")
    if True in set(frame.get("cuda_graph", [])):
        parts.append("CUDA graph")
    parts += [" / ".join(values("part"))] if values("part") and values("part") != ["aggregator"] else []
    return " · ".join(p for p in parts if p)


def baseline_depth(frame: pd.DataFrame) -> Optional[int]:
    """The exact model's prune depth: 0 when measured, else the smallest depth present."""
    depths = frame["prune_depth"].dropna()
    if depths.empty:
        return None
    return 0 if (depths == 0).any() else int(depths.min())


def attention_exact(frame: pd.DataFrame) -> pd.Series:
    """Rows whose global attention is exact: every attention approximation (kv_keep, merge_ratio,
    global_sparsity) at its exact value; a column a table lacks (older tables) counts as exact."""
    keep = pd.Series(True, index=frame.index)
    for col in APPROXIMATE_ATTENTION:
        if col in frame:
            keep &= frame[col].isna() | (frame[col] == EXACT_VALUE[col])
    return keep


def exact_rows(frame: pd.DataFrame) -> Tuple[pd.DataFrame, str]:
    """The exact model's rows: attention approximations off, and prune_depth 0 (else the smallest
    depth measured, with a note)."""
    frame = frame[attention_exact(frame)]
    k = baseline_depth(frame)
    if k is None:
        return frame.iloc[0:0], ""
    note = "" if k == 0 else f"no prune_depth=0 rows; drew prune_depth={k}"
    return frame[frame["prune_depth"] == k], note


def order_exec(values) -> List[str]:
    values = [v for v in dict.fromkeys(values) if v]
    return sorted(values, key=lambda v: (FRAME_EXEC_ORDER.index(v) if v in FRAME_EXEC_ORDER else 9, v))


def shorten(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def fmt_percent(value: float) -> str:
    """0.034 -> '3.4%'; tiny drifts in scientific notation (they are rounding noise); 0 -> '0'."""
    if value == 0:
        return "0"
    if value >= 0.1:
        return f"{value:.0%}"
    if value >= 0.001:
        return f"{value:.1%}"
    return f"{value:.0e}"


def failure_notes(frame: pd.DataFrame, statuses=("error",)) -> List[str]:
    out = []
    for _, row in frame[frame["status"].isin(statuses)].iterrows():
        approx = setting(row)
        out.append(f"{row['status']}: S={int_text(row['frames'])} {row['frame_exec']} {row['attention']} "
                   f"k={int_text(row['prune_depth'])}"
                   + (f" {approx}" if approx not in ("exact",) and not approx.startswith("k=") else "")
                   + f": {row['message']}")
    return out


def unavailable_notes(frame: pd.DataFrame) -> List[str]:
    rows = frame[frame["status"] == "unavailable"]
    seen = {}
    for _, row in rows.iterrows():
        seen.setdefault(row["attention"], row["message"])
    return [f"{name} not available here: {msg}" for name, msg in sorted(seen.items())]


def part_name(frame: pd.DataFrame) -> str:
    parts = sorted(set(frame["part"]) - {""})
    return "aggregator" if parts == ["aggregator"] else ("full model" if parts == ["full"] else "forward")


def speedup_pairs(results: pd.DataFrame, slow: str = "sequential", fast: str = "fused") -> pd.DataFrame:
    """``speedup = latency(slow) / latency(fast)`` for every point measured both ways (ok rows),
    matched on every knob except frame_exec and frame_chunk. Columns: the knobs, latency_ms_slow,
    latency_ms_fast, speedup."""
    ok = ok_rows(tidy_results(results))
    keys = [k for k in KNOBS if k not in ("frame_exec", "frame_chunk")] + ["gpu_name"]
    a = ok[ok["frame_exec"] == slow].groupby(keys, dropna=False)["latency_ms_median"].median().rename("latency_ms_slow")
    b = ok[ok["frame_exec"] == fast].groupby(keys, dropna=False)["latency_ms_median"].median().rename("latency_ms_fast")
    pairs = pd.concat([a, b], axis=1, join="inner").reset_index()
    pairs["speedup"] = pairs["latency_ms_slow"] / pairs["latency_ms_fast"]
    return pairs


def one_sided_notes(rows: pd.DataFrame) -> List[str]:
    out = []
    for backend, s in rows.groupby("attention"):
        for frames, t in s.groupby("frames"):
            st = dict(zip(t["frame_exec"], t["status"]))
            if st.get("fused") == "ok" and st.get("sequential") not in (None, "ok"):
                out.append(f"{backend} S={int_text(frames)}: sequential {st['sequential']}, fused ran")
            if st.get("sequential") == "ok" and st.get("fused") not in (None, "ok"):
                out.append(f"{backend} S={int_text(frames)}: fused {st['fused']}, sequential ran")
    return out


def device_memory_gib(frame: pd.DataFrame) -> float:
    """Total memory of the device the rows ran on (GiB): device_mem_gib, else gpu_mem_gib."""
    for col in ("device_mem_gib", "gpu_mem_gib"):
        values = frame[col].dropna() if col in frame else pd.Series(dtype=float)
        if len(values):
            return float(values.max())
    return math.nan


def conversion_table(results: pd.DataFrame) -> pd.DataFrame:
    """Every ok point with prune_depth k > 0 matched to its k = 0 point (same knobs otherwise), among
    points whose attention is exact (the other approximations: ``approximation_table``).

    Columns: the knobs, latency_ms (at k), latency_ms_k0, speedup (k=0 latency / k latency),
    drift_rel, status (of the k point), status_k0.
    """
    frame = tidy_results(results)
    frame = frame[attention_exact(frame)]
    keys = [k for k in KNOBS if k not in ("prune_depth", "prune_weights")] + ["gpu_name"]
    base = frame[frame["prune_depth"] == 0].drop_duplicates(keys, keep="last")
    base = base[keys + ["latency_ms_median", "status"]].rename(
        columns={"latency_ms_median": "latency_ms_k0", "status": "status_k0"})
    conv = frame[frame["prune_depth"] > 0].rename(columns={"latency_ms_median": "latency_ms"})
    table = conv.merge(base, on=keys, how="left")
    ok = (table["status"] == "ok") & (table["status_k0"] == "ok")
    table["speedup"] = np.where(ok, table["latency_ms_k0"] / table["latency_ms"], np.nan)
    return table[KNOBS + ["gpu_name", "status", "status_k0", "latency_ms", "latency_ms_k0", "speedup", "drift_rel"]]


def context_parallel_speedup(results: pd.DataFrame) -> pd.DataFrame:
    """Every point with ``context_parallel`` N > 1 matched to its one-rank point (same knobs and GPU
    otherwise): ``speedup`` = latency on 1 rank / latency on N, ``efficiency`` = speedup / N,
    ``memory_ratio`` = the busiest rank's peak / the one-rank peak, ``comm_share`` = comm_ms / latency.

    Columns: the knobs, gpu_name, status, status_1, latency_ms, latency_ms_1, speedup, efficiency,
    rank_peak_gib_max, rank_peak_gib_1, memory_ratio, comm_ms, comm_mib, comm_share. Without the
    one-rank point in the table the comparisons are NaN (status_1 empty). A one-rank row from before
    ``rank_peak_gib_max`` existed gives its ``peak_alloc_gib`` (``per_gpu_peak``)."""
    frame = tidy_results(results)
    frame["rank_peak_gib_max"] = per_gpu_peak(frame)
    keys = [k for k in KNOBS if k != "context_parallel"] + ["gpu_name"]
    base = frame[frame["context_parallel"] == 1].drop_duplicates(keys, keep="last")
    base = base[keys + ["latency_ms_median", "rank_peak_gib_max", "status"]].rename(columns={
        "latency_ms_median": "latency_ms_1", "rank_peak_gib_max": "rank_peak_gib_1", "status": "status_1"})
    ranks = frame[frame["context_parallel"] > 1].rename(columns={"latency_ms_median": "latency_ms"})
    table = ranks.merge(base, on=keys, how="left").copy()  # one block: the columns below are added to it
    table["status_1"] = table["status_1"].fillna("")
    ok = (table["status"] == "ok") & (table["status_1"] == "ok")
    table["speedup"] = np.where(ok, table["latency_ms_1"] / table["latency_ms"], np.nan)
    table["efficiency"] = table["speedup"] / table["context_parallel"]
    table["memory_ratio"] = np.where(ok, table["rank_peak_gib_max"] / table["rank_peak_gib_1"], np.nan)
    table["comm_share"] = np.where(table["status"] == "ok", table["comm_ms"] / table["latency_ms"], np.nan)
    return table[KNOBS + ["gpu_name", "status", "status_1", "latency_ms", "latency_ms_1", "speedup", "efficiency",
                          "rank_peak_gib_max", "rank_peak_gib_1", "memory_ratio", "comm_ms", "comm_mib", "comm_share"]]


PROFILE_KEYS = ["frames", "frame_exec", "attention", *APPROXIMATIONS, "tag", "profiler"]


def stage_times(ranges: pd.DataFrame) -> pd.DataFrame:
    """Per-forward time of each stage per profile, from the NVTX range table.

    One row per (profile, stage): PROFILE_KEYS + context, stage (STAGES), ms_per_forward, basis
    (``gpu`` when every range of the profile has a GPU time, else ``cpu``). ``heads`` sums the
    four heads; ``other`` is the top range (``vggt``, else ``aggregator``) less the named stages.
    Where nsys and torch profiles exist of one configuration, nsys (GPU times) is kept.
    """
    if ranges is None or ranges.empty:
        return pd.DataFrame()
    ranges = tidy_profile(ranges)
    ctx = [c for c in CONTEXT if c in ranges.columns and c != "gpu_name"]
    keys = [k for k in PROFILE_KEYS if k in ranges.columns] + [c for c in ctx if c not in PROFILE_KEYS]
    out = []
    for key, prof in ranges.groupby(keys, dropna=False, sort=True):
        named = prof.set_index("range")
        gpu = prof["gpu_ms"].notna().all() and (prof["gpu_ms"] > 0).any()
        # The GPU work itself (summed op durations) where the table has it: a projected span
        # also counts the GPU idle time inside a launch-bound range.
        busy = gpu and "gpu_busy_ms" in prof and prof["gpu_busy_ms"].notna().all()
        col = "gpu_busy_ms" if busy else "gpu_ms" if gpu else "cpu_ms"
        per = named[col] / prof["iterations"].iloc[0]
        per = per.groupby(level=0).sum()
        stage = {s: float(per.get(s, 0.0)) for s in STAGES[:4]}
        stage["heads"] = float(sum(per.get(h, 0.0) for h in HEADS))
        top = per.get("vggt", per.get("aggregator", math.nan))
        named_sum = sum(stage.values())
        stage["other"] = max(float(top) - named_sum, 0.0) if not missing(top) else 0.0
        for name, ms in stage.items():
            out.append({**dict(zip(keys, key)), "stage": name, "ms_per_forward": ms, "basis": "gpu" if gpu else "cpu",
                        "gpu_column": col,
                        "gpu_name": prof["gpu_name"].iloc[0] if "gpu_name" in prof else None,
                        "total_ms_per_forward": float(top) if not missing(top) else named_sum})
    table = pd.DataFrame(out)
    # One profile per configuration: prefer GPU times (nsys) over CPU-only ones. A profile read
    # with analyze= carries no configuration: it stays itself, named by its tag.
    config = [k for k in keys if k not in ("tag", "profiler")]
    table["config_id"] = [
        "|".join(str(r[c]) for c in config) if not missing(r["frames"]) else f"tag:{r['tag']}"
        for _, r in table.iterrows()
    ]
    best = (table.assign(_gpu=table["basis"] == "gpu")
            .sort_values(["_gpu"], ascending=False, kind="stable")
            .drop_duplicates(["config_id", "stage"], keep="first").drop(columns="_gpu"))
    return best.reset_index(drop=True)


def launch_table(summary: pd.DataFrame, ranges: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """One row per profiled configuration: knobs, kernels_per_frame_layer, idle_frac,
    gap_median_us. kernels_per_frame_layer falls back to the ``frame_block`` range's
    kernels / calls when the summary lacks it."""
    if summary is None or summary.empty:
        return pd.DataFrame()
    summary = tidy_profile(summary)
    if "kernels_per_frame_layer" not in summary:
        summary["kernels_per_frame_layer"] = np.nan
    for col in ("idle_frac", "gap_median_us", "kernels"):
        if col not in summary:
            summary[col] = np.nan
    if ranges is not None and len(ranges) and summary["kernels_per_frame_layer"].isna().any():
        r = tidy_profile(ranges)
        fb = r[r["range"] == "frame_block"]
        keys = [k for k in KNOBS + ["tag", "profiler"] if k in fb and k in summary]
        per = fb.assign(_k=fb["kernels"] / fb["calls"]).groupby(keys, dropna=False)["_k"].sum().rename("_kpl")
        per = per.reset_index()
        for k in keys:  # a key that is all missing comes back from groupby as float: match the summary's dtype
            if per[k].dtype != summary[k].dtype:
                per[k] = per[k].astype(object)
                summary[k] = summary[k].astype(object)
        summary = summary.merge(per, on=keys, how="left")
        summary["kernels_per_frame_layer"] = summary["kernels_per_frame_layer"].fillna(summary["_kpl"])
        summary = summary.drop(columns="_kpl")
    return summary


def with_gpu_name(profile: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """Profile tables carry knobs but not always the GPU's name: take it from the results of
    the same device when those name exactly one GPU."""
    if profile.empty or results.empty:
        return profile
    if "gpu_name" in profile and (profile["gpu_name"].fillna("") != "").all():
        return profile
    names = results.loc[results["device"].str.startswith("cuda"), "gpu_name"]
    names = sorted(set(names) - {""})
    if len(names) != 1:
        return profile
    profile = profile.copy()
    current = profile["gpu_name"].fillna("") if "gpu_name" in profile else pd.Series("", index=profile.index)
    cuda = profile["device"].fillna("").str.startswith("cuda")
    profile["gpu_name"] = np.where(cuda & (current == ""), names[0], current).astype(object)
    return profile


def per_iteration(ranges: pd.DataFrame, name: str, column: str, iterations: int) -> float:
    rows = ranges[ranges["range"] == name]
    return float(rows[column].sum()) / iterations if len(rows) else float("nan")


def summary_row(ranges: pd.DataFrame, activity: pd.DataFrame, iterations: int) -> dict:
    row = activity.iloc[0].to_dict() if len(activity) else {}
    frame = ranges[ranges["range"] == "frame_block"]
    row["kernels_per_frame_layer"] = float(frame["kernels"].sum() / frame["calls"].sum()) if len(frame) and frame["calls"].sum() else float("nan")
    for stage in RANGE_STAGES + HEADS:
        for column in ("gpu_ms", "gpu_busy_ms", "cpu_ms"):
            if column in ranges:
                row[f"{stage}_{column}"] = per_iteration(ranges, stage, column, iterations)
    return row


# ---- profiled sweeps: one table across the grid --------------------------------------------------
GRID_STAGES = RANGE_STAGES + ["heads"]  # what the grid figures draw; "forward" is the whole forward
_GRID_SUMS = ["calls", "cpu_ms", "gpu_ms", "gpu_busy_ms", "kernels", "gpu_ops"]


def tidy_grid(frame: pd.DataFrame) -> pd.DataFrame:
    """A profile grid with every PROFILE_GRID_COLUMNS column present and typed."""
    frame = frame.copy()
    for col in PROFILE_GRID_COLUMNS:
        if col not in frame.columns:
            frame[col] = None
    frame = _coerce(frame[PROFILE_GRID_COLUMNS + [c for c in frame.columns if c not in PROFILE_GRID_COLUMNS]])
    for col in BOOL_KNOBS:
        frame[col] = frame[col].map(lambda v: False if v is None else v).astype(object)
    return frame


def point_stages(ranges: pd.DataFrame, iterations: float) -> pd.DataFrame:
    """Per-forward totals of each stage of one profile, from its NVTX range table.

    ranges: NVTX_RANGE_COLUMNS of one profile (any domains: a name's rows are summed).
    iterations: forwards the profile captured. Returns one row per stage present, columns
    ``stage`` and _GRID_SUMS divided by ``iterations`` (ms per forward, counts per forward):
    the RANGE_STAGES, ``heads`` (the four heads summed) and ``forward`` (the top range:
    ``vggt``, else ``aggregator``). NaN GPU times stay NaN (a CPU-only trace).
    """
    if ranges.empty:
        return pd.DataFrame(columns=["stage"] + _GRID_SUMS)
    cols = [c for c in _GRID_SUMS if c in ranges]
    per = ranges.groupby("range")[cols].sum(min_count=1) / float(iterations)
    rows = []
    for stage in RANGE_STAGES:
        if stage in per.index:
            rows.append({"stage": stage, **per.loc[stage].to_dict()})
    heads = [h for h in HEADS if h in per.index]
    if heads:
        rows.append({"stage": "heads", **per.loc[heads].sum(min_count=1).to_dict()})
    top = "vggt" if "vggt" in per.index else "aggregator" if "aggregator" in per.index else None
    if top is not None:
        rows.append({"stage": "forward", **per.loc[top].to_dict()})
    return pd.DataFrame(rows, columns=["stage"] + _GRID_SUMS)


def forwards_in(ranges: pd.DataFrame) -> int:
    """Forwards a profile holds: instances of its top range (``vggt``, else ``aggregator``),
    at least 1."""
    for top in ("vggt", "aggregator"):
        calls = ranges.loc[ranges["range"] == top, "calls"].sum() if len(ranges) else 0
        if calls > 0:
            return int(calls)
    return 1


def profile_grid(points: pd.DataFrame, ranges: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """ONE tidy table across a profiled sweep (PROFILE_GRID_COLUMNS).

    points: one row per profiled point: ``point_id``, ``profiler``, ``profile_status``,
        ``profile_message``, ``iterations``, ``source``, the capture's GPU_ACTIVITY_COLUMNS where
        it has tables, and any knobs its profile recorded (used where ``results`` lacks the point).
    ranges: the NVTX range tables of those points, with a ``point_id`` column.
    results: the sweep's timing table; joined by ``point_id`` (knobs, gpu_name, status,
        latency_ms_median of the unprofiled run).

    One row per (point, stage) where the point has tables (``point_stages``), one row with
    stage "" where it has none (failed, skipped or captured-not-yet-analysed), so every
    profiled point is in the table with its status.
    """
    columns = PROFILE_GRID_COLUMNS
    if points is None or points.empty:
        return tidy_grid(pd.DataFrame(columns=columns))
    points = points.drop_duplicates("point_id", keep="last").reset_index(drop=True)
    results = tidy_results(results) if results is not None and len(results) else pd.DataFrame(columns=RESULT_COLUMNS)
    joined_cols = [c for c in KNOBS + ["gpu_name", "status", "latency_ms_median"] if c in results]
    timing = results.drop_duplicates("point_id", keep="last").set_index("point_id")[joined_cols]
    rows = []
    for _, p in points.iterrows():
        pid = p["point_id"]
        base = {c: p.get(c) for c in columns if c in p.index}
        if pid in timing.index:
            base.update({c: v for c, v in timing.loc[pid].items() if not missing(v) or missing(base.get(c))})
        def num(key) -> float:
            value = pd.to_numeric(pd.Series([p.get(key)]), errors="coerce").iloc[0]
            return float(value) if not missing(value) else math.nan

        iterations = num("iterations") if num("iterations") > 0 else 1.0
        window = {"window_ms": num("window_ms") / iterations, "busy_ms": num("busy_ms") / iterations,
                  "idle_frac": num("idle_frac"), "launches": num("kernels") / iterations,
                  "gap_median_us": num("gap_median_us"), "gap_p90_us": num("gap_p90_us")}
        base.update(point_id=pid, profiled=True, iterations=iterations, **window)
        mine = ranges[ranges["point_id"] == pid] if ranges is not None and len(ranges) else pd.DataFrame()
        stages = point_stages(mine, iterations) if p.get("profile_status") == "ok" else pd.DataFrame()
        if stages.empty:
            rows.append({**base, "stage": ""})
        for _, st in stages.iterrows():
            rows.append({**base, **st.to_dict()})
    return tidy_grid(pd.DataFrame(rows))


def _grid_basis(rows: pd.DataFrame) -> Tuple[str, str]:
    """(column, basis): GPU-projected time where every row has one, else CPU time."""
    if len(rows) and rows["gpu_ms"].notna().all() and (rows["gpu_ms"] > 0).any():
        return "gpu_ms", "gpu"
    return "cpu_ms", "cpu"


def _grid_exact(grid: pd.DataFrame) -> Tuple[pd.DataFrame, List[str]]:
    """Profiled (ok) rows of the exact model with a frame count, and notes on what was left out."""
    notes = []
    rows = grid[(grid["profile_status"] == "ok") & grid["frames"].notna()]
    if rows.empty:
        return rows, notes
    depths = sorted(int(k) for k in rows["prune_depth"].dropna().unique())
    rows, note = exact_rows(rows)
    if note:
        notes.append(note)
    if len(depths) > 1:
        notes.append(f"drew the exact model only; prune_depth {', '.join(str(k) for k in depths if k)} "
                     "profiles are in profile_grid")
    return rows, notes


def grid_stage_times(grid: pd.DataFrame) -> pd.DataFrame:
    """What the per-stage figure draws: per-forward time of each GRID_STAGES stage of every
    profiled point of the exact model, against frames.

    Columns: CONTEXT columns, frames, frame_exec, attention, prune_depth, profiler, stage, ms
    (per forward), basis (``gpu``: GPU-projected time, as nsys nvtx_gpu_proj_sum; ``cpu``: no GPU
    times in the profiles, CPU time of the ranges). ``attrs["notes"]`` says what was left out.
    """
    if grid is None or grid.empty:
        return pd.DataFrame()
    grid = tidy_grid(grid)
    rows, notes = _grid_exact(grid)
    rows = rows[rows["stage"].isin(GRID_STAGES)]
    if rows.empty:
        out = pd.DataFrame()
        out.attrs["notes"] = notes
        return out
    col, basis = _grid_basis(rows)
    if basis == "cpu" and grid["gpu_ms"].notna().any():
        notes.append("some profiles have no GPU times: drew CPU time for all")
    keep = [c for c in CONTEXT if c in rows] + ["frames", "frame_exec", "attention", "prune_depth", "profiler", "stage"]
    keep = list(dict.fromkeys(keep))
    out = rows[keep].assign(ms=rows[col].astype(float), basis=basis).reset_index(drop=True)
    out.attrs["notes"] = notes
    return out


def grid_activity(grid: pd.DataFrame) -> pd.DataFrame:
    """What the launch/idle figure draws: one row per profiled point of the exact model with GPU
    activity: CONTEXT columns, frames, frame_exec, attention, profiler, idle_frac (0..1 of the
    captured GPU window), launches (kernels per forward), gap_median_us. Empty when no profile
    holds GPU kernels (CPU-only torch-profiler runs). ``attrs["notes"]`` as grid_stage_times."""
    if grid is None or grid.empty:
        return pd.DataFrame()
    grid = tidy_grid(grid)
    rows, notes = _grid_exact(grid)
    rows = rows.drop_duplicates("point_id")
    rows = rows[(rows["launches"].fillna(0) > 0) & rows["idle_frac"].notna()]
    keep = list(dict.fromkeys([c for c in CONTEXT if c in rows] + [
        "frames", "frame_exec", "attention", "prune_depth", "profiler", "idle_frac", "launches", "gap_median_us"]))
    out = rows[keep].reset_index(drop=True)
    out.attrs["notes"] = notes
    return out


def grid_pivot(grid: pd.DataFrame) -> pd.DataFrame:
    """The grid as a reader's table: one row per profiled point (frames, frame_exec, attention,
    prune_depth, profiler, profile_status), one column per stage: ms per forward (GPU-projected
    where the profiles have GPU times, else CPU), plus idle_frac and launches per forward."""
    if grid is None or grid.empty:
        return pd.DataFrame()
    grid = tidy_grid(grid)
    col, _ = _grid_basis(grid[grid["stage"].isin(GRID_STAGES + ["forward"])])
    index = ["frames", "frame_exec", "attention", "prune_depth", "profiler", "profile_status"]
    staged = grid[grid["stage"] != ""]
    table = staged.pivot_table(index=index, columns="stage", values=col, aggfunc="first", dropna=False)
    order = [s for s in GRID_STAGES + ["forward"] if s in table.columns]
    table = table.reindex(columns=order)
    table.columns = [f"{s}_{col}" for s in order]
    per_point = grid.drop_duplicates("point_id").set_index(index)[["idle_frac", "launches"]]
    table = per_point.join(table, how="left") if len(table) else per_point
    return table.sort_index().reset_index()


# ---- ours against upstream's code ------------------------------------------------------------------
IMPL_MATCH = ["device", "gpu_name", "arch", "height", "width", "batch", "part", "inputs", "frames"]


def impl_ratios(results: pd.DataFrame) -> pd.DataFrame:
    """Every ``ok`` row of our exact model against upstream's code at the same workload and frame count.

    Upstream's row is the one at the same precision when measured, else at bf16_autocast (its own
    way). ``same_run``: both on the same GPU (its UUID) in this table, the only comparison that
    backs a claim. Columns: the workload, ``configuration`` (ours), ``dtype``, ``upstream_dtype``,
    ``ours_ms``, ``upstream_ms``, ``speedup`` (upstream / ours), ``ours_act_gib``,
    ``upstream_act_gib``, ``memory_ratio`` (ours / upstream), ``same_run``, ``noisy`` (either).
    """
    from .findings import EXACT_CONFIG, config_label

    ok = ok_rows(tidy_results(results))
    if ok.empty or not (ok["impl"] == "upstream").any():
        return pd.DataFrame()
    ours, theirs = ok[ok["impl"] != "upstream"], ok[ok["impl"] == "upstream"]
    for knob, value in EXACT_VALUE.items():  # the same function only: no approximation of ours
        ours = ours[ours[knob].isna() | (ours[knob] == value)]
    out = []
    for _, r in ours.iterrows():
        same = theirs
        for col in IMPL_MATCH:
            same = same[same[col].map(lambda v: "" if missing(v) else v) == ("" if missing(r[col]) else r[col])]
        if same.empty:
            continue
        pick = same[same["dtype"] == r["dtype"]]
        pick = pick if len(pick) else same[same["dtype"] == "bf16_autocast"]
        if pick.empty:
            continue
        u = pick.sort_values("latency_ms_median").iloc[0]
        out.append({**{c: r[c] for c in IMPL_MATCH}, "configuration": config_label(r, EXACT_CONFIG),
                    "dtype": r["dtype"], "upstream_dtype": u["dtype"], "ours_ms": r["latency_ms_median"],
                    "upstream_ms": u["latency_ms_median"], "speedup": u["latency_ms_median"] / r["latency_ms_median"],
                    "ours_act_gib": r["act_gib"], "upstream_act_gib": u["act_gib"],
                    "memory_ratio": r["act_gib"] / u["act_gib"] if u["act_gib"] and not missing(u["act_gib"]) else np.nan,
                    "same_run": bool(r["gpu_uuid"]) and r["gpu_uuid"] == u["gpu_uuid"],
                    "noisy": bool(r["noisy"]) or bool(u["noisy"])})
    return pd.DataFrame(out)


# ---- the memory wall ---------------------------------------------------------------------------------
GIB = 2**30
# Cards the fit predicts the wall for, besides the device measured: (label, the GiB the driver gives
# PyTorch, the same measure as a row's ``gpu_mem_gib``). H200: 139.80 GiB, as the H200 of
# reports/h200-2026-12-06 reported it (141 GB as sold; 141e9 bytes, the value used before, is 131.3 GiB
# and put the wall 6% too low). B200: 178.35 GiB, a B200's device query (pytorch/ao#4002; not measured here).
WALL_CARDS = [("141 GB (H200)", 139.80), ("192 GB (B200)", 178.35)]


def memory_fit(results: pd.DataFrame, column: str = "peak_alloc_gib") -> pd.DataFrame:
    """A line through peak allocated GiB against frames, per context and series (``ok`` GPU rows,
    two frame counts or more), and the frame count where it meets each card's memory.

    Columns: the context and series knobs, ``points``, ``slope_gib_per_frame``,
    ``slope_mb_per_frame`` (10**6 bytes), ``intercept_gib``, ``max_residual_gib``, ``r2``, and
    ``wall_frames_<card>`` for the device measured (``device``) and each of WALL_CARDS. The wall is
    ``(memory - intercept) / slope``: linear growth, which the exact model has with flash-style
    attention (its scores are never materialised); past the measured range it is a prediction.

    ``column``: the peak to fit (GiB), for another measure of it such as the busiest rank's
    (``context_parallel_memory_fit``). Only rows with a GPU peak (``peak_alloc_gib``) have a device
    memory to meet: a line of other rows (the CPU's) gets ``device_mem_gib`` and walls NaN.
    """
    ok = ok_rows(tidy_results(results))
    if column not in ok:
        raise ValueError(f"memory_fit: column={column!r} is not in the results table")
    ok = ok[ok[column].notna() & ok["frames"].notna()]
    keys = [c for c in CONTEXT + SERIES + APPROXIMATIONS if c in ok]
    out = []
    for key, rows in ok.groupby(keys, dropna=False, sort=True):
        rows = rows.sort_values("frames")
        if rows["frames"].nunique() < 2:
            continue
        x, y = rows["frames"].to_numpy(float), rows[column].to_numpy(float)
        slope, intercept = np.polyfit(x, y, 1)
        fitted = slope * x + intercept
        total = float(((y - y.mean()) ** 2).sum())
        gpu = bool(rows["peak_alloc_gib"].notna().all())
        row = dict(zip(keys, key))
        row.update(points=len(rows), slope_gib_per_frame=slope, slope_mb_per_frame=slope * GIB / 1e6,
                   intercept_gib=intercept, max_residual_gib=float(np.abs(y - fitted).max()),
                   r2=1 - float(((y - fitted) ** 2).sum()) / total if total > 0 else 1.0,
                   device_mem_gib=float(rows["device_mem_gib"].max()) if gpu else np.nan,
                   frames_measured_max=float(x.max()))
        for label, gib in [("device", row["device_mem_gib"])] + WALL_CARDS:
            row[f"wall_frames_{label.split()[0]}"] = (gib - intercept) / slope if slope > 0 and gpu else np.nan
        out.append(row)
    return pd.DataFrame(out)


def memory_residuals(results: pd.DataFrame) -> pd.DataFrame:
    """Each fitted point with its residual (GiB): what ``memory_fit``'s lines leave out."""
    ok = ok_rows(tidy_results(results))
    ok = ok[ok["peak_alloc_gib"].notna()]
    fits = memory_fit(results)
    if fits.empty:
        return pd.DataFrame()
    keys = [c for c in CONTEXT + SERIES + APPROXIMATIONS if c in ok and c in fits]
    merged = ok.merge(fits[keys + ["slope_gib_per_frame", "intercept_gib"]], on=keys, how="inner")
    merged["fitted_gib"] = merged["slope_gib_per_frame"] * merged["frames"] + merged["intercept_gib"]
    merged["residual_gib"] = merged["peak_alloc_gib"] - merged["fitted_gib"]
    return merged


def per_gpu_peak(frame: pd.DataFrame) -> pd.Series:
    """The busiest rank's peak (GiB): ``rank_peak_gib_max`` (GPU: allocated; CPU: RSS), else, in rows
    from before that column, ``peak_alloc_gib`` (one process: its rank is the only one)."""
    return frame["rank_peak_gib_max"].fillna(frame["peak_alloc_gib"])


def context_parallel_memory_fit(results: pd.DataFrame) -> pd.DataFrame:
    """``memory_fit`` of the per-GPU peak: one line per context, series and ``context_parallel`` N
    through the busiest rank's peak (``rank_peak_gib_max``; rows from before it: ``peak_alloc_gib``)
    against frames, and the frame count where it meets the device's memory and WALL_CARDS: how many
    frames one scene fits on N GPUs, a prediction past the largest frame count measured.

    Columns: memory_fit's, and ``wall_vs_one_rank``: the device wall over that of the one-rank line of
    the same context and series (NaN without one). CPU rows are fitted on each rank's peak RSS with
    no wall (the ranks share one machine's memory)."""
    frame = tidy_results(results)
    fits = memory_fit(frame.assign(rank_peak_gib_max=per_gpu_peak(frame)), column="rank_peak_gib_max")
    if fits.empty:
        return fits
    keys = [c for c in CONTEXT + SERIES + APPROXIMATIONS if c in fits and c != "context_parallel"]
    one = fits.loc[fits["context_parallel"] == 1, keys + ["wall_frames_device"]]
    one = one.rename(columns={"wall_frames_device": "_wall_1"}).drop_duplicates(keys)
    fits = fits.merge(one, on=keys, how="left")  # pandas matches missing keys with missing keys
    fits["wall_vs_one_rank"] = fits["wall_frames_device"] / fits.pop("_wall_1")
    return fits


# ---- approximations: speed against drift ------------------------------------------------------------
# Drift columns, most telling first, with what they compare (vggt_bench.core.schema MEASUREMENTS).
DRIFT_OUTPUTS = [("drift_pose_rel", "camera pose"), ("drift_depth_rel", "depth"),
                 ("drift_points_rel", "world points"), ("drift_tokens_rel", "last layer's tokens")]
TECHNIQUE_ORDER = ["prune_depth", "kv_keep", "merge_ratio", "global_sparsity"]
YARDSTICK_DEPTH = 4  # the drift an approximation is held to: that of converting the first 4 global layers


def technique(row) -> str:
    """What a row approximates: ``exact``, ``prune_depth``, an attention approximation's name, or
    ``kv_keep + prune_depth`` when combined."""
    on = [c for c in APPROXIMATE_ATTENTION if not missing(row.get(c)) and row.get(c) != EXACT_VALUE[c]]
    k = row.get("prune_depth")
    pruned = not missing(k) and k > 0
    if not on:
        return "prune_depth" if pruned else "exact"
    return " + ".join(on + (["prune_depth"] if pruned else []))


def setting(row) -> str:
    """``kv_keep=0.25 · k=4 · layers 8-23``: the values a row approximates with."""
    parts = [f"{c}={row.get(c):g}" for c in APPROXIMATE_ATTENTION
             if not missing(row.get(c)) and row.get(c) != EXACT_VALUE[c]]
    k = row.get("prune_depth")
    if not missing(k) and k > 0:
        parts.append(f"k={int(k)}" + ("" if row.get("prune_weights") in (None, "", "global") else
                                      f" ({row.get('prune_weights')} weights)"))
    layers = row.get("approx_layers")
    if len(parts) and not missing(layers) and layers not in ("", "all") and technique(row) != "prune_depth":
        parts.append(f"layers {layers}")
    return " · ".join(parts) or "exact"


def approximation_table(results: pd.DataFrame) -> pd.DataFrame:
    """Every point with an approximation on (prune_depth > 0, kv_keep < 1, merge_ratio > 0,
    global_sparsity > 0, or a combination), matched to its exact point: the same knobs, weights and
    device otherwise, every approximation at its exact value.

    Columns: the knobs, gpu_name, random_weights, checkpoint, technique, setting, status,
    status_exact, latency_ms, latency_ms_exact, speedup (exact latency / latency; NaN unless both
    ran), ``noisy`` (the point's timing or its exact point's is flagged noisy: the speedup is an
    estimate) and the drift columns (DRIFT_OUTPUTS, ``drift_rel``).
    """
    frame = tidy_results(results)
    keys = [k for k in KNOBS if k not in APPROXIMATIONS] + ["gpu_name", "random_weights", "checkpoint"]
    is_exact = attention_exact(frame) & (frame["prune_depth"] == 0)
    base = frame[is_exact].drop_duplicates(keys, keep="last")[keys + ["latency_ms_median", "status", "noisy"]]
    base = base.rename(columns={"latency_ms_median": "latency_ms_exact", "status": "status_exact",
                                "noisy": "noisy_exact"})
    approx = frame[~is_exact & frame["prune_depth"].notna()].rename(columns={"latency_ms_median": "latency_ms"})
    table = approx.merge(base, on=keys, how="left").copy()
    ok = (table["status"] == "ok") & (table["status_exact"] == "ok")
    records = table.to_dict("records")
    noisy = table["noisy"].fillna(False).astype(bool) | table["noisy_exact"].fillna(False).astype(bool)
    table = table.assign(speedup=np.where(ok, table["latency_ms_exact"] / table["latency_ms"], np.nan),
                         technique=[technique(r) for r in records], setting=[setting(r) for r in records],
                         noisy=noisy & ok)
    drift = [c for c, _ in DRIFT_OUTPUTS] + ["drift_rel"]
    columns = KNOBS + ["gpu_name", "random_weights", "checkpoint", "technique", "setting", "status", "status_exact",
                       "latency_ms", "latency_ms_exact", "speedup", "noisy"] + drift
    return table[columns].reset_index(drop=True)


HALF_DTYPES = ("bf16", "fp16")  # weights, and so the heads, in half precision (bf16_autocast keeps the heads fp32)


def drift_is_rounding(table: pd.DataFrame) -> bool:
    """Whether the depth and world-point drift of ``table`` (approximation_table rows) measure rounding
    rather than the approximations: every row has random weights and half-precision heads. The depth
    head ends in exp() of values near 0 on random weights: a map of about 1.01 +- 0.003, under one bf16
    step at 1.0, so in bf16 any change of the tokens moves the same few pixels by one step and every
    setting's depth drift is one value (benchmarks/drift_floor.py; reports/h100-2026-12-06b). Camera-pose
    drift is not at that floor and still ranks the settings."""
    rows = table[table["speedup"].notna()] if "speedup" in table else table
    if rows.empty:
        return False
    weights = rows["random_weights"].astype("boolean").fillna(False).astype(bool)
    return bool(weights.all() and rows["dtype"].isin(HALF_DTYPES).all())


def pareto_front(table: pd.DataFrame, drift: str) -> pd.DataFrame:
    """``table`` (approximation_table rows of one context) with ``on_front``: per frame count, the
    points with a speedup and a ``drift`` that no other point beats on both (at least as fast and
    at most as much drift, better in one). Rows without both numbers are never on the front."""
    out = table.copy()
    out["on_front"] = False
    usable = out[out["speedup"].notna() & out[drift].notna()]
    for _, rows in usable.groupby("frames"):
        speed, moved = rows["speedup"].to_numpy(), rows[drift].to_numpy()
        for i, index in enumerate(rows.index):
            better = (speed >= speed[i]) & (moved <= moved[i]) & ((speed > speed[i]) | (moved < moved[i]))
            out.loc[index, "on_front"] = not better.any()
    return out


def best_within_yardstick(table: pd.DataFrame, frames: Optional[int] = None,
                          outputs=("drift_pose_rel", "drift_depth_rel"), depth: int = YARDSTICK_DEPTH) -> Optional[dict]:
    """The fastest attention approximation whose drift on every one of ``outputs`` is below that of
    ``prune_depth=depth`` at the same frame count (default: the largest measured with both).

    Returns ``{frames, setting, technique, speedup, yardstick_speedup, noisy, <output>,
    yardstick_<output>}`` or None when the yardstick or a qualifying point is missing; ``noisy``: a
    timing behind either speedup is flagged noisy (the ranking is an estimate).
    """
    ok = table[table["speedup"].notna()]
    ruler = ok[(ok["technique"] == "prune_depth") & (ok["prune_depth"] == depth)]
    candidates = ok[ok["technique"] != "prune_depth"]
    counts = sorted(set(ruler["frames"]) & set(candidates["frames"]))
    if frames is None and counts:
        frames = counts[-1]
    if frames not in counts:
        return None
    ruler, candidates = ruler[ruler["frames"] == frames].iloc[0], candidates[candidates["frames"] == frames]
    if any(missing(ruler[c]) for c in outputs):
        return None
    inside = candidates
    for col in outputs:
        inside = inside[inside[col] < ruler[col]]
    if inside.empty:
        return None
    best = inside.loc[inside["speedup"].idxmax()]
    found = {"frames": int(frames), "setting": best["setting"], "technique": best["technique"],
             "speedup": float(best["speedup"]), "yardstick_speedup": float(ruler["speedup"]),
             "noisy": bool(best.get("noisy", False)) or bool(ruler.get("noisy", False))}
    for col in outputs:
        found[col], found[f"yardstick_{col}"] = float(best[col]), float(ruler[col])
    return found
