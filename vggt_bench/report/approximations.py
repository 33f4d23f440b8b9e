"""Figures of approximations against the exact model: global-to-frame conversion (speed-up and
drift against k=0, as heatmaps) and speed against output drift of every approximation."""

from __future__ import annotations

import math
import os
from typing import List, Tuple

import numpy as np
import pandas as pd
from matplotlib import colors as mcolors
from matplotlib import ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from ..analysis.approximations import (
    DRIFT_OUTPUTS, TECHNIQUE_ORDER, YARDSTICK_DEPTH, approximation_table, conversion_table, pareto_front,
)
from ..analysis.labels import FRAME_EXEC_ORDER, fmt_percent, one_context, order_exec
from ..analysis.tidy import tidy_results
from .common import (
    NOISY_RED, DistinctTicks, Plot, footnote, label_points, mark_noisy, new_figure, side_legend, suptitle,
)


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
    fig, axes, _ = new_figure(width * panels + 0.6, height, ncols=panels)
    finite = table["speedup"].dropna()
    span = max(abs(np.log2(finite)).max(), np.log2(1.25)) if len(finite) else 1.0
    norm = mcolors.Normalize(vmin=-span, vmax=span)
    cmap = plt_cmap("RdYlGn")
    for ax, exec_ in zip(axes, execs):
        sub = table[table["frame_exec"] == exec_]
        grid = np.full((len(frames), len(depths)), np.nan)
        labels = [["" for _ in depths] for _ in frames]
        noisy = []
        for _, row in sub.iterrows():
            i, j = frames.index(row["frames"]), depths.index(row["prune_depth"])
            if row["status"] != "ok":
                labels[i][j] = row["status"].upper() if row["status"] == "oom" else row["status"]
            elif row["status_k0"] != "ok":
                labels[i][j] = "k=0 OOM" if row["status_k0"] == "oom" else "no k=0"
            else:
                grid[i, j] = np.log2(row["speedup"])
                labels[i][j] = f"{row['speedup']:.2f}×"
                if row["noisy"]:
                    noisy.append((i, j))
        image = _heatmap(ax, grid, labels, cmap, norm, frames, depths)
        for i, j in noisy:  # outlined as the line figures ring them: a noisy timing, no conclusion
            ax.add_patch(Rectangle((j - 0.46, i - 0.46), 0.92, 0.92, fill=False, edgecolor=NOISY_RED, lw=1.8))
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
    timed = table[table["speedup"].notna()]
    if len(timed) and timed["noisy"].all():
        foot.insert(0, "every speedup has a noisy timing (red outline: this k's or its k=0's): none is a conclusion")
    elif timed["noisy"].any():
        foot.insert(0, "red outline: a noisy timing (this k's or its k=0's): not used for conclusions")
    suptitle(fig, "Global-to-frame conversion: first k global layers as frame attention", table,
              extra=f"attention {backend}")
    footnote(fig, foot)
    return Plot(fig, "; ".join(n for n in notes if n))


TECHNIQUE_COLORS = {"prune_depth": "#7f7f7f", "kv_keep": "#1f77b4", "merge_ratio": "#2ca02c",
                    "global_sparsity": "#d62728", "linear_precision": "#ff7f0e"}
TECHNIQUE_MARKERS = {"prune_depth": "s", "kv_keep": "o", "merge_ratio": "^", "global_sparsity": "D",
                     "linear_precision": "v"}
TECHNIQUE_SOURCES = {"prune_depth": "global-to-frame conversion (AVGGT)", "kv_keep": "K/V subsampling (AVGGT)",
                     "merge_ratio": "token merging (FastVGGT)", "global_sparsity": "block-sparse (Faster VGGT)",
                     "linear_precision": "FP8 linear layers"}


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
    last layer's tokens where no head was measured). x: speedup over the exact model with the same
    backend (filled) and, where another exact row of the run is faster, over that fastest exact setting
    (hollow, joined to it), y: relative L2 drift, both log. Colour and marker = technique; the line joins the Pareto front (no other point
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
    ruler_drawn = front_drawn = fastest_drawn = False
    for r, (col, name) in enumerate(drifts):
        front = pareto_front(table, col)
        for c, frames_ in enumerate(frames):
            ax = axes[r][c]
            ax.grid(True, which="major", alpha=0.3)
            sub = front[front["frames"] == frames_]
            drawn = sub[sub[col] > 0]
            names = []  # (label, speedup, drift): written once the axis limits are set
            zero += [f"S={frames_} {row['setting']}" for _, row in sub[sub[col] == 0].iterrows()]
            for kind in kinds:
                pts = drawn[drawn["technique"] == kind]
                base = kind.split(" + ")[0]
                ax.scatter(pts["speedup"], pts[col], s=30, marker=TECHNIQUE_MARKERS.get(base, "P"),
                           color=TECHNIQUE_COLORS.get(base, "#9467bd"), edgecolor="black" if " + " in kind else "none",
                           linewidth=0.8, zorder=3)
                names += [(row["setting"].replace(f"{base}=", ""), row["speedup"], row[col]) for _, row in pts.iterrows()]
            # against the fastest exact setting where that is another row than the point's exact one: hollow,
            # joined to the filled point (the honest speedup: what a user gains over the best exact run)
            other = drawn[drawn["speedup_fastest"].notna() & ((drawn["speedup_fastest"] - drawn["speedup"]).abs()
                                                              > 1e-9 * drawn["speedup"])]
            for _, row in other.iterrows():
                base = row["technique"].split(" + ")[0]
                ax.plot([row["speedup"], row["speedup_fastest"]], [row[col]] * 2, color="#999999", lw=0.7, zorder=2)
                ax.scatter([row["speedup_fastest"]], [row[col]], s=30, marker=TECHNIQUE_MARKERS.get(base, "P"),
                           facecolor="none", edgecolor=TECHNIQUE_COLORS.get(base, "#9467bd"), linewidth=1.0, zorder=3)
            fastest_drawn = fastest_drawn or len(other) > 0
            noisy_handle = mark_noisy(ax, drawn, col, x="speedup", label="noisy timing (speedup an estimate)") or noisy_handle
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
                speeds = pd.concat([drawn["speedup"], drawn["speedup_fastest"].dropna()])
                fastest, slowest = float(speeds.max()), float(speeds.min())
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
                ax.yaxis.set_major_formatter(_drift_tick(lo))
                ax.yaxis.set_minor_formatter(ticker.NullFormatter())
                if decades < 0.3:  # a decade at least, so the axis carries a labelled tick
                    mid = math.sqrt(lo * hi)
                    ax.set_ylim(mid / 3.2, mid * 3.2)
            label_points(ax, names)
            if r == 0:
                ax.set_title(f"S = {frames_}", fontsize=10)
            if r == len(drifts) - 1:
                ax.set_xlabel("speedup over exact, same backend (×)")
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
    if fastest_drawn:
        handles += [Line2D([], [], ls="", marker="o", ms=6, markerfacecolor="none", markeredgecolor="#555555",
                           label="hollow: over the fastest exact setting")]
    handles += noisy_handle
    side_legend(lax, handles, title="technique")
    suptitle(fig, "Speed against output drift: every approximation against the exact model", table,
              extra=f"attention {backend} · {weights_line(table)}")
    if zero:
        notes.append(f"drift 0 (not drawn on the log axis): {', '.join(zero[:4])}" + (" …" if len(zero) > 4 else ""))
    return Plot(fig, "; ".join(n for n in notes if n))


def _drift_tick(lowest: float) -> ticker.Formatter:
    """A tick formatter for one drift axis, in one notation for the whole axis: percent (two significant
    digits: 0.05%, 0.1%, 2%) when the axis's smallest drift is at least 1e-4, else scientific (rounding-level
    drifts), each with as many more digits as keep its ticks apart. A fixed switch at 1e-3 labelled one axis
    '0.0005, 0.1%, 0.2%' (the 2026-12-06 study's figure); one digit of scientific labelled the linear ticks
    a sub-decade axis falls back to '3e-06, 3e-06, 2e-06' (2026-12-07)."""
    if lowest >= 1e-4:
        return DistinctTicks(lambda v, digits: f"{v * 100:.{digits}g}%", digits=2)
    return DistinctTicks(lambda v, digits: f"{v:.{digits - 1}e}", digits=1)


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
