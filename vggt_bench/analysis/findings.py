"""What a results table says, as numbers and sentences: the report's narrative and its tables.

Computed here from the tidy tables (``tidy``) and the analyses (``scaling``, ``approximations``,
``upstream``), not written in the notebook template, so tests can check the numbers the report
prints.
"""

from __future__ import annotations

import math
from dataclasses import field
from dataclasses import dataclass
from typing import List, Optional

import pandas as pd

from ..measure.noise import CPU_NOTE
from .approximations import (
    DRIFT_OUTPUTS, YARDSTICK_DEPTH, approximation_table, best_within_yardstick, conversion_table, drift_is_rounding,
)
from .labels import CONFIG, EXACT_CONFIG, config_label, device_label, fmt_percent, int_text, setting, shorten
from .scaling import speedup_pairs
from .tidy import WORKLOAD_CONTEXT as WORKLOAD, exact_rows, missing, ok_rows, tidy_results
from .upstream import impl_ratios


def fmt_ms(ms: float) -> str:
    """12.3 ms, 1.23 s."""
    if ms is None or (isinstance(ms, float) and math.isnan(ms)):
        return "—"
    return f"{ms / 1e3:.3g} s" if ms >= 1000 else f"{ms:.3g} ms"


def fmt_x(value: float) -> str:
    return f"{value:.2f}×"


def fmt_frac(value: float) -> str:
    return fmt_percent(value)


def workloads(results: pd.DataFrame) -> List[tuple]:
    """``[(label, rows)]`` per workload (device, arch, resolution, batch, part, inputs), biggest first."""
    frame = tidy_results(results)
    if frame.empty:
        return []
    keyed = frame.assign(**{f"_w_{c}": frame[c].map(lambda v: "" if missing(v) else v) for c in WORKLOAD})
    out = []
    for _, rows in keyed.groupby([f"_w_{c}" for c in WORKLOAD], sort=True, dropna=False):
        rows = rows.drop(columns=[f"_w_{c}" for c in WORKLOAD])
        first = rows.iloc[0]
        label = (f"{device_label(rows)} · {first['arch']} · {int_text(first['height'])}×"
                 f"{int_text(first['width'])} px · {first['part']}"
                 + (f" · batch {int_text(first['batch'])}" if first["batch"] != 1 else ""))
        out.append((label, rows))
    out.sort(key=lambda item: -len(item[1]))
    return out


@dataclass
class Findings:
    """What the results say about one workload, as numbers and as sentences."""

    workload: str
    statuses: dict
    fastest: pd.DataFrame                  # frames, configuration, latency_ms, slowest_ms, spread
    largest_ok: Optional[dict] = None      # frames, configurations
    first_oom: Optional[dict] = None       # frames, configurations
    largest_tried: Optional[int] = None
    fusing: Optional[dict] = None          # min, max, frames_min, frames_max, pairs, faster
    conversion: Optional[dict] = None      # k, min, max, frames_min, frames_max, drift_min, drift_max
    approximation: Optional[dict] = None   # frames, setting, speedup (fastest at the largest S), and
                                           # within: approximations.best_within_yardstick (None: none qualifies)
    unranked: str = ""                     # why ``fastest`` is empty, when it is
    lines: List[str] = field(default_factory=list)

    def markdown(self) -> str:
        return "\n".join(f"- {line}" for line in self.lines)


def findings(results: pd.DataFrame) -> List[Findings]:
    """One Findings per workload in the results (none for an empty table)."""
    return [_findings(label, rows) for label, rows in workloads(results)]


def _join_configs(rows: pd.DataFrame, limit: int = 4) -> str:
    labels = sorted({config_label(r, EXACT_CONFIG) for _, r in rows.iterrows()})
    text = ", ".join(labels[:limit])
    return text + (f" (+{len(labels) - limit} more)" if len(labels) > limit else "")


def _findings(label: str, rows: pd.DataFrame) -> Findings:
    statuses = rows["status"].value_counts().to_dict()
    # Conclusions come from trusted timings only: a noisy point is listed, never compared.
    noisy = rows[(rows["status"] == "ok") & rows["noisy"].fillna(False).astype(bool)]
    rows_all, rows = rows, rows.drop(noisy.index)
    # the exact model is what ran at the smallest depth, noisy or not (its rows tell the wall, and why
    # nothing is concluded); only its trusted rows are compared
    exact_all, _ = exact_rows(rows_all)
    exact = exact_all[~exact_all.index.isin(noisy.index)]
    ok = ok_rows(exact)
    lines = []
    status_text = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
    lines.append(f"**{label}**: {len(rows_all)} points ({status_text}).")
    on_cpu = rows_all[rows_all["claim_note"] == CPU_NOTE]  # the rows' own verdict (noise.claim)
    if len(on_cpu):
        lines.append(f"{len(on_cpu)} point(s) were timed on the CPU: CPU timings move whenever anything else runs on "
                     f"the machine, so they show what the harness measures, not what an optimisation buys on a GPU; "
                     f"they back no claim (`backs_claim` is False in their rows).")
    if len(noisy):
        where = "; ".join(f"S={int(r['frames'])} {config_label(r, EXACT_CONFIG)}: {r['noise_reason']}"
                          for _, r in noisy.head(4).iterrows())
        lines.append(f"{len(noisy)} noisy point(s) are left out of every conclusion below ({where}"
                     f"{'; ...' if len(noisy) > 4 else ''}).")
    ratios = impl_ratios(rows)
    same = ratios[ratios["same_run"] & ~ratios["noisy"]] if len(ratios) else ratios
    if len(same):
        parts = [f"S={int(r['frames'])} {fmt_x(r['speedup'])} time, {fmt_x(r['memory_ratio'])} memory"
                 for _, r in same.sort_values("frames").iterrows() if r["configuration"] == same.iloc[0]["configuration"]]
        lines.append(f"Against upstream's code in the same run ({same.iloc[0]['configuration']}; speed-up = upstream / "
                     f"ours, memory = ours / upstream's activation memory): " + "; ".join(parts) + ".")
    # Fastest exact configuration per frame count.
    fastest = []
    for frames, at in ok.groupby("frames"):
        best = at.sort_values("latency_ms_median", kind="stable").iloc[0]
        fastest.append({"frames": int(frames), "configuration": config_label(best, EXACT_CONFIG),
                        "latency_ms": float(best["latency_ms_median"]),
                        "slowest_ms": float(at["latency_ms_median"].max()), "configurations": len(at)})
    fastest = pd.DataFrame(fastest, columns=["frames", "configuration", "latency_ms", "slowest_ms", "configurations"])
    found = Findings(workload=label, statuses=statuses, fastest=fastest, lines=lines)
    ran_noisy = len(ok_rows(exact_all))
    if fastest.empty and ran_noisy:
        found.unranked = (f"Every exact point that ran ({ran_noisy} ok) has a noisy timing, so no configuration is "
                          f"ranked and nothing below is concluded from their latencies (why: the noisy points above); "
                          f"rerun on an idle machine with measure.repeats=3 or more to rank them.")
        lines.append(found.unranked)
    elif fastest.empty:
        found.unranked = "No configuration of the exact model ran (no `ok` rows): nothing to rank."
        lines.append(found.unranked)
    else:
        runs = []
        for _, r in fastest.iterrows():
            if runs and runs[-1][0] == r["configuration"]:
                runs[-1][2] = r["frames"]
            else:
                runs.append([r["configuration"], r["frames"], r["frames"]])
        parts = [f"{cfg} (S={a})" if a == b else f"{cfg} (S={a}–{b})" for cfg, a, b in runs]
        top = fastest.iloc[-1]
        lines.append(
            "Fastest exact configuration per frame count: " + "; ".join(parts) + ". "
            f"At the largest frame count that ran, S={top['frames']}, it takes {fmt_ms(top['latency_ms'])}"
            + (f", {top['slowest_ms'] / top['latency_ms']:.2f}× faster than the slowest of "
               f"{int(top['configurations'])} configurations." if top["configurations"] > 1 else ".")
        )
    # The wall: what ran and what ran out of memory, whatever the noise in its timing.
    tried = exact_all["frames"].dropna()
    found.largest_tried = int(tried.max()) if len(tried) else None
    ran = ok_rows(exact_all)
    if len(ran):
        s = int(ran["frames"].max())
        found.largest_ok = {"frames": s, "configurations": _join_configs(ran[ran["frames"] == s])}
    ooms = exact_all[exact_all["status"] == "oom"]
    if len(ooms):
        s = int(ooms["frames"].min())
        found.first_oom = {"frames": s, "configurations": _join_configs(ooms[ooms["frames"] == s])}
    if found.largest_ok and found.first_oom:
        lines.append(
            f"The wall: the largest frame count that ran is S={found.largest_ok['frames']} "
            f"({found.largest_ok['configurations']}); the first out-of-memory is at S={found.first_oom['frames']} "
            f"({found.first_oom['configurations']})."
        )
    elif found.largest_ok:
        lines.append(
            f"The wall was not reached: nothing ran out of memory; the largest frame count that ran is "
            f"S={found.largest_ok['frames']} ({found.largest_ok['configurations']})."
        )
    elif found.first_oom:
        lines.append(f"No exact point ran; the first out-of-memory is at S={found.first_oom['frames']}.")
    else:
        lines.append("No exact point ran and none ran out of memory: see the table of points that did not run.")
    # Fusing.
    pairs = speedup_pairs(exact)
    if len(pairs):
        lo, hi = pairs.loc[pairs["speedup"].idxmin()], pairs.loc[pairs["speedup"].idxmax()]
        faster = int((pairs["speedup"] > 1).sum())
        found.fusing = {"min": float(lo["speedup"]), "max": float(hi["speedup"]), "frames_min": int(lo["frames"]),
                        "frames_max": int(hi["frames"]), "pairs": len(pairs), "faster": faster}
        lines.append(
            f"Fusing frame attention (one call for all frames instead of a loop): sequential / fused latency is "
            f"{fmt_x(lo['speedup'])} (S={int(lo['frames'])}, {lo['attention']}) to {fmt_x(hi['speedup'])} "
            f"(S={int(hi['frames'])}, {hi['attention']}); fused is faster in {faster} of {len(pairs)} pairs."
        )
    elif len(speedup_pairs(exact_all)):
        lines.append(f"Fusing: each of the {len(speedup_pairs(exact_all))} points measured both fused and "
                     f"sequential has a noisy timing on one side or both, so no speedup is concluded.")
    else:
        lines.append("Fusing: no frame count was measured both fused and sequential (ok), so there is no speedup "
                     "to report.")
    # Conversion.
    conv = conversion_table(rows)
    conv = conv[conv["speedup"].notna()]
    if len(conv):
        k = int(conv["prune_depth"].max())
        at = conv[conv["prune_depth"] == k]
        lo, hi = at.loc[at["speedup"].idxmin()], at.loc[at["speedup"].idxmax()]
        drift = at["drift_rel"].dropna()
        found.conversion = {"k": k, "min": float(lo["speedup"]), "max": float(hi["speedup"]),
                            "frames_min": int(lo["frames"]), "frames_max": int(hi["frames"]),
                            "drift_min": float(drift.min()) if len(drift) else math.nan,
                            "drift_max": float(drift.max()) if len(drift) else math.nan}
        speed = (fmt_x(lo["speedup"]) + f" (S={int(lo['frames'])})" if len(at) == 1 else
                 f"{fmt_x(lo['speedup'])} (S={int(lo['frames'])}, {lo['frame_exec']}) to {fmt_x(hi['speedup'])} "
                 f"(S={int(hi['frames'])}, {hi['frame_exec']})")
        drift_text = (f"the output drifts by {fmt_frac(drift.min())} to {fmt_frac(drift.max())} "
                      f"(relative L2 of the last layer's tokens against k=0)" if len(drift) else
                      "its output drift was not measured (sweep with measure.drift=true)")
        lines.append(
            f"Global-to-frame conversion: at k={k} converted layers, the largest depth measured, the speedup over "
            f"k=0 is {speed}; "
            + drift_text + "."
        )
    elif conversion_table(rows_all)["speedup"].notna().any():
        lines.append("Global-to-frame conversion: measured, but every prune_depth > 0 point or its k=0 partner has a "
                     "noisy timing, so no speedup is concluded.")
    else:
        lines.append("Global-to-frame conversion: not measured (no prune_depth > 0 point with an ok k=0 partner).")
    _approximation_line(rows, found, rows_all)
    if statuses.get("error"):
        lines.append(f"{statuses['error']} point(s) failed with an error: see the status table below.")
    return found


def _speedups_text(row) -> str:
    """``4.2× over the exact model with the same backend, 3.1× over the fastest exact setting (fused ·
    sdpa_cudnn · ...)``; one number where the two baselines are one row."""
    same, fastest = row["speedup"], row.get("speedup_fastest")
    if missing(fastest) or abs(fastest - same) <= 1e-9 * same:
        return f"{fmt_x(same)} over the exact model (also the fastest exact setting measured)"
    return (f"{fmt_x(same)} over the exact model with the same backend, {fmt_x(fastest)} over the fastest exact "
            f"setting measured ({row.get('fastest_setting')})")


def _drift_text(row) -> str:
    parts = [f"{name} {fmt_frac(row[col])}" for col, name in DRIFT_OUTPUTS[:2] if not missing(row.get(col))]
    return f"drift: {', '.join(parts)}" if parts else "drift not measured"


def _approximation_line(rows: pd.DataFrame, found: Findings, rows_all: Optional[pd.DataFrame] = None) -> None:
    """The attention approximations against the exact model: the fastest at the largest frame count,
    and the fastest that keeps camera-pose and depth drift below prune_depth=4's (the yardstick).
    ``rows`` are the trusted rows; ``rows_all`` with the noisy ones, to say when only those exist."""
    # every ok row: the yardstick lends its drift, which timing noise does not move (a one-forward
    # prune_depth=4 point still measures it); only points no noisy timing is behind are ranked
    table = approximation_table(rows_all if rows_all is not None else rows)
    every = table[table["speedup"].notna() & (table["technique"] != "prune_depth")]
    measured = every[~every["noisy"].fillna(False).astype(bool)]
    if measured.empty:
        if len(every):  # measured, but a speed-up with a noisy side is no result
            frames = int(every["frames"].max())
            found.lines.append(f"Attention approximations against the exact model: at S={frames} (and every frame count "
                               f"measured) an approximation or its exact point has a noisy timing, so none is ranked "
                               f"({len(every)} measured; see the approximations table for their drift)."
                               + _random_weights_note(rows_all))
        return
    frames = int(measured["frames"].max())
    at = measured[measured["frames"] == frames]
    top = at.loc[at["speedup"].idxmax()]
    within = best_within_yardstick(table, trusted=True)
    found.approximation = {"frames": frames, "setting": top["setting"], "speedup": float(top["speedup"]),
                           "speedup_fastest": float(top["speedup_fastest"]), "within": within}
    text = (f"Attention approximations against the exact model: at S={frames} the fastest measured is "
            f"{top['setting']}, {_speedups_text(top)} ({_drift_text(top)}).")
    k = YARDSTICK_DEPTH
    if within is not None:
        text += (f" The fastest whose camera-pose and depth drift both stay below prune_depth={k}'s "
                 f"(pose {fmt_frac(within['yardstick_drift_pose_rel'])}, depth "
                 f"{fmt_frac(within['yardstick_drift_depth_rel'])}, {fmt_x(within['yardstick_speedup'])}) at "
                 f"S={within['frames']} is {within['setting']}: {_speedups_text(within)} (pose "
                 f"{fmt_frac(within['drift_pose_rel'])}, depth {fmt_frac(within['drift_depth_rel'])}).")
    elif ((table["technique"] == "prune_depth") & (table["prune_depth"] == k) & table["drift_pose_rel"].notna()).any():
        text += f" None keeps both camera-pose and depth drift below prune_depth={k}'s at the same frame count."
    else:
        text += (f" No yardstick: measure prune_depth={k} with heads and measure.drift=true "
                 f"(experiment=approximations does).")
    found.lines.append(text + _random_weights_note(rows) + _rounding_note(table, within))


def _rounding_note(table: pd.DataFrame, within: Optional[dict]) -> str:
    """When depth drift is rounding (random weights, heads in half precision): say so, and name the
    fastest setting under prune_depth=4's camera-pose drift alone where that differs."""
    if not drift_is_rounding(table):
        return ""
    text = (" Random weights in half precision: the depth map (exp() of values near 0) is under one bf16 step, "
            "so depth and world-point drift are rounding, about one value for every setting, and rank nothing "
            "(benchmarks/drift_floor.py); camera-pose drift still ranks them. Use model.dtype=bf16_autocast "
            "(heads in fp32) or the checkpoint for a depth ranking.")
    pose = best_within_yardstick(table, outputs=("drift_pose_rel",), trusted=True)
    if pose is not None and (within is None or pose["setting"] != within["setting"]):
        text += (f" On camera-pose drift alone the fastest below prune_depth={YARDSTICK_DEPTH}'s at "
                 f"S={pose['frames']} is {pose['setting']}: {_speedups_text(pose)} (pose "
                 f"{fmt_frac(pose['drift_pose_rel'])}).")
    return text


def _random_weights_note(rows: pd.DataFrame) -> str:
    if set(rows["random_weights"].dropna()) == {True}:
        return " Random weights: drift says how far the outputs move, not how accurate they are."
    return ""


def latency_pivot(rows: pd.DataFrame) -> pd.DataFrame:
    """Median latency by frames (rows) x configuration (columns), as text: ``12.3 ms``, or
    the status (``OOM``, ``n/a``, ``error``) where the point did not run. One workload."""
    rows = tidy_results(rows)
    if rows.empty:
        return pd.DataFrame()
    varying = [c for c in CONFIG if rows[c].nunique(dropna=False) > 1] or ["frame_exec", "attention"]
    cells = rows.assign(configuration=[config_label(r, varying) for _, r in rows.iterrows()])
    cells["value"] = [fmt_ms(r["latency_ms_median"]) if r["status"] == "ok" else
                      {"oom": "OOM", "unavailable": "n/a"}.get(r["status"], r["status"])
                      for _, r in cells.iterrows()]
    pivot = cells.pivot_table(index="frames", columns="configuration", values="value", aggfunc="last")
    pivot.index = pivot.index.astype(int)
    pivot.index.name = "frames S"
    return pivot.fillna("")


def environment_table(results: pd.DataFrame) -> pd.DataFrame:
    """What the results were measured on, one row per field (values joined where they differ)."""
    frame = tidy_results(results)

    def values(col):
        return sorted({str(v) for v in frame[col] if not missing(v) and str(v) != ""}) if col in frame else []

    stamps = values("timestamp")
    random = {bool(v) for v in frame["random_weights"] if v is not None}
    gpu_mem = frame["gpu_mem_gib"].dropna()
    rows = [
        ("device", device_label(frame)),
        ("GPU memory", f"{gpu_mem.max():.1f} GiB" if len(gpu_mem) else "—"),
        ("CPU", " / ".join(values("cpu")) or "—"),
        ("torch", " / ".join(values("torch_version")) or "—"),
        ("CUDA", " / ".join(values("cuda_version")) or "— (CPU build)"),
        ("cuDNN", " / ".join(values("cudnn_version")) or "—"),
        ("driver", " / ".join(values("driver")) or "—"),
        ("Python", " / ".join(values("python_version")) or "—"),
        ("git commit", " / ".join(values("git_commit")) or "—"),
        ("host", " / ".join(values("host")) or "—"),
        ("date", (stamps[0] if len(stamps) == 1 else f"{stamps[0]} … {stamps[-1]}") if stamps else "—"),
        ("random weights", "yes" if random == {True} else "no" if random == {False} else "mixed" if random else "—"),
        ("checkpoint", " / ".join(values("checkpoint")) or "none"),
        ("experiments", " / ".join(values("experiment")) or "—"),
        ("points", f"{len(frame)} ({', '.join(f'{n} {s}' for s, n in frame['status'].value_counts().items())})"),
    ]
    return pd.DataFrame(rows, columns=["field", "value"]).set_index("field")


def status_table(results: pd.DataFrame) -> pd.DataFrame:
    """Points that did not run (oom, unavailable, error) with their message."""
    frame = tidy_results(results)
    bad = frame[frame["status"] != "ok"]
    cols = ["frames", "frame_exec", "attention", "prune_depth", "dtype", "status", "message"]
    approximation = [setting(r) for r in bad.to_dict("records")]
    bad = bad[cols].copy()
    bad.insert(4, "approximation", approximation)
    bad["frames"] = bad["frames"].astype("Int64")
    bad["prune_depth"] = bad["prune_depth"].astype("Int64")
    bad["message"] = bad["message"].map(lambda m: shorten(m, 120))
    return bad.sort_values(["status", "attention", "frames"]).reset_index(drop=True)
