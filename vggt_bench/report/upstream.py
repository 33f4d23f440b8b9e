"""The figure of our model against upstream's code measured in the same run."""

from __future__ import annotations

import pandas as pd
from matplotlib.lines import Line2D

from ..analysis.tidy import tidy_results
from ..analysis.upstream import impl_ratios
from .common import Plot, backend_colors, frames_axis, mark_noisy, new_figure, side_legend, suptitle


def upstream_ratio(results: pd.DataFrame) -> Plot:
    """Ours against upstream's code measured in the same run: speed-up (upstream / ours latency) and
    activation memory (ours / upstream) against frames, one line per configuration of ours."""
    table = impl_ratios(results)
    if table.empty:
        return Plot(None, "no point of upstream's code beside ours (sweep model.impl=ours,upstream)")
    fig, (ax, mem), lax = new_figure(12.0, 4.8, ncols=2, legend=0.45)
    colors = backend_colors(table["configuration"])
    ringed: list = []
    for config, rows in table.groupby("configuration"):
        rows = rows.sort_values("frames")
        style = dict(color=colors[config], marker="o", ms=4, lw=1.5, ls="-" if rows["same_run"].all() else "--")
        ax.plot(rows["frames"], rows["speedup"], **style)
        mem.plot(rows["frames"], rows["memory_ratio"], **style)
        ringed = mark_noisy(ax, rows, "speedup", label="noisy timing (no conclusion)") or ringed
    for a in (ax, mem):
        a.axhline(1.0, color="black", ls=":", lw=1)
        frames_axis(a, table["frames"])
    ax.set_ylabel("speed-up over upstream's code (×)")
    mem.set_ylabel("activation memory, ours / upstream's (×)")
    ax.set_title("time", fontsize=10)
    mem.set_title("memory (peak minus allocated before the forward)", fontsize=10)
    handles = [Line2D([], [], color=colors[c], lw=2, label=c) for c in sorted(colors)]
    if not table["same_run"].all():
        handles.append(Line2D([], [], color="black", ls="--", label="not the same GPU: context only"))
    handles += ringed
    side_legend(lax, handles, title="ours (vs upstream's code)")
    suptitle(fig, "Ours against upstream's code, same run", tidy_results(results))
    return Plot(fig, "")
