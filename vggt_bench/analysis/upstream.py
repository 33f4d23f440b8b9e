"""Our model against upstream's code (facebookresearch/vggt) at the same workload: time and memory."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .labels import EXACT_CONFIG, config_label
from .tidy import EXACT_VALUE, missing, ok_rows, tidy_results


IMPL_MATCH = ["device", "gpu_name", "arch", "height", "width", "batch", "part", "inputs", "frames"]


def impl_ratios(results: pd.DataFrame) -> pd.DataFrame:
    """Every ``ok`` row of our exact model against upstream's code at the same workload and frame count.

    Upstream's row is the one at the same precision when measured, else at bf16_autocast (its own
    way). ``same_run``: both on the same GPU (its UUID) in this table, the only comparison that
    backs a claim. Columns: the workload, ``configuration`` (ours), ``dtype``, ``upstream_dtype``,
    ``ours_ms``, ``upstream_ms``, ``speedup`` (upstream / ours), ``ours_act_gib``,
    ``upstream_act_gib``, ``memory_ratio`` (ours / upstream), ``same_run``, ``noisy`` (either).
    """
    ok = ok_rows(tidy_results(results))
    if ok.empty or not (ok["impl"] == "upstream").any():
        return pd.DataFrame()
    ours, theirs = ok[ok["impl"] != "upstream"], ok[ok["impl"] == "upstream"]
    for knob, value in EXACT_VALUE.items():  # the same function only: no approximation of ours
        ours = ours[ours[knob].isna() | (ours[knob] == value)]
    out = []
    for _, r in ours.iterrows():
        same = theirs
        for col in IMPL_MATCH:
            same = same[same[col].map(lambda v: "" if missing(v) else v) == ("" if missing(r[col]) else r[col])]
        if same.empty:
            continue
        pick = same[same["dtype"] == r["dtype"]]
        pick = pick if len(pick) else same[same["dtype"] == "bf16_autocast"]
        if pick.empty:
            continue
        u = pick.sort_values("latency_ms_median").iloc[0]
        out.append({**{c: r[c] for c in IMPL_MATCH}, "configuration": config_label(r, EXACT_CONFIG),
                    "dtype": r["dtype"], "upstream_dtype": u["dtype"], "ours_ms": r["latency_ms_median"],
                    "upstream_ms": u["latency_ms_median"], "speedup": u["latency_ms_median"] / r["latency_ms_median"],
                    "ours_act_gib": r["act_gib"], "upstream_act_gib": u["act_gib"],
                    "memory_ratio": r["act_gib"] / u["act_gib"] if u["act_gib"] and not missing(u["act_gib"]) else np.nan,
                    "same_run": bool(r["gpu_uuid"]) and r["gpu_uuid"] == u["gpu_uuid"],
                    "noisy": bool(r["noisy"]) or bool(u["noisy"])})
    return pd.DataFrame(out)
