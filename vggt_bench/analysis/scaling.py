"""How latency scales: fused against sequential frame attention, and one scene across N ranks."""

from __future__ import annotations

from typing import List

import numpy as np
import pandas as pd

from ..core.schema import KNOBS
from .labels import int_text
from .memory import per_gpu_peak
from .tidy import ok_rows, tidy_results


def speedup_pairs(results: pd.DataFrame, slow: str = "sequential", fast: str = "fused") -> pd.DataFrame:
    """``speedup = latency(slow) / latency(fast)`` for every point measured both ways (ok rows),
    matched on every knob except frame_exec and frame_chunk. Columns: the knobs, latency_ms_slow,
    latency_ms_fast, speedup, ``noisy`` (a timing on either side is flagged noisy: the speedup is no
    conclusion)."""
    ok = ok_rows(tidy_results(results))
    ok = ok.assign(noisy=ok["noisy"].fillna(False).astype(bool))
    keys = [k for k in KNOBS if k not in ("frame_exec", "frame_chunk")] + ["gpu_name"]
    sides = []
    for exec_, name in ((slow, "slow"), (fast, "fast")):
        grouped = ok[ok["frame_exec"] == exec_].groupby(keys, dropna=False)
        sides.append(pd.concat([grouped["latency_ms_median"].median().rename(f"latency_ms_{name}"),
                                grouped["noisy"].any().rename(f"noisy_{name}")], axis=1))
    pairs = pd.concat(sides, axis=1, join="inner").reset_index()
    pairs["speedup"] = pairs["latency_ms_slow"] / pairs["latency_ms_fast"]
    pairs["noisy"] = pairs.pop("noisy_slow").astype(bool) | pairs.pop("noisy_fast").astype(bool)
    return pairs


def one_sided_notes(rows: pd.DataFrame) -> List[str]:
    out = []
    for backend, s in rows.groupby("attention"):
        for frames, t in s.groupby("frames"):
            st = dict(zip(t["frame_exec"], t["status"]))
            if st.get("fused") == "ok" and st.get("sequential") not in (None, "ok"):
                out.append(f"{backend} S={int_text(frames)}: sequential {st['sequential']}, fused ran")
            if st.get("sequential") == "ok" and st.get("fused") not in (None, "ok"):
                out.append(f"{backend} S={int_text(frames)}: fused {st['fused']}, sequential ran")
    return out


def context_parallel_speedup(results: pd.DataFrame) -> pd.DataFrame:
    """Every point with ``context_parallel`` N > 1 matched to its one-rank point (same knobs and GPU
    otherwise): ``speedup`` = latency on 1 rank / latency on N, ``efficiency`` = speedup / N,
    ``memory_ratio`` = the busiest rank's peak / the one-rank peak, ``comm_share`` = comm_ms / latency.

    Columns: the knobs, gpu_name, status, status_1, latency_ms, latency_ms_1, speedup, efficiency,
    rank_peak_gib_max, rank_peak_gib_1, memory_ratio, comm_ms, comm_mib, comm_share. Without the
    one-rank point in the table the comparisons are NaN (status_1 empty). A one-rank row from before
    ``rank_peak_gib_max`` existed gives its ``peak_alloc_gib`` (``per_gpu_peak``)."""
    frame = tidy_results(results)
    frame["rank_peak_gib_max"] = per_gpu_peak(frame)
    keys = [k for k in KNOBS if k != "context_parallel"] + ["gpu_name"]
    base = frame[frame["context_parallel"] == 1].drop_duplicates(keys, keep="last")
    base = base[keys + ["latency_ms_median", "rank_peak_gib_max", "status"]].rename(columns={
        "latency_ms_median": "latency_ms_1", "rank_peak_gib_max": "rank_peak_gib_1", "status": "status_1"})
    ranks = frame[frame["context_parallel"] > 1].rename(columns={"latency_ms_median": "latency_ms"})
    table = ranks.merge(base, on=keys, how="left").copy()  # one block: the columns below are added to it
    table["status_1"] = table["status_1"].fillna("")
    ok = (table["status"] == "ok") & (table["status_1"] == "ok")
    table["speedup"] = np.where(ok, table["latency_ms_1"] / table["latency_ms"], np.nan)
    table["efficiency"] = table["speedup"] / table["context_parallel"]
    table["memory_ratio"] = np.where(ok, table["rank_peak_gib_max"] / table["rank_peak_gib_1"], np.nan)
    table["comm_share"] = np.where(table["status"] == "ok", table["comm_ms"] / table["latency_ms"], np.nan)
    return table[KNOBS + ["gpu_name", "status", "status_1", "latency_ms", "latency_ms_1", "speedup", "efficiency",
                          "rank_peak_gib_max", "rank_peak_gib_1", "memory_ratio", "comm_ms", "comm_mib", "comm_share"]]
