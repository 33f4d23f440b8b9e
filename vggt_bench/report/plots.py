"""Every figure of a results directory: the registry of figures, and ``render_figures``.

Each figure is drawn from a tidy DataFrame (never from raw traces) by a function of its family
(``scaling``, ``memory``, ``approximations``, ``upstream``, ``profiles``; what they share is
``common``). Drawing only: which rows are comparable, the exact model's rows, speedup pairs, stage
times and every other table a figure shows come from ``vggt_bench.analysis``. Each figure function
takes the table(s) it reads and returns a ``Plot``: a matplotlib ``Figure``, or ``None`` and the
reason it was skipped (no data of that kind). ``figures`` draws every figure of the tables; and
``render_figures`` writes them as PNG and SVG into ``<out>/figures/``.

Tables mixing settings are split, never averaged:

* A *context* is what makes two measurements incomparable (the workload, and every knob that
  is neither drawn as a series nor an approximation: ``analysis.tidy.CONTEXT``). ``render_figures`` draws each figure once per context;
  the file names then carry what varies (``scaling_wall__bf16_autocast.png``). A figure function
  handed several contexts draws the one with the most ``ok`` rows and says so in its note.
* Within a context each figure fixes what it does not plot: the exact model (``prune_depth``
  0, or the smallest depth measured, and no attention approximation) everywhere except the
  conversion and approximations figures; ``fused`` frame execution for the backend shoot-out.
* Lines and bars use only ``status == "ok"`` rows; ``oom`` rows are drawn as markers,
  ``unavailable`` backends as hatched n/a bars, ``error`` rows are named in a footnote.

Figures and the columns they read:

==================  ==============================================================================
scaling_wall        frames, latency_ms_median/p10/p90, frame_exec, attention, status (+ reference)
fused_speedup       frames, latency_ms_median, frame_exec, attention
memory              frames, peak_alloc_gib, peak_reserved_gib (GPU) or peak_rss_gib (CPU),
                    device_mem_gib (else gpu_mem_gib), status (+ reference memory)
conversion          frames, prune_depth, latency_ms_median, drift_rel, frame_exec, attention
approximations      approximation_table + pareto_front: speedup over the exact model against drift_pose_rel,
                    drift_depth_rel, drift_points_rel (drift_tokens_rel without heads), per frame count
backends            attention, frames, achieved_tflops, peak_tflops, frac_of_peak, status, message
memory_wall         memory_fit + memory_residuals: peak_alloc_gib against frames per impl and memory plan,
                    the fitted line to each card's memory (device_mem_gib, WALL_CARDS)
upstream_ratio      impl_ratios: ours against upstream's code at the same workload (time and activation
                    memory ratios, same_run), only with model.impl=upstream rows
context_parallel    context_parallel (all world sizes in one figure), frames, latency_ms_median/p10/p90,
                    comm_ms, rank_peak_gib_max (else peak_alloc_gib), device_mem_gib; only with N > 1 rows
profile_stages      profile_ranges: range, gpu_ms (cpu_ms without a GPU), iterations, frames, frame_exec
profile_launches    profile_summary: kernels_per_frame_layer, idle_frac, frames, frame_exec, attention
==================  ==============================================================================

A profiled sweep (``sweep profiler=torch|nsys|external``) adds two figures drawn from
``profile_grid`` (only when that table exists: GRID_FIGURES):

=====================  ===========================================================================
profile_grid_stages    grid_stage_times: per-stage time per forward vs frames, one panel per stage
profile_grid_activity  grid_activity: GPU idle share and kernel launches per forward vs frames
=====================  ===========================================================================
"""

from __future__ import annotations

import os
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import pandas as pd
from matplotlib.figure import Figure

from ..analysis.labels import context_slug
from ..analysis.profiles import with_gpu_name
from ..analysis.tidy import CONTEXT, Tables, contexts, load_tables
from .approximations import approximations, conversion
from .common import Plot, save
from .memory import memory, memory_wall
from .profiles import profile_grid_activity, profile_grid_stages, profile_launches, profile_stages
from .scaling import backends, context_parallel, fused_speedup, scaling_wall
from .upstream import upstream_ratio


FIGURES_DIR = "figures"

RESULT_FIGURES: List[Tuple[str, Callable[..., Plot]]] = [
    ("scaling_wall", scaling_wall),
    ("upstream_ratio", upstream_ratio),
    ("fused_speedup", fused_speedup),
    ("memory", memory),
    ("memory_wall", memory_wall),
    ("context_parallel", context_parallel),
    ("conversion", conversion),
    ("approximations", approximations),
    ("backends", backends),
]
PROFILE_FIGURES = ["profile_stages", "profile_launches"]
FIGURE_NAMES = [name for name, _ in RESULT_FIGURES] + PROFILE_FIGURES
# Drawn only where the directory holds a profile_grid (a profiled sweep).
GRID_FIGURES: List[Tuple[str, Callable[[pd.DataFrame], Plot]]] = [
    ("profile_grid_stages", profile_grid_stages),
    ("profile_grid_activity", profile_grid_activity),
]


class NamedPlot(NamedTuple):
    name: str           # file stem: figure name, plus the context when a table mixes settings
    figure: Optional[Figure]
    note: str


# Figures that draw a CONTEXT column side by side rather than one figure per value.
ACROSS = {"context_parallel": ["context_parallel"]}


def _split(frame: pd.DataFrame, across: Sequence[str] = ()) -> List[Tuple[str, pd.DataFrame]]:
    groups = contexts(frame if "status" in frame else frame.assign(status="ok"), across)
    if len(groups) <= 1:
        return [("", frame if not groups else groups[0][1])]
    varying = [c for c in CONTEXT if c not in across and len({g[0].get(c) for g in groups}) > 1]
    return [(context_slug(ctx, varying), rows) for ctx, rows in groups]


def figures(tables: Tables, reference: Optional[str] = "upstream_h100") -> List[NamedPlot]:
    """Every figure of the tables, one per figure and context, in FIGURE_NAMES order; then the
    GRID_FIGURES where the tables hold a profile grid."""
    out: List[NamedPlot] = []
    splits = {}  # per ``across``: one split serves every figure that shares it
    for name, fn in RESULT_FIGURES:
        across = tuple(ACROSS.get(name, ()))
        if across not in splits:
            splits[across] = _split(tables.results, across) if len(tables.results) else [("", tables.results)]
        for slug, rows in splits[across]:
            stem = f"{name}__{slug}" if slug else name
            try:
                plot = fn(rows, reference) if name in ("scaling_wall", "memory") else fn(rows)
            except Exception as exc:  # one broken figure must not cost the others
                plot = Plot(None, f"failed: {type(exc).__name__}: {exc}")
            out.append(NamedPlot(stem, *plot))
    ranges = with_gpu_name(tables.profile_ranges, tables.results)
    summary = with_gpu_name(tables.profile_summary, tables.results)
    for name in PROFILE_FIGURES:
        table = ranges if name == "profile_stages" else summary
        parts = _split(table) if len(table) else [("", table)]
        for slug, rows in parts:
            stem = f"{name}__{slug}" if slug else name
            try:
                plot = profile_stages(rows) if name == "profile_stages" else profile_launches(rows, ranges)
            except Exception as exc:
                plot = Plot(None, f"failed: {type(exc).__name__}: {exc}")
            out.append(NamedPlot(stem, *plot))
    grid = tables.profile_grid
    if len(grid):
        for name, fn in GRID_FIGURES:
            for slug, rows in _split(grid):
                stem = f"{name}__{slug}" if slug else name
                try:
                    plot = fn(rows)
                except Exception as exc:
                    plot = Plot(None, f"failed: {type(exc).__name__}: {exc}")
                out.append(NamedPlot(stem, *plot))
    return out


def render_figures(out_dir: str, reference: Optional[str] = "upstream_h100") -> Tuple[List[str], List[str]]:
    """Write every figure with data into ``<out>/figures/`` (PNG + SVG).

    Returns ``(written_paths, notes)``: a note per skipped figure (``"<name>: skipped: why"``)
    and per remark on a drawn one. Figures of an earlier render are removed first, so a figure
    whose data is gone does not linger. Raises FileNotFoundError when there is no results table.
    """
    tables = load_tables(out_dir)
    folder = os.path.join(out_dir, FIGURES_DIR)
    os.makedirs(folder, exist_ok=True)
    for old in os.listdir(folder):
        stem, ext = os.path.splitext(old)
        if ext in (".png", ".svg") and stem.split("__")[0] in FIGURE_NAMES + [n for n, _ in GRID_FIGURES]:
            os.unlink(os.path.join(folder, old))
    written, notes = [], []
    for plot in figures(tables, reference):
        if plot.figure is None:
            notes.append(f"{plot.name}: skipped: {plot.note}")
            continue
        written += save(plot.figure, os.path.join(folder, plot.name))
        if plot.note:
            notes.append(f"{plot.name}: {plot.note}")
    return written, notes
