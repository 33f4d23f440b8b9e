"""What every figure shares: the ``Plot`` a figure function returns, the figure and legend
layout, titles and footnotes, log axes of frames and latencies, line names and colours, and
``save``. Each figure family (``scaling``, ``memory``, ``approximations``, ``upstream``,
``profiles``, ``memory_profile``) draws with these.
"""

from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..analysis.labels import context_line, shorten
from ..analysis.tidy import missing


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


def plain_log(axis, lo: Optional[float] = None, hi: Optional[float] = None) -> None:
    """Log scale with 1-2-5 ticks (1-3 or decades over a wide range) written as plain numbers."""
    decades = math.log10(hi / lo) if lo and hi and lo > 0 and hi > lo else 2.0
    subs = (1.0, 2.0, 5.0) if decades <= 2.6 else (1.0, 3.0) if decades <= 4.2 else (1.0,)
    axis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


class DistinctTicks(ticker.Formatter):
    """Tick labels ``write(value, digits)`` with the fewest digits, from ``digits`` on, that tell every
    tick of the axis apart (``2e-06, 2.5e-06, 3e-06``, never ``2e-06, 2e-06, 3e-06``)."""

    def __init__(self, write, digits: int = 1, most: int = 6):
        self.write, self.digits, self.most = write, digits, most

    def __call__(self, x, pos=None) -> str:
        return self.write(x, self.digits)

    def format_ticks(self, values) -> List[str]:
        labels = [self.write(v, self.digits) for v in values]
        for digits in range(self.digits + 1, self.most + 1):
            if len(set(labels)) == len(labels):
                break
            labels = [self.write(v, digits) for v in values]
        return labels


def label_points(ax, points, fontsize: float = 6.5) -> None:
    """Write ``(text, x, y)`` beside each point, on the side that keeps it inside the axes: left of the
    points in the right half, below those near the top. Call once the axis limits are set."""
    to_axes = ax.transAxes.inverted()
    for text, x, y in points:
        fx, fy = to_axes.transform(ax.transData.transform((x, y)))
        right, top = fx > 0.5, fy > 0.85
        ax.annotate(text, (x, y), xytext=(-3 if right else 3, -3 if top else 2), textcoords="offset points",
                    ha="right" if right else "left", va="top" if top else "bottom", fontsize=fontsize,
                    color="#333333")


def frames_axis(ax, frames) -> None:
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
        plain_log(ax.xaxis, frames[0], frames[-1])
    if len(frames) == 1:
        ax.set_xlim(frames[0] / 1.6, frames[0] * 1.6)
    elif frames:
        ax.set_xlim(frames[0] / 1.25, frames[-1] * 1.25)
    ax.set_xlabel("frames S (log scale)")


def new_figure(width: float, height: float, ncols: int = 1, sharey: bool = False,
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


def side_legend(lax, handles, labels=None, title: Optional[str] = None) -> None:
    kw = dict(loc="upper left", fontsize=8.5, title=title, title_fontsize=8.5, borderaxespad=0.0, frameon=False)
    if labels is None:
        lax.legend(handles=handles, **kw)
    else:
        lax.legend(handles, labels, **kw)


CPU_TIMINGS = "CPU timings: they back no claim"


def suptitle(fig: Figure, what: str, frame: pd.DataFrame, extra: str = "") -> None:
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


def footnote(fig: Figure, lines: Sequence[str]) -> None:
    lines = [s for s in lines if s]
    if lines:
        text = "\n".join(shorten(s, 150) for s in lines[:6])
        if len(lines) > 6:
            text += f"\n(+{len(lines) - 6} more)"
        fig.text(0.0, 0.0, text, fontsize=7.5, color="#555555", ha="left", va="top",
                 transform=fig.transFigure, wrap=True)


def latency_unit(ms_values) -> Tuple[str, float]:
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


NOISY_RED = "#d62728"  # how every figure marks a noisy timing: a ring, an outline


def mark_noisy(ax, rows: pd.DataFrame, column: str, scale: float = 1.0, x: str = "frames",
                label: str = "noisy (not used for conclusions)") -> list:
    """Hollow red rings on the points flagged noisy (``x`` against ``column``); the legend handle when
    there are any."""
    noisy = rows[rows["noisy"].fillna(False).astype(bool)] if "noisy" in rows else rows.iloc[0:0]
    if noisy.empty:
        return []
    ax.plot(noisy[x], noisy[column] * scale, ls="none", marker="o", ms=11, mfc="none", mec=NOISY_RED, mew=1.4,
            zorder=5)
    return [Line2D([], [], ls="none", marker="o", ms=9, mfc="none", mec=NOISY_RED, mew=1.4, label=label)]


def save(fig: Figure, path_stem: str) -> List[str]:
    """Write ``<stem>.png`` (150 dpi) and ``<stem>.svg``; return both paths."""
    paths = []
    for ext, kw in (("png", {"dpi": 150}), ("svg", {})):
        path = f"{path_stem}.{ext}"
        fig.savefig(path, bbox_inches="tight", pad_inches=0.15, **kw)
        paths.append(path)
    return paths
