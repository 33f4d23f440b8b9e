"""Figures of profiles: time per stage and launch overhead of the profiled configurations, and
per-stage time and GPU activity against frames across a profiled sweep (its profile grid)."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from ..analysis.labels import FRAME_EXEC_ORDER, order_exec, shorten
from ..analysis.profiles import GRID_STAGES, STAGES, grid_activity, grid_stage_times, launch_table, stage_times
from ..analysis.tidy import CONTEXT, contexts, missing, tidy_profile
from .common import (
    FRAME_EXEC_LINE, FRAME_EXEC_MARKER, STAGE_COLORS, Plot, backend_colors, frames_axis, new_figure, plain_log,
    side_legend, suptitle,
)


def _largest_profile_setting(table: pd.DataFrame) -> Tuple[pd.DataFrame, str]:
    """The profiles of the setting with the most rows, and a note when the table mixes several
    (profile tables are not split per setting by ``render_figures``, unlike the results)."""
    groups = contexts(table.assign(status="ok")) if any(c in table for c in CONTEXT) else [({}, table)]
    note = f"profiles mix {len(groups)} settings; drew the largest" if len(groups) > 1 else ""
    return groups[0][1], note


def profile_stages(ranges: pd.DataFrame) -> Plot:
    """Per-forward time per stage, stacked: one bar per profiled (frames, frame_exec[, k]);
    left in ms, right as a share of the forward. GPU-projected times where the profile has
    them; CPU-only profiles (torch profiler on CPU) use wall time and the axis says so."""
    times = stage_times(ranges)
    if times.empty:
        return Plot(None, "no profile ranges (run `python -m vggt_bench profile` into this directory)")
    times, note = _largest_profile_setting(times)
    notes = [note] if note else []
    if (times["basis"] == "gpu").any() and (times["basis"] == "cpu").any():
        notes.append("CPU-only profiles left out next to GPU ones")
        times = times[times["basis"] == "gpu"]
    gpu = (times["basis"] == "gpu").all()
    varying_k = times["prune_depth"].nunique() > 1
    varying_b = times["attention"].nunique() > 1

    def label(r) -> str:
        if missing(r["frames"]):
            return str(r["tag"])
        text = f"S={r['frames']:g}\n{r['frame_exec']}"
        text += f"\nk={r['prune_depth']:g}" if varying_k and not missing(r["prune_depth"]) else ""
        return text + (f"\n{r['attention']}" if varying_b else "")

    def sort_key(r) -> tuple:
        exec_rank = FRAME_EXEC_ORDER.index(r["frame_exec"]) if r["frame_exec"] in FRAME_EXEC_ORDER else 9
        return (math.inf if missing(r["frames"]) else r["frames"], exec_rank,
                -1 if missing(r["prune_depth"]) else r["prune_depth"], str(r["attention"]), str(r["tag"]))

    times = times.assign(bar=[label(r) for _, r in times.iterrows()],
                         _order=[sort_key(r) for _, r in times.iterrows()])
    order = list(dict.fromkeys(times.sort_values("_order")["bar"]))
    bars = times.pivot_table(index="bar", columns="stage", values="ms_per_forward", aggfunc="first")
    bars = bars.reindex(index=order, columns=[s for s in STAGES if s in bars.columns]).fillna(0.0)
    bars = bars.loc[:, (bars > 0).any(axis=0)]
    if bars.empty or float(bars.to_numpy().sum()) == 0.0:
        found = sorted(set(tidy_profile(ranges)["range"]) - {""})
        return Plot(None, f"profile ranges hold none of our stage ranges ({', '.join(STAGES[:4])}, heads); found: "
                          f"{shorten(', '.join(found), 120) or 'none'}")
    labels = order
    fig, (ax, share), lax = new_figure(max(9.0, 0.9 * len(order) * 2 + 3.0), 5.0, ncols=2, legend=0.35)
    x = np.arange(len(order))
    bottom = np.zeros(len(order))
    total = bars.sum(axis=1).to_numpy()
    for stage in bars.columns:
        v = bars[stage].to_numpy()
        ax.bar(x, v, bottom=bottom, color=STAGE_COLORS[stage], width=0.7, label=_stage_label(stage))
        share.bar(x, 100 * v / np.where(total > 0, total, 1), bottom=100 * bottom / np.where(total > 0, total, 1),
                  color=STAGE_COLORS[stage], width=0.7)
        bottom += v
    for i, t in enumerate(total):
        ax.text(i, t, f"{t:,.0f}" if t >= 100 else f"{t:.3g}", ha="center", va="bottom", fontsize=8)
    busy = gpu and (times.get("gpu_column", pd.Series(dtype=object)) == "gpu_busy_ms").all()
    basis = ("GPU busy time (summed kernel durations)" if busy else "GPU-projected time") if gpu \
        else "CPU wall time (no GPU times: CPU profile)"
    ax.set_ylabel(f"{basis} per forward (ms)")
    share.set_ylabel(f"share of the forward's {'GPU' if gpu else 'CPU'} time (%)")
    share.set_ylim(0, 100)
    for a in (ax, share):
        a.set_xticks(x, labels, fontsize=8)
        a.grid(axis="x", visible=False)
        a.set_axisbelow(True)
    ax.set_title("time per stage", fontsize=10)
    share.set_title("share per stage", fontsize=10)
    handles, names = ax.get_legend_handles_labels()
    side_legend(lax, handles[::-1], names[::-1], title="stage (NVTX range)")
    profiler = " / ".join(sorted(set(times.get("profiler", pd.Series(dtype=object))) - {""})) or "profile"
    suptitle(fig, f"Where a forward's time goes, per stage ({profiler})", times)
    return Plot(fig, "; ".join(notes))


def _stage_label(stage: str) -> str:
    return {"heads": "heads (camera, depth, point, track)", "other": "other (outside named stages)",
            "converted_block": "converted_block (global→frame)"}.get(stage, stage)


def profile_launches(summary: pd.DataFrame, ranges: Optional[pd.DataFrame] = None) -> Plot:
    """Launch overhead, sequential vs fused: kernel launches per frame layer (log-log) and the
    GPU's idle fraction of the captured window, vs frames; colour = backend, line style =
    frame execution. Needs GPU profiles (CPU torch-profiler runs launch no kernels)."""
    table = launch_table(summary, ranges)
    if table.empty:
        return Plot(None, "no profile summary (run `python -m vggt_bench profile` into this directory)")
    unplaced = table[table["frames"].isna()]
    table = table[table["frames"].notna()]
    if table.empty:
        return Plot(None, f"no profile has a frame count to plot against (profiles {', '.join(unplaced['tag'])} "
                          "were read with analyze= and carry no configuration)")
    table, note = _largest_profile_setting(table)
    have_k = table["kernels_per_frame_layer"].fillna(0) > 0
    have_idle = table["idle_frac"].notna() & (table["kernels"].fillna(0) > 0)
    if not have_k.any() and not have_idle.any():
        return Plot(None, "profiles hold no GPU kernels (CPU-only torch-profiler runs): no launch counts or idle time")
    table = table.sort_values(["frame_exec", "attention", "frames"])
    colors = backend_colors(table["attention"])
    fig, (ax, idle), lax = new_figure(11.5, 4.6, ncols=2, legend=0.3)
    for (backend, exec_), s in table.groupby(["attention", "frame_exec"]):
        style = dict(color=colors[backend], ls=FRAME_EXEC_LINE.get(exec_, "-."),
                     marker=FRAME_EXEC_MARKER.get(exec_, "d"), ms=5, lw=1.6)
        k = s[s["kernels_per_frame_layer"].fillna(0) > 0]
        ax.plot(k["frames"], k["kernels_per_frame_layer"], **style)
        i = s[s["idle_frac"].notna()]
        idle.plot(i["frames"], 100 * i["idle_frac"], **style)
    frames_axis(ax, table["frames"])
    frames_axis(idle, table["frames"])
    ax.set_yscale("log")
    plain_log(ax.yaxis)
    ax.set_ylabel("kernel launches per frame layer (log scale)")
    ax.set_title("launches inside one frame_block", fontsize=10)
    idle.set_ylabel("GPU idle, % of captured window")
    idle.set_ylim(0, max(5.0, float(np.nanmax(100 * table["idle_frac"].to_numpy(dtype=float)))
                         * 1.15 if table["idle_frac"].notna().any() else 100))
    idle.set_title("GPU idle fraction", fontsize=10)
    handles = [Line2D([], [], color=colors[b], lw=2.5, label=b) for b in sorted(set(table["attention"]))]
    handles += [Line2D([], [], color="black", ls=FRAME_EXEC_LINE.get(e, "-."), marker=FRAME_EXEC_MARKER.get(e, "d"),
                       ms=5, label=e) for e in order_exec(table["frame_exec"])]
    side_legend(lax, handles, title="backend / execution")
    profiler = " / ".join(sorted(set(table["profiler"]) - {""})) or "profile"
    suptitle(fig, f"Launch overhead: sequential vs fused frame attention ({profiler})", table)
    return Plot(fig, note)


def _series_legend(lax, table: pd.DataFrame) -> None:
    """Legend of colour = backend, line style / marker = frame execution."""
    colors = backend_colors(table["attention"])
    handles = [Line2D([], [], color=colors[b], lw=2.5, label=b) for b in sorted(set(table["attention"]))]
    handles += [Line2D([], [], color="black", ls=FRAME_EXEC_LINE.get(e, "-."), marker=FRAME_EXEC_MARKER.get(e, "d"),
                       ms=5, label=e) for e in order_exec(table["frame_exec"])]
    side_legend(lax, handles, title="backend / execution")


def _series_style(colors: dict, backend: str, exec_: str) -> dict:
    return dict(color=colors[backend], ls=FRAME_EXEC_LINE.get(exec_, "-."), marker=FRAME_EXEC_MARKER.get(exec_, "d"),
                ms=5, lw=1.6)


def profile_grid_stages(grid: pd.DataFrame) -> Plot:
    """How each stage's time per forward grows with frames across a profiled sweep: one panel per
    stage (patch embed, frame blocks, global blocks, converted blocks, heads; those profiled),
    log-log; colour = backend, line style = frame execution (fused vs sequential). GPU-projected
    time (as nsys nvtx_gpu_proj_sum) where the profiles have GPU times, else CPU time, as the axis
    says. The exact model only (prune_depth 0, or the smallest profiled)."""
    times = grid_stage_times(grid)
    notes = list(times.attrs.get("notes", []))
    if times.empty:
        return Plot(None, "; ".join(["no profiled point with stage ranges (sweep profiler=torch|nsys, or profile "
                                     "analyze= of an external capture)"] + notes))
    times, note = _largest_profile_setting(times)
    notes += [note] if note else []
    times = times[times["ms"] > 0]
    stages = [s for s in GRID_STAGES if s in set(times["stage"])]
    if not stages:
        return Plot(None, "profiled stages took no time")
    fig, axes, lax = new_figure(max(6.5, 3.2 * len(stages) + 2.0), 4.4, ncols=len(stages), legend=0.32)
    colors = backend_colors(times["attention"])
    for ax, stage in zip(axes, stages):
        rows = times[times["stage"] == stage]
        for (backend, exec_), s in rows.groupby(["attention", "frame_exec"]):
            s = s.sort_values("frames")
            ax.plot(s["frames"], s["ms"], **_series_style(colors, backend, exec_))
        frames_axis(ax, times["frames"])
        ax.set_yscale("log")
        plain_log(ax.yaxis, float(rows["ms"].min()), float(rows["ms"].max()))
        ax.set_title(_stage_label(stage), fontsize=10)
    gpu = (times["basis"] == "gpu").all()
    basis = "GPU-projected time" if gpu else "CPU time (no GPU times in the profiles)"
    axes[0].set_ylabel(f"{basis} per forward (ms, log scale)")
    _series_legend(lax, times)
    profiler = " / ".join(sorted(set(times["profiler"]) - {""})) or "profile"
    suptitle(fig, f"Time per stage against frames, fused vs sequential, per backend ({profiler})", times)
    return Plot(fig, "; ".join(notes))


def profile_grid_activity(grid: pd.DataFrame) -> Plot:
    """Launch overhead across a profiled sweep: the GPU's idle share of the captured window and the
    kernels launched per forward, against frames; colour = backend, line style = frame execution.
    Needs GPU profiles (a CPU torch-profiler run launches no kernels)."""
    table = grid_activity(grid)
    notes = list(table.attrs.get("notes", []))
    if table.empty:
        return Plot(None, "; ".join(["no profiled point holds GPU kernels (CPU-only torch-profiler runs): "
                                     "no idle share or launches"] + notes))
    table, note = _largest_profile_setting(table)
    notes += [note] if note else []
    colors = backend_colors(table["attention"])
    fig, (idle, launches), lax = new_figure(11.5, 4.6, ncols=2, legend=0.3)
    for (backend, exec_), s in table.groupby(["attention", "frame_exec"]):
        s = s.sort_values("frames")
        style = _series_style(colors, backend, exec_)
        idle.plot(s["frames"], 100 * s["idle_frac"], **style)
        launches.plot(s["frames"], s["launches"], **style)
    for ax in (idle, launches):
        frames_axis(ax, table["frames"])
    idle.set_ylabel("GPU idle, % of the captured window")
    idle.set_ylim(0, max(5.0, float(np.nanmax(100 * table["idle_frac"].to_numpy(dtype=float))) * 1.15))
    idle.set_title("GPU idle share", fontsize=10)
    launches.set_yscale("log")
    plain_log(launches.yaxis, float(table["launches"].min()), float(table["launches"].max()))
    launches.set_ylabel("kernel launches per forward (log scale)")
    launches.set_title("kernel launches", fontsize=10)
    _series_legend(lax, table)
    profiler = " / ".join(sorted(set(table["profiler"]) - {""})) or "profile"
    suptitle(fig, f"GPU idle share and kernel launches against frames ({profiler})", table)
    return Plot(fig, "; ".join(notes))
