"""A against B: two results directories, point by point, with how sure each verdict is.

Rows are matched on what defines a point's work (``core.identity``: the workload and every execution
knob, the same fields as the point id), never on the environment it ran in; ``ignore`` drops fields
from the match (``model.frame_exec``: fused against sequential). For each matched point:

* ``ratio`` = candidate median / baseline median (above 1: the candidate is slower);
* its 95% interval, by bootstrap over both sides' per-repeat samples (``latency_ms_samples``),
  resampled independently (``scipy.stats.bootstrap``, percentile method: with a handful of repeats
  the medians tie, which leaves BCa's jackknife acceleration undefined);
* ``change``: ``same`` when the interval holds 1 or the ratio is within ``NOISE_FLOOR`` of 1, else
  ``faster`` or ``slower``; ``verdict``: ``noisy`` where either row is flagged noisy, ``not_run``
  where either side has no latency (oom, unavailable, error), else the change. A point on one side
  only is ``unmatched``, listed with its side.

``NOISE_FLOOR`` (2%): a bootstrap interval covers the spread between the repeats of one run, not
between two runs. Two runs of the same code move by more than that: separate processes, another card
of the same model, clocks under the power cap. The committed studies put that at about 2%: single
800-frame forwards on three H100s reproduced within 2.1%, the speedups within 1.6%
(reports/h100-2026-12-06b/README.md). A change under it is ``same`` even with a tight interval.

Rows from before per-repeat samples were kept (store format 1), or with fewer than
``MIN_SAMPLES`` repeats, are compared on their medians alone: ``interval`` says so and
``ci_low``/``ci_high`` are NaN.

Trace diffs (``stage_diff``, ``kernel_diff``): where both sides hold a profile of a matched point
(``profile``, ``sweep profiler=...``), each stage's time per forward and each kernel's calls and time
per forward on either side, what changed and its share of the total change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from scipy import stats

from ..core.errors import UserError
from ..core.identity import canonical, point_id
from ..core.schema import (
    COMPARE_COLUMNS, COMPARE_KERNEL_COLUMNS, COMPARE_STAGE_COLUMNS, EXECUTION, KNOBS, RANGE_STAGES, WORKLOAD,
)
from ..core.store_format import samples
from ..profiling.store import point_profiles, read_profile
from .labels import config_label, int_text
from .profiles import point_stages
from .tidy import missing, tidy_results

NOISE_FLOOR = 0.02     # |ratio - 1| below this is `same`: the run-to-run spread of the committed studies
CONFIDENCE = 0.95
RESAMPLES = 4000       # bootstrap resamples per point
MIN_SAMPLES = 3        # per side, for an interval: fewer repeats hold no spread to resample
SEED = 0               # the bootstrap's generator: the same two tables give the same intervals

VERDICTS = ("faster", "slower", "same", "noisy", "not_run", "unmatched")

# The command-line name of each identity field (``ignore=`` accepts either it or the column name).
_WORKLOAD_KEYS = {"impl": "model.impl", "arch": "model.arch", "seed": "model.seed", "device": "device",
                  "frames": "frames", "part": "part", "batch": "inputs.batch", "height": "inputs.height",
                  "width": "inputs.width", "query_points": "inputs.query_points", "inputs": "inputs.image_dir",
                  "input_seed": "inputs.seed"}
CONFIG_KEYS = {**{c: _WORKLOAD_KEYS[c] for c in WORKLOAD}, **{k: f"model.{k}" for k in EXECUTION}}

# What the environment is (never matched on): text fields, and numbers compared by their median.
ENVIRONMENT_TEXT = ["gpu_name", "gpu_uuid", "driver", "torch_version", "cuda_version", "cudnn_version",
                    "python_version", "cpu", "host", "git_commit", "checkpoint", "random_weights"]
ENVIRONMENT_NUMBERS = {"cpu_threads": 0.0, "sm_clock_mhz_start": 0.02, "mem_clock_mhz_start": 0.02,
                       "power_w_end": 0.05}  # field -> relative difference of the medians shown from
MEMORY = ["act_gib", "peak_alloc_gib", "peak_rss_gib"]


# ---- inputs ---------------------------------------------------------------------------------------
def ignore_columns(keys: Sequence[str]) -> List[str]:
    """The columns ``ignore=`` names (``model.frame_exec`` or ``frame_exec``); UserError naming the
    valid keys for one that is not a field of the match."""
    by_name = {**{v: k for k, v in CONFIG_KEYS.items()}, **{k: k for k in CONFIG_KEYS}}
    out = []
    for key in keys:
        key = str(key).strip()
        if not key:
            continue
        if key not in by_name:
            raise UserError(f"ignore={key} is not a field the points are matched on; choose from "
                            f"{', '.join(CONFIG_KEYS[c] for c in KNOBS)}")
        out.append(by_name[key])
    return list(dict.fromkeys(out))


def keyed(results: pd.DataFrame, ignore: Sequence[str], side: str) -> pd.DataFrame:
    """The tidy results with ``_key``: the point id over the matched fields (every identity field
    but ``ignore``). UserError when two rows of one side share a key (what ``ignore`` made one)."""
    frame = tidy_results(results)
    frame["_key"] = [point_id(row, drop=ignore) for row in frame.to_dict("records")]
    twice = frame[frame["_key"].duplicated(keep=False)]
    if len(twice):
        first = twice[twice["_key"] == twice["_key"].iloc[0]]
        differ = [CONFIG_KEYS[c] for c in ignore if first[c].astype(str).nunique() > 1]
        where = f"S={int_text(first['frames'].iloc[0])}"
        if not differ:
            raise UserError(f"{side} holds the point {first['point_id'].iloc[0]} ({where}) {len(first)} times: not a "
                            f"table a sweep wrote")
        raise UserError(f"{side} has {len(first)} points that differ only in {', '.join(differ)} ({where}), which "
                        f"ignore= leaves out of the match: compare directories that hold one of them each")
    return frame


# ---- one point ------------------------------------------------------------------------------------
def ratio_interval(base: np.ndarray, cand: np.ndarray, confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                   seed: int = SEED) -> Tuple[float, float]:
    """The ``confidence`` interval of median(cand) / median(base), by bootstrap over both samples
    resampled independently (percentile method)."""
    def ratio(b, c, axis=-1):
        return np.median(c, axis=axis) / np.median(b, axis=axis)

    result = stats.bootstrap((np.asarray(base, float), np.asarray(cand, float)), ratio, n_resamples=resamples,
                             paired=False, vectorized=True, confidence_level=confidence, method="percentile",
                             rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def change_of(ratio: float, low: float, high: float, noise_floor: float = NOISE_FLOOR) -> str:
    """``same`` / ``faster`` / ``slower`` of a ratio (candidate over baseline) and its interval (NaN:
    none, the ratio alone decides)."""
    if missing(ratio):
        return ""
    if abs(ratio - 1.0) < noise_floor:
        return "same"
    if not (missing(low) or missing(high)):
        if low <= 1.0 <= high:
            return "same"
        return "slower" if low > 1.0 else "faster"
    return "slower" if ratio > 1.0 else "faster"


def _ratio(num, den) -> float:
    try:
        num, den = float(num), float(den)
    except (TypeError, ValueError):
        return math.nan
    return num / den if den > 0 and not math.isnan(num) else math.nan


def _ran(row: Optional[dict]) -> bool:
    return row is not None and row.get("status") == "ok" and not missing(row.get("latency_ms_median"))


def _noise(row: dict, side: str) -> str:
    return f"{side}: {row.get('noise_reason') or 'flagged noisy'}" if row.get("noisy") is True else ""


def compare_point(base: Optional[dict], cand: Optional[dict], noise_floor: float = NOISE_FLOOR,
                  resamples: int = RESAMPLES) -> dict:
    """The comparison of one point: either side may be None (unmatched)."""
    either = cand if cand is not None else base
    out = {"point_id": either["point_id"], "baseline_point_id": base["point_id"] if base else "",
           "candidate_point_id": cand["point_id"] if cand else "",
           "side": "both" if base and cand else "baseline only" if base else "candidate only",
           "baseline_status": base["status"] if base else "", "candidate_status": cand["status"] if cand else "",
           "baseline_ms": base["latency_ms_median"] if base else math.nan,
           "candidate_ms": cand["latency_ms_median"] if cand else math.nan,
           "ratio": math.nan, "ci_low": math.nan, "ci_high": math.nan, "interval": "",
           "baseline_samples": len(samples(base.get("latency_ms_samples"))) if base else 0,
           "candidate_samples": len(samples(cand.get("latency_ms_samples"))) if cand else 0,
           "change": "", "verdict": "unmatched",
           "baseline_noisy": bool(base.get("noisy")) if base else False,
           "candidate_noisy": bool(cand.get("noisy")) if cand else False, "noise_reason": ""}
    for col in MEMORY:
        out[f"{col}_ratio"] = _ratio(cand.get(col), base.get(col)) if base and cand else math.nan
    if base is None or cand is None:
        return out
    if not (_ran(base) and _ran(cand)):
        out["verdict"] = "not_run"
        return out
    out["ratio"] = _ratio(cand["latency_ms_median"], base["latency_ms_median"])
    b, c = samples(base.get("latency_ms_samples")), samples(cand.get("latency_ms_samples"))
    if min(len(b), len(c)) >= MIN_SAMPLES:
        out["ci_low"], out["ci_high"] = ratio_interval(b, c, resamples=resamples)
        out["interval"] = f"{CONFIDENCE:.0%} bootstrap"
    elif min(len(b), len(c)) == 0:
        out["interval"] = "none: no per-repeat samples (a table from before they were kept)"
    else:
        out["interval"] = f"none: fewer than {MIN_SAMPLES} repeats on a side"
    out["change"] = change_of(out["ratio"], out["ci_low"], out["ci_high"], noise_floor)
    out["noise_reason"] = "; ".join(r for r in (_noise(base, "baseline"), _noise(cand, "candidate")) if r)
    out["verdict"] = "noisy" if out["baseline_noisy"] or out["candidate_noisy"] else out["change"]
    return out


# ---- two tables -----------------------------------------------------------------------------------
def compare(baseline: pd.DataFrame, candidate: pd.DataFrame, ignore: Sequence[str] = (),
            noise_floor: float = NOISE_FLOOR, resamples: int = RESAMPLES) -> pd.DataFrame:
    """Every point of either table, matched on the identity fields but ``ignore`` (columns, as
    ``ignore_columns`` returns them): COMPARE_COLUMNS, matched points first (by frames, then
    label), then the unmatched. UserError when the tables share no point."""
    ignore = list(ignore)
    base, cand = keyed(baseline, ignore, "baseline"), keyed(candidate, ignore, "candidate")
    shared = set(base["_key"]) & set(cand["_key"])
    if not shared:
        raise UserError(no_overlap(base, cand, ignore))
    b_rows = {r["_key"]: r for r in base.to_dict("records")}
    c_rows = {r["_key"]: r for r in cand.to_dict("records")}
    rows = []
    for key in list(dict.fromkeys(list(c_rows) + list(b_rows))):
        b, c = b_rows.get(key), c_rows.get(key)
        row = compare_point(b, c, noise_floor, resamples)
        either = c if c is not None else b
        row.update({k: either.get(k) for k in KNOBS})
        row["changed"] = "; ".join(f"{CONFIG_KEYS[k]}: {canonical(k, b.get(k))} -> {canonical(k, c.get(k))}"
                                   for k in ignore if b is not None and c is not None
                                   and canonical(k, b.get(k)) != canonical(k, c.get(k)))
        rows.append(row)
    table = pd.DataFrame(rows)
    table["label"] = labels(table)
    table["_order"] = (table["side"] != "both").astype(int)
    table = table.sort_values(["_order", "frames", "label"], kind="stable").drop(columns="_order")
    return table.reindex(columns=COMPARE_COLUMNS).reset_index(drop=True)


def labels(table: pd.DataFrame) -> List[str]:
    """A point's name in tables and figures: ``S=8 · fused · sdpa · fp32`` (``config_label``), with
    the workload fields that vary across the comparison."""
    vary = [c for c in ("arch", "height", "width", "batch", "part", "device") if c in table and
            table[c].astype(str).nunique() > 1]
    out = []
    for _, row in table.iterrows():
        parts = [f"S={int_text(row['frames'])}"] + [f"{c}={row[c]}" for c in vary]
        out.append(" · ".join(parts + [config_label(row)]))
    return out


def no_overlap(base: pd.DataFrame, cand: pd.DataFrame, ignore: Sequence[str]) -> str:
    """Why two tables share no point: the matched fields whose values the two sides do not share."""
    differ = []
    for col in KNOBS:
        if col in ignore:
            continue
        b = {str(canonical(col, v)) for v in base[col] if not missing(v)} if col in base else set()
        c = {str(canonical(col, v)) for v in cand[col] if not missing(v)} if col in cand else set()
        if b and c and not b & c:
            differ.append(f"{CONFIG_KEYS[col]} ({'/'.join(sorted(b))} against {'/'.join(sorted(c))})")
    hint = (f"; they differ in {', '.join(differ[:4])}: ignore={','.join(d.split(' ')[0] for d in differ[:4])} "
            f"leaves those out of the match") if differ else ""
    return f"no point of the candidate matches one of the baseline{hint}"


def gate(table: pd.DataFrame, fail_above: float) -> pd.DataFrame:
    """The matched points slower by more than ``fail_above`` (0.05: 5%) beyond doubt: their interval
    lies wholly above 1 + fail_above (without an interval: their ratio does)."""
    ran = table[table["ratio"].notna()]
    bound = ran["ci_low"].where(ran["ci_low"].notna(), ran["ratio"])
    return ran[bound > 1.0 + fail_above]


def counts(table: pd.DataFrame) -> str:
    """``2 slower, 5 same, 1 unmatched``."""
    found = table["verdict"].value_counts()
    return ", ".join(f"{int(found[v])} {v}" for v in VERDICTS if v in found)


# ---- the environment ------------------------------------------------------------------------------
def environment_diff(baseline: pd.DataFrame, candidate: pd.DataFrame) -> pd.DataFrame:
    """The environment fields whose values differ between the two tables: ``field``, ``baseline``,
    ``candidate`` (values joined where a side has several; numbers as their median)."""
    base, cand = tidy_results(baseline), tidy_results(candidate)
    rows = []

    def text(frame, col):
        return " / ".join(sorted({str(v) for v in frame[col] if not missing(v) and str(v) != ""})) if col in frame else ""

    for col in ENVIRONMENT_TEXT:
        b, c = text(base, col), text(cand, col)
        if b != c:
            rows.append((col, b or "-", c or "-"))
    for col, tolerance in ENVIRONMENT_NUMBERS.items():
        b = pd.to_numeric(base.get(col), errors="coerce").median() if col in base else math.nan
        c = pd.to_numeric(cand.get(col), errors="coerce").median() if col in cand else math.nan
        if missing(b) and missing(c):
            continue
        if missing(b) or missing(c) or abs(c - b) > tolerance * max(abs(b), abs(c)):
            rows.append((col, "-" if missing(b) else f"{b:g}", "-" if missing(c) else f"{c:g}"))
    return pd.DataFrame(rows, columns=["field", "baseline", "candidate"])


# ---- trace diffs ----------------------------------------------------------------------------------
STAGE_NAMES = {"patch_embed": "patch embed", "frame_block": "frame blocks", "global_block": "global attention blocks",
               "converted_block": "converted blocks", "heads": "heads", "other": "the rest of the forward"}


def _per_forward_stages(ranges: pd.DataFrame, iterations: float) -> pd.DataFrame:
    """Per-forward stage totals (``profiles.point_stages``) with ``other``: the forward less the named stages."""
    table = point_stages(ranges, iterations).set_index("stage")
    named = [s for s in RANGE_STAGES + ["heads"] if s in table.index]
    if "forward" in table.index:
        rest = table.loc["forward"] - table.loc[named].sum(min_count=1) if named else table.loc["forward"]
        table.loc["other"] = rest.clip(lower=0)
    return table


def stage_diff(base_ranges: pd.DataFrame, cand_ranges: pd.DataFrame, base_iterations: float,
               cand_iterations: float) -> pd.DataFrame:
    """Each stage of one matched point on both sides (COMPARE_STAGE_COLUMNS without the point's
    columns): GPU-projected and CPU time per forward, kernels launched per forward, the change (on
    GPU time where both profiles have it, else CPU) and its share of the forward's change. Stages:
    the named ones, ``other`` (the forward less them) and ``forward`` (the whole)."""
    b, c = _per_forward_stages(base_ranges, base_iterations), _per_forward_stages(cand_ranges, cand_iterations)
    order = [s for s in RANGE_STAGES + ["heads", "other", "forward"] if s in b.index or s in c.index]
    columns = ["gpu_ms", "cpu_ms", "kernels"]
    b, c = b.reindex(index=order, columns=columns), c.reindex(index=order, columns=columns)
    gpu = all(side["gpu_ms"].gt(0).any() for side in (b, c))
    # a stage one side lacks took no time there; GPU times stay NaN in a CPU trace
    b, c = (side.fillna({"cpu_ms": 0.0, "kernels": 0.0, **({"gpu_ms": 0.0} if gpu else {})}) for side in (b, c))
    basis = "gpu_ms" if gpu else "cpu_ms"
    table = pd.DataFrame({"stage": order, **{f"baseline_{k}": b[k].to_numpy(float) for k in columns},
                          **{f"candidate_{k}": c[k].to_numpy(float) for k in columns}, "basis": basis[:3]})
    table["delta_ms"] = table[f"candidate_{basis}"] - table[f"baseline_{basis}"]
    table["delta_kernels"] = table["candidate_kernels"] - table["baseline_kernels"]
    total = table.loc[table["stage"] == "forward", "delta_ms"]
    total = float(total.iloc[0]) if len(total) else float(table.loc[table["stage"] != "forward", "delta_ms"].sum())
    table["share_of_change"] = table["delta_ms"] / total if abs(total) > 0 else math.nan
    return table


def kernel_diff(base_kernels: pd.DataFrame, cand_kernels: pd.DataFrame, base_iterations: float,
                cand_iterations: float) -> pd.DataFrame:
    """Each kernel (each CPU operator, for a CPU trace) of one matched point on both sides: calls and
    time per forward, the change, and ``presence``: ``added`` (the candidate's only), ``removed``
    (the baseline's only) or ``both``. Largest change first."""
    def per_forward(kernels, iterations):
        if kernels.empty:
            return pd.DataFrame(columns=["calls", "ms"])
        grouped = kernels.groupby("kernel")[["calls", "total_ms"]].sum()
        return pd.DataFrame({"calls": grouped["calls"] / iterations, "ms": grouped["total_ms"] / iterations})

    b, c = per_forward(base_kernels, base_iterations), per_forward(cand_kernels, cand_iterations)
    table = b.add_prefix("baseline_").join(c.add_prefix("candidate_"), how="outer")
    table["presence"] = np.where(table["baseline_calls"].isna(), "added",
                                 np.where(table["candidate_calls"].isna(), "removed", "both"))
    table = table.fillna({"baseline_calls": 0.0, "candidate_calls": 0.0, "baseline_ms": 0.0, "candidate_ms": 0.0})
    table["delta_calls"] = table["candidate_calls"] - table["baseline_calls"]
    table["delta_ms"] = table["candidate_ms"] - table["baseline_ms"]
    table = table.reset_index().rename(columns={"index": "kernel"})
    order = table["delta_ms"].abs().sort_values(ascending=False, kind="stable").index
    return table.loc[order].reset_index(drop=True)


def trace_summary(stages: pd.DataFrame, kernels: pd.DataFrame) -> str:
    """One line: the stage that changed most and by how much, and the launches added or removed,
    e.g. ``global attention blocks 21% faster (64% of the change); 40 launches added per forward``."""
    named = stages[~stages["stage"].isin(["forward"])]
    basis = named["basis"].iloc[0] if len(named) else "cpu"
    parts = []
    if len(named) and named["delta_ms"].abs().max() > 0:
        top = named.loc[named["delta_ms"].abs().idxmax()]
        before, after = top[f"baseline_{basis}_ms"], top[f"candidate_{basis}_ms"]
        name = STAGE_NAMES.get(top["stage"], top["stage"])
        if before > 0 and after < before:
            how = f"{1 - after / before:.0%} faster"
        elif before > 0:
            how = f"{after / before - 1:.0%} slower" if after < 2 * before else f"{after / before:.1f}x slower"
        else:
            how = f"+{after:.3g} ms (new)"
        share = top["share_of_change"]
        parts.append(f"{name} {how}" + ("" if missing(share) else f" ({share:.0%} of the change)"))
    launched = "launches" if basis == "gpu" else "CPU operator calls"
    calls = float(kernels["delta_calls"].sum()) if len(kernels) else 0.0
    if round(calls):
        parts.append(f"{abs(round(calls)):,} {launched} {'added' if calls > 0 else 'removed'} per forward")
    new = kernels[kernels["presence"] != "both"] if len(kernels) else kernels
    for presence in ("added", "removed"):
        names = new[new["presence"] == presence]["kernel"].tolist() if len(new) else []
        if names:
            parts.append(f"{len(names)} {'kernel' if basis == 'gpu' else 'operator'}"
                         f"{'s' if len(names) != 1 else ''} {presence} ({', '.join(str(n)[:40] for n in names[:3])}"
                         f"{', ...' if len(names) > 3 else ''})")
    return "; ".join(parts) or "no change in the traces"


def profile_ids(profiles: Dict[str, str], results: pd.DataFrame) -> Dict[str, str]:
    """``profiles`` (``{point_id: directory}`` as the profile files name them) keyed by the results
    rows' current ids: a profile written before the store's format 2 is named by the row's
    ``former_point_id``."""
    out = dict(profiles)
    if "former_point_id" in results:
        for current, former in zip(results["point_id"], results["former_point_id"]):
            if isinstance(former, str) and former in profiles and current not in out:
                out[current] = profiles[former]
    return out


def trace_diffs(table: pd.DataFrame, baseline_profiles: Dict[str, Tuple[dict, pd.DataFrame, pd.DataFrame]],
                candidate_profiles: Dict[str, Tuple[dict, pd.DataFrame, pd.DataFrame]]
                ) -> Tuple[pd.DataFrame, pd.DataFrame, Dict[str, str]]:
    """(stages, kernels, summaries) of every matched point both sides hold a profile of.

    ``*_profiles``: ``{point_id: (point.json, nvtx_ranges, kernels)}`` of each side, keyed by the
    rows' current ids (``profile_ids``). Stages: COMPARE_STAGE_COLUMNS; kernels:
    COMPARE_KERNEL_COLUMNS; summaries: ``{point_id: trace_summary line}``."""
    stages, kernels, lines = [], [], {}
    for _, row in table[table["side"] == "both"].iterrows():
        found = [baseline_profiles.get(row["baseline_point_id"]), candidate_profiles.get(row["candidate_point_id"])]
        if None in found:
            continue
        (b_meta, b_ranges, b_kernels), (c_meta, c_ranges, c_kernels) = found
        b_iter, c_iter = float(b_meta.get("iterations") or 1), float(c_meta.get("iterations") or 1)
        if b_ranges.empty or c_ranges.empty:
            continue
        st = stage_diff(b_ranges, c_ranges, b_iter, c_iter)
        kn = kernel_diff(b_kernels, c_kernels, b_iter, c_iter)
        pid = row["point_id"]
        lines[pid] = trace_summary(st, kn)
        stages.append(st.assign(point_id=pid, label=row["label"], frames=row["frames"]))
        kernels.append(kn.assign(point_id=pid, label=row["label"], frames=row["frames"]))
    stage_table = pd.concat(stages, ignore_index=True) if stages else pd.DataFrame()
    kernel_table = pd.concat(kernels, ignore_index=True) if kernels else pd.DataFrame()
    return (stage_table.reindex(columns=COMPARE_STAGE_COLUMNS), kernel_table.reindex(columns=COMPARE_KERNEL_COLUMNS),
            lines)


# ---- two directories ------------------------------------------------------------------------------
@dataclass
class Comparison:
    """Everything ``compare`` says about two results directories."""

    table: pd.DataFrame                      # COMPARE_COLUMNS, one row per point of either side
    environment: pd.DataFrame                # environment_diff
    stages: pd.DataFrame = field(default_factory=pd.DataFrame)   # COMPARE_STAGE_COLUMNS (trace diffs)
    kernels: pd.DataFrame = field(default_factory=pd.DataFrame)  # COMPARE_KERNEL_COLUMNS
    traces: Dict[str, str] = field(default_factory=dict)         # point_id -> trace_summary line


def compare_dirs(baseline_dir: str, candidate_dir: str, baseline: pd.DataFrame, candidate: pd.DataFrame,
                 ignore: Sequence[str] = (), noise_floor: float = NOISE_FLOOR) -> Comparison:
    """``compare`` of two directories' results tables (``load_results``), their environments, and the
    trace diffs of the matched points both directories hold profiles of (``profiles/*/``)."""
    table = compare(baseline, candidate, ignore, noise_floor=noise_floor)
    both = table[table["side"] == "both"]

    def profiles(directory, results, wanted):
        found = profile_ids(point_profiles(directory), results)
        return {pid: read_profile(found[pid]) for pid in wanted if pid in found}

    stages, kernels, traces = trace_diffs(table, profiles(baseline_dir, baseline, both["baseline_point_id"]),
                                          profiles(candidate_dir, candidate, both["candidate_point_id"]))
    return Comparison(table, environment_diff(baseline, candidate), stages, kernels, traces)
