"""Approximations against the exact model: speed-up against output drift, the Pareto front and the
yardstick (converting the first 4 global layers), and global-to-frame conversion against k=0."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from ..core.schema import KNOBS
from .labels import EXACT_CONFIG, config_label, setting, technique
from .tidy import APPROXIMATIONS, WORKLOAD_CONTEXT, exact_model, missing, tidy_results, unapproximated


def conversion_table(results: pd.DataFrame) -> pd.DataFrame:
    """Every ok point with prune_depth k > 0 matched to its k = 0 point (same knobs otherwise), among
    points whose attention is exact (the other approximations: ``approximation_table``).

    Columns: the knobs, latency_ms (at k), latency_ms_k0, speedup (k=0 latency / k latency),
    ``noisy`` (both ran and a timing of either is flagged noisy: the speedup is no conclusion),
    drift_rel, status (of the k point), status_k0.
    """
    frame = tidy_results(results)
    frame = frame[unapproximated(frame)]
    keys = [k for k in KNOBS if k not in ("prune_depth", "prune_weights")] + ["gpu_name"]
    base = frame[frame["prune_depth"] == 0].drop_duplicates(keys, keep="last")
    base = base[keys + ["latency_ms_median", "status", "noisy"]].rename(
        columns={"latency_ms_median": "latency_ms_k0", "status": "status_k0", "noisy": "noisy_k0"})
    conv = frame[frame["prune_depth"] > 0].rename(columns={"latency_ms_median": "latency_ms"})
    table = conv.merge(base, on=keys, how="left")
    ok = (table["status"] == "ok") & (table["status_k0"] == "ok")
    table["speedup"] = np.where(ok, table["latency_ms_k0"] / table["latency_ms"], np.nan)
    table["noisy"] = ok & (table["noisy"].fillna(False).astype(bool) | table["noisy_k0"].fillna(False).astype(bool))
    return table[KNOBS + ["gpu_name", "status", "status_k0", "latency_ms", "latency_ms_k0", "speedup", "noisy",
                          "drift_rel"]]


# ---- approximations: speed against drift ------------------------------------------------------------
# Drift columns, most telling first, with what they compare (vggt_bench.core.schema MEASUREMENTS).
DRIFT_OUTPUTS = [("drift_pose_rel", "camera pose"), ("drift_depth_rel", "depth"),
                 ("drift_points_rel", "world points"), ("drift_tokens_rel", "last layer's tokens")]
TECHNIQUE_ORDER = ["prune_depth", "kv_keep", "merge_ratio", "global_sparsity", "linear_precision"]
YARDSTICK_DEPTH = 4  # the drift an approximation is held to: that of converting the first 4 global layers


# What a user could run instead of an approximation: the same workload (frames, inputs, weights, GPU),
# any exact setting (backend, precision, plan, compile, CUDA graph, our code or upstream's).
FASTEST_KEYS = WORKLOAD_CONTEXT + ["frames", "random_weights", "checkpoint"]


def fastest_exact(frame: pd.DataFrame) -> pd.DataFrame:
    """Per workload (``FASTEST_KEYS``), the fastest ``ok`` row of the exact model among rows whose timing
    is not flagged noisy (among all, flagged, when every one is): ``FASTEST_KEYS`` + latency_ms_fastest,
    noisy_fastest, fastest_setting (its knobs, ``config_label``)."""
    exact = frame[exact_model(frame) & (frame["status"] == "ok") & frame["latency_ms_median"].notna()]
    exact = exact.assign(noisy_fastest=exact["noisy"].fillna(False).astype(bool))
    best = exact.sort_values(["noisy_fastest", "latency_ms_median"], kind="stable").drop_duplicates(FASTEST_KEYS)
    return best.assign(latency_ms_fastest=best["latency_ms_median"],
                       fastest_setting=[config_label(r, EXACT_CONFIG) for r in best.to_dict("records")],
                       )[FASTEST_KEYS + ["latency_ms_fastest", "noisy_fastest", "fastest_setting"]]


def approximation_table(results: pd.DataFrame) -> pd.DataFrame:
    """Every point with an approximation on (prune_depth > 0, kv_keep < 1, merge_ratio > 0,
    global_sparsity > 0, FP8 linears, or a combination), against two exact baselines of the same run:

    * its exact point: the same knobs, weights and device otherwise, every approximation at its exact
      value (the same backend): latency_ms_exact, ``speedup`` (exact latency / latency);
    * the fastest exact setting a user could run instead (``fastest_exact``: any backend, precision,
      plan, compile or CUDA graph, the same workload): latency_ms_fastest, ``speedup_fastest``,
      fastest_setting. The two are one row where the approximation runs on the fastest exact setting.

    Columns: the knobs, gpu_name, random_weights, checkpoint, technique, setting, status,
    status_exact, latency_ms, latency_ms_exact, speedup, latency_ms_fastest, speedup_fastest,
    fastest_setting (speedups NaN unless both sides ran), ``noisy`` (the point's timing or a baseline's
    is flagged noisy: the speedup is an estimate) and the drift columns (DRIFT_OUTPUTS, ``drift_rel``).
    """
    frame = tidy_results(results)
    keys = [k for k in KNOBS if k not in APPROXIMATIONS] + ["gpu_name", "random_weights", "checkpoint"]
    is_exact = exact_model(frame)
    base = frame[is_exact].drop_duplicates(keys, keep="last")[keys + ["latency_ms_median", "status", "noisy"]]
    base = base.rename(columns={"latency_ms_median": "latency_ms_exact", "status": "status_exact",
                                "noisy": "noisy_exact"})
    approx = frame[~is_exact & frame["prune_depth"].notna()].rename(columns={"latency_ms_median": "latency_ms"})
    table = approx.merge(base, on=keys, how="left").merge(fastest_exact(frame), on=FASTEST_KEYS, how="left").copy()
    ok = (table["status"] == "ok") & (table["status_exact"] == "ok")
    fast = (table["status"] == "ok") & table["latency_ms_fastest"].notna()
    records = table.to_dict("records")
    noisy = (table["noisy"].fillna(False).astype(bool) | table["noisy_exact"].fillna(False).astype(bool)
             | table["noisy_fastest"].fillna(False).astype(bool))
    table = table.assign(speedup=np.where(ok, table["latency_ms_exact"] / table["latency_ms"], np.nan),
                         speedup_fastest=np.where(fast, table["latency_ms_fastest"] / table["latency_ms"], np.nan),
                         technique=[technique(r) for r in records], setting=[setting(r) for r in records],
                         noisy=noisy & ok)
    drift = [c for c, _ in DRIFT_OUTPUTS] + ["drift_rel"]
    columns = KNOBS + ["gpu_name", "random_weights", "checkpoint", "technique", "setting", "status", "status_exact",
                       "latency_ms", "latency_ms_exact", "speedup", "latency_ms_fastest", "speedup_fastest",
                       "fastest_setting", "noisy"] + drift
    return table[columns].reset_index(drop=True)


HALF_DTYPES = ("bf16", "fp16")  # weights, and so the heads, in half precision (bf16_autocast keeps the heads fp32)


def drift_is_rounding(table: pd.DataFrame) -> bool:
    """Whether the depth and world-point drift of ``table`` (approximation_table rows) measure rounding
    rather than the approximations: every row has random weights and half-precision heads. The depth
    head ends in exp() of values near 0 on random weights: a map of about 1.01 +- 0.003, under one bf16
    step at 1.0, so in bf16 any change of the tokens moves the same few pixels by one step and every
    setting's depth drift is one value (benchmarks/drift_floor.py; reports/h100-2026-12-06b). Camera-pose
    drift is not at that floor and still ranks the settings."""
    rows = table[table["speedup"].notna()] if "speedup" in table else table
    if rows.empty:
        return False
    weights = rows["random_weights"].astype("boolean").fillna(False).astype(bool)
    return bool(weights.all() and rows["dtype"].isin(HALF_DTYPES).all())


def pareto_front(table: pd.DataFrame, drift: str) -> pd.DataFrame:
    """``table`` (approximation_table rows of one context) with ``on_front``: per frame count, the
    points with a speedup and a ``drift`` that no other point beats on both (at least as fast and
    at most as much drift, better in one). Rows without both numbers are never on the front."""
    out = table.copy()
    out["on_front"] = False
    usable = out[out["speedup"].notna() & out[drift].notna()]
    for _, rows in usable.groupby("frames"):
        speed, moved = rows["speedup"].to_numpy(), rows[drift].to_numpy()
        for i, index in enumerate(rows.index):
            better = (speed >= speed[i]) & (moved <= moved[i]) & ((speed > speed[i]) | (moved < moved[i]))
            out.loc[index, "on_front"] = not better.any()
    return out


def best_within_yardstick(table: pd.DataFrame, frames: Optional[int] = None,
                          outputs=("drift_pose_rel", "drift_depth_rel"), depth: int = YARDSTICK_DEPTH,
                          trusted: bool = False) -> Optional[dict]:
    """The fastest attention approximation whose drift on every one of ``outputs`` is below that of
    ``prune_depth=depth`` at the same frame count (default: the largest measured with both); with
    ``trusted``, among points whose speedups no noisy timing is behind.

    Returns ``{frames, setting, technique, speedup, speedup_fastest, fastest_setting, yardstick_speedup,
    noisy, yardstick_noisy, <output>, yardstick_<output>}`` or None when the yardstick or a qualifying
    point is missing. ``noisy``: a timing behind the verdict's speedups (the point's, its exact point's,
    the fastest exact setting's) is flagged noisy, so the ranking is an estimate. The yardstick lends only
    its drift, which no timing noise moves: its own timing's flag is ``yardstick_noisy`` (a yardstick
    measured with one forward, for its drift, leaves the verdict standing).
    """
    ok = table[table["speedup"].notna()]
    ruler = ok[(ok["technique"] == "prune_depth") & (ok["prune_depth"] == depth)]
    candidates = ok[ok["technique"] != "prune_depth"]
    if trusted:
        candidates = candidates[~candidates["noisy"].fillna(False).astype(bool)]
    counts = sorted(set(ruler["frames"]) & set(candidates["frames"]))
    if frames is None and counts:
        frames = counts[-1]
    if frames not in counts:
        return None
    ruler, candidates = ruler[ruler["frames"] == frames].iloc[0], candidates[candidates["frames"] == frames]
    if any(missing(ruler[c]) for c in outputs):
        return None
    inside = candidates
    for col in outputs:
        inside = inside[inside[col] < ruler[col]]
    if inside.empty:
        return None
    best = inside.loc[inside["speedup"].idxmax()]
    found = {"frames": int(frames), "setting": best["setting"], "technique": best["technique"],
             "speedup": float(best["speedup"]), "speedup_fastest": float(best.get("speedup_fastest", np.nan)),
             "fastest_setting": best.get("fastest_setting"), "yardstick_speedup": float(ruler["speedup"]),
             "noisy": bool(best.get("noisy", False)), "yardstick_noisy": bool(ruler.get("noisy", False))}
    for col in outputs:
        found[col], found[f"yardstick_{col}"] = float(best[col]), float(ruler[col])
    return found
