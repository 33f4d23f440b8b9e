"""Profiles as analyses: time per stage, launches, and the profile grid of a profiled sweep (one
tidy table across its points, ``profile_grid``, and what its figures draw)."""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import numpy as np
import pandas as pd

from ..core.schema import HEADS, KNOBS, PROFILE_GRID_COLUMNS, RANGE_STAGES, RESULT_COLUMNS
from .tidy import APPROXIMATIONS, CONTEXT, exact_rows, missing, tidy_grid, tidy_profile, tidy_results

STAGES = RANGE_STAGES + ["heads", "other"]


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


# ---- profiled sweeps: one table across the grid --------------------------------------------------
GRID_STAGES = RANGE_STAGES + ["heads"]  # what the grid figures draw; "forward" is the whole forward
_GRID_SUMS = ["calls", "cpu_ms", "gpu_ms", "gpu_busy_ms", "kernels", "gpu_ops"]


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
