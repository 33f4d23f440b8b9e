"""Approximations against the exact model: speed-up against output drift, the Pareto front and the
yardstick (converting the first 4 global layers), and global-to-frame conversion against k=0."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from ..core.schema import KNOBS
from .labels import setting, technique
from .tidy import APPROXIMATIONS, attention_exact, missing, tidy_results


def conversion_table(results: pd.DataFrame) -> pd.DataFrame:
    """Every ok point with prune_depth k > 0 matched to its k = 0 point (same knobs otherwise), among
    points whose attention is exact (the other approximations: ``approximation_table``).

    Columns: the knobs, latency_ms (at k), latency_ms_k0, speedup (k=0 latency / k latency),
    ``noisy`` (both ran and a timing of either is flagged noisy: the speedup is no conclusion),
    drift_rel, status (of the k point), status_k0.
    """
    frame = tidy_results(results)
    frame = frame[attention_exact(frame)]
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
TECHNIQUE_ORDER = ["prune_depth", "kv_keep", "merge_ratio", "global_sparsity"]
YARDSTICK_DEPTH = 4  # the drift an approximation is held to: that of converting the first 4 global layers


def approximation_table(results: pd.DataFrame) -> pd.DataFrame:
    """Every point with an approximation on (prune_depth > 0, kv_keep < 1, merge_ratio > 0,
    global_sparsity > 0, or a combination), matched to its exact point: the same knobs, weights and
    device otherwise, every approximation at its exact value.

    Columns: the knobs, gpu_name, random_weights, checkpoint, technique, setting, status,
    status_exact, latency_ms, latency_ms_exact, speedup (exact latency / latency; NaN unless both
    ran), ``noisy`` (the point's timing or its exact point's is flagged noisy: the speedup is an
    estimate) and the drift columns (DRIFT_OUTPUTS, ``drift_rel``).
    """
    frame = tidy_results(results)
    keys = [k for k in KNOBS if k not in APPROXIMATIONS] + ["gpu_name", "random_weights", "checkpoint"]
    is_exact = attention_exact(frame) & (frame["prune_depth"] == 0)
    base = frame[is_exact].drop_duplicates(keys, keep="last")[keys + ["latency_ms_median", "status", "noisy"]]
    base = base.rename(columns={"latency_ms_median": "latency_ms_exact", "status": "status_exact",
                                "noisy": "noisy_exact"})
    approx = frame[~is_exact & frame["prune_depth"].notna()].rename(columns={"latency_ms_median": "latency_ms"})
    table = approx.merge(base, on=keys, how="left").copy()
    ok = (table["status"] == "ok") & (table["status_exact"] == "ok")
    records = table.to_dict("records")
    noisy = table["noisy"].fillna(False).astype(bool) | table["noisy_exact"].fillna(False).astype(bool)
    table = table.assign(speedup=np.where(ok, table["latency_ms_exact"] / table["latency_ms"], np.nan),
                         technique=[technique(r) for r in records], setting=[setting(r) for r in records],
                         noisy=noisy & ok)
    drift = [c for c, _ in DRIFT_OUTPUTS] + ["drift_rel"]
    columns = KNOBS + ["gpu_name", "random_weights", "checkpoint", "technique", "setting", "status", "status_exact",
                       "latency_ms", "latency_ms_exact", "speedup", "noisy"] + drift
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
                          outputs=("drift_pose_rel", "drift_depth_rel"), depth: int = YARDSTICK_DEPTH) -> Optional[dict]:
    """The fastest attention approximation whose drift on every one of ``outputs`` is below that of
    ``prune_depth=depth`` at the same frame count (default: the largest measured with both).

    Returns ``{frames, setting, technique, speedup, yardstick_speedup, noisy, <output>,
    yardstick_<output>}`` or None when the yardstick or a qualifying point is missing; ``noisy``: a
    timing behind either speedup is flagged noisy (the ranking is an estimate).
    """
    ok = table[table["speedup"].notna()]
    ruler = ok[(ok["technique"] == "prune_depth") & (ok["prune_depth"] == depth)]
    candidates = ok[ok["technique"] != "prune_depth"]
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
             "speedup": float(best["speedup"]), "yardstick_speedup": float(ruler["speedup"]),
             "noisy": bool(best.get("noisy", False)) or bool(ruler.get("noisy", False))}
    for col in outputs:
        found[col], found[f"yardstick_{col}"] = float(best[col]), float(ruler[col])
    return found
