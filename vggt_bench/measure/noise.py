"""How far to trust a row: ``noisy`` and the reasons, from its spread and the machine's state.

Entry points:

* :func:`classify` -- ``(noisy, reason)`` for one result row (a dict).
* :func:`columns` -- the ``spread``, ``noisy``, ``noise_reason``, ``backs_claim`` and ``claim_note``
  columns of one row.
* :func:`flag_noisy` -- (re)computes those columns for a whole results table; old tables
  without the telemetry columns are judged on what they have (spread and repeats).

A row is noisy when any of these holds (each adds a short phrase with its number to
``noise_reason``, joined with "; "):

* too few repeats to judge the spread (fewer than ``min_repeats``, 3): p10 and p90 of one or
  two values say nothing about the spread, so such a row cannot be trusted for a comparison
  and is flagged (``few_repeats_noisy``);
* the relative spread p90/p10 exceeds 1.10 on a GPU or 1.5 on a CPU (CPU timings of a
  small model are naturally wider: the OS scheduler, frequency scaling, allocator);
* other processes took more than 25% of the usable CPUs' time during the timed section
  (``cpu_other_share``), or the 1-minute load average exceeds the machine's cores while the
  load this process cannot explain (load - ``cpu_self_share`` x usable cores) is more than
  a quarter of the cores -- the load average includes this process's own threads, which on
  a small machine fill every core without anyone else running;
* another process held a context on the GPU at the start or end of the timed section
  (``gpu_processes`` > 1): it shares the SMs and memory bandwidth, and the timing it leaves is
  steady but wrong (a narrow spread does not show it);
* the GPU's clocks were pulled down (non-benign clock-event reasons at the start or end of
  the timed section: ``hw_slowdown``, thermal slowdowns, power brake ...; ``gpu_idle``,
  ``applications_clocks_setting`` and the software power cap ``sw_power_cap`` are benign:
  see ``telemetry.BENIGN_THROTTLE``);
* adaptive timing stopped by its budget or max_repeats before the median's CI converged.

Rows whose status is not ``ok`` have no timing to judge: ``noisy`` False, reason "".

Whether a row's latency can back a speed claim (``backs_claim``, with ``claim_note`` saying why not):
only a GPU row that is not noisy. A CPU row never does, noisy or not: CPU timings move whenever
anything else runs on the machine (CI's two cores, a build beside the sweep), so they show that the
harness works, not what an optimisation buys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import FrozenSet, Tuple

from .telemetry import BENIGN_THROTTLE, real_throttling

SPREAD_MAX_GPU = 1.10        # p90/p10 above this on a GPU is noisy
SPREAD_MAX_CPU = 1.5         # ... on a CPU
OTHER_SHARE_MAX = 0.25       # other processes' share of the usable CPUs above this is noisy
LOAD_OTHER_MAX_CORES = 0.25  # load not explained by this process, as a fraction of the cores
MIN_REPEATS = 3              # fewer timed calls cannot show a spread

COLUMNS = [
    "spread",        # latency_ms_p90 / latency_ms_p10 (NaN when not timed)
    "noisy",         # bool: do not trust this row's latency without looking at noise_reason
    "noise_reason",  # "; "-joined reasons ("" when clean)
    "backs_claim",   # bool: the latency may back a speed claim (a GPU row, not noisy)
    "claim_note",    # why not ("" when it may)
]
CPU_NOTE = ("CPU timing: it moves whenever anything else runs on this machine, so it backs no speed claim "
            "(GPU studies do)")


@dataclass(frozen=True)
class Thresholds:
    spread_gpu: float = SPREAD_MAX_GPU
    spread_cpu: float = SPREAD_MAX_CPU
    other_share: float = OTHER_SHARE_MAX
    load_other_cores: float = LOAD_OTHER_MAX_CORES
    min_repeats: int = MIN_REPEATS
    few_repeats_noisy: bool = True
    # Clock-event reasons that do not make a row noisy. An H100 under sustained bf16 matmuls
    # reports sw_power_cap (seen: SM clock 1980 -> 1440 MHz); add it here to accept power-capped
    # clocks as the GPU's normal state instead of flagging every such row.
    benign_throttle: FrozenSet[str] = BENIGN_THROTTLE


DEFAULT = Thresholds()


def _num(row, key) -> float:
    value = row.get(key) if hasattr(row, "get") else None
    if value is None or isinstance(value, str) and not value.strip():
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _text(row, key) -> str:
    value = row.get(key)
    if value is None or isinstance(value, float) and math.isnan(value):
        return ""
    return str(value)


def spread(row) -> float:
    """latency_ms_p90 / latency_ms_p10 (NaN when either is missing or p10 <= 0)."""
    p10, p90 = _num(row, "latency_ms_p10"), _num(row, "latency_ms_p90")
    return p90 / p10 if p10 > 0 and not math.isnan(p90) else math.nan


def _on_gpu(row) -> bool:
    return _text(row, "device").startswith("cuda")


def reasons(row, thresholds: Thresholds = DEFAULT) -> list:
    """The noise reasons of an ``ok`` row, each a short phrase with its number."""
    t = thresholds
    out = []
    repeats = _num(row, "repeats")
    if not math.isnan(repeats) and repeats < t.min_repeats and t.few_repeats_noisy:
        out.append(f"only {int(repeats)} repeat{'s' if repeats != 1 else ''}: too few to judge the spread (need >= {t.min_repeats})")
    s = spread(row)
    limit = t.spread_gpu if _on_gpu(row) else t.spread_cpu
    if s > limit:
        out.append(f"spread p90/p10 {s:.2f} > {limit:.2f}")
    load = _num(row, "load_avg_1m")
    cores = _num(row, "cpu_cores")
    if math.isnan(cores):
        cores = _num(row, "cpu_usable_cores")
    if load > cores > 0:
        usable = _num(row, "cpu_usable_cores")
        own = _num(row, "cpu_self_share") * (usable if usable > 0 else cores)
        other = load - own if not math.isnan(own) else load
        if other > t.load_other_cores * cores:
            detail = f" ({other:.1f} from other processes)" if not math.isnan(own) else ""
            out.append(f"load {load:.1f} on {int(cores)} cores{detail}")
    share = _num(row, "cpu_other_share")
    if share > t.other_share:
        out.append(f"other processes took {share:.0%} of the CPU")
    processes = _num(row, "gpu_processes")
    if processes > 1 and _on_gpu(row):
        others = _text(row, "gpu_other_processes")
        n = int(processes) - 1
        out.append(f"{n} other process{'es' if n != 1 else ''} on the GPU" + (f" ({others})" if others else ""))
    throttled = real_throttling(_text(row, "throttle_reasons"), t.benign_throttle)
    if throttled:
        out.append(f"GPU throttled: {', '.join(throttled)}")
    stopped = _text(row, "stopped_by")
    if stopped in ("budget", "max_repeats"):
        rel = _num(row, "rel_ci95")
        ci = f"95% CI +-{rel:.1%}" if not math.isnan(rel) else "no 95% CI"
        n = f" after {int(repeats)} repeats" if not math.isnan(repeats) else ""
        out.append(f"median not converged: {ci}{n} (stopped by {stopped.replace('_', ' ')})")
    return out


def classify(row, thresholds: Thresholds = DEFAULT) -> Tuple[bool, str]:
    """(noisy, reason) of one result row; rows that are not ``ok`` are (False, "")."""
    if _text(row, "status") not in ("ok", ""):
        return False, ""
    found = reasons(row, thresholds)
    return bool(found), "; ".join(found)


def claim(row, noisy: bool) -> Tuple[bool, str]:
    """(backs_claim, claim_note) of one row whose noise verdict is ``noisy``."""
    if _text(row, "status") not in ("ok", ""):
        return False, ""
    if not _on_gpu(row):
        return False, CPU_NOTE
    if noisy:
        return False, "noisy: see noise_reason"
    return True, ""


def columns(row, thresholds: Thresholds = DEFAULT) -> dict:
    """``spread``, ``noisy``, ``noise_reason``, ``backs_claim`` and ``claim_note`` of one row."""
    noisy, reason = classify(row, thresholds)
    backs, note = claim(row, noisy)
    return {"spread": spread(row), "noisy": noisy, "noise_reason": reason, "backs_claim": backs, "claim_note": note}


def flag_noisy(frame, thresholds: Thresholds = DEFAULT):
    """A copy of a results DataFrame with the :data:`COLUMNS` (re)computed."""
    out = frame.copy()
    cols = [columns(row, thresholds) for row in frame.to_dict("records")]
    for name in COLUMNS:
        out[name] = [c[name] for c in cols]
    if len(out):
        out["noisy"] = out["noisy"].astype(bool)
        out["backs_claim"] = out["backs_claim"].astype(bool)
    return out
