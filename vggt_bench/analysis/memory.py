"""The memory wall: peak memory against frames, fitted, and the frame count where it meets a card."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .tidy import APPROXIMATIONS, CONTEXT, SERIES, ok_rows, tidy_results


def device_memory_gib(frame: pd.DataFrame) -> float:
    """Total memory of the device the rows ran on (GiB): device_mem_gib, else gpu_mem_gib."""
    for col in ("device_mem_gib", "gpu_mem_gib"):
        values = frame[col].dropna() if col in frame else pd.Series(dtype=float)
        if len(values):
            return float(values.max())
    return math.nan


GIB = 2**30
# Cards the fit predicts the wall for, besides the device measured: (label, the GiB the driver gives
# PyTorch, the same measure as a row's ``gpu_mem_gib``). H200: 139.80 GiB, as the H200 of
# reports/h200-2026-12-06 reported it (141 GB as sold; 141e9 bytes, the value used before, is 131.3 GiB
# and put the wall 6% too low). B200: 178.35 GiB, a B200's device query (pytorch/ao#4002; not measured here).
WALL_CARDS = [("141 GB (H200)", 139.80), ("192 GB (B200)", 178.35)]


def memory_fit(results: pd.DataFrame, column: str = "peak_alloc_gib") -> pd.DataFrame:
    """A line through peak allocated GiB against frames, per context and series (``ok`` GPU rows,
    two frame counts or more), and the frame count where it meets each card's memory.

    Columns: the context and series knobs, ``points``, ``slope_gib_per_frame``,
    ``slope_mb_per_frame`` (10**6 bytes), ``intercept_gib``, ``max_residual_gib``, ``r2``, and
    ``wall_frames_<card>`` for the device measured (``device``) and each of WALL_CARDS. The wall is
    ``(memory - intercept) / slope``: linear growth, which the exact model has with flash-style
    attention (its scores are never materialised); past the measured range it is a prediction.

    ``column``: the peak to fit (GiB), for another measure of it such as the busiest rank's
    (``context_parallel_memory_fit``). Only rows with a GPU peak (``peak_alloc_gib``) have a device
    memory to meet: a line of other rows (the CPU's) gets ``device_mem_gib`` and walls NaN.
    """
    ok = ok_rows(tidy_results(results))
    if column not in ok:
        raise ValueError(f"memory_fit: column={column!r} is not in the results table")
    ok = ok[ok[column].notna() & ok["frames"].notna()]
    keys = [c for c in CONTEXT + SERIES + APPROXIMATIONS if c in ok]
    out = []
    for key, rows in ok.groupby(keys, dropna=False, sort=True):
        rows = rows.sort_values("frames")
        if rows["frames"].nunique() < 2:
            continue
        x, y = rows["frames"].to_numpy(float), rows[column].to_numpy(float)
        slope, intercept = np.polyfit(x, y, 1)
        fitted = slope * x + intercept
        total = float(((y - y.mean()) ** 2).sum())
        gpu = bool(rows["peak_alloc_gib"].notna().all())
        row = dict(zip(keys, key))
        row.update(points=len(rows), slope_gib_per_frame=slope, slope_mb_per_frame=slope * GIB / 1e6,
                   intercept_gib=intercept, max_residual_gib=float(np.abs(y - fitted).max()),
                   r2=1 - float(((y - fitted) ** 2).sum()) / total if total > 0 else 1.0,
                   device_mem_gib=float(rows["device_mem_gib"].max()) if gpu else np.nan,
                   frames_measured_max=float(x.max()))
        for label, gib in [("device", row["device_mem_gib"])] + WALL_CARDS:
            row[f"wall_frames_{label.split()[0]}"] = (gib - intercept) / slope if slope > 0 and gpu else np.nan
        out.append(row)
    return pd.DataFrame(out)


def memory_residuals(results: pd.DataFrame) -> pd.DataFrame:
    """Each fitted point with its residual (GiB): what ``memory_fit``'s lines leave out."""
    ok = ok_rows(tidy_results(results))
    ok = ok[ok["peak_alloc_gib"].notna()]
    fits = memory_fit(results)
    if fits.empty:
        return pd.DataFrame()
    keys = [c for c in CONTEXT + SERIES + APPROXIMATIONS if c in ok and c in fits]
    merged = ok.merge(fits[keys + ["slope_gib_per_frame", "intercept_gib"]], on=keys, how="inner")
    merged["fitted_gib"] = merged["slope_gib_per_frame"] * merged["frames"] + merged["intercept_gib"]
    merged["residual_gib"] = merged["peak_alloc_gib"] - merged["fitted_gib"]
    return merged


def per_gpu_peak(frame: pd.DataFrame) -> pd.Series:
    """The busiest rank's peak (GiB): ``rank_peak_gib_max`` (GPU: allocated; CPU: RSS), else, in rows
    from before that column, ``peak_alloc_gib`` (one process: its rank is the only one)."""
    return frame["rank_peak_gib_max"].fillna(frame["peak_alloc_gib"])


def context_parallel_memory_fit(results: pd.DataFrame) -> pd.DataFrame:
    """``memory_fit`` of the per-GPU peak: one line per context, series and ``context_parallel`` N
    through the busiest rank's peak (``rank_peak_gib_max``; rows from before it: ``peak_alloc_gib``)
    against frames, and the frame count where it meets the device's memory and WALL_CARDS: how many
    frames one scene fits on N GPUs, a prediction past the largest frame count measured.

    Columns: memory_fit's, and ``wall_vs_one_rank``: the device wall over that of the one-rank line of
    the same context and series (NaN without one). CPU rows are fitted on each rank's peak RSS with
    no wall (the ranks share one machine's memory)."""
    frame = tidy_results(results)
    fits = memory_fit(frame.assign(rank_peak_gib_max=per_gpu_peak(frame)), column="rank_peak_gib_max")
    if fits.empty:
        return fits
    keys = [c for c in CONTEXT + SERIES + APPROXIMATIONS if c in fits and c != "context_parallel"]
    one = fits.loc[fits["context_parallel"] == 1, keys + ["wall_frames_device"]]
    one = one.rename(columns={"wall_frames_device": "_wall_1"}).drop_duplicates(keys)
    fits = fits.merge(one, on=keys, how="left")  # pandas matches missing keys with missing keys
    fits["wall_vs_one_rank"] = fits["wall_frames_device"] / fits.pop("_wall_1")
    return fits
