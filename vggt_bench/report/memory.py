"""Figures of memory against frames: the peak per frame execution and backend, and the memory
wall (a fitted line per series, and where it meets each card)."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from ..analysis.labels import device_label, one_context, order_exec, setting
from ..analysis.memory import WALL_CARDS, device_memory_gib, memory_fit, memory_residuals
from ..analysis.tidy import exact_rows, missing, tidy_results
from . import reference as references
from .common import (
    FRAME_EXEC_LINE, Plot, backend_colors, footnote, frames_axis, line_colors, line_labels, new_figure, plain_log,
    side_legend, suptitle,
)


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
    fig, axes, lax = new_figure(4.4 * len(execs) + 2.6, 4.8, ncols=len(execs), sharey=True,
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
        frames_axis(ax, list(rows["frames"]) + (list(ref["frames"]) if ref is not None and exec_ == execs[0] else []))
        ax.set_yscale("log")
        plain_log(ax.yaxis)
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
    side_legend(lax, handles)
    suptitle(fig, "Peak memory vs frames", ok)
    return Plot(fig, "; ".join(n for n in (note, depth_note) if n))


def memory_wall(results: pd.DataFrame) -> Plot:
    """Peak allocated GiB against frames (linear axes) with a fitted line per series, and the frame
    count where each line meets the device's memory and larger cards (``analysis.memory.memory_fit``);
    the right panel shows what the lines leave out (residuals, GiB)."""
    frame, note = one_context(tidy_results(results))
    fits = memory_fit(frame)
    if fits.empty:
        return Plot(None, "no series with peak GPU memory at two frame counts or more")
    resid = memory_residuals(frame)
    fig, (ax, res), lax = new_figure(12.0, 5.0, ncols=2, legend=0.42)
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
    side_legend(lax, handles, title="series: slope; predicted wall (frames)")
    suptitle(fig, "The memory wall: GiB per frame, fitted, and where it meets the card", frame)
    footnote(fig, ["wall = (memory - intercept) / slope: linear growth, a prediction past the largest frame count measured",
                    "141 GB / 192 GB: the memory an H200 / a B200 gives PyTorch (analysis.memory.WALL_CARDS)"])
    return Plot(fig, note)
