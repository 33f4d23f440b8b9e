"""Figures of how latency scales with frames: the scaling wall, what fusing frame attention buys,
the attention backends' throughput, and one scene across N ranks (context parallelism)."""

from __future__ import annotations

import math
from typing import List, Optional

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ..analysis.labels import (
    device_label, failure_notes, fmt_percent, one_context, order_exec, part_name, unavailable_notes,
)
from ..analysis.memory import context_parallel_memory_fit, device_memory_gib, per_gpu_peak
from ..analysis.scaling import one_sided_notes, speedup_pairs
from ..analysis.tidy import baseline_depth, exact_rows, ok_rows, tidy_results
from . import reference as references
from .common import (
    FRAME_EXEC_LINE, FRAME_EXEC_MARKER, NOISY_RED, Plot, backend_colors, footnote, frames_axis, latency_unit,
    line_colors, line_labels, mark_noisy, new_figure, plain_log, side_legend, suptitle,
)


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
    unit, scale = latency_unit(list(ok["latency_ms_median"]) + ([1000.0] if ref is not None else []))
    rows = rows.assign(_line=line_labels(rows))
    ok = ok.assign(_line=line_labels(ok, rows))
    colors = line_colors(rows["_line"])
    fig, (ax,), lax = new_figure(10.0, 5.4, legend=0.28)
    execs = order_exec(ok["frame_exec"])
    foot: List[str] = []
    for (line, exec_), series in ok.groupby(["_line", "frame_exec"], sort=True):
        series = series.sort_values("frames")
        x = series["frames"].to_numpy()
        ax.plot(x, series["latency_ms_median"] * scale, color=colors[line], ls=FRAME_EXEC_LINE.get(exec_, "-."),
                marker=FRAME_EXEC_MARKER.get(exec_, "d"), ms=4, lw=1.6)
        ax.fill_between(x, series["latency_ms_p10"] * scale, series["latency_ms_p90"] * scale,
                        color=colors[line], alpha=0.12, lw=0)
    noisy = mark_noisy(ax, ok, "latency_ms_median", scale)
    frames_axis(ax, list(rows["frames"]) + (list(ref["frames"]) if ref is not None else []))
    ax.set_yscale("log")
    ys = ok["latency_ms_median"] * scale
    plain_log(ax.yaxis, float(ys.min()), float(ys.max()))
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
    side_legend(lax, handles, title="series / frame execution")
    suptitle(fig, f"Scaling wall: {part_name(ok)} latency vs frames", ok,
              extra="" if baseline_depth(rows) == 0 else f"prune_depth={baseline_depth(rows)}")
    footnote(fig, unavailable_notes(rows) + failure_notes(rows) + foot)
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
    fig, (ax,), _ = new_figure(7.6, 4.6)
    for backend, series in pairs.groupby("attention"):
        series = series.sort_values("frames")
        ax.plot(series["frames"], series["speedup"], color=colors[backend], marker="o", ms=4, lw=1.6, label=backend)
        trusted = series[~series["noisy"]]
        if len(trusted):  # the callout is a conclusion: at the largest frame count whose timings are trusted
            last = trusted.iloc[-1]
            ax.annotate(f"{last['speedup']:.2f}×", (last["frames"], last["speedup"]), xytext=(5, 0),
                        textcoords="offset points", va="center", fontsize=8, color=colors[backend])
    ringed = mark_noisy(ax, pairs, "speedup", label="noisy timing (no conclusion)")
    ax.axhline(1.0, color="black", ls=":", lw=1, label="1× (no gain)")
    frames_axis(ax, pairs["frames"])
    lo, hi = float(pairs["speedup"].min()), float(pairs["speedup"].max())
    if hi / max(lo, 1e-9) > 8:
        ax.set_yscale("log")
        plain_log(ax.yaxis)
        ax.set_ylabel("speedup, sequential / fused latency (×, log scale)")
    else:
        ax.set_ylim(min(lo, 1.0) * 0.9, max(hi, 1.0) * 1.1)
        ax.set_ylabel("speedup, sequential / fused latency (×)")
    ax.xaxis.set_tick_params(which="both")
    ax.set_xlim(right=ax.get_xlim()[1] * 1.35)  # room for the end labels
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + ringed, loc="best", fontsize=8.5, title="attention backend", title_fontsize=8.5)
    suptitle(fig, "What fusing frame attention buys: sequential / fused latency", rows)
    foot = one_sided_notes(rows)
    if pairs["noisy"].all():
        foot.insert(0, "every pair has a noisy timing (ringed): no speedup here is a conclusion")
    elif pairs["noisy"].any():
        foot.insert(0, "ringed: a noisy timing on either side; labels give the largest frame count without one")
    footnote(fig, foot)
    return Plot(fig, "; ".join(n for n in (note, depth_note) if n))


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
    fig, (ax,), lax = new_figure(max(7.5, 1.1 * len(names) + 5.0), 4.8, legend=0.45 if len(names) > 2 else 0.8)
    values, noisy = {}, set()
    for b in names:
        s = at[(at["attention"] == b) & (at["status"] == "ok") & at["achieved_tflops"].notna()]
        values[b] = float(s["achieved_tflops"].median()) if len(s) else math.nan
        if s["noisy"].fillna(False).astype(bool).any():
            noisy.add(b)
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
            ax.bar(i, v, color=colors[b], width=0.65, **(dict(edgecolor=NOISY_RED, lw=2.0) if b in noisy else {}))
            label = f"{v:.3g}"
            frac = at.loc[(at["attention"] == b) & (at["status"] == "ok"), "frac_of_peak"].dropna()
            if len(frac):
                label += f"\n{frac.median():.0%} of peak"
            if b in noisy:
                label += "\n(noisy)"
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
    if noisy:
        handles.append(Patch(facecolor="#777777", edgecolor=NOISY_RED, lw=2.0, label="noisy timing\n(no conclusion)"))
    if len(measured) < len(names):
        handles.append(Patch(facecolor="none", edgecolor="#888888", hatch="///",
                             label="no measurement\n(n/a, OOM, error)"))
    if not math.isnan(peak):
        handles.append(Line2D([], [], color="#b2182b", ls="-.",
                              label=f"dense peak {peak:.4g} TFLOP/s" + ("" if show_peak else "\n(above the axis)")))
    side_legend(lax, handles)
    suptitle(fig, f"Attention backends at S = {frames:g} frames ({exec_}, largest frame count all ran)"
              if common else f"Attention backends at S = {frames:g} frames ({exec_}, most backends ran here)", ok)
    foot = unavailable_notes(rows)
    foot.append(f"dense peak: {source}" if not math.isnan(peak)
                else f"dense peak unknown ({source or 'not tabulated'}): no fraction of peak")
    footnote(fig, foot)
    return Plot(fig, "; ".join(n for n in (note, depth_note) if n))


# One colour per world size N: grey for one rank (the baseline), then tab10.
WORLD_COLORS = ["#555555", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def context_parallel(results: pd.DataFrame) -> Plot:
    """One scene across GPUs (``model.context_parallel``): colour = world size N. Left: time per
    forward against frames (log-log), p10-p90 shaded, and the time in collectives (``comm_ms``)
    dashed, its share of the forward written at the largest frame count. Right: the busiest rank's
    peak against frames (linear axes) with its fitted line (``analysis.memory.context_parallel_memory_fit``)
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
    unit, scale = latency_unit(ok["latency_ms_median"])
    fig, (ax, mem), lax = new_figure(12.5, 5.0, ncols=2, legend=0.42)
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
                ax.annotate(f"{fmt_percent(last['comm_ms'] / last['latency_ms_median'])} comm"
                            + (" (noisy)" if last["noisy"] else ""),
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
    noisy = mark_noisy(ax, ok, "latency_ms_median", scale)
    frames_axis(ax, ok["frames"])
    ax.set_yscale("log")
    ys = pd.concat([ok["latency_ms_median"], ok.loc[ok["comm_ms"] > 0, "comm_ms"]]) * scale
    plain_log(ax.yaxis, float(ys.min()), float(ys.max()))
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
    side_legend(lax, handles, title="world size: predicted wall" if gpu else "world size")
    suptitle(fig, f"One scene across {'GPUs' if gpu else 'ranks'}: time and per-{'GPU' if gpu else 'rank'} memory "
                   "against frames", rows, extra=series)
    if gpu:
        foot.append("wall = (memory - intercept) / slope of each N's line: linear growth, a prediction past the "
                    "frame counts measured")
    else:
        foot.append("CPU: the ranks share one machine's memory, so no wall is predicted")
    if single:
        foot.append(f"one frame count only at N = {', '.join(single)}: no line fitted")
    footnote(fig, unavailable_notes(rows) + failure_notes(rows) + foot)
    return Plot(fig, "; ".join(n for n in notes if n))
