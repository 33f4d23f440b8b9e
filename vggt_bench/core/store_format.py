"""The results store's format version, and the upgrades that bring older rows to it.

Every point file and every table row carries ``format_version`` (``FORMAT_VERSION``); a row
without one was written in format 1. Readers upgrade older rows in memory, step by step, as asv's
``update_to_X`` functions do: ``UPDATES[x]`` turns a row of format x - 1 into one of format x.
``core.migrate`` applies the same upgrades to a directory's point files before a sweep writes
into it, so that resuming finds its points under their current ids.

Formats:

1. (until 2026-12-07) no ``format_version``; the id hashed every knob's value, a knob a row did
   not have as null, so each knob added re-id'd every point.
2. the id hashes only the fields not at their default (``core.identity``); ``latency_ms_samples``
   keeps every timed call (older rows have none: their comparisons have no interval);
   ``former_point_id`` keeps an upgraded row's format-1 id (its profiles and NVTX ranges were
   named by it).
"""

from __future__ import annotations

import json
import math
from typing import Callable, Dict

import numpy as np
import pandas as pd

from .identity import DEFAULTS, canonical, is_missing, point_id
from .schema import KNOBS, RESULT_COLUMNS

FORMAT_VERSION = 2
RESOLVED = ("arch", "device", "frames", "height", "width")  # identity fields with no default: every row has them


def samples(value) -> np.ndarray:
    """A row's per-repeat latencies (ms) from ``latency_ms_samples``: JSON text in point files, CSV
    and Parquet alike (a list is read too); empty for a row without them (format 1)."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except ValueError:
            return np.array([])
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return np.array([])
    out = np.asarray(value, dtype=float).ravel()
    return out[np.isfinite(out)]


def _approx_kernel_before(row: dict):
    """K/V subsampling ran on flex attention only before ``approx_kernel`` existed (c5ef8e4)."""
    kv_keep = canonical("kv_keep", row.get("kv_keep"))
    return "flex" if kv_keep is not None and kv_keep < 1 else DEFAULTS["approx_kernel"]


# What a field was in rows written before it existed, where that is not its default (the default
# of a knob added later is the old behaviour; these two are not): a field absent from an older row
# gets this value, else its default (schema.WORKLOAD_DEFAULTS, ExecutionConfig).
BEFORE: Dict[str, Callable[[dict], object]] = {
    "memory_plan": lambda row: "upstream",  # the only plan before the lean and offload plans (8bf80b0)
    "approx_kernel": _approx_kernel_before,
}


def version_of(row) -> int:
    """The store format a row (a dict) was written in: its ``format_version``, else 1."""
    value = row.get("format_version")
    try:
        return 1 if is_missing(value) else int(float(value))  # 2, 2.0 (a float column) or "2" (CSV)
    except (TypeError, ValueError):
        return 1


def update_to_2(row: dict) -> dict:
    """Format 1 -> 2: every identity field present (absent ones as they were before they existed:
    ``BEFORE``, else the default), the id recomputed without the fields at their default, the
    format-1 id kept as ``former_point_id``. A row that does not say which point it is (no frames,
    arch, device, height or width: no id can be made of it) keeps its id."""
    out = dict(row)
    for key in KNOBS:
        if is_missing(out.get(key)):
            out[key] = BEFORE[key](out) if key in BEFORE else DEFAULTS.get(key)
    former = out.get("point_id")
    if not any(is_missing(out.get(k)) for k in RESOLVED):
        out["point_id"] = point_id(out)
    out["former_point_id"] = "" if is_missing(former) else str(former)
    out["format_version"] = 2
    return out


UPDATES: Dict[int, Callable[[dict], dict]] = {2: update_to_2}  # format -> the step from the one before


def upgrade_row(row: dict) -> dict:
    """A row (point file or table row) in FORMAT_VERSION; rows already in it are returned as they are."""
    version = version_of(row)
    for target in sorted(UPDATES):
        if target > version:
            row = UPDATES[target](row)
    return row


def upgrade_table(frame: pd.DataFrame) -> pd.DataFrame:
    """A results table with its rows of older formats upgraded (``upgrade_row``); a table whose
    rows are all current is returned as it is. Columns: RESULT_COLUMNS first, then the others."""
    if frame.empty:
        return frame
    if "format_version" in frame:
        versions = pd.to_numeric(frame["format_version"], errors="coerce")
        if (versions >= FORMAT_VERSION).all():
            return frame
    rows = pd.DataFrame([upgrade_row(r) for r in frame.to_dict("records")])
    order = [c for c in RESULT_COLUMNS if c in rows] + [c for c in rows if c not in RESULT_COLUMNS]
    return rows[order]
