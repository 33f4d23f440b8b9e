"""What rows, settings and numbers are called in figures and sentences: one label per thing.

``context_line`` and ``context_slug`` (a context in a title or a file name), ``config_label`` (a
configuration of the model), ``technique`` and ``setting`` (an approximation), the notes figures
print under themselves, and number formats.
"""

from __future__ import annotations

import dataclasses
import re
from typing import List, Sequence, Tuple

import pandas as pd

from vggt_model.config import APPROXIMATE_ATTENTION, ExecutionConfig

from ..core.schema import EXECUTION
from .tidy import APPROXIMATIONS, BOOL_KNOBS, EXACT_VALUE, contexts, missing


FRAME_EXEC_ORDER = ["fused", "sequential", "chunked"]


def int_text(value) -> str:
    try:
        return str(int(value))
    except (TypeError, ValueError):
        return "?"


def device_label(frame: pd.DataFrame) -> str:
    """The GPU's name, or "CPU"."""
    names = sorted({n for n in frame.get("gpu_name", pd.Series(dtype=object)) if isinstance(n, str) and n})
    if names:
        return " / ".join(names)
    devices = {d for d in frame.get("device", pd.Series(dtype=object)) if isinstance(d, str)}
    return "GPU (name not recorded)" if any(d.startswith("cuda") for d in devices) else "CPU"


def context_line(frame: pd.DataFrame) -> str:
    """``device · arch · dtype · HxW`` (+ batch, compile, TF32 where not default) of the rows."""

    def values(col, fmt=str):
        if col not in frame:
            return []
        return sorted({fmt(v) for v in frame[col] if not missing(v) and v != ""})

    parts = [device_label(frame)]
    parts += [" / ".join(values("arch"))] if values("arch") else []
    parts += [" / ".join(values("dtype")) or "dtype ?"]
    res = sorted({f"{int_text(h)}×{int_text(w)}" for h, w in zip(frame.get("height", []), frame.get("width", []))})
    parts += [" / ".join(res) + " px"] if res else []
    batches = values("batch", int_text)
    if batches and batches != ["1"]:
        parts.append("batch " + " / ".join(batches))
    compiles = values("compile")
    if compiles and compiles != ["off"]:
        parts.append("compile " + " / ".join(compiles))
    if True in set(frame.get("tf32", [])) and "fp32" in values("dtype"):
        parts.append("TF32")
    if True in set(frame.get("cuda_graph", [])):
        parts.append("CUDA graph")
    parts += [" / ".join(values("part"))] if values("part") and values("part") != ["aggregator"] else []
    return " · ".join(p for p in parts if p)


def context_slug(context: dict, varying: Sequence[str]) -> str:
    """File-name suffix naming the context values that vary across a directory."""
    parts = []
    if "height" in varying or "width" in varying:
        parts.append(f"{int_text(context.get('height'))}x{int_text(context.get('width'))}")
    for col in varying:
        if col in ("height", "width", "device"):
            continue
        value = context.get(col)
        if col == "gpu_name":
            value = value or "cpu"
        elif col == "batch":
            value = f"b{int_text(value)}"
        elif col == "tf32":
            value = "tf32" if value else "notf32"
        elif col == "compile":
            value = f"compile-{value}"
        elif col == "cuda_graph":
            value = "cudagraph" if value else "nocudagraph"
        elif col == "context_parallel":
            value = f"cp{int_text(value)}"
        if isinstance(value, float) and value.is_integer():  # an int knob read back as a float column
            value = int(value)
        parts.append(str(value))
    slug = "_".join(parts)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", slug).strip("-")


def one_context(frame: pd.DataFrame, across: Sequence[str] = ()) -> Tuple[pd.DataFrame, str]:
    groups = contexts(frame, across)
    if len(groups) <= 1:
        return frame, ""
    ctx, rows = groups[0]
    return rows, f"table mixes {len(groups)} settings; drew {context_line(rows)} (render_figures draws each)"


def order_exec(values) -> List[str]:
    values = [v for v in dict.fromkeys(values) if v]
    return sorted(values, key=lambda v: (FRAME_EXEC_ORDER.index(v) if v in FRAME_EXEC_ORDER else 9, v))


def shorten(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def fmt_percent(value: float) -> str:
    """0.034 -> '3.4%'; tiny drifts in scientific notation (they are rounding noise); 0 -> '0'."""
    if value == 0:
        return "0"
    if value >= 0.1:
        return f"{value:.0%}"
    if value >= 0.001:
        return f"{value:.1%}"
    return f"{value:.0e}"


# ---- configurations and approximations ----------------------------------------------------------
# A configuration of one workload: every execution knob (labels show non-default values only).
CONFIG = [k for k in EXECUTION if k != "frame_chunk"]
# The exact model's configuration: everything but the approximations.
EXACT_CONFIG = tuple(k for k in CONFIG if k not in APPROXIMATIONS)
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ExecutionConfig)}
_ALWAYS_SHOWN = ("frame_exec", "attention", "dtype")
_BOOL_LABELS = {"cuda_graph": "CUDA graph", "tf32": "TF32", "nvtx": "NVTX"}


def config_label(row, columns=CONFIG) -> str:
    """``fused · sdpa_flash · k=0 · bf16_autocast``: frame execution, backend, k and precision
    always; any other knob only where it is not its default (``compile=default``, ``CUDA graph``)."""
    parts = []
    for col in columns:
        value = row.get(col) if hasattr(row, "get") else row[col]
        if col == "prune_depth":
            parts.append(f"k={int(value)}" if not missing(value) else "k=?")
        elif col == "frame_exec" and value == "chunked":
            parts.append(f"chunked({int(row['frame_chunk'])})")
        elif col in BOOL_KNOBS:
            if value is True:
                parts.append(_BOOL_LABELS.get(col, col))
        elif col in _ALWAYS_SHOWN:
            if value not in (None, ""):
                parts.append(str(value))
        elif not missing(value) and value not in ("", None) and value != _DEFAULTS.get(col):
            parts.append(f"{col}={value}")
    return " · ".join(parts)


def _fp8(row) -> bool:
    return row.get("linear_precision") == "fp8"


def technique(row) -> str:
    """What a row approximates: ``exact``, ``prune_depth``, an attention approximation's name,
    ``linear_precision`` (FP8 linears), or a combination (``kv_keep + prune_depth + linear_precision``)."""
    on = [c for c in APPROXIMATE_ATTENTION if not missing(row.get(c)) and row.get(c) != EXACT_VALUE[c]]
    k = row.get("prune_depth")
    on += ["prune_depth"] if not missing(k) and k > 0 else []
    on += ["linear_precision"] if _fp8(row) else []
    return " + ".join(on) or "exact"


def setting(row) -> str:
    """``kv_keep=0.25 · k=4 · layers 8-23 · fp8 linears``: the values a row approximates with."""
    parts = [f"{c}={row.get(c):g}" for c in APPROXIMATE_ATTENTION
             if not missing(row.get(c)) and row.get(c) != EXACT_VALUE[c]]
    k = row.get("prune_depth")
    if not missing(k) and k > 0:
        parts.append(f"k={int(k)}" + ("" if row.get("prune_weights") in (None, "", "global") else
                                      f" ({row.get('prune_weights')} weights)"))
    layers = row.get("approx_layers")
    if len(parts) and not missing(layers) and layers not in ("", "all") and technique(row) != "prune_depth":
        parts.append(f"layers {layers}")
    if _fp8(row):
        parts.append("fp8 linears")
    return " · ".join(parts) or "exact"


# ---- notes under a figure ------------------------------------------------------------------------
def failure_notes(frame: pd.DataFrame, statuses=("error",)) -> List[str]:
    out = []
    for _, row in frame[frame["status"].isin(statuses)].iterrows():
        approx = setting(row)
        out.append(f"{row['status']}: S={int_text(row['frames'])} {row['frame_exec']} {row['attention']} "
                   f"k={int_text(row['prune_depth'])}"
                   + (f" {approx}" if approx not in ("exact",) and not approx.startswith("k=") else "")
                   + f": {row['message']}")
    return out


def unavailable_notes(frame: pd.DataFrame) -> List[str]:
    rows = frame[frame["status"] == "unavailable"]
    seen = {}
    for _, row in rows.iterrows():
        seen.setdefault(row["attention"], row["message"])
    return [f"{name} not available here: {msg}" for name, msg in sorted(seen.items())]


def part_name(frame: pd.DataFrame) -> str:
    parts = sorted(set(frame["part"]) - {""})
    return "aggregator" if parts == ["aggregator"] else ("full model" if parts == ["full"] else "forward")
