"""PyTorch profiler Chrome traces as the same tidy tables as ``nsys_sqlite``.

Reads what ``prof.export_chrome_trace(path)`` writes (``.json`` or ``.json.gz``): a
``traceEvents`` list of complete events (``"ph": "X"``, ``ts``/``dur`` in microseconds) whose
``cat`` says what they are:

* ``user_annotation``: a ``torch.profiler.record_function`` range (our model's named ranges);
* ``cpu_op``: an ATen operator on a CPU thread;
* ``cuda_runtime`` / ``cuda_driver``: a CUDA API call, with ``args.correlation``;
* ``kernel`` / ``gpu_memcpy`` / ``gpu_memset``: GPU work, with the ``args.correlation`` of
  the API call that launched it (the ``ac2g`` flow events draw the same link).

Ranges are projected onto the GPU exactly as for nsys (``nsys_sqlite.project_ranges``): the
GPU ops whose launching API call lies inside the range instance on its thread, first op start
to last op end. (Kineto's own ``gpu_user_annotation`` events are not used.)

A trace taken on the CPU alone has no GPU ops. Then ``gpu_ms`` is NaN, ``cuda_api`` and
``gpu_activity`` hold no measurements, and the ``kernels`` table summarises CPU operators
instead, by *self* time (an operator's time less that of the operators it called, so the
totals add up like kernel times do): its ``attrs["kernel_source"]`` is ``"cpu_op"`` (else
``"kernel"``) and ``attrs["notes"]`` says so.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Union

import numpy as np
import pandas as pd

from vggt_bench.profiling.nsys_sqlite import (
    NoProfileData,
    activity_table,
    duration_table,
    project_ranges,
    range_table,
)
from vggt_bench.core.schema import CUDA_API_COLUMNS

_GPU_OP_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
_API_CATS = ("cuda_runtime", "cuda_driver")


def load_events(path: Union[str, os.PathLike]) -> pd.DataFrame:
    """The complete ("X") events of a Chrome trace, one row each, times in ns.

    Columns: ``name``, ``cat``, ``thread`` ("pid:tid"), ``start_ns``, ``end_ns``,
    ``correlation`` (NaN where absent).
    """
    path = Path(path)
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        raw = gzip.decompress(raw)
    trace = json.loads(raw)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    rows = [
        (
            e.get("name", ""),
            e.get("cat", ""),
            f"{e.get('pid')}:{e.get('tid')}",
            e.get("ts", 0.0),
            e.get("dur", 0.0),
            (e.get("args") or {}).get("correlation"),
        )
        for e in events
        if e.get("ph") == "X"
    ]
    frame = pd.DataFrame(rows, columns=["name", "cat", "thread", "ts_us", "dur_us", "correlation"])
    # ts is microseconds with ns decimals; whole ns keep the sums exact.
    frame["start_ns"] = np.round(frame.pop("ts_us").astype("float64") * 1000.0).astype("int64")
    frame["end_ns"] = frame["start_ns"] + np.round(
        frame.pop("dur_us").astype("float64") * 1000.0).astype("int64")
    frame["correlation"] = pd.to_numeric(frame["correlation"], errors="coerce")
    return frame


def _launch_calls(events: pd.DataFrame) -> pd.DataFrame:
    """API calls that launched GPU ops, with the span and count of what each launched."""
    ops = events[events["cat"].isin(_GPU_OP_CATS) & events["correlation"].notna()]
    launched = (
        ops.assign(is_kernel=ops["cat"] == "kernel", dur_ns=ops["end_ns"] - ops["start_ns"])
        .groupby("correlation")
        .agg(gpu_start_ns=("start_ns", "min"), gpu_end_ns=("end_ns", "max"),
             kernels=("is_kernel", "sum"), gpu_ops=("name", "size"), gpu_busy_ns=("dur_ns", "sum"))
    )
    calls = events[events["cat"].isin(_API_CATS) & events["correlation"].notna()]
    return calls[["thread", "start_ns", "end_ns", "correlation"]].join(
        launched, on="correlation", how="inner")


def _self_ms(ops: pd.DataFrame) -> np.ndarray:
    """Self time (ms) of nested CPU ops: each op's time less its direct children's.

    ops: ``thread``, ``start_ns``, ``end_ns``. One stack pass per thread.
    """
    order = ops.sort_values(["thread", "start_ns", "end_ns"], ascending=[True, True, False],
                            kind="stable")
    pos = {idx: i for i, idx in enumerate(ops.index)}
    dur = (ops["end_ns"] - ops["start_ns"]).to_numpy(dtype="float64")
    self_ns = dur.copy()
    stack: list[tuple[int, int]] = []  # (end_ns, position) of the open ops
    current = None
    for idx, thread, end in zip(order.index, order["thread"], order["end_ns"]):
        if thread != current:
            stack, current = [], thread
        while stack and stack[-1][0] < end:
            stack.pop()
        i = pos[idx]
        if stack:
            self_ns[stack[-1][1]] -= dur[i]
        stack.append((end, i))
    return self_ns / 1e6


def nvtx_ranges(events: pd.DataFrame) -> pd.DataFrame:
    """NVTX_RANGE_COLUMNS from the trace's ``record_function`` ranges (domain "")."""
    ranges = events[events["cat"] == "user_annotation"].rename(columns={"name": "range"})
    ranges = ranges.assign(domain="", cpu_ms=(ranges["end_ns"] - ranges["start_ns"]) / 1e6)
    gpu_known = bool(events["cat"].isin(_GPU_OP_CATS).any())
    projected = project_ranges(ranges[["thread", "start_ns", "end_ns"]], _launch_calls(events))
    return range_table(pd.concat([ranges, projected], axis=1), gpu_known=gpu_known)


def kernel_summary(events: pd.DataFrame) -> pd.DataFrame:
    """KERNEL_COLUMNS over GPU kernels; over CPU ops by self time when there are none."""
    kernels = events[events["cat"] == "kernel"]
    if len(kernels):
        table = duration_table(kernels["name"], kernels["end_ns"] - kernels["start_ns"])
        table.attrs["kernel_source"] = "kernel"
        return table
    ops = events[events["cat"] == "cpu_op"]
    table = duration_table(ops["name"], _self_ms(ops) * 1e6 if len(ops) else ops["start_ns"])
    table.attrs["kernel_source"] = "cpu_op"
    return table


def cuda_api_summary(events: pd.DataFrame) -> pd.DataFrame:
    """CUDA_API_COLUMNS over the trace's cuda_runtime and cuda_driver events."""
    calls = events[events["cat"].isin(_API_CATS)]
    table = (
        calls.assign(ms=(calls["end_ns"] - calls["start_ns"]) / 1e6)
        .groupby("name", as_index=False)
        .agg(calls=("ms", "size"), total_ms=("ms", "sum"))
        .rename(columns={"name": "api"})
    )
    table["mean_ms"] = table["total_ms"] / table["calls"]
    table["pct"] = 100.0 * table["total_ms"] / table["total_ms"].sum()
    table = table.sort_values(["total_ms", "api"], ascending=[False, True], kind="stable")
    return table[CUDA_API_COLUMNS].reset_index(drop=True)


def gpu_activity(events: pd.DataFrame, window=None) -> pd.DataFrame:
    """GPU_ACTIVITY_COLUMNS over kernel/memcpy/memset events; window as in nsys_sqlite."""
    ops = events[events["cat"].isin(_GPU_OP_CATS)]
    return activity_table(ops["start_ns"].to_numpy(), ops["end_ns"].to_numpy(),
                          (ops["cat"] == "kernel").to_numpy(), window=window)


def read_trace(path: Union[str, os.PathLike]) -> dict[str, pd.DataFrame]:
    """All four profile tables of one PyTorch profiler Chrome trace, keys as ``read_report``.

    Raises NoProfileData when the trace holds no record_function ranges, no GPU kernels
    and no CPU operators. ``attrs["notes"]`` (one list shared by every table) says what is
    missing or stands in: no ranges, CPU-only (gpu_ms NaN, kernels summarise cpu_op).
    """
    path = Path(path)
    events = load_events(path)
    cats = set(events["cat"])
    has_ranges, has_kernels = "user_annotation" in cats, "kernel" in cats
    if not has_ranges and not has_kernels and "cpu_op" not in cats:
        raise NoProfileData(
            f"{path.name}: trace holds no record_function ranges, no GPU kernels and no CPU "
            f"ops: the profiler probably ran outside the work (was the model called inside "
            f"`with torch.profiler.profile(...)`, and did a schedule skip every step?)"
        )
    tables = {
        "nvtx_ranges": nvtx_ranges(events),
        "kernels": kernel_summary(events),
        "cuda_api": cuda_api_summary(events),
        "gpu_activity": gpu_activity(events),
    }
    notes = []
    if not has_ranges:
        notes.append("trace holds no record_function ranges: nvtx_ranges is empty")
    if not events["cat"].isin(_GPU_OP_CATS).any():
        notes.append("CPU-only trace: no GPU ops, so gpu_ms is NaN, cuda_api and "
                     "gpu_activity are empty, and kernels summarises CPU ops (cpu_op) by "
                     "self time")
    for table in tables.values():
        table.attrs["notes"] = notes
        table.attrs["source"] = str(path)
    tables["kernels"].attrs["kernel_source"] = "kernel" if has_kernels else "cpu_op"
    return tables
