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

from vggt_model.config import APPROX, ExecutionConfig, knob_fields

from ..schema import EXECUTION, GPU_ACTIVITY_COLUMNS, KNOBS, MEASUREMENTS, NVTX_RANGE_COLUMNS, RESULT_COLUMNS

# ---- which knob plays which part -------------------------------------------------------------------
_KNOB_TYPE = {f.name: (f.type if isinstance(f.type, str) else f.type.__name__) for f in knob_fields(ExecutionConfig)}
SERIES = ["frame_exec", "frame_chunk", "attention"]  # drawn side by side within one figure
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
BOOL_COLUMNS = BOOL_KNOBS + ["random_weights", "disagree"]
TEXT_COLUMNS = [
    "point_id", "experiment", "arch", "device", "part", "inputs", "gpu_name", "driver", "torch_version",
    "cuda_version", "cudnn_version", "python_version", "cpu", "git_commit", "host", "timestamp", "checkpoint",
    "status", "message", "peak_source", "tag", "profiler", "range", "domain",
] + [k for k, t in _KNOB_TYPE.items() if t == "str"]
FLOAT_KNOBS = [k for k, t in _KNOB_TYPE.items() if t == "float"]

PROFILE_SUMMARY = "profile_summary.csv"


PROFILE_RANGES = "profile_ranges.csv"

# What makes two rows incomparable: one figure per combination present.


@dataclass
class Tables:
    """The tidy tables of one results directory (empty frames where a table is absent)."""

    results: pd.DataFrame
    profile_summary: pd.DataFrame = field(default_factory=pd.DataFrame)
    profile_ranges: pd.DataFrame = field(default_factory=pd.DataFrame)


def _coerce(frame: pd.DataFrame) -> pd.DataFrame:
    """Types the report relies on, whatever Parquet/CSV made of all-missing columns."""
    frame = frame.copy()
    numeric = set(MEASUREMENTS) | set(GPU_ACTIVITY_COLUMNS) | set(NVTX_RANGE_COLUMNS) | {
        "gpu_mem_gib", "kernels_per_frame_layer", *INT_COLUMNS}
    numeric -= set(TEXT_COLUMNS) | set(BOOL_COLUMNS)
    for col in frame.columns:
        if col in numeric:
            frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
        elif col in BOOL_COLUMNS:
            frame[col] = frame[col].map(as_bool).astype("object")
        elif col in TEXT_COLUMNS:
            frame[col] = frame[col].map(lambda v: "" if missing(v) else str(v)).astype("object")
    return frame


def missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def as_bool(value):
    if missing(value):
        return None
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def tidy_results(frame: pd.DataFrame) -> pd.DataFrame:
    """The results table with every RESULT_COLUMNS column present and numeric columns as floats."""
    frame = frame.copy()
    for col in RESULT_COLUMNS:
        if col not in frame.columns:
            frame[col] = None
    frame = _coerce(frame)
    for col in BOOL_KNOBS:
        frame[col] = frame[col].map(lambda v: False if v is None else v).astype(object)
    return frame


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
    from ..results import load_results

    results = tidy_results(load_results(out_dir))
    profiles = {}
    for name in (PROFILE_SUMMARY, PROFILE_RANGES):
        for folder in (out_dir, os.path.join(out_dir, "profiles")):
            table = read_csv(os.path.join(folder, name))
            if len(table):
                break
        profiles[name] = tidy_profile(table) if len(table) else pd.DataFrame()
    return Tables(results, profiles[PROFILE_SUMMARY], profiles[PROFILE_RANGES])


def ok_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows that measured a latency (``status == "ok"``)."""
    if frame.empty:
        return frame
    return frame[(frame["status"] == "ok") & frame["latency_ms_median"].notna()]


def contexts(frame: pd.DataFrame) -> List[Tuple[dict, pd.DataFrame]]:
    """``[(context, rows)]``, one per combination of CONTEXT values, most ``ok`` rows first."""
    if frame.empty:
        return []
    cols = [c for c in CONTEXT if c in frame.columns]
    keyed = frame.assign(**{f"_ctx_{c}": frame[c].map(lambda v: "" if missing(v) else v) for c in cols})
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
        parts.append(str(value))
    slug = "_".join(parts)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", slug).strip("-")


def one_context(frame: pd.DataFrame) -> Tuple[pd.DataFrame, str]:
    groups = contexts(frame)
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


def exact_rows(frame: pd.DataFrame) -> Tuple[pd.DataFrame, str]:
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
        out.append(f"{row['status']}: S={int_text(row['frames'])} {row['frame_exec']} {row['attention']} "
                   f"k={int_text(row['prune_depth'])}: {row['message']}")
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
    """Every ok point with prune_depth k > 0 matched to its k = 0 point (same knobs otherwise).

    Columns: the knobs, latency_ms (at k), latency_ms_k0, speedup (k=0 latency / k latency),
    drift_rel, status (of the k point), status_k0.
    """
    frame = tidy_results(results)
    keys = [k for k in KNOBS if k not in ("prune_depth", "prune_weights")] + ["gpu_name"]
    base = frame[frame["prune_depth"] == 0].drop_duplicates(keys, keep="last")
    base = base[keys + ["latency_ms_median", "status"]].rename(
        columns={"latency_ms_median": "latency_ms_k0", "status": "status_k0"})
    conv = frame[frame["prune_depth"] > 0].rename(columns={"latency_ms_median": "latency_ms"})
    table = conv.merge(base, on=keys, how="left")
    ok = (table["status"] == "ok") & (table["status_k0"] == "ok")
    table["speedup"] = np.where(ok, table["latency_ms_k0"] / table["latency_ms"], np.nan)
    return table[KNOBS + ["gpu_name", "status", "status_k0", "latency_ms", "latency_ms_k0", "speedup", "drift_rel"]]


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
        summary = summary.merge(per.reset_index(), on=keys, how="left")
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
