"""The figures of ``compare``: each matched point's time ratio with its interval, and where the time
changed stage by stage (from ``analysis.compare``'s tables; drawing only)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ..analysis.compare import STAGE_NAMES
from ..analysis.labels import int_text, shorten
from .common import Plot, new_figure, plain_log, side_legend

VERDICT_COLORS = {"faster": "#2ca02c", "slower": "#d62728", "same": "#7f7f7f", "noisy": "#ff7f0e"}
MAX_PAIRS = 8  # points drawn side by side in the stage figure


def compare_figure(table: pd.DataFrame, noise_floor: float) -> Plot:
    """Candidate over baseline median latency of every point that ran on both sides, one row each,
    grouped by frames: the ratio with its 95% interval, coloured by verdict (noisy: a hollow marker),
    the noise band (1 +- noise_floor) shaded. A log x axis where the ratios span more than 2.5x."""
    rows = table[table["ratio"].notna()].copy()
    if rows.empty:
        return Plot(None, "no matched point ran on both sides")
    rows = rows.sort_values(["frames", "label"], kind="stable").reset_index(drop=True)
    n = len(rows)
    fig, (ax,), lax = new_figure(11.0, 1.6 + 0.32 * n + 0.25 * rows["frames"].nunique(), legend=0.32)
    y, ticks, labels, y_at = 0.0, [], [], []
    for frames, group in rows.groupby("frames", sort=True):
        ax.text(0.005, y - 0.6, f"S={int_text(frames)}", transform=ax.get_yaxis_transform(), ha="left",
                va="center", fontsize=8.5, fontweight="bold", color="#333333")
        for _, r in group.iterrows():
            y_at.append(y)
            ticks.append(y)
            labels.append(shorten(r["label"].split(" · ", 1)[-1], 55))
            y += 1.0
        y += 0.6
    y_at = np.array(y_at)
    for i, r in rows.iterrows():
        color = VERDICT_COLORS.get(r["change"], "#7f7f7f")  # faster / slower / same, noise flags aside
        hollow = r["verdict"] == "noisy"
        if not pd.isna(r["ci_low"]):
            ax.plot([r["ci_low"], r["ci_high"]], [y_at[i]] * 2, color=color, lw=2.2, solid_capstyle="butt")
        ax.plot([r["ratio"]], [y_at[i]], marker="o", ms=7, color=color, mfc="white" if hollow else color,
                mec=VERDICT_COLORS["noisy"] if hollow else color, mew=1.6 if hollow else 1.0, ls="none")
    ax.axvspan(1 - noise_floor, 1 + noise_floor, color="#bdbdbd", alpha=0.35, lw=0)
    ax.axvline(1.0, color="black", lw=1)
    lo = float(np.nanmin([rows["ratio"].min(), rows["ci_low"].min(), 1 - 2 * noise_floor]))
    hi = float(np.nanmax([rows["ratio"].max(), rows["ci_high"].max(), 1 + 2 * noise_floor]))
    if hi / lo > 2.5:  # log, so that 2x faster and 2x slower lie as far from 1
        ax.set_xscale("log")
        plain_log(ax.xaxis, lo, hi)
    ax.set_xlim(lo / 1.05, hi * 1.05)
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_ylim(y - 0.4, -1.2)
    ax.grid(True, axis="x", which="major", alpha=0.3)
    ax.grid(False, axis="y")
    ax.set_xlabel("candidate / baseline median latency" + (" (log scale)" if hi / lo > 2.5 else "")
                  + ": left of 1, faster")
    handles = [Line2D([], [], color=VERDICT_COLORS[v], marker="o", lw=2.2, label=v) for v in ("faster", "slower", "same")]
    handles.append(Line2D([], [], color="#7f7f7f", marker="o", mfc="white", mec=VERDICT_COLORS["noisy"], mew=1.6,
                          ls="none", label="noisy (flagged row)"))
    handles.append(Patch(color="#bdbdbd", alpha=0.35, label=f"noise floor (±{noise_floor:.0%})"))
    side_legend(lax, handles, title="verdict (line: 95% interval)")
    without = int(rows["ci_low"].isna().sum())
    note = f"{without} point(s) without an interval: medians only" if without else ""
    fig.suptitle("Candidate against baseline, point by point" + (f"\n{note}" if note else ""), fontsize=11)
    return Plot(fig, note)


def stage_figure(stages: pd.DataFrame) -> Plot:
    """Per stage, candidate minus baseline time per forward (ms; GPU-projected where both profiles
    have GPU times, else CPU), one bar per matched point (at most MAX_PAIRS)."""
    if stages is None or stages.empty:
        return Plot(None, "no matched point has a profile on both sides")
    ids = list(dict.fromkeys(stages["point_id"]))[:MAX_PAIRS]
    order = [s for s in list(STAGE_NAMES) if s in set(stages["stage"])]
    basis = stages["basis"].iloc[0]
    fig, (ax,), lax = new_figure(10.0, 1.5 + 0.45 * len(order) * max(1.0, len(ids) / 3), legend=0.35)
    height = 0.8 / len(ids)
    palette = ["#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
    handles = []
    for j, pid in enumerate(ids):
        mine = stages[stages["point_id"] == pid].set_index("stage").reindex(order)
        y = np.arange(len(order)) + (j - (len(ids) - 1) / 2) * height
        ax.barh(y, mine["delta_ms"].fillna(0.0), height=height * 0.9, color=palette[j % len(palette)])
        handles.append(Patch(color=palette[j % len(palette)], label=shorten(mine["label"].dropna().iloc[0], 45)))
    ax.axvline(0.0, color="black", lw=1)
    ax.set_yticks(np.arange(len(order)))
    ax.set_yticklabels([STAGE_NAMES.get(s, s) for s in order], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel(f"candidate - baseline, ms per forward ({'GPU-projected' if basis == 'gpu' else 'CPU'} time; "
                  f"left of 0: faster)")
    side_legend(lax, handles, title="point")
    fig.suptitle("Where the time changed, stage by stage", fontsize=11)
    return Plot(fig, "" if len(set(stages["point_id"])) <= MAX_PAIRS else f"drew the first {MAX_PAIRS} points")
