"""Figures of a memory profile (``profile profiler=memory``), drawn only from its tables.

==================  ============================================================================
memory_timeline     memory_timeline: event, allocated_gib, reserved_gib, in_forward;
                    memory_stages: range, first_event, last_event (stage bands);
                    memory_summary: peak_event, peak_allocated_gib, peak_stage, allocated_before_gib
memory_at_peak      memory_by_category: category, size_gib; memory_at_peak: frame, category, size_gib;
                    memory_summary: peak_allocated_gib, reserved_at_peak_gib
==================  ============================================================================

Each function takes the dict of tables (``vggt_bench.profiling.memory.memory_tables`` or
``read_memory_tables``) and an optional ``meta`` dict (the profile's ``point.json``: knobs and
GPU name, for the subtitle) and returns a ``common.Plot``: a matplotlib ``Figure``, or ``None``
and why it was skipped. ``render_memory_figures`` writes both as PNG and SVG into a directory.
Nothing here is registered in ``plots.figures``: the ``profile profiler=memory`` command draws these.
"""

from __future__ import annotations

import os
import re
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ..profiling.memory import ACTIVATIONS, CATEGORIES, KEPT, SLACK, UNATTRIBUTED, WEIGHTS, WORKSPACE
from ..analysis.labels import context_line, shorten
from ..analysis.tidy import tidy_results
from .common import STAGE_COLORS, Plot, new_figure, save, side_legend

CATEGORY_COLORS = {
    WEIGHTS: "#8c6d31", KEPT: "#9467bd", ACTIVATIONS: "#1f77b4", WORKSPACE: "#ff7f0e",
    UNATTRIBUTED: "#7f7f7f", SLACK: "#d9d9d9",
}
BAND_STAGES = {"patch_embed": "patch_embed", "camera_head": "heads", "depth_head": "heads", "point_head": "heads",
               "track_head": "heads"}
_LAYER = re.compile(r"^layer_(\d+)$")
GIB_LABEL = "GiB (2^30 bytes)"


def _table(tables: Dict[str, pd.DataFrame], name: str) -> pd.DataFrame:
    frame = tables.get(name)
    return frame if frame is not None else pd.DataFrame()


def _subtitle(meta: Optional[dict]) -> str:
    if not meta or "arch" not in meta:
        return "CUDA caching allocator, one forward"
    line = context_line(tidy_results(pd.DataFrame([meta])))
    extra = [f"S={meta['frames']}" if "frames" in meta else "", str(meta.get("frame_exec", "")),
             str(meta.get("attention", ""))]
    return " · ".join([line] + [e for e in extra if e])


def _title(fig: Figure, what: str, meta: Optional[dict]) -> None:
    fig.suptitle(f"{what}\n{_subtitle(meta)}", fontsize=11)


def memory_timeline_figure(tables: Dict[str, pd.DataFrame], meta: Optional[dict] = None) -> Plot:
    """Allocated and reserved GiB after each allocator event of the forward; layers shaded in
    turn, patch embedding and heads in colour (when the stage tracker was aligned to the trace);
    the peak marked with the range it happened in."""
    timeline = _table(tables, "memory_timeline")
    if timeline.empty:
        return Plot(None, "no allocator events (run `python -m vggt_bench profile profiler=memory` on a GPU)")
    forward = timeline[timeline["in_forward"].astype(bool)]
    if forward.empty:
        return Plot(None, "no allocator event in the recorded forward")
    start = float(forward["event"].iloc[0])
    x = forward["event"].to_numpy(dtype=float) - start
    end = max(float(x[-1]), 1.0)
    summary = _table(tables, "memory_summary")
    s = summary.iloc[0] if len(summary) else pd.Series(dtype=object)
    notes: List[str] = []

    fig, (ax,), lax = new_figure(11.0, 4.8, legend=0.3)
    handles = []
    stages = _table(tables, "memory_stages")
    placed = stages.dropna(subset=["first_event", "last_event"]) if len(stages) else stages
    if len(stages) and placed.empty:
        notes.append("stages not placed on the trace: no stage bands")
    if len(placed):
        layers = placed[placed["range"].astype(str).str.match(_LAYER)]
        every = max(1, int(np.ceil(len(layers) / 12)))
        for i, (_, row) in enumerate(layers.iterrows()):
            x0, x1 = row["first_event"] - start, row["last_event"] - start
            if i % 2 == 0:
                ax.axvspan(x0, x1, color="#000000", alpha=0.06, lw=0)
            if i % every == 0:
                ax.text((x0 + x1) / 2, 1.0, str(int(_LAYER.match(row["range"]).group(1))), transform=ax.get_xaxis_transform(),
                        ha="center", va="bottom", fontsize=7, color="#555555")
        if len(layers):
            handles.append(Patch(color="#000000", alpha=0.12, label="aggregator layers (every other\nshaded, index on top)"))
        shown = set()
        for _, row in placed[placed["range"].isin(list(BAND_STAGES))].iterrows():
            group = BAND_STAGES[row["range"]]
            color = STAGE_COLORS[group]
            x0, x1 = row["first_event"] - start, row["last_event"] - start
            ax.axvspan(x0, x1, color=color, alpha=0.15, lw=0)
            ax.text((x0 + x1) / 2, 0.98, row["range"].replace("_head", "").replace("_", " "), transform=ax.get_xaxis_transform(),
                    rotation=90, ha="center", va="top", fontsize=7, color="#444444")
            if group not in shown:
                shown.add(group)
                handles.append(Patch(color=color, alpha=0.3, label="patch embedding" if group == "patch_embed" else "heads"))
    ax.step(x, forward["reserved_gib"], where="post", color="#7f7f7f", ls="--", lw=1.0)
    ax.step(x, forward["allocated_gib"], where="post", color="#1f77b4", lw=1.3)
    handles = [Line2D([], [], color="#1f77b4", lw=1.3, label="allocated (live tensors)"),
               Line2D([], [], color="#7f7f7f", ls="--", lw=1.0, label="reserved (allocator's segments)")] + handles
    before = s.get("allocated_before_gib", np.nan)
    if pd.notna(before):
        ax.axhline(before, color=CATEGORY_COLORS[WEIGHTS], ls=":", lw=1.2)
        handles.append(Line2D([], [], color=CATEGORY_COLORS[WEIGHTS], ls=":", lw=1.2,
                              label=f"allocated before the forward\n(weights, inputs): {before:.2f} GiB"))
    peak_event = s.get("peak_event", np.nan)
    if pd.notna(peak_event):
        px, py = float(peak_event) - start, float(s["peak_allocated_gib"])
        ax.plot([px], [py], marker="v", color="#d62728", ms=8, ls="none")
        where = str(s.get("peak_stage", "") or "")
        label = f"peak {py:.2f} GiB" + (f"\nin {shorten(where, 60)}" if where else "")
        ax.annotate(label, (px, py), xytext=(-8 if px > end / 2 else 8, 6), textcoords="offset points",
                    ha="right" if px > end / 2 else "left", va="bottom", fontsize=8, color="#d62728")
        handles.append(Line2D([], [], color="#d62728", marker="v", ms=8, ls="none", label="peak allocated"))
    ax.set_xlim(0, end)
    top = float(np.nanmax([forward["reserved_gib"].max(), forward["allocated_gib"].max()]))
    ax.set_ylim(0, top * 1.12 if top > 0 else 1.0)
    ax.set_xlabel("allocator events since the forward began (allocations and frees, in order)")
    ax.set_ylabel(GIB_LABEL)
    side_legend(lax, handles)
    _title(fig, "GPU memory over one forward", meta)
    return Plot(fig, "; ".join(notes))


def _site_label(frame: str, category: str) -> str:
    if category == WEIGHTS and not frame:
        return "(allocated before the forward)"
    return frame or "(no stack recorded)"


def memory_at_peak_figure(tables: Dict[str, pd.DataFrame], meta: Optional[dict] = None, top: int = 12) -> Plot:
    """What is live at the peak: reserved memory split by category (one stacked bar), and the
    ``top`` allocation sites by size (bars coloured by category)."""
    cats = _table(tables, "memory_by_category")
    if cats.empty or not (cats["size_gib"].fillna(0) > 0).any():
        return Plot(None, "no memory by category (run `python -m vggt_bench profile profiler=memory` on a GPU)")
    at_peak = _table(tables, "memory_at_peak")
    fig = Figure(figsize=(12.0, 5.2), layout="constrained")
    grid = fig.add_gridspec(1, 3, width_ratios=[0.32, 1.0, 0.3])
    ax, sites = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    lax = fig.add_subplot(grid[0, 2])
    lax.axis("off")
    sizes = cats.set_index("category")["size_gib"].fillna(0.0)
    total = float(sizes.sum())
    bottom = 0.0
    for category in CATEGORIES:
        size = float(sizes.get(category, 0.0))
        if size <= 0:
            continue
        ax.bar(0, size, bottom=bottom, width=0.6, color=CATEGORY_COLORS[category],
               hatch="//" if category == SLACK else None, edgecolor="white", lw=0.5)
        if size / total > 0.04:
            ax.text(0, bottom + size / 2, f"{size:.2f}", ha="center", va="center", fontsize=8)
        bottom += size
    ax.set_xlim(-0.6, 0.6)
    ax.set_xticks([0], ["at the peak"])
    ax.set_ylabel(GIB_LABEL)
    ax.set_title(f"reserved {total:.2f} GiB", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)

    if len(at_peak):
        grouped = (at_peak.assign(site=[_site_label(f, c) for f, c in zip(at_peak["frame"], at_peak["category"])])
                   .groupby(["site", "category"], as_index=False)
                   .agg(size_gib=("size_gib", "sum"), blocks=("size_gib", "size"))
                   .sort_values("size_gib", ascending=False).head(top).iloc[::-1])
        y = np.arange(len(grouped))
        sites.barh(y, grouped["size_gib"], color=[CATEGORY_COLORS.get(c, "#7f7f7f") for c in grouped["category"]])
        sites.set_yticks(y, [f"{shorten(site, 55)}  ×{n}" for site, n in zip(grouped["site"], grouped["blocks"])],
                         fontsize=8)
        for yi, v in zip(y, grouped["size_gib"]):
            sites.text(v, yi, f" {v:.3g}", va="center", fontsize=7.5)
        sites.set_xlabel(f"live at the peak, {GIB_LABEL}")
        sites.set_title(f"largest allocation sites (top {len(grouped)}: where in our code, ×allocations)", fontsize=10)
        sites.grid(axis="x", alpha=0.3)
        sites.set_axisbelow(True)
    else:
        sites.axis("off")
    handles = [Patch(color=CATEGORY_COLORS[c], hatch="//" if c == SLACK else None, label=c)
               for c in CATEGORIES if float(sizes.get(c, 0.0)) > 0]
    side_legend(lax, handles, title="category")
    summary = _table(tables, "memory_summary")
    peak = f"{float(summary.iloc[0]['peak_allocated_gib']):.2f} GiB allocated" if len(summary) else ""
    _title(fig, f"What is live at the peak ({peak})" if peak else "What is live at the peak", meta)
    return Plot(fig, "")


def render_memory_figures(tables: Dict[str, pd.DataFrame], directory: str,
                          meta: Optional[dict] = None) -> Tuple[List[str], List[str]]:
    """Write ``memory_timeline`` and ``memory_at_peak`` (PNG + SVG) into ``directory``.
    Returns (paths written, notes: one per skipped figure or remark)."""
    os.makedirs(directory, exist_ok=True)
    written, notes = [], []
    for name, make in (("memory_timeline", memory_timeline_figure), ("memory_at_peak", memory_at_peak_figure)):
        plot = make(tables, meta)
        if plot.figure is None:
            notes.append(f"{name}: skipped: {plot.note}")
            continue
        written += save(plot.figure, os.path.join(directory, name))
        if plot.note:
            notes.append(f"{name}: {plot.note}")
    return written, notes
