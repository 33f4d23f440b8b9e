"""Reading the results and profile tables of a results directory as tidy, typed DataFrames, and
which rows an analysis may use (``ok_rows``, ``trusted``, ``exact_rows``, one ``contexts`` each).

DataFrame in, DataFrame out (the HolisticTraceAnalysis way): every analysis module, the figures
(``vggt_bench.report``), the notebook and the findings read the tables through this module.
Which knobs split a table into incomparable *contexts*, which are drawn as *series* and which are
*approximations* (fixed at their exact value outside the figures about them) is derived from the
model's own knob metadata (``vggt_model.config.knob``), so a new knob needs no change here.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import pandas as pd

from vggt_model.config import APPROX, APPROXIMATE_ATTENTION, ExecutionConfig, knob_fields

from ..core.results import load_results
from ..core.schema import (
    EXECUTION, GPU_ACTIVITY_COLUMNS, KNOBS, MEASUREMENTS, NVTX_RANGE_COLUMNS, PROFILE_GRID, PROFILE_GRID_COLUMNS,
    PROFILE_RANGES, PROFILE_SUMMARY, RESULT_COLUMNS,
)
from ..measure.noise import claim, flag_noisy

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

INT_COLUMNS = ["frames", "batch", "height", "width", "query_points", "iterations"] + [
    k for k, t in _KNOB_TYPE.items() if t == "int"]
BOOL_KNOBS = [k for k, t in _KNOB_TYPE.items() if t == "bool"]  # absent (older tables) means off
BOOL_COLUMNS = BOOL_KNOBS + ["random_weights", "disagree", "profiled", "noisy", "backs_claim"]
TEXT_COLUMNS = [
    "point_id", "experiment", "arch", "device", "part", "inputs", "gpu_name", "driver", "torch_version",
    "cuda_version", "cudnn_version", "python_version", "cpu", "git_commit", "host", "timestamp", "checkpoint",
    "status", "message", "peak_source", "tag", "profiler", "range", "domain", "impl", "noise_reason", "claim_note", "gpu_uuid",
    "attention_ran", "upstream_source", "latency_ms_samples", "former_point_id",
    "profile_status", "profile_message", "stage", "source",
] + [k for k, t in _KNOB_TYPE.items() if t == "str"]
FLOAT_KNOBS = [k for k, t in _KNOB_TYPE.items() if t == "float"]


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
        frame = flag_noisy(frame)
    elif missing_claim and len(frame):
        said = [claim(r, r.get("noisy") is True or r.get("noisy") == 1) for r in frame.to_dict("records")]
        frame["backs_claim"], frame["claim_note"] = [b for b, _ in said], [n for _, n in said]
    frame = _coerce(frame)
    for col in BOOL_KNOBS + ["noisy", "backs_claim"]:
        frame[col] = frame[col].map(lambda v: False if v is None else v).astype(object)
    frame["context_parallel"] = frame["context_parallel"].fillna(1.0)  # tables from before it: one rank
    for col in list(APPROXIMATE_ATTENTION) + ["linear_precision"]:  # absent (older tables): those ran exact
        frame[col] = frame[col].fillna(EXACT_VALUE[col])
    for col in [c for c in EXACT_VALUE if _KNOB_TYPE[c] == "str"]:  # text knobs (linear_precision): "" when absent
        frame[col] = frame[col].replace("", EXACT_VALUE[col])
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


# ---- which rows -----------------------------------------------------------------------------------
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


def baseline_depth(frame: pd.DataFrame) -> Optional[int]:
    """The exact model's prune depth: 0 when measured, else the smallest depth present."""
    depths = frame["prune_depth"].dropna()
    if depths.empty:
        return None
    return 0 if (depths == 0).any() else int(depths.min())


def unapproximated(frame: pd.DataFrame) -> pd.Series:
    """Rows with every approximation but global-to-frame conversion at its exact value: the attention
    approximations (kv_keep, merge_ratio, global_sparsity) and the linear layers' precision (FP8 is an
    approximation); prune_depth is judged apart (``exact_rows``, ``conversion_table``). A column a table
    lacks (older tables) counts as exact."""
    keep = pd.Series(True, index=frame.index)
    for col in list(APPROXIMATE_ATTENTION) + ["linear_precision"]:
        if col in frame:
            keep &= frame[col].isna() | (frame[col] == EXACT_VALUE[col])
    return keep


def exact_model(frame: pd.DataFrame) -> pd.Series:
    """Rows of the exact model: no approximation at all (``unapproximated`` and prune_depth 0)."""
    return unapproximated(frame) & (frame["prune_depth"] == 0)


def exact_rows(frame: pd.DataFrame) -> Tuple[pd.DataFrame, str]:
    """The exact model's rows: every approximation off (attention, FP8 linears), and prune_depth 0 (else
    the smallest depth measured, with a note)."""
    frame = frame[unapproximated(frame)]
    k = baseline_depth(frame)
    if k is None:
        return frame.iloc[0:0], ""
    note = "" if k == 0 else f"no prune_depth=0 rows; drew prune_depth={k}"
    return frame[frame["prune_depth"] == k], note
