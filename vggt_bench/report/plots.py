"""Figures of a results directory, each drawn from a tidy DataFrame (never from raw traces).

Drawing only: which rows are comparable, the exact model's rows, speedup pairs, stage times and
every other table a figure shows come from ``vggt_bench.analysis``. One function per figure.
Each takes the table(s) it reads and returns a ``Plot``: a matplotlib ``Figure``, or ``None``
and the reason it was skipped (no data of that kind). ``render_figures`` writes every figure of
a results directory as PNG and SVG into ``<out>/figures/``.

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

import math
import os
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from matplotlib import colors as mcolors
from matplotlib import ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ..analysis.approximations import (
    DRIFT_OUTPUTS, TECHNIQUE_ORDER, YARDSTICK_DEPTH, approximation_table, conversion_table, pareto_front,
)
from ..analysis.labels import (
    FRAME_EXEC_ORDER, context_line, context_slug, device_label, failure_notes, fmt_percent, one_context, order_exec,
    part_name, setting, shorten, unavailable_notes,
)
from ..analysis.memory import (
    WALL_CARDS, context_parallel_memory_fit, device_memory_gib, memory_fit, memory_residuals, per_gpu_peak,
)
from ..analysis.profiles import GRID_STAGES, STAGES, grid_activity, grid_stage_times, launch_table, stage_times, with_gpu_name
from ..analysis.scaling import one_sided_notes, speedup_pairs
from ..analysis.tidy import (
    CONTEXT, Tables, baseline_depth, contexts, exact_rows, load_tables, missing, ok_rows, tidy_profile, tidy_results,
)
from ..analysis.upstream import impl_ratios
from . import reference as references

FIGURES_DIR = "figures"


FRAME_EXEC_LINE = {"fused": "-", "sequential": "--", "chunked": ":"}


FRAME_EXEC_MARKER = {"fused": "o", "sequential": "s", "chunked": "^"}


STAGE_COLORS = {
    "patch_embed": "#8c6d31", "frame_block": "#1f77b4", "global_block": "#d62728",
    "converted_block": "#ff7f0e", "heads": "#2ca02c", "other": "#bdbdbd",
}


class Plot(NamedTuple):
    """A drawn figure and an optional remark, or ``figure=None`` and why it was skipped."""

    figure: Optional[Figure]
    note: str = ""


def backend_colors(names) -> dict:
    """A fixed colour per backend name (sorted, tab10) so every figure agrees."""
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf"]
    return {name: palette[i % len(palette)] for i, name in enumerate(sorted(set(names)))}


def _plain_log(axis, lo: Optional[float] = None, hi: Optional[float] = None) -> None:
    """Log scale with 1-2-5 ticks (1-3 or decades over a wide range) written as plain numbers."""
    decades = math.log10(hi / lo) if lo and hi and lo > 0 and hi > lo else 2.0
    subs = (1.0, 2.0, 5.0) if decades <= 2.6 else (1.0, 3.0) if decades <= 4.2 else (1.0,)
    axis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def _frames_axis(ax, frames) -> None:
    """Log x axis of frame counts, ticked at the measured counts when there are few."""
    frames = sorted({int(f) for f in frames if not missing(f)})
    ax.set_xscale("log")
    if not frames:
        pass
    elif len(frames) <= 9:
        ax.xaxis.set_major_locator(ticker.FixedLocator(frames))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_locator(ticker.NullLocator())
    else:
        _plain_log(ax.xaxis, frames[0], frames[-1])
    if len(frames) == 1:
        ax.set_xlim(frames[0] / 1.6, frames[0] * 1.6)
    elif frames:
        ax.set_xlim(frames[0] / 1.25, frames[-1] * 1.25)
    ax.set_xlabel("frames S (log scale)")


def _new_figure(width: float, height: float, ncols: int = 1, sharey: bool = False,
                legend: float = 0.0) -> Tuple[Figure, list, Optional[object]]:
    """A constrained-layout figure with ``ncols`` axes in a row and, when ``legend`` > 0, a
    legend column of that relative width on the right (an axes of its own, so the layout keeps
    the legend clear of the title and the plots). Returns (figure, axes, legend axes or None)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    ratios = [1.0] * ncols + ([legend] if legend else [])
    grid = fig.add_gridspec(1, len(ratios), width_ratios=ratios)
    axes = []
    for i in range(ncols):
        ax = fig.add_subplot(grid[0, i], sharey=axes[0] if sharey and axes else None)
        ax.grid(True, which="major", alpha=0.3)
        axes.append(ax)
    if sharey:
        for ax in axes[1:]:
            ax.tick_params(labelleft=False)
    lax = None
    if legend:
        lax = fig.add_subplot(grid[0, -1])
        lax.axis("off")
    return fig, axes, lax


def _side_legend(lax, handles, labels=None, title: Optional[str] = None) -> None:
    kw = dict(loc="upper left", fontsize=8.5, title=title, title_fontsize=8.5, borderaxespad=0.0, frameon=False)
    if labels is None:
        lax.legend(handles=handles, **kw)
    else:
        lax.legend(handles, labels, **kw)


CPU_TIMINGS = "CPU timings: they back no claim"


def _suptitle(fig: Figure, what: str, frame: pd.DataFrame, extra: str = "") -> None:
    line = context_line(frame) + (f" · {extra}" if extra else "")
    devices = frame["device"].dropna().astype(str) if "device" in frame else pd.Series([], dtype=str)
    if len(devices) and not devices.str.startswith("cuda").any():  # the guide: say so wherever they show
        line += f" · {CPU_TIMINGS}"
    fig.suptitle(f"{what}\n{_wrap_parts(line, 110)}", fontsize=11)


def _wrap_parts(line: str, width: int) -> str:
    """``a · b · c`` broken into lines of at most ``width`` characters at the `` · `` separators."""
    lines, current = [], ""
    for part in line.split(" · "):
        joined = f"{current} · {part}" if current else part
        if current and len(joined) > width:
            lines.append(current)
            current = part
        else:
            current = joined
    return "\n".join(lines + [current])


def _footnote(fig: Figure, lines: Sequence[str]) -> None:
    lines = [s for s in lines if s]
    if lines:
        text = "\n".join(shorten(s, 150) for s in lines[:6])
        if len(lines) > 6:
            text += f"\n(+{len(lines) - 6} more)"
        fig.text(0.0, 0.0, text, fontsize=7.5, color="#555555", ha="left", va="top",
                 transform=fig.transFigure, wrap=True)


def _latency_unit(ms_values) -> Tuple[str, float]:
    """("s", 1e-3) when the largest latency is a second or more, else ("ms", 1)."""
    top = np.nanmax(np.asarray(ms_values, dtype=float)) if len(ms_values) else 0.0
    return ("s", 1e-3) if top >= 1000 else ("ms", 1.0)


UPSTREAM_LINE = "upstream's code (same run)"


def line_labels(rows: pd.DataFrame, varying_in: Optional[pd.DataFrame] = None) -> List[str]:
    """A line's name from the series knobs that vary (``varying_in``: the rows that decide which):
    the attention backend always; ``upstream's code`` for impl=upstream; ``memory_plan=...`` and
    ``global=...`` where they vary. Frame execution is drawn as the line style, not named here."""
    base = rows if varying_in is None else varying_in
    vary = [k for k in ("memory_plan", "global_attention") if k in base and base[k].nunique(dropna=False) > 1]
    out = []
    for _, r in rows.iterrows():
        if r.get("impl") == "upstream":
            out.append(UPSTREAM_LINE)
            continue
        parts = [str(r["attention"])] + [f"{'global=' if k == 'global_attention' else k + '='}{r[k]}" for k in vary]
        out.append(" · ".join(parts))
    return out


def line_colors(labels) -> dict:
    """``backend_colors`` for our lines, black for upstream's code."""
    colors = backend_colors([l for l in labels if l != UPSTREAM_LINE])
    colors[UPSTREAM_LINE] = "black"
    return colors


def _mark_noisy(ax, rows: pd.DataFrame, column: str, scale: float = 1.0, x: str = "frames",
                label: str = "noisy (not used for conclusions)") -> list:
    """Hollow red rings on the points flagged noisy (``x`` against ``column``); the legend handle when
    there are any."""
    noisy = rows[rows["noisy"].fillna(False).astype(bool)] if "noisy" in rows else rows.iloc[0:0]
    if noisy.empty:
        return []
    ax.plot(noisy[x], noisy[column] * scale, ls="none", marker="o", ms=11, mfc="none", mec="#d62728", mew=1.4,
            zorder=5)
    return [Line2D([], [], ls="none", marker="o", ms=9, mfc="none", mec="#d62728", mew=1.4, label=label)]


def scaling_wall(results: pd.DataFrame, reference: Optional[str] = "upstream_h100") -> Plot:
    """Latency of the timed part vs frames (log-log): colour = attention backend, line style =
    frame execution (fused solid, sequential dashed, chunked dotted), p10-p90 shaded.

    Rows: the exact model (prune_depth 0, else the smallest measured), ``ok`` rows for lines.
    ``oom`` rows are x markers in a strip at the top of the axes at the frame count that failed.
    Faint guides ∝ S and ∝ S² through the largest measured point show where the curve turns
    quadratic. ``reference`` (a name in ``reference.REFERENCES``) adds upstream's published points,
    only for GPU aggregator results at upstream's resolution.
    """
    frame, note = one_context(tidy_results(results))
    if frame.empty:
        return Plot(None, "no result rows")
    rows, depth_note = exact_rows(frame)
    ok = ok_rows(rows)
    if ok.empty:
        counts = rows["status"].value_counts().to_dict() if len(rows) else {}
        return Plot(None, f"no ok latency to draw (statuses: {counts or 'none'})")
    ooms = rows[rows["status"] == "oom"]
    ref = None
    if reference:
        first = ok.iloc[0]
        if references.applies(reference, gpu_name=first["gpu_name"], arch=first["arch"], height=int(first["height"]),
                              width=int(first["width"]), part=first["part"]):
            ref = references.REFERENCES[reference]()
    unit, scale = _latency_unit(list(ok["latency_ms_median"]) + ([1000.0] if ref is not None else []))
    rows = rows.assign(_line=line_labels(rows))
    ok = ok.assign(_line=line_labels(ok, rows))
    colors = line_colors(rows["_line"])
    fig, (ax,), lax = _new_figure(10.0, 5.4, legend=0.28)
    execs = order_exec(ok["frame_exec"])
    foot: List[str] = []
    for (line, exec_), series in ok.groupby(["_line", "frame_exec"], sort=True):
        series = series.sort_values("frames")
        x = series["frames"].to_numpy()
        ax.plot(x, series["latency_ms_median"] * scale, color=colors[line], ls=FRAME_EXEC_LINE.get(exec_, "-."),
                marker=FRAME_EXEC_MARKER.get(exec_, "d"), ms=4, lw=1.6)
        ax.fill_between(x, series["latency_ms_p10"] * scale, series["latency_ms_p90"] * scale,
                        color=colors[line], alpha=0.12, lw=0)
    noisy = _mark_noisy(ax, ok, "latency_ms_median", scale)
    _frames_axis(ax, list(rows["frames"]) + (list(ref["frames"]) if ref is not None else []))
    ax.set_yscale("log")
    ys = ok["latency_ms_median"] * scale
    _plain_log(ax.yaxis, float(ys.min()), float(ys.max()))
    handles = [Line2D([], [], color=colors[b], lw=2.5, label=b) for b in sorted(set(ok["_line"]))]
    handles += noisy
    handles += [Line2D([], [], color="black", ls=FRAME_EXEC_LINE.get(e, "-."), marker=FRAME_EXEC_MARKER.get(e, "d"),
                       ms=4, label=e) for e in execs]
    # Guides through the fastest point at the largest frame count.
    top = ok[ok["frames"] == ok["frames"].max()].sort_values("latency_ms_median").iloc[0]
    x0, y0 = float(top["frames"]), float(top["latency_ms_median"]) * scale
    lo = max(float(ok["frames"].min()), x0 / 16)
    if x0 / lo >= 4:  # over less than two octaves the guides say nothing and crowd the points
        xs = np.geomspace(lo, x0, 20)
        for power, style in ((1, (0, (1, 2))), (2, (0, (4, 2)))):
            ax.plot(xs, y0 * (xs / x0) ** power, color="#888888", lw=0.9, ls=style, zorder=0)
            handles.append(Line2D([], [], color="#888888", lw=0.9, ls=style,
                                  label=f"∝ S{'²' if power == 2 else ''} (guide)"))
    if ref is not None:
        ax.plot(ref["frames"], ref["latency_s"] * 1e3 * scale, color="black", ls=":", marker="*", ms=9, lw=1)
        handles.append(Line2D([], [], color="black", ls=":", marker="*", ms=9,
                              label=references.REFERENCE_LABELS[reference]))
        foot.append("reference: " + str(ref["source"].iloc[0]))
    if len(ooms):
        trans = ax.get_xaxis_transform()
        ooms = rows[rows["status"] == "oom"]
        series_keys = sorted(set(zip(ooms["_line"], ooms["frame_exec"])))
        for i, (line, exec_) in enumerate(series_keys):
            s = ooms[(ooms["_line"] == line) & (ooms["frame_exec"] == exec_)]
            ax.plot(s["frames"], [0.95 - 0.035 * i] * len(s), transform=trans, ls="none", marker="x", ms=8, mew=2,
                    color=colors[line], clip_on=False)
        ax.annotate("OOM", xy=(float(ooms["frames"].min()), 0.95), xycoords=trans, xytext=(-8, 0),
                    textcoords="offset points", ha="right", va="center", fontsize=9, fontweight="bold")
        ax.set_ylim(top=ax.get_ylim()[1] * (1 + 0.6 * len(series_keys)))  # room for the OOM strip
        handles.append(Line2D([], [], color="black", ls="none", marker="x", ms=8, mew=2,
                              label="out of memory (top strip)"))
    ax.set_ylabel(f"{part_name(ok)} latency, median ({unit}, log scale)")
    _side_legend(lax, handles, title="series / frame execution")
    _suptitle(fig, f"Scaling wall: {part_name(ok)} latency vs frames", ok,
              extra="" if baseline_depth(rows) == 0 else f"prune_depth={baseline_depth(rows)}")
    _footnote(fig, unavailable_notes(rows) + failure_notes(rows) + foot)
    return Plot(fig, "; ".join(n for n in (note, depth_note) if n))


def fused_speedup(results: pd.DataFrame) -> Plot:
    """Fused-over-sequential speedup (sequential latency / fused latency) vs frames, one line per
    backend, on the exact model (prune_depth 0); a dotted 1× line marks no gain."""
    frame, note = one_context(tidy_results(results))
    if frame.empty:
        return Plot(None, "no result rows")
    rows, depth_note = exact_rows(frame)
    pairs = speedup_pairs(rows)
    if pairs.empty:
        have = sorted(set(ok_rows(rows)["frame_exec"]))
        return Plot(None, "no frame count measured (ok) both fused and sequential "
                          f"(frame_exec with ok rows: {have or 'none'})")
    colors = backend_colors(rows["attention"])
    fig, (ax,), _ = _new_figure(7.6, 4.6)
    for backend, series in pairs.groupby("attention"):
        series = series.sort_values("frames")
        ax.plot(series["frames"], series["speedup"], color=colors[backend], marker="o", ms=4, lw=1.6, label=backend)
        last = series.iloc[-1]
        ax.annotate(f"{last['speedup']:.2f}×", (last["frames"], last["speedup"]), xytext=(5, 0),
                    textcoords="offset points", va="center", fontsize=8, color=colors[backend])
    ax.axhline(1.0, color="black", ls=":", lw=1, label="1× (no gain)")
    _frames_axis(ax, pairs["frames"])
    lo, hi = float(pairs["speedup"].min()), float(pairs["speedup"].max())
    if hi / max(lo, 1e-9) > 8:
        ax.set_yscale("log")
        _plain_log(ax.yaxis)
        ax.set_ylabel("speedup, sequential / fused latency (×, log scale)")
    else:
        ax.set_ylim(min(lo, 1.0) * 0.9, max(hi, 1.0) * 1.1)
        ax.set_ylabel("speedup, sequential / fused latency (×)")
    ax.xaxis.set_tick_params(which="both")
    ax.set_xlim(right=ax.get_xlim()[1] * 1.35)  # room for the end labels
    ax.legend(loc="best", fontsize=8.5, title="attention backend", title_fontsize=8.5)
    _suptitle(fig, "What fusing frame attention buys: sequential / fused latency", rows)
    only = one_sided_notes(rows)
    _footnote(fig, only)
    return Plot(fig, "; ".join(n for n in (note, depth_note) if n))


def memory(results: pd.DataFrame, reference: Optional[str] = "upstream_h100") -> Plot:
    """Peak memory vs frames (log-log), one panel per frame execution, colour = backend.

    GPU rows: peak allocated (solid) and peak reserved (dashed) by the caching allocator.
    CPU rows: the process's peak resident set (includes the interpreter and weights).
    The device's memory is a horizontal line; ``oom`` rows are x markers on it. Exact model only.
    """
    frame, note = one_context(tidy_results(results))
    if frame.empty:
        return Plot(None, "no result rows")
    rows, depth_note = exact_rows(frame)
    ok = rows[rows["status"] == "ok"]
    gpu = ok["peak_alloc_gib"].notna().any()
    column = "peak_alloc_gib" if gpu else "peak_rss_gib"
    ok = ok[ok[column].notna()]
    if ok.empty:
        counts = rows["status"].value_counts().to_dict() if len(rows) else {}
        return Plot(None, f"no ok row with a memory measurement (statuses: {counts or 'none'})")
    execs = order_exec(list(ok["frame_exec"]) + list(rows.loc[rows["status"] == "oom", "frame_exec"]))
    colors = backend_colors(rows["attention"])
    device_gib = device_memory_gib(rows)
    ref = None
    first = ok.iloc[0]
    if reference and references.applies(reference, gpu_name=first["gpu_name"], arch=first["arch"],
                                        height=int(first["height"]), width=int(first["width"]), part=first["part"]):
        ref = references.REFERENCES[reference]()
    fig, axes, lax = _new_figure(4.4 * len(execs) + 2.6, 4.8, ncols=len(execs), sharey=True,
                                 legend=0.55 / len(execs))
    for ax, exec_ in zip(axes, execs):
        sub = ok[ok["frame_exec"] == exec_]
        for backend, series in sub.groupby("attention"):
            series = series.sort_values("frames")
            ax.plot(series["frames"], series[column], color=colors[backend], marker="o", ms=4, lw=1.6)
            if gpu and series["peak_reserved_gib"].notna().any():
                ax.plot(series["frames"], series["peak_reserved_gib"], color=colors[backend], ls="--", lw=1.1)
        if not math.isnan(device_gib):
            ax.axhline(device_gib, color="#b2182b", ls="-.", lw=1.2)
        oom = rows[(rows["status"] == "oom") & (rows["frame_exec"] == exec_)]
        if len(oom) and not math.isnan(device_gib):
            for backend, s in oom.groupby("attention"):
                ax.plot(s["frames"], [device_gib] * len(s), ls="none", marker="x", ms=8, mew=2, color=colors[backend])
        if ref is not None and exec_ == execs[0]:
            ax.plot(ref["frames"], ref["memory_gb"], color="black", ls=":", marker="*", ms=9, lw=1)
        _frames_axis(ax, list(rows["frames"]) + (list(ref["frames"]) if ref is not None and exec_ == execs[0] else []))
        ax.set_yscale("log")
        _plain_log(ax.yaxis)
        ax.set_title(f"frame_exec = {exec_}", fontsize=10)
    axes[0].set_ylabel(("GPU memory, peak (GiB, log scale)" if gpu else
                        "CPU memory: process peak resident set (GiB, log scale)"))
    handles = [Line2D([], [], color=colors[b], lw=2.5, label=b) for b in sorted(set(ok["attention"]))]
    if gpu:
        handles += [Line2D([], [], color="black", lw=1.6, marker="o", ms=4, label="peak allocated"),
                    Line2D([], [], color="black", lw=1.1, ls="--", label="peak reserved")]
    else:
        handles += [Line2D([], [], color="black", lw=1.6, marker="o", ms=4, label="peak RSS")]
    if not math.isnan(device_gib):
        what = f"{device_label(rows)} memory" if gpu or device_label(rows) != "CPU" else "machine memory"
        handles.append(Line2D([], [], color="#b2182b", ls="-.", lw=1.2, label=f"{what}: {device_gib:.1f} GiB"))
    if (rows["status"] == "oom").any():
        handles.append(Line2D([], [], color="black", ls="none", marker="x", ms=8, mew=2, label="out of memory"))
    if ref is not None:
        handles.append(Line2D([], [], color="black", ls=":", marker="*", ms=9,
                              label=f"reference (GB, {execs[0]} panel): upstream H100, FA3, published"))
    _side_legend(lax, handles)
    _suptitle(fig, "Peak memory vs frames", ok)
    return Plot(fig, "; ".join(n for n in (note, depth_note) if n))


def _most_measured_backend(table: pd.DataFrame, notes: List[str]) -> Tuple[pd.DataFrame, str]:
    """The rows of the attention backend with the most rows (ties: ``sdpa``), and its name; the note
    names the rest."""
    counts = table.groupby("attention").size()
    backend = sorted(counts.index, key=lambda b: (-counts[b], b != "sdpa", b))[0]
    if len(counts) > 1:
        notes.append(f"drew attention={backend}; also measured: {', '.join(sorted(set(counts.index) - {backend}))}")
    return table[table["attention"] == backend], backend


def conversion(results: pd.DataFrame) -> Plot:
    """Global-to-frame conversion: heatmaps of frames (rows) x k converted global layers
    (columns). One speedup-over-k=0 panel per frame execution, then the output drift
    (relative L2 of the last layer's tokens vs k=0) where it was measured.

    Fixed: the backend with most k > 0 points (ties: ``sdpa``), and ``prune_weights=global``
    when both weight choices were measured (the note says what was left out).
    """
    frame, note = one_context(tidy_results(results))
    if frame.empty:
        return Plot(None, "no result rows")
    table = conversion_table(frame)
    if table.empty:
        return Plot(None, "no global-to-frame conversion measured (no prune_depth > 0 rows)")
    notes = [note]
    table, backend = _most_measured_backend(table, notes)
    weights = sorted(set(table["prune_weights"]))
    if len(weights) > 1:
        keep = "global" if "global" in weights else weights[0]
        notes.append(f"drew prune_weights={keep}; also measured: {', '.join(w for w in weights if w != keep)}")
        table = table[table["prune_weights"] == keep]
    execs = order_exec(table["frame_exec"])
    frames = sorted(table["frames"].unique())
    depths = sorted(table["prune_depth"].unique())
    drift = table[table["drift_rel"].notna() & (table["status"] == "ok")]
    panels = len(execs) + (1 if len(drift) else 0)
    width = max(3.0, 0.55 * len(depths) + 1.6)
    height = max(2.8, 0.38 * len(frames) + 1.9)
    fig, axes, _ = _new_figure(width * panels + 0.6, height, ncols=panels)
    finite = table["speedup"].dropna()
    span = max(abs(np.log2(finite)).max(), np.log2(1.25)) if len(finite) else 1.0
    norm = mcolors.Normalize(vmin=-span, vmax=span)
    cmap = plt_cmap("RdYlGn")
    for ax, exec_ in zip(axes, execs):
        sub = table[table["frame_exec"] == exec_]
        grid = np.full((len(frames), len(depths)), np.nan)
        labels = [["" for _ in depths] for _ in frames]
        for _, row in sub.iterrows():
            i, j = frames.index(row["frames"]), depths.index(row["prune_depth"])
            if row["status"] != "ok":
                labels[i][j] = row["status"].upper() if row["status"] == "oom" else row["status"]
            elif row["status_k0"] != "ok":
                labels[i][j] = "k=0 OOM" if row["status_k0"] == "oom" else "no k=0"
            else:
                grid[i, j] = np.log2(row["speedup"])
                labels[i][j] = f"{row['speedup']:.2f}×"
        image = _heatmap(ax, grid, labels, cmap, norm, frames, depths)
        ax.set_title(f"speedup over k=0 ({exec_})", fontsize=10)
    bar = fig.colorbar(image, ax=axes[: len(execs)], shrink=0.9, pad=0.02)
    ticks = _speedup_ticks(span)
    bar.set_ticks([math.log2(t) for t in ticks])
    bar.set_ticklabels([f"{t:.3g}×" for t in ticks])
    bar.set_label("speedup over k=0 (×)")
    if len(drift):
        ax = axes[-1]
        by_cell = drift.sort_values("frame_exec", key=lambda s: s.map(lambda v: FRAME_EXEC_ORDER.index(v)
                                                                    if v in FRAME_EXEC_ORDER else 9))
        by_cell = by_cell.drop_duplicates(["frames", "prune_depth"], keep="first")
        grid = np.full((len(frames), len(depths)), np.nan)
        labels = [["" for _ in depths] for _ in frames]
        for _, row in by_cell.iterrows():
            i, j = frames.index(row["frames"]), depths.index(row["prune_depth"])
            grid[i, j] = row["drift_rel"]
            labels[i][j] = fmt_percent(row["drift_rel"])
        positive = grid[np.isfinite(grid) & (grid > 0)]
        dnorm = (mcolors.LogNorm(vmin=positive.min(), vmax=max(positive.max(), positive.min() * 10))
                 if len(positive) else mcolors.Normalize(0, 1))
        image = _heatmap(ax, np.where(grid > 0, grid, np.nan), labels, plt_cmap("magma_r"), dnorm, frames, depths)
        ax.set_title("output drift vs k=0", fontsize=10)
        dbar = fig.colorbar(image, ax=ax, shrink=0.9, pad=0.02)
        dbar.set_label("relative L2 drift of the last layer")
        if isinstance(dnorm, mcolors.LogNorm):
            dbar.locator = ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0))
            dbar.formatter = ticker.FuncFormatter(lambda v, _: fmt_percent(v))
            dbar.ax.yaxis.set_minor_formatter(ticker.NullFormatter())
            dbar.update_ticks()
    foot = [] if len(drift) else ["output drift not measured: sweep with measure.drift=true (experiment=pruning does)"]
    _suptitle(fig, "Global-to-frame conversion: first k global layers as frame attention", table,
              extra=f"attention {backend}")
    _footnote(fig, foot)
    return Plot(fig, "; ".join(n for n in notes if n))


TECHNIQUE_COLORS = {"prune_depth": "#7f7f7f", "kv_keep": "#1f77b4", "merge_ratio": "#2ca02c",
                    "global_sparsity": "#d62728"}
TECHNIQUE_MARKERS = {"prune_depth": "s", "kv_keep": "o", "merge_ratio": "^", "global_sparsity": "D"}
TECHNIQUE_SOURCES = {"prune_depth": "global-to-frame conversion (AVGGT)", "kv_keep": "K/V subsampling (AVGGT)",
                     "merge_ratio": "token merging (FastVGGT)", "global_sparsity": "block-sparse (Faster VGGT)"}


def weights_line(frame: pd.DataFrame) -> str:
    """Which weights the rows ran with, and what drift means then."""
    random = set(frame["random_weights"].dropna()) if "random_weights" in frame else set()
    names = sorted({os.path.basename(c) for c in frame.get("checkpoint", []) if isinstance(c, str) and c})
    if random == {True}:
        return "random weights: drift says how far the outputs move, not how accurate they are"
    if random == {False}:
        return f"weights {', '.join(names)}"
    return "random and checkpoint weights mixed"


def approximations(results: pd.DataFrame) -> Plot:
    """Speed against output drift of every approximation (prune_depth, kv_keep, merge_ratio,
    global_sparsity and combinations), each against the exact model on the same weights and inputs:
    one column of panels per frame count, one row per output (camera pose, depth, world points; the
    last layer's tokens where no head was measured). x: speedup over the exact model, y: relative L2
    drift, both log. Colour and marker = technique; the line joins the Pareto front (no other point
    is both faster and closer; no line where one point beats every other); the dotted line is
    prune_depth=4's drift, the yardstick. A red ring marks a point whose timing, or its exact
    point's, is flagged noisy (its speedup is an estimate).

    Fixed: the backend with most approximation points (ties: ``sdpa``), ``fused`` frame execution
    when measured (the note says what was left out).
    """
    frame, note = one_context(tidy_results(results))
    if frame.empty:
        return Plot(None, "no result rows")
    table = approximation_table(frame)
    table = table[table["speedup"].notna()]
    if table.empty:
        return Plot(None, "no approximation measured with its exact point (prune_depth > 0, kv_keep < 1, "
                          "merge_ratio > 0 or global_sparsity > 0, each with an ok exact point)")
    notes = [note]
    table, backend = _most_measured_backend(table, notes)
    execs = order_exec(table["frame_exec"])
    if len(execs) > 1:
        notes.append(f"drew frame_exec={execs[0]}; also measured: {', '.join(execs[1:])}")
        table = table[table["frame_exec"] == execs[0]]
    drifts = [(c, name) for c, name in DRIFT_OUTPUTS[:3] if table[c].notna().any()]
    if not drifts and table["drift_tokens_rel"].notna().any():
        drifts = [DRIFT_OUTPUTS[3]]
    if not drifts:
        return Plot(None, "output drift not measured: sweep with measure.drift=true (experiment=approximations does)")
    frames = sorted(int(f) for f in table["frames"].unique())
    # rows: outputs; columns: frame counts; a legend column on the right
    # at least 8.5 in wide: the legend column and the two-line title need it with one frame count
    fig = Figure(figsize=(max(3.3 * len(frames) + 2.4, 8.5), 2.9 * len(drifts) + 0.9), layout="constrained")
    grid = fig.add_gridspec(len(drifts), len(frames) + 1, width_ratios=[1.0] * len(frames) + [0.6])
    axes = [[fig.add_subplot(grid[r, c]) for c in range(len(frames))] for r in range(len(drifts))]
    lax = fig.add_subplot(grid[:, -1])
    lax.axis("off")
    kinds = sorted(set(table["technique"]), key=lambda t: (TECHNIQUE_ORDER.index(t.split(" + ")[0])
                                                         if t.split(" + ")[0] in TECHNIQUE_ORDER else 9, t))
    zero = []
    noisy_handle: list = []
    ruler_drawn = front_drawn = False
    for r, (col, name) in enumerate(drifts):
        front = pareto_front(table, col)
        for c, frames_ in enumerate(frames):
            ax = axes[r][c]
            ax.grid(True, which="major", alpha=0.3)
            sub = front[front["frames"] == frames_]
            drawn = sub[sub[col] > 0]
            zero += [f"S={frames_} {row['setting']}" for _, row in sub[sub[col] == 0].iterrows()]
            for kind in kinds:
                pts = drawn[drawn["technique"] == kind]
                base = kind.split(" + ")[0]
                ax.scatter(pts["speedup"], pts[col], s=30, marker=TECHNIQUE_MARKERS.get(base, "P"),
                           color=TECHNIQUE_COLORS.get(base, "#9467bd"), edgecolor="black" if " + " in kind else "none",
                           linewidth=0.8, zorder=3)
                for _, row in pts.iterrows():
                    ax.annotate(row["setting"].replace(f"{base}=", ""), (row["speedup"], row[col]), fontsize=6.5,
                                xytext=(3, 2), textcoords="offset points", color="#333333")
            noisy_handle = _mark_noisy(ax, drawn, col, x="speedup", label="noisy timing (speedup an estimate)") or noisy_handle
            on = drawn[drawn["on_front"]].sort_values("speedup")
            if len(on) > 1:  # a front of one point (it beats every other) is that point: no line
                ax.plot(on["speedup"], on[col], color="black", lw=1.0, alpha=0.6, zorder=2)
                front_drawn = True
            ruler = drawn[(drawn["technique"] == "prune_depth") & (drawn["prune_depth"] == YARDSTICK_DEPTH)]
            if len(ruler):
                ax.axhline(float(ruler[col].iloc[0]), color="#7f7f7f", ls=":", lw=1.0)
                ruler_drawn = True
            ax.axvline(1.0, color="#bbbbbb", lw=0.8)
            ax.set_xscale("log")
            if len(drawn):
                ax.set_yscale("log")
                fastest, slowest = float(drawn["speedup"].max()), float(drawn["speedup"].min())
                span = max(abs(math.log2(slowest)), abs(math.log2(fastest)), 0.6)
                # powers of two out to the first beyond the data, the axis out to them: a point past the
                # last labelled tick (the fifth lease's 6.32x beside a last tick at 4x) is read off nothing
                ticks = _speedup_ticks(math.ceil(span) if span > 1.0 else span)
                left = max([t for t in ticks if t <= min(slowest, 1.0)], default=None)
                right = min([t for t in ticks if t >= fastest], default=None)
                if left is not None and right is not None:
                    ax.set_xlim(left / 1.08, right * 1.08)
                ax.xaxis.set_major_locator(ticker.FixedLocator(ticks))
                ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.3g}×"))
                ax.xaxis.set_minor_formatter(ticker.NullFormatter())
                lo, hi = float(drawn[col].min()), float(drawn[col].max())
                decades = math.log10(hi / lo) if hi > lo else 0.0
                ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades <= 2.6 else (1.0,)))
                ax.yaxis.set_major_formatter(ticker.FuncFormatter(_drift_tick(lo)))
                ax.yaxis.set_minor_formatter(ticker.NullFormatter())
                if decades < 0.3:  # a decade at least, so the axis carries a labelled tick
                    mid = math.sqrt(lo * hi)
                    ax.set_ylim(mid / 3.2, mid * 3.2)
            if r == 0:
                ax.set_title(f"S = {frames_}", fontsize=10)
            if r == len(drifts) - 1:
                ax.set_xlabel("speedup over the exact model (×)")
            if c == 0:
                ax.set_ylabel(f"{name} drift (rel. L2)")
    handles = [Line2D([], [], ls="", marker=TECHNIQUE_MARKERS.get(k.split(" + ")[0], "P"), ms=6,
                      color=TECHNIQUE_COLORS.get(k.split(" + ")[0], "#9467bd"),
                      markeredgecolor="black" if " + " in k else "none",
                      label=TECHNIQUE_SOURCES.get(k, k)) for k in kinds]
    if front_drawn:  # each legend line only where it is drawn
        handles += [Line2D([], [], color="black", alpha=0.6, lw=1.0, label="Pareto front")]
    if ruler_drawn:
        handles += [Line2D([], [], color="#7f7f7f", ls=":", lw=1.0, label=f"drift of prune_depth={YARDSTICK_DEPTH}")]
    handles += noisy_handle
    _side_legend(lax, handles, title="technique")
    _suptitle(fig, "Speed against output drift: every approximation against the exact model", table,
              extra=f"attention {backend} · {weights_line(table)}")
    if zero:
        notes.append(f"drift 0 (not drawn on the log axis): {', '.join(zero[:4])}" + (" …" if len(zero) > 4 else ""))
    return Plot(fig, "; ".join(n for n in notes if n))


def _drift_tick(lowest: float):
    """A tick formatter for one drift axis, in one notation for the whole axis: percent (two significant
    digits: 0.05%, 0.1%, 2%) when the axis's smallest drift is at least 1e-4, else scientific (rounding-level
    drifts). A fixed switch at 1e-3 labelled one axis '0.0005, 0.1%, 0.2%' (the 2026-12-06 study's figure)."""
    if lowest >= 1e-4:
        return lambda v, _: f"{v * 100:.2g}%"
    return lambda v, _: f"{v:.0e}"


def _speedup_ticks(span: float) -> List[float]:
    """A few readable speedup values inside [2**-span, 2**span]: powers of two beyond 2x,
    finer steps near 1x."""
    if span > 1.0:
        n = int(math.floor(span))
        step = max(1, math.ceil(n / 3))
        return [2.0 ** e for e in range(-n, n + 1) if e % step == 0]
    nice = [0.5, 0.67, 0.8, 0.9, 1, 1.1, 1.25, 1.5, 2]
    inside = [t for t in nice if abs(math.log2(t)) <= span + 1e-9]
    while len(inside) > 7:
        inside = [t for i, t in enumerate(inside) if t == 1 or i % 2 == 0]
    return inside


def plt_cmap(name: str):
    import matplotlib

    return matplotlib.colormaps[name].with_extremes(bad="#eeeeee")


def _heatmap(ax, grid, labels, cmap, norm, frames, depths):
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, aspect="auto", origin="lower")
    for i in range(len(frames)):
        for j in range(len(depths)):
            text = labels[i][j] or "—"
            value = grid[i, j]
            if np.isfinite(value):
                r, g, b, _ = cmap(norm(value))
                color = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
            else:
                color = "#555555"
            ax.text(j, i, text, ha="center", va="center", fontsize=7.5 if len(text) > 5 else 8.5, color=color)
    ax.set_xticks(range(len(depths)), [str(int(d)) for d in depths])
    ax.set_yticks(range(len(frames)), [str(int(f)) for f in frames])
    ax.set_xlabel("k (converted global layers)")
    ax.set_ylabel("frames S")
    ax.grid(False)
    return image


def backends(results: pd.DataFrame) -> Plot:
    """Achieved TFLOP/s per attention backend at one shape: a bar per backend, annotated with
    the fraction of the device's dense peak when known; unavailable backends are hatched
    ``n/a`` bars, backends that ran out of memory hatched ``OOM``.

    Fixed: the exact model, ``fused`` frame execution when measured, and the largest frame count
    at which every backend that ran at all ran ``ok`` (else the frame count most backends ran at).
    """
    frame, note = one_context(tidy_results(results))
    if frame.empty:
        return Plot(None, "no result rows")
    rows, depth_note = exact_rows(frame)
    if rows.empty:
        return Plot(None, "no result rows")
    execs = order_exec(rows["frame_exec"])
    exec_ = "fused" if "fused" in execs else execs[0]
    rows = rows[rows["frame_exec"] == exec_]
    names = sorted(set(rows["attention"]))
    ok = rows[(rows["status"] == "ok") & rows["achieved_tflops"].notna()]
    if ok.empty:
        return Plot(None, f"no backend measured an ok achieved_tflops ({exec_}; statuses: "
                          f"{rows['status'].value_counts().to_dict()})")
    ran = {b: set(s["frames"]) for b, s in ok.groupby("attention")}
    common = set.intersection(*ran.values())
    if common:
        frames = max(common)
    else:
        counts = ok.groupby("frames")["attention"].nunique()
        frames = max(counts[counts == counts.max()].index)
    at = rows[rows["frames"] == frames]
    peak = ok.loc[ok["frames"] == frames, "peak_tflops"].dropna()
    peak = float(peak.iloc[0]) if len(peak) else math.nan
    source = ok.loc[ok["frames"] == frames, "peak_source"].iloc[0] if len(ok) else ""
    fig, (ax,), lax = _new_figure(max(7.5, 1.1 * len(names) + 5.0), 4.8, legend=0.45 if len(names) > 2 else 0.8)
    values = {}
    for b in names:
        s = at[(at["attention"] == b) & (at["status"] == "ok") & at["achieved_tflops"].notna()]
        values[b] = float(s["achieved_tflops"].median()) if len(s) else math.nan
    measured = [v for v in values.values() if not math.isnan(v)]
    # The peak line is drawn only where the bars reach a third of it; otherwise it would flatten
    # them, and the "% of peak" labels carry the comparison.
    show_peak = not math.isnan(peak) and max(measured) >= peak / 3
    ymax = max(measured + ([peak] if show_peak else [])) * 1.25
    placeholder = ymax * 0.04
    colors = backend_colors(rows["attention"])
    for i, b in enumerate(names):
        v = values[b]
        if not math.isnan(v):
            ax.bar(i, v, color=colors[b], width=0.65)
            label = f"{v:.3g}"
            frac = at.loc[(at["attention"] == b) & (at["status"] == "ok"), "frac_of_peak"].dropna()
            if len(frac):
                label += f"\n{frac.median():.0%} of peak"
            ax.text(i, v + ymax * 0.01, label, ha="center", va="bottom", fontsize=8.5)
        else:
            statuses = set(at.loc[at["attention"] == b, "status"]) or set(rows.loc[rows["attention"] == b, "status"])
            text = ("n/a" if "unavailable" in statuses else "OOM" if "oom" in statuses
                    else "error" if "error" in statuses else f"not run\nat S={frames:g}")
            ax.bar(i, placeholder, color="none", edgecolor="#888888", hatch="///", width=0.65)
            ax.text(i, placeholder + ymax * 0.01, text, ha="center", va="bottom", fontsize=8.5, color="#555555")
    if show_peak:
        ax.axhline(peak, color="#b2182b", ls="-.", lw=1.2)
    ax.set_xticks(range(len(names)), names, rotation=25 if len(names) > 4 else 0,
                  ha="right" if len(names) > 4 else "center")
    ax.set_ylim(0, ymax)
    ax.set_xlim(-0.6 - 0.5 * (len(names) < 3), len(names) - 0.4 + 0.5 * (len(names) < 3))
    ax.set_axisbelow(True)
    ax.grid(axis="x", visible=False)
    ax.set_ylabel(f"achieved TFLOP/s ({part_name(ok)} FLOPs / median latency)")
    ax.set_xlabel("attention backend")
    handles = [Patch(color="#777777", label="measured")]
    if len(measured) < len(names):
        handles.append(Patch(facecolor="none", edgecolor="#888888", hatch="///",
                             label="no measurement\n(n/a, OOM, error)"))
    if not math.isnan(peak):
        handles.append(Line2D([], [], color="#b2182b", ls="-.",
                              label=f"dense peak {peak:.4g} TFLOP/s" + ("" if show_peak else "\n(above the axis)")))
    _side_legend(lax, handles)
    _suptitle(fig, f"Attention backends at S = {frames:g} frames ({exec_}, largest frame count all ran)"
              if common else f"Attention backends at S = {frames:g} frames ({exec_}, most backends ran here)", ok)
    foot = unavailable_notes(rows)
    foot.append(f"dense peak: {source}" if not math.isnan(peak)
                else f"dense peak unknown ({source or 'not tabulated'}): no fraction of peak")
    _footnote(fig, foot)
    return Plot(fig, "; ".join(n for n in (note, depth_note) if n))


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
    fig, (ax, share), lax = _new_figure(max(9.0, 0.9 * len(order) * 2 + 3.0), 5.0, ncols=2, legend=0.35)
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
    _side_legend(lax, handles[::-1], names[::-1], title="stage (NVTX range)")
    profiler = " / ".join(sorted(set(times.get("profiler", pd.Series(dtype=object))) - {""})) or "profile"
    _suptitle(fig, f"Where a forward's time goes, per stage ({profiler})", times)
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
    fig, (ax, idle), lax = _new_figure(11.5, 4.6, ncols=2, legend=0.3)
    for (backend, exec_), s in table.groupby(["attention", "frame_exec"]):
        style = dict(color=colors[backend], ls=FRAME_EXEC_LINE.get(exec_, "-."),
                     marker=FRAME_EXEC_MARKER.get(exec_, "d"), ms=5, lw=1.6)
        k = s[s["kernels_per_frame_layer"].fillna(0) > 0]
        ax.plot(k["frames"], k["kernels_per_frame_layer"], **style)
        i = s[s["idle_frac"].notna()]
        idle.plot(i["frames"], 100 * i["idle_frac"], **style)
    _frames_axis(ax, table["frames"])
    _frames_axis(idle, table["frames"])
    ax.set_yscale("log")
    _plain_log(ax.yaxis)
    ax.set_ylabel("kernel launches per frame layer (log scale)")
    ax.set_title("launches inside one frame_block", fontsize=10)
    idle.set_ylabel("GPU idle, % of captured window")
    idle.set_ylim(0, max(5.0, float(np.nanmax(100 * table["idle_frac"].to_numpy(dtype=float)))
                         * 1.15 if table["idle_frac"].notna().any() else 100))
    idle.set_title("GPU idle fraction", fontsize=10)
    handles = [Line2D([], [], color=colors[b], lw=2.5, label=b) for b in sorted(set(table["attention"]))]
    handles += [Line2D([], [], color="black", ls=FRAME_EXEC_LINE.get(e, "-."), marker=FRAME_EXEC_MARKER.get(e, "d"),
                       ms=5, label=e) for e in order_exec(table["frame_exec"])]
    _side_legend(lax, handles, title="backend / execution")
    profiler = " / ".join(sorted(set(table["profiler"]) - {""})) or "profile"
    _suptitle(fig, f"Launch overhead: sequential vs fused frame attention ({profiler})", table)
    return Plot(fig, note)


def _series_legend(lax, table: pd.DataFrame) -> None:
    """Legend of colour = backend, line style / marker = frame execution."""
    colors = backend_colors(table["attention"])
    handles = [Line2D([], [], color=colors[b], lw=2.5, label=b) for b in sorted(set(table["attention"]))]
    handles += [Line2D([], [], color="black", ls=FRAME_EXEC_LINE.get(e, "-."), marker=FRAME_EXEC_MARKER.get(e, "d"),
                       ms=5, label=e) for e in order_exec(table["frame_exec"])]
    _side_legend(lax, handles, title="backend / execution")


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
    fig, axes, lax = _new_figure(max(6.5, 3.2 * len(stages) + 2.0), 4.4, ncols=len(stages), legend=0.32)
    colors = backend_colors(times["attention"])
    for ax, stage in zip(axes, stages):
        rows = times[times["stage"] == stage]
        for (backend, exec_), s in rows.groupby(["attention", "frame_exec"]):
            s = s.sort_values("frames")
            ax.plot(s["frames"], s["ms"], **_series_style(colors, backend, exec_))
        _frames_axis(ax, times["frames"])
        ax.set_yscale("log")
        _plain_log(ax.yaxis, float(rows["ms"].min()), float(rows["ms"].max()))
        ax.set_title(_stage_label(stage), fontsize=10)
    gpu = (times["basis"] == "gpu").all()
    basis = "GPU-projected time" if gpu else "CPU time (no GPU times in the profiles)"
    axes[0].set_ylabel(f"{basis} per forward (ms, log scale)")
    _series_legend(lax, times)
    profiler = " / ".join(sorted(set(times["profiler"]) - {""})) or "profile"
    _suptitle(fig, f"Time per stage against frames, fused vs sequential, per backend ({profiler})", times)
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
    fig, (idle, launches), lax = _new_figure(11.5, 4.6, ncols=2, legend=0.3)
    for (backend, exec_), s in table.groupby(["attention", "frame_exec"]):
        s = s.sort_values("frames")
        style = _series_style(colors, backend, exec_)
        idle.plot(s["frames"], 100 * s["idle_frac"], **style)
        launches.plot(s["frames"], s["launches"], **style)
    for ax in (idle, launches):
        _frames_axis(ax, table["frames"])
    idle.set_ylabel("GPU idle, % of the captured window")
    idle.set_ylim(0, max(5.0, float(np.nanmax(100 * table["idle_frac"].to_numpy(dtype=float))) * 1.15))
    idle.set_title("GPU idle share", fontsize=10)
    launches.set_yscale("log")
    _plain_log(launches.yaxis, float(table["launches"].min()), float(table["launches"].max()))
    launches.set_ylabel("kernel launches per forward (log scale)")
    launches.set_title("kernel launches", fontsize=10)
    _series_legend(lax, table)
    profiler = " / ".join(sorted(set(table["profiler"]) - {""})) or "profile"
    _suptitle(fig, f"GPU idle share and kernel launches against frames ({profiler})", table)
    return Plot(fig, "; ".join(notes))


def memory_wall(results: pd.DataFrame) -> Plot:
    """Peak allocated GiB against frames (linear axes) with a fitted line per series, and the frame
    count where each line meets the device's memory and larger cards (``analysis.memory_fit``);
    the right panel shows what the lines leave out (residuals, GiB)."""
    frame, note = one_context(tidy_results(results))
    fits = memory_fit(frame)
    if fits.empty:
        return Plot(None, "no series with peak GPU memory at two frame counts or more")
    resid = memory_residuals(frame)
    fig, (ax, res), lax = _new_figure(12.0, 5.0, ncols=2, legend=0.42)
    keys = [c for c in fits.columns if c in resid.columns and c in frame.columns
            and c not in ("frames", "device_mem_gib")]
    # a line per series and approximation setting (memory_fit fits each): name the setting beside the backend
    # and the frame execution where it varies (drawn as the line style too, as in the scaling wall)
    settings = [setting(f) for _, f in fits.iterrows()]
    execs = fits["frame_exec"].fillna("") if "frame_exec" in fits else pd.Series("", index=fits.index)
    named_exec = execs.nunique() > 1
    fits = fits.assign(_line=[line + (f" · {e}" if named_exec and e else "") + ("" if s == "exact" else f" · {s}")
                              for line, e, s in zip(line_labels(fits.assign(impl=fits.get("impl", "ours")), frame),
                                                    execs, settings)])
    colors = line_colors(fits["_line"])
    handles = []
    through_two = 0  # lines fitted through two frame counts: they pass through both, nothing is left out
    for _, f in fits.iterrows():
        sel = np.ones(len(resid), dtype=bool)
        for k in keys:
            sel &= (resid[k].map(lambda v: "" if missing(v) else v) == ("" if missing(f[k]) else f[k])).to_numpy()
        pts = resid[sel].sort_values("frames")
        color = colors[f["_line"]]
        xmax = max(float(pts["frames"].max()), float(f["wall_frames_device"]) if f["wall_frames_device"] > 0 else 0)
        xs = np.linspace(0, xmax, 50)
        ax.plot(pts["frames"], pts["peak_alloc_gib"], ls="none", marker="o", color=color, ms=5)
        style = FRAME_EXEC_LINE.get(f.get("frame_exec"), "-") if named_exec else "-"
        ax.plot(xs, f["slope_gib_per_frame"] * xs + f["intercept_gib"], color=color, lw=1.3, ls=style)
        if f["points"] > 2 and pts["frames"].nunique() > 2:
            res.plot(pts["frames"], pts["residual_gib"], marker="o", color=color, lw=1)
        else:
            through_two += 1
        walls = ", ".join(f"{c.split()[0]}: {f['wall_frames_' + c.split()[0]]:,.0f}" for c in ["device"] + [w[0] for w in WALL_CARDS])
        handles.append(Line2D([], [], color=color, marker="o", lw=1.3, ls=style,
                              label=f"{f['_line']}\n{f['slope_mb_per_frame'] / 1.048576:.1f} MiB/frame; wall {walls}"))
    device = float(fits["device_mem_gib"].max())
    # a card with the device's memory (an H200 measured) is the device's line: drawn once
    for label, gib, style in [("device", device, "-.")] + [(c, g, ":") for c, g in WALL_CARDS if abs(g - device) > 1.0]:
        ax.axhline(gib, color="#b2182b", ls=style, lw=1)
        ax.annotate(f"{label}: {gib:.0f} GiB", (0, gib), xytext=(3, 3), textcoords="offset points", fontsize=7.5,
                    color="#b2182b")
    ax.set_xlabel("frames S")
    ax.set_ylabel("GPU memory, peak allocated (GiB)")
    ax.set_title("peak memory and the fitted wall", fontsize=10)
    res.axhline(0, color="black", lw=0.8)
    res.set_xlabel("frames S")
    res.set_ylabel("measured - fitted (GiB)")
    res.set_title("residuals", fontsize=10)
    if through_two == len(fits):  # a fit through two points has residuals of float rounding (1e-15 GiB) only
        res.set_ylim(-1.0, 1.0)
        res.set_xlim(ax.get_xlim())
        res.text(0.5, 0.72, "every line is fitted through two frame counts\nand passes through both: no residual;\n"
                 "a third frame count would test the line", transform=res.transAxes, ha="center", va="center",
                 fontsize=9, color="#555555")
    elif through_two:
        res.set_title(f"residuals\n({through_two} line{'s' if through_two > 1 else ''} through two frame counts: "
                      "none, not drawn)", fontsize=10)
    _side_legend(lax, handles, title="series: slope; predicted wall (frames)")
    _suptitle(fig, "The memory wall: GiB per frame, fitted, and where it meets the card", frame)
    _footnote(fig, ["wall = (memory - intercept) / slope: linear growth, a prediction past the largest frame count measured",
                    "141 GB / 192 GB: the memory an H200 / a B200 gives PyTorch (analysis.memory.WALL_CARDS)"])
    return Plot(fig, note)


def upstream_ratio(results: pd.DataFrame) -> Plot:
    """Ours against upstream's code measured in the same run: speed-up (upstream / ours latency) and
    activation memory (ours / upstream) against frames, one line per configuration of ours."""
    table = impl_ratios(results)
    if table.empty:
        return Plot(None, "no point of upstream's code beside ours (sweep model.impl=ours,upstream)")
    fig, (ax, mem), lax = _new_figure(12.0, 4.8, ncols=2, legend=0.45)
    colors = backend_colors(table["configuration"])
    for config, rows in table.groupby("configuration"):
        rows = rows.sort_values("frames")
        style = dict(color=colors[config], marker="o", ms=4, lw=1.5, ls="-" if rows["same_run"].all() else "--")
        ax.plot(rows["frames"], rows["speedup"], **style)
        mem.plot(rows["frames"], rows["memory_ratio"], **style)
        _mark_noisy(ax, rows.rename(columns={"speedup": "_y"}), "_y")
    for a in (ax, mem):
        a.axhline(1.0, color="black", ls=":", lw=1)
        _frames_axis(a, table["frames"])
    ax.set_ylabel("speed-up over upstream's code (×)")
    mem.set_ylabel("activation memory, ours / upstream's (×)")
    ax.set_title("time", fontsize=10)
    mem.set_title("memory (peak minus allocated before the forward)", fontsize=10)
    handles = [Line2D([], [], color=colors[c], lw=2, label=c) for c in sorted(colors)]
    if not table["same_run"].all():
        handles.append(Line2D([], [], color="black", ls="--", label="not the same GPU: context only"))
    _side_legend(lax, handles, title="ours (vs upstream's code)")
    _suptitle(fig, "Ours against upstream's code, same run", tidy_results(results))
    return Plot(fig, "")


# One colour per world size N: grey for one rank (the baseline), then tab10.
WORLD_COLORS = ["#555555", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def context_parallel(results: pd.DataFrame) -> Plot:
    """One scene across GPUs (``model.context_parallel``): colour = world size N. Left: time per
    forward against frames (log-log), p10-p90 shaded, and the time in collectives (``comm_ms``)
    dashed, its share of the forward written at the largest frame count. Right: the busiest rank's
    peak against frames (linear axes) with its fitted line (``analysis.context_parallel_memory_fit``)
    extended to the device's memory (dash-dot), where each N's wall is marked and labelled.

    Rows: the exact model; the series (backend, frame execution) with the most multi-rank points
    (the note names the others). Drawn only when some ``ok`` row ran on several ranks.
    """
    frame, note = one_context(tidy_results(results), across=["context_parallel"])
    if frame.empty:
        return Plot(None, "no result rows")
    rows, depth_note = exact_rows(frame)
    ok = ok_rows(rows)
    if not (ok["context_parallel"] > 1).any():
        return Plot(None, "no point ran on several ranks (sweep model.context_parallel=1,2,4)")
    notes = [note, depth_note]
    rows = rows.assign(_line=[f"{label} · {exec_}" for label, exec_ in zip(line_labels(rows), rows["frame_exec"])])
    spread = rows[(rows["status"] == "ok") & rows["latency_ms_median"].notna() & (rows["context_parallel"] > 1)]
    counts = spread.groupby("_line").size()
    series = sorted(counts.index, key=lambda line: (-counts[line], line))[0]
    if rows["_line"].nunique() > 1:
        notes.append(f"drew {series}; also measured: {', '.join(sorted(set(rows['_line']) - {series}))}")
    rows = rows[rows["_line"] == series]
    ok = ok_rows(rows).assign(_peak=lambda t: per_gpu_peak(t))
    fits = context_parallel_memory_fit(ok)
    gpu = ok["peak_alloc_gib"].notna().any()
    device_gib = device_memory_gib(rows) if gpu else math.nan
    worlds = sorted(int(n) for n in rows["context_parallel"].unique())
    colors = {n: WORLD_COLORS[i % len(WORLD_COLORS)] for i, n in enumerate(worlds)}
    unit, scale = _latency_unit(ok["latency_ms_median"])
    fig, (ax, mem), lax = _new_figure(12.5, 5.0, ncols=2, legend=0.42)
    handles, foot, single = [], [], []
    for n in worlds:
        timed = ok[ok["context_parallel"] == n].sort_values("frames")
        color, label = colors[n], f"N = {n} {('GPU' if n == 1 else 'GPUs') if gpu else ('rank' if n == 1 else 'ranks')}"
        if len(timed):
            x = timed["frames"].to_numpy()
            ax.plot(x, timed["latency_ms_median"] * scale, color=color, marker="o", ms=4, lw=1.6)
            ax.fill_between(x, timed["latency_ms_p10"] * scale, timed["latency_ms_p90"] * scale, color=color,
                            alpha=0.12, lw=0)
            comm = timed[timed["comm_ms"] > 0] if n > 1 else timed.iloc[0:0]
            if len(comm):
                ax.plot(comm["frames"], comm["comm_ms"] * scale, color=color, ls="--", lw=1.1)
                last = comm.iloc[-1]
                ax.annotate(f"{fmt_percent(last['comm_ms'] / last['latency_ms_median'])} comm",
                            (last["frames"], last["comm_ms"] * scale), xytext=(0, 5), textcoords="offset points",
                            ha="right", va="bottom", fontsize=7.5, color=color)
            held = timed[timed["_peak"].notna()]
            mem.plot(held["frames"], held["_peak"], ls="none", marker="o", ms=5, color=color)
        fit = fits[fits["context_parallel"] == n]
        if len(fit):
            f = fit.iloc[0]
            wall = float(f["wall_frames_device"])
            xmax = max(float(f["frames_measured_max"]), wall if wall > 0 else 0.0)
            xs = np.linspace(0, xmax, 50)
            mem.plot(xs, f["slope_gib_per_frame"] * xs + f["intercept_gib"], color=color, lw=1.3)
            if wall > 0:
                mem.plot([wall], [device_gib], ls="none", marker="v", ms=8, color=color, zorder=4)
                mem.annotate(f"N={n}: {wall:,.0f}", (wall, device_gib), xytext=(0, 7), textcoords="offset points",
                             ha="center", fontsize=7.5, color=color)
                label += f": wall {wall:,.0f} frames"
        elif len(timed):
            single.append(str(n))
        oom = rows[(rows["context_parallel"] == n) & (rows["status"] == "oom")]
        if len(oom) and not math.isnan(device_gib):
            mem.plot(oom["frames"], [device_gib] * len(oom), ls="none", marker="x", ms=8, mew=2, color=color)
        handles.append(Line2D([], [], color=color, lw=2.5, label=label))
    noisy = _mark_noisy(ax, ok, "latency_ms_median", scale)
    _frames_axis(ax, ok["frames"])
    ax.set_yscale("log")
    ys = pd.concat([ok["latency_ms_median"], ok.loc[ok["comm_ms"] > 0, "comm_ms"]]) * scale
    _plain_log(ax.yaxis, float(ys.min()), float(ys.max()))
    ax.set_ylabel(f"{part_name(ok)} latency, median ({unit}, log scale)")
    ax.set_title("time per forward", fontsize=10)
    if not math.isnan(device_gib):
        mem.axhline(device_gib, color="#b2182b", ls="-.", lw=1.2)
    mem.set_xlim(0, mem.get_xlim()[1] * 1.06)  # room for the wall labels
    mem.set_ylim(0, max(mem.get_ylim()[1], 0.0 if math.isnan(device_gib) else device_gib * 1.12))
    mem.set_xlabel("frames S")
    mem.set_ylabel("GPU memory, busiest rank's peak allocated (GiB)" if gpu else
                   "CPU memory: busiest rank's peak resident set (GiB)")
    mem.set_title("per-GPU peak memory and the predicted wall" if gpu else "per-rank peak memory", fontsize=10)
    handles += [Line2D([], [], color="black", marker="o", ms=4, lw=1.6, label="time per forward (median)"),
                Line2D([], [], color="black", ls="--", lw=1.1, label="of which in collectives (comm_ms)")]
    handles += noisy
    handles += [Line2D([], [], color="black", ls="none", marker="o", ms=5, label="busiest rank's peak"),
                Line2D([], [], color="black", lw=1.3, label="linear fit")]
    if not math.isnan(device_gib):
        handles.append(Line2D([], [], color="#b2182b", ls="-.", lw=1.2,
                              label=f"{device_label(rows)} memory: {device_gib:.1f} GiB"))
        handles.append(Line2D([], [], color="black", ls="none", marker="v", ms=8, label="predicted wall"))
    if (rows["status"] == "oom").any():
        handles.append(Line2D([], [], color="black", ls="none", marker="x", ms=8, mew=2, label="out of memory"))
    _side_legend(lax, handles, title="world size: predicted wall" if gpu else "world size")
    _suptitle(fig, f"One scene across {'GPUs' if gpu else 'ranks'}: time and per-{'GPU' if gpu else 'rank'} memory "
                   "against frames", rows, extra=series)
    if gpu:
        foot.append("wall = (memory - intercept) / slope of each N's line: linear growth, a prediction past the "
                    "frame counts measured")
    else:
        foot.append("CPU: the ranks share one machine's memory, so no wall is predicted")
    if single:
        foot.append(f"one frame count only at N = {', '.join(single)}: no line fitted")
    _footnote(fig, unavailable_notes(rows) + failure_notes(rows) + foot)
    return Plot(fig, "; ".join(n for n in notes if n))


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


def save(fig: Figure, path_stem: str) -> List[str]:
    """Write ``<stem>.png`` (150 dpi) and ``<stem>.svg``; return both paths."""
    paths = []
    for ext, kw in (("png", {"dpi": 150}), ("svg", {})):
        path = f"{path_stem}.{ext}"
        fig.savefig(path, bbox_inches="tight", pad_inches=0.15, **kw)
        paths.append(path)
    return paths


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
