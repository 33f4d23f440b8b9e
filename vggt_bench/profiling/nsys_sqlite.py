"""Nsight Systems traces, read from their SQLite export, as tidy DataFrames.

``nsys export --type sqlite report.nsys-rep`` writes one SQLite file per report. This module
turns it into the four profile tables whose columns ``vggt_bench.core.schema`` fixes:

=================  ======================================  =====================================
table              one row per                             nsys stats report it reproduces
=================  ======================================  =====================================
``nvtx_ranges``    (NVTX domain, range name)               ``nvtx_sum`` + ``nvtx_gpu_proj_sum``
``kernels``        kernel name (demangled, as nsys shows)  ``cuda_gpu_kern_sum``
``cuda_api``       CUDA runtime/driver function            ``cuda_api_sum``
``gpu_activity``   captured window (one row)               none: union of GPU op intervals
=================  ======================================  =====================================

Why both CPU and GPU time per range: CUDA is asynchronous. An NVTX range measures the CPU
thread, and the CPU can spend a range waiting for GPU work queued *before* it (a
``cudaStreamSynchronize``, a ``.item()``), while the work it queued itself runs on the GPU
later. The GPU projection follows what nsys's ``nvtx_gpu_proj_sum`` does, checked against the
numbers nsys 2025.3 printed for four real reports (tests/test_nsys_parse.py):

* a GPU operation (kernel, memcpy, memset) belongs to a range instance when the CUDA API call
  that launched it (linked through ``correlationId`` within one process) started and ended
  inside the range, on the range's own thread;
* so an enclosing range counts the operations of all the ranges nested in it (the API call is
  inside both), and StartEnd ranges count only when they start and end on one thread;
* the projected time of an instance is ``last op end - first op start``: one span, with any
  idle time and any overlap between its operations inside it (not a sum of op durations);
* a range's total projected time is the sum over its instances; instances that launched no
  GPU work have no projection (nsys leaves them out; here they add 0).

A range's ``disagree`` flag is set where its CPU and GPU-projected totals differ by more than
DISAGREE_FACTOR either way; a range that took CPU time but launched no GPU work (a sync wait)
has gpu_ms 0, an infinite ratio, and is flagged too.

Timestamps stay in the export's nanoseconds (``*_ns`` columns); tables report ms and us.
Each big table is read once (np.fromiter over the cursor) and every join is a vectorised
numpy/pandas step: a synthetic 200 MB export with 3 M API calls, 3 M kernels and 18 k nested
ranges reads in about 8 s on 2 cores (1 GiB peak); the seed's 100-frame reports in 0.4 s.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator, Union

import numpy as np
import pandas as pd

from vggt_bench.core.schema import (
    CUDA_API_COLUMNS,
    GPU_ACTIVITY_COLUMNS,
    KERNEL_COLUMNS,
    NVTX_RANGE_COLUMNS,
)

PathOrConn = Union[str, os.PathLike, sqlite3.Connection]

TABLES = ("nvtx_ranges", "kernels", "cuda_api", "gpu_activity")
"""Keys of the dict that :func:`read_report` (and ``torch_trace.read_trace``) return."""

DISAGREE_FACTOR = 2.0
"""A range's CPU and GPU-projected times "disagree" when one exceeds the other by this factor."""

# ENUM_NSYS_EVENT_TYPE ids (stable across export schema 3.x).
_NVTX_DOMAIN_CREATE = 75
_NVTX_RANGE_STYLES = {59: "PushPop", 60: "StartEnd", 70: "PushPop", 71: "StartEnd"}  # 70/71: NVTXT

_KERNEL = "CUPTI_ACTIVITY_KIND_KERNEL"
_MEMCPY = "CUPTI_ACTIVITY_KIND_MEMCPY"
_MEMSET = "CUPTI_ACTIVITY_KIND_MEMSET"
_RUNTIME = "CUPTI_ACTIVITY_KIND_RUNTIME"
_NVTX = "NVTX_EVENTS"

# nsys prints "cudaMalloc" for the export's "cudaMalloc_v3020" but keeps longer suffixes
# ("cudaStreamIsCapturing_v10000", "cuGetProcAddress_v2"): it drops a 6-character "_vNNNN".
_API_VERSION_SUFFIX = re.compile(r"_v\d{4}$")


class NoProfileData(RuntimeError):
    """The trace holds nothing to analyse: no NVTX ranges and no GPU kernels."""


# --------------------------------------------------------------------------------------------
# Opening an export


def connect(path: Union[str, os.PathLike]) -> sqlite3.Connection:
    """Open an nsys SQLite export read-only: ``.sqlite``, ``.sqlite.gz`` or ``.nsys-rep``.

    A ``.sqlite.gz`` is decompressed into memory. For a ``.nsys-rep`` the export next to it
    (same stem, ``.sqlite`` or ``.sqlite.gz``) is used; without one, ``nsys export`` makes it
    in a temporary directory when ``nsys`` is on the PATH.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such trace: {path}")
    if path.name.endswith(".nsys-rep"):
        return connect(_export_of(path))
    if path.name.endswith(".gz"):
        data = gzip.decompress(path.read_bytes())
        conn = sqlite3.connect(":memory:")
        conn.deserialize(data)
        return conn
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


def _export_of(rep: Path) -> Path:
    stem = rep.name[: -len(".nsys-rep")]
    for suffix in (".sqlite", ".sqlite.gz"):
        candidate = rep.with_name(stem + suffix)
        if candidate.exists():
            return candidate
    nsys = shutil.which("nsys")
    if nsys is None:
        raise FileNotFoundError(
            f"{rep} has no SQLite export beside it and nsys is not on the PATH: "
            f"run `nsys export --type sqlite --output {stem}.sqlite {rep}` where nsys is"
        )
    out = Path(tempfile.mkdtemp(prefix="nsys_export_")) / f"{stem}.sqlite"
    subprocess.run(
        [nsys, "export", "--type", "sqlite", "--output", str(out), str(rep)],
        check=True, capture_output=True,
    )
    return out


class _Export:
    """One open export. Reads each big table once, into int64 numpy columns.

    ``window=(start_ns, end_ns)`` (the export's clock) narrows every table to what happened
    inside it: NVTX range instances that start and end inside, CUDA API calls that start and
    end inside, and the GPU operations those calls launched (wherever on the GPU timeline they
    ran; an operation without a correlation id counts when it starts inside). ``within(window)``
    gives such a view of an open export that shares its already-read tables.
    """

    def __init__(self, conn: sqlite3.Connection, window=None, base: "_Export" = None):
        self.conn = conn
        self.window = None if window is None else (int(window[0]), int(window[1]))
        self._base = base if base is not None else self
        self.tables = (base.tables if base is not None else
                       {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")})

    def within(self, window) -> "_Export":
        """A view of this export narrowed to ``window`` = (start_ns, end_ns)."""
        return _Export(self.conn, window, base=self._base)

    def count(self, table: str, where: str = "") -> int:
        if table not in self.tables:
            return 0
        return self.conn.execute(f"SELECT count(*) FROM {table} {where}").fetchone()[0]

    def ints(self, sql: str, columns: list[str]) -> pd.DataFrame:
        """Run a query of integer, never-NULL columns (coalesce in SQL) into a DataFrame.

        np.fromiter over the cursor is ~2x faster than pd.read_sql_query on millions of rows.
        """
        rows = np.fromiter(self.conn.execute(sql), dtype=[(c, "int64") for c in columns])
        return pd.DataFrame(rows)

    @functools.cached_property
    def gpu_ops(self) -> pd.DataFrame:
        """Every kernel, memcpy and memset: start_ns, end_ns, correlation, pid, is_kernel,
        name_id (StringIds id of the demangled kernel name; -1 for memcpy/memset).
        In a window: the operations the window's API calls launched (see the class)."""
        if self.window is None:
            return self._base._all_gpu_ops
        ops = self._base._all_gpu_ops
        calls = self.api_calls
        launched = pd.MultiIndex.from_arrays([ops["pid"], ops["correlation"]]).isin(
            pd.MultiIndex.from_arrays([calls["pid"], calls["correlation"]]))
        lo, hi = self.window
        loose = (ops["correlation"] < 0) & (ops["start_ns"] >= lo) & (ops["start_ns"] <= hi)
        return ops[launched | loose.to_numpy()].reset_index(drop=True)

    @functools.cached_property
    def _all_gpu_ops(self) -> pd.DataFrame:
        columns = ["start_ns", "end_ns", "correlation", "pid", "is_kernel", "name_id"]
        parts = [
            self.ints(
                f"SELECT start, end, coalesce(correlationId, -1), coalesce(globalPid, 0) >> 24, "
                f"{int(table == _KERNEL)}, {'demangledName' if table == _KERNEL else -1} FROM {table}",
                columns,
            )
            for table in (_KERNEL, _MEMCPY, _MEMSET)
            if table in self.tables
        ]
        if not parts:
            return pd.DataFrame({c: pd.Series(dtype="int64") for c in columns})
        return pd.concat(parts, ignore_index=True)

    @functools.cached_property
    def api_calls(self) -> pd.DataFrame:
        """Every CUDA runtime/driver call: thread (globalTid), start_ns, end_ns, correlation,
        name_id, pid. In a window: the calls that start and end inside it."""
        if self.window is None:
            return self._base._all_api_calls
        calls = self._base._all_api_calls
        lo, hi = self.window
        return calls[(calls["start_ns"] >= lo) & (calls["end_ns"] <= hi)].reset_index(drop=True)

    @functools.cached_property
    def _all_api_calls(self) -> pd.DataFrame:
        columns = ["thread", "start_ns", "end_ns", "correlation", "name_id"]
        if _RUNTIME not in self.tables:
            calls = pd.DataFrame({c: pd.Series(dtype="int64") for c in columns})
        else:
            calls = self.ints(
                f"SELECT coalesce(globalTid, 0), start, end, coalesce(correlationId, -1), nameId "
                f"FROM {_RUNTIME}",
                columns,
            )
        calls["pid"] = calls["thread"].to_numpy() >> 24
        return calls

    @property
    def nvtx_events(self) -> pd.DataFrame:
        """Every NVTX range event of the export (never windowed): domain, range, event_type,
        thread (NaN for a StartEnd range ended on another thread), start_ns, end_ns (NaN:
        never ended)."""
        return self._base._all_nvtx_events

    @functools.cached_property
    def _all_nvtx_events(self) -> pd.DataFrame:
        has_strings = "StringIds" in self.tables
        strings = "LEFT JOIN StringIds AS s ON s.id = e.textId" if has_strings else ""
        text = "coalesce(s.value, e.text)" if has_strings else "e.text"
        styles = ", ".join(str(t) for t in _NVTX_RANGE_STYLES)
        # A domain's name comes from its create event, per process (ids are per process).
        return pd.read_sql_query(
            f"""
            WITH domains AS (
                SELECT e.domainId AS id, e.globalTid >> 24 AS pid, {text} AS name
                FROM {_NVTX} AS e {strings}
                WHERE e.eventType = {_NVTX_DOMAIN_CREATE}
                GROUP BY 1, 2
            )
            SELECT coalesce(d.name, '') AS domain, coalesce({text}, '') AS range,
                   e.eventType AS event_type,
                   CASE WHEN e.endGlobalTid IS NULL OR e.endGlobalTid = e.globalTid
                        THEN e.globalTid END AS thread,
                   e.start AS start_ns, e.end AS end_ns
            FROM {_NVTX} AS e {strings}
            LEFT JOIN domains AS d
              ON d.id = e.domainId AND d.pid = (e.globalTid >> 24)
            WHERE e.eventType IN ({styles})
            ORDER BY e.start
            """,
            self.conn,
        )

    def strings(self, ids) -> pd.Series:
        """StringIds values for some ids, indexed by id."""
        ids = pd.unique(np.asarray(ids, dtype="int64"))
        if "StringIds" not in self.tables or len(ids) == 0:
            return pd.Series(dtype="object")
        found = pd.read_sql_query(
            f"SELECT id, value FROM StringIds WHERE id IN ({', '.join(map(str, ids))})", self.conn)
        return found.set_index("id")["value"]

    def launch_calls(self) -> pd.DataFrame:
        """API calls that launched GPU work, with the span and count of what each launched
        (the ``calls`` input of :func:`project_ranges`), linked by (process, correlationId)."""
        ops = self.gpu_ops[self.gpu_ops["correlation"] >= 0]
        launched = ops.assign(dur_ns=ops["end_ns"] - ops["start_ns"]).groupby(["pid", "correlation"]).agg(
            gpu_start_ns=("start_ns", "min"), gpu_end_ns=("end_ns", "max"),
            kernels=("is_kernel", "sum"), gpu_ops=("is_kernel", "size"), gpu_busy_ns=("dur_ns", "sum"),
        )
        calls = self.api_calls[["thread", "start_ns", "end_ns", "pid", "correlation"]]
        return calls.join(launched, on=["pid", "correlation"], how="inner")


@contextlib.contextmanager
def _opened(source) -> Iterator[_Export]:
    """Yield an _Export for a path, a connection or an _Export; close only what we opened."""
    if isinstance(source, _Export):
        yield source
    elif isinstance(source, sqlite3.Connection):
        yield _Export(source)
    else:
        conn = connect(source)
        try:
            yield _Export(conn)
        finally:
            conn.close()


# --------------------------------------------------------------------------------------------
# Building blocks shared with torch_trace (inputs are plain DataFrames, times in ns)


def project_ranges(ranges: pd.DataFrame, calls: pd.DataFrame) -> pd.DataFrame:
    """Project range instances onto the GPU through the API calls made inside them.

    ranges: one row per range instance, columns ``thread``, ``start_ns``, ``end_ns``
        (``thread`` NaN/None: never projected, e.g. a StartEnd range ended on another thread).
    calls: one row per API call that launched GPU work, columns ``thread``, ``start_ns``,
        ``end_ns``, ``gpu_start_ns`` (first op start), ``gpu_end_ns`` (last op end),
        ``kernels`` and ``gpu_ops`` (how many it launched), and optionally ``gpu_busy_ns``
        (the summed durations of what it launched).

    Returns a frame on ``ranges.index`` with ``gpu_start_ns``, ``gpu_end_ns``, ``gpu_ms``
    (NaN where the instance launched nothing), ``kernels`` and ``gpu_ops`` (0 there), and
    ``gpu_busy_ms``: the summed durations of the instance's GPU ops. The projected span
    counts the GPU idle time between them (a launch-bound range spans its CPU time);
    ``gpu_busy_ms`` is the GPU work itself.
    A call belongs to an instance when ``range.start <= call.start`` and
    ``call.end <= range.end`` on the same thread. Calls are sorted per thread and each
    instance takes its slice with ``np.searchsorted``; the (instance, call) pairs this
    expands to number about (calls x nesting depth).
    """
    gpu_start = np.full(len(ranges), np.nan)
    gpu_end = np.full(len(ranges), np.nan)
    kernels = np.zeros(len(ranges), dtype="int64")
    gpu_ops = np.zeros(len(ranges), dtype="int64")
    busy = np.zeros(len(ranges), dtype="float64")
    has_busy = "gpu_busy_ns" in calls.columns
    thread_of = ranges["thread"].to_numpy() if len(ranges) else np.array([])
    for thread, thread_calls in calls.groupby("thread", sort=False):
        rows = np.flatnonzero(thread_of == thread)  # positions of this thread's instances
        if len(rows) == 0:
            continue
        thread_calls = thread_calls.sort_values("start_ns", kind="stable")
        call_start = thread_calls["start_ns"].to_numpy()
        range_start = ranges["start_ns"].to_numpy()[rows]
        range_end = ranges["end_ns"].to_numpy()[rows]
        lo = np.searchsorted(call_start, range_start, side="left")
        hi = np.searchsorted(call_start, range_end, side="right")
        n = hi - lo
        if n.sum() == 0:
            continue
        # (instance, call) pairs, grouped by instance: instance i owns calls lo[i]..hi[i]-1
        inst = np.repeat(np.arange(len(rows)), n)
        call = np.repeat(lo - np.cumsum(n) + n, n) + np.arange(n.sum())
        # a call that starts inside the range but ends after it is not the range's
        keep = thread_calls["end_ns"].to_numpy()[call] <= range_end[inst]
        inst, call = inst[keep], call[keep]
        if len(inst) == 0:
            continue
        owners, first = np.unique(inst, return_index=True)  # segment starts, inst is sorted
        target = rows[owners]
        gpu_start[target] = np.minimum.reduceat(thread_calls["gpu_start_ns"].to_numpy()[call], first)
        gpu_end[target] = np.maximum.reduceat(thread_calls["gpu_end_ns"].to_numpy()[call], first)
        kernels[target] = np.add.reduceat(thread_calls["kernels"].to_numpy()[call], first)
        gpu_ops[target] = np.add.reduceat(thread_calls["gpu_ops"].to_numpy()[call], first)
        if has_busy:
            busy[target] = np.add.reduceat(thread_calls["gpu_busy_ns"].to_numpy(dtype="float64")[call], first)
    return pd.DataFrame(
        {
            "gpu_start_ns": gpu_start, "gpu_end_ns": gpu_end,
            "gpu_ms": (gpu_end - gpu_start) / 1e6, "gpu_busy_ms": busy / 1e6 if has_busy else np.nan,
            "kernels": kernels, "gpu_ops": gpu_ops,
        },
        index=ranges.index,
    )


def nesting(instances: pd.DataFrame) -> pd.DataFrame:
    """Nesting of range instances on their thread: ``level`` (0 = outermost) and ``path``.

    instances: columns ``thread``, ``start_ns``, ``end_ns``, ``range``. The parent is the
    innermost open range of the same thread that contains the instance (for properly nested
    ranges the tightest one, as nsys's projection trace has it; domains play no part).
    ``path`` joins the names from the outermost range down with "/".
    One pass with a stack per thread (NVTX instances number thousands, not millions).
    """
    ordered = instances[instances["thread"].notna()].sort_values(
        ["thread", "start_ns", "end_ns"], ascending=[True, True, False], kind="stable"
    )
    names = instances["range"].astype(str)
    level = pd.Series(0, index=instances.index, dtype="int64")
    path = names.copy()
    levels, paths = [], []
    stack: list[tuple[float, int, str]] = []  # (end_ns, level, path) of the open ranges
    current = None
    for thread, end, name in zip(ordered["thread"], ordered["end_ns"], names[ordered.index]):
        if thread != current:
            stack, current = [], thread
        while stack and stack[-1][0] < end:  # the top range ends before this one: not a parent
            stack.pop()
        lvl, pth = (stack[-1][1] + 1, f"{stack[-1][2]}/{name}") if stack else (0, name)
        levels.append(lvl)
        paths.append(pth)
        stack.append((end, lvl, pth))
    if len(ordered):
        level[ordered.index] = levels
        path[ordered.index] = paths
    return pd.DataFrame({"level": level, "path": path})


def range_table(instances: pd.DataFrame, gpu_known: bool = True) -> pd.DataFrame:
    """Summarise range instances into NVTX_RANGE_COLUMNS, one row per (domain, range).

    instances: columns ``domain``, ``range``, ``cpu_ms``, ``gpu_ms`` (NaN: launched
    nothing), ``kernels``, ``gpu_ops``. With ``gpu_known=False`` (a trace without any GPU
    activity) gpu_ms stays NaN; otherwise a range that launched nothing has gpu_ms 0.
    Sorted by cpu_ms, largest first.
    """
    if instances.empty:
        return pd.DataFrame({c: pd.Series(dtype=_range_dtype(c)) for c in NVTX_RANGE_COLUMNS})
    table = (
        instances.groupby(["domain", "range"], sort=False)
        .agg(
            calls=("cpu_ms", "size"),
            cpu_ms=("cpu_ms", "sum"),
            gpu_ms=("gpu_ms", lambda s: s.sum(min_count=1)),
            gpu_busy_ms=("gpu_busy_ms", "sum"),
            kernels=("kernels", "sum"),
            gpu_ops=("gpu_ops", "sum"),
        )
        .reset_index()
    )
    if gpu_known:
        table["gpu_ms"] = table["gpu_ms"].fillna(0.0)
    else:
        table["gpu_ms"] = table["gpu_busy_ms"] = np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        table["cpu_gpu_ratio"] = table["cpu_ms"] / table["gpu_ms"]
    ratio = table["cpu_gpu_ratio"]
    # NaN ratio (no GPU data, or 0/0) is "unknown", not a disagreement; cpu>0 with gpu 0 is.
    table["disagree"] = ((ratio > DISAGREE_FACTOR) | (ratio < 1.0 / DISAGREE_FACTOR)).fillna(False)
    table["disagree"] = table["disagree"].astype(bool)
    table = table.sort_values(["cpu_ms", "range"], ascending=[False, True], kind="stable")
    return table[NVTX_RANGE_COLUMNS].reset_index(drop=True)


def _range_dtype(column: str) -> str:
    return {"range": "object", "domain": "object", "disagree": "bool"}.get(
        column, "int64" if column in ("calls", "kernels", "gpu_ops") else "float64"
    )


def duration_table(names: pd.Series, dur_ns: pd.Series) -> pd.DataFrame:
    """KERNEL_COLUMNS from one row per execution: its name and duration in ns.

    Sorted like ``cuda_gpu_kern_sum``: total time descending, then calls, then name.
    ``pct`` is the share of the summed time of everything listed.
    """
    if len(names) == 0:
        return pd.DataFrame({c: pd.Series(dtype="object" if c == "kernel" else "float64")
                             for c in KERNEL_COLUMNS}).astype({"calls": "int64"})
    ms = pd.Series(np.asarray(dur_ns, dtype="float64") / 1e6)
    table = (
        pd.DataFrame({"kernel": np.asarray(names), "ms": ms})
        .groupby("kernel", sort=False)["ms"]
        .agg(calls="size", total_ms="sum", mean_ms="mean", median_ms="median",
             min_ms="min", max_ms="max")
        .reset_index()
    )
    table["pct"] = 100.0 * table["total_ms"] / table["total_ms"].sum()
    table = table.sort_values(["total_ms", "calls", "kernel"], ascending=[False, True, True],
                              kind="stable")
    return table[KERNEL_COLUMNS].reset_index(drop=True)


def activity_table(
    start_ns: np.ndarray, end_ns: np.ndarray, is_kernel: np.ndarray, window=None
) -> pd.DataFrame:
    """GPU_ACTIVITY_COLUMNS (one row) from GPU op intervals.

    start_ns, end_ns: every GPU op (kernel, memcpy, memset), any device or stream.
    is_kernel: which of them are kernels (counted in ``kernels``).
    window: None for the captured window (first op start to last op end), or
        ``(start_ns, end_ns)`` in the trace's clock; ops are clipped to it.

    busy_ms is the length of the union of the op intervals (overlapping streams count
    once). The gaps are, between consecutive ops in start order, the time from the latest
    end so far to the next start, 0 where they touch or overlap: median and p90 in us.
    """
    start = np.asarray(start_ns, dtype="float64")
    end = np.asarray(end_ns, dtype="float64")
    is_kernel = np.asarray(is_kernel, dtype=bool)
    if window is None:
        if len(start) == 0:
            return _activity_row(np.nan, 0.0, 0, np.array([]))
        lo, hi = start.min(), end.max()
    else:
        lo, hi = (float(w) for w in window)
        inside = (end > lo) & (start < hi)
        start, end, is_kernel = np.clip(start[inside], lo, hi), np.clip(end[inside], lo, hi), is_kernel[inside]
    if len(start) == 0:
        return _activity_row((hi - lo) / 1e6, 0.0, 0, np.array([]))
    order = np.argsort(start, kind="stable")
    start, end = start[order], end[order]
    reach = np.maximum.accumulate(end)
    gaps = np.maximum(start[1:] - reach[:-1], 0.0)
    busy = (reach[-1] - start[0]) - gaps.sum()
    return _activity_row((hi - lo) / 1e6, busy / 1e6, int(is_kernel.sum()), gaps / 1e3)


def _activity_row(window_ms: float, busy_ms: float, kernels: int, gaps_us: np.ndarray) -> pd.DataFrame:
    has_gaps = len(gaps_us) > 0
    row = {
        "window_ms": window_ms,
        "busy_ms": busy_ms,
        "idle_frac": 1.0 - busy_ms / window_ms if window_ms and window_ms > 0 else np.nan,
        "kernels": kernels,
        "gap_median_us": float(np.median(gaps_us)) if has_gaps else np.nan,
        "gap_p90_us": float(np.percentile(gaps_us, 90)) if has_gaps else np.nan,
    }
    return pd.DataFrame([row], columns=GPU_ACTIVITY_COLUMNS)


# --------------------------------------------------------------------------------------------
# nsys tables


def _window_events(export: _Export) -> pd.DataFrame:
    """The export's NVTX range events, in its window when it has one: those that start inside
    and end inside (or never end)."""
    events = export.nvtx_events
    if export.window is None:
        return events
    lo, hi = export.window
    ended = events["end_ns"].notna()
    inside = (events["start_ns"] >= lo) & (events["start_ns"] <= hi)
    return events[inside & (~ended | (events["end_ns"] <= hi))].reset_index(drop=True)


def nvtx_instances(path_or_conn: PathOrConn) -> pd.DataFrame:
    """One row per NVTX range instance, with its CPU span and its GPU projection.

    Columns: ``domain`` ("" = default), ``range`` (name without the domain), ``style``
    (PushPop | StartEnd), ``thread`` (nsys globalTid; NaN for a StartEnd range ended on
    another thread), ``start_ns``, ``end_ns``, ``cpu_ms``, ``gpu_start_ns``, ``gpu_end_ns``,
    ``gpu_ms`` (NaN: launched no GPU work), ``gpu_busy_ms``, ``kernels``, ``gpu_ops``, ``level`` (0 =
    outermost on its thread), ``path`` ("vggt/aggregator/layer_03" style, by nesting).
    Ranges never ended (``end`` NULL) are left out; ``attrs["notes"]`` says how many.
    """
    columns = ["domain", "range", "style", "thread", "start_ns", "end_ns", "cpu_ms",
               "gpu_start_ns", "gpu_end_ns", "gpu_ms", "gpu_busy_ms", "kernels", "gpu_ops", "level", "path"]
    with _opened(path_or_conn) as export:
        if _NVTX not in export.tables:
            table = pd.DataFrame(columns=columns)
            table.attrs["notes"] = []
            return table
        events = _window_events(export)
        unended = int(events["end_ns"].isna().sum())
        events = events[events["end_ns"].notna()].reset_index(drop=True)
        events["end_ns"] = events["end_ns"].astype("int64")
        events["style"] = events.pop("event_type").map(_NVTX_RANGE_STYLES)
        events["cpu_ms"] = (events["end_ns"] - events["start_ns"]) / 1e6
        projected = project_ranges(events, export.launch_calls()) if len(events) else None
        table = pd.concat([events, projected, nesting(events)], axis=1).reindex(columns=columns)
    table.attrs["notes"] = (
        [f"{unended} NVTX range(s) never ended in the capture were left out"] if unended else []
    )
    return table


def nvtx_ranges(path_or_conn: PathOrConn) -> pd.DataFrame:
    """NVTX_RANGE_COLUMNS: per (domain, range), CPU time beside GPU-projected time.

    calls and cpu_ms match nsys ``nvtx_sum`` (Instances, Total Time); gpu_ms matches
    ``nvtx_gpu_proj_sum`` "Total Proj Time" and gpu_ops its "Total GPU Ops" (see the module
    docstring for how a range is projected). gpu_ms is 0 for a range that launched no GPU
    work, NaN if the capture has no GPU ops at all. ``disagree`` flags ranges whose CPU and
    GPU times differ by more than DISAGREE_FACTOR either way: there the CPU timeline is
    not the cost of the work (asynchronous launches, synchronisation waits).
    """
    with _opened(path_or_conn) as export:
        instances = nvtx_instances(export)
        gpu_known = len(export.gpu_ops) > 0
    table = range_table(instances, gpu_known=gpu_known)
    table.attrs["notes"] = list(instances.attrs.get("notes", []))
    return table


def kernel_summary(path_or_conn: PathOrConn) -> pd.DataFrame:
    """KERNEL_COLUMNS: per kernel, like nsys ``cuda_gpu_kern_sum``.

    The name is the export's ``demangledName`` string, which is what nsys prints
    (e.g. ``void at::native::vectorized_elementwise_kernel<(int)4, ...>(int, T2, T3)``).
    Empty frame when the capture has no kernels.
    """
    with _opened(path_or_conn) as export:
        kernels = export.gpu_ops[export.gpu_ops["is_kernel"] == 1]
        names = export.strings(kernels["name_id"])
    return duration_table(kernels["name_id"].map(names), kernels["end_ns"] - kernels["start_ns"])


def cuda_api_summary(path_or_conn: PathOrConn) -> pd.DataFrame:
    """CUDA_API_COLUMNS: per CUDA runtime/driver function, like nsys ``cuda_api_sum``.

    Every call on every thread counts, blocking ones too (cudaStreamSynchronize time is
    the CPU waiting for the GPU). Names lose nsys's "_vNNNN" ABI suffix as nsys prints them.
    """
    with _opened(path_or_conn) as export:
        calls = export.api_calls
        per_id = (
            calls.assign(ns=calls["end_ns"] - calls["start_ns"])
            .groupby("name_id")["ns"].agg(calls="size", total_ns="sum")
        )
        per_id["api"] = per_id.index.map(export.strings(per_id.index))
    per_id["api"] = per_id["api"].astype(str).str.replace(_API_VERSION_SUFFIX, "", regex=True)
    table = per_id.groupby("api", as_index=False)[["calls", "total_ns"]].sum()
    table["total_ms"] = table["total_ns"] / 1e6
    table["mean_ms"] = table["total_ms"] / table["calls"]
    table["pct"] = 100.0 * table["total_ms"] / table["total_ms"].sum()
    table = table.sort_values(["total_ms", "api"], ascending=[False, True], kind="stable")
    return table[CUDA_API_COLUMNS].reset_index(drop=True)


def gpu_activity(path_or_conn: PathOrConn, window=None) -> pd.DataFrame:
    """GPU_ACTIVITY_COLUMNS, one row: how busy the GPU was over a window.

    window: None for the captured GPU window (first GPU op start to last op end), or a
    ``(start_ns, end_ns)`` pair in the export's clock, e.g. one instance's
    ``start_ns``/``end_ns`` from :func:`nvtx_instances` (nsys puts CPU and GPU times on
    one clock). All devices and streams are pooled into one union.
    """
    with _opened(path_or_conn) as export:
        ops = export.gpu_ops
        devices = max(
            [export.conn.execute(f"SELECT count(DISTINCT deviceId) FROM {t}").fetchone()[0]
             for t in (_KERNEL, _MEMCPY, _MEMSET) if t in export.tables] or [0]
        )
    table = activity_table(ops["start_ns"].to_numpy(), ops["end_ns"].to_numpy(),
                           ops["is_kernel"].to_numpy() == 1, window=window)
    table.attrs["notes"] = (
        [f"GPU activity pools {devices} devices into one union"] if devices > 1 else []
    )
    return table


def read_report(path: Union[str, os.PathLike], window=None) -> dict[str, pd.DataFrame]:
    """All four profile tables of one nsys export, keyed as in TABLES.

    path: ``.sqlite``, ``.sqlite.gz`` or ``.nsys-rep`` (see :func:`connect`).
    window: None for the whole export, or ``(start_ns, end_ns)`` in the export's clock: the
    tables of what happened inside it (see ``_Export``), e.g. one point of a report that
    holds several (:func:`read_report_windows`).

    Raises NoProfileData when the capture holds neither NVTX ranges nor GPU kernels (a
    capture range that missed the work): empty tables would read as "nothing to see".
    When only one of the two is missing the tables are returned and the gap is said in
    ``attrs["notes"]``, a list of one-line strings that every returned table carries
    (the same list), with ``attrs["source"]`` the path read.
    """
    path = Path(path)
    with _opened(path) as export:
        return _tables(export if window is None else export.within(window), path)


def range_windows(path_or_conn: PathOrConn, prefix: str) -> pd.DataFrame:
    """Instances of the NVTX ranges whose name starts with ``prefix`` (any domain), in start
    order: ``name`` (the rest of the range's name), ``domain``, ``start_ns``, ``end_ns``
    (export clock), ``thread``. Ranges never ended are left out."""
    with _opened(path_or_conn) as export:
        if _NVTX not in export.tables:
            return pd.DataFrame(columns=["name", "domain", "start_ns", "end_ns", "thread"])
        events = export.nvtx_events
    found = events[events["range"].str.startswith(prefix) & events["end_ns"].notna()]
    found = found.assign(name=found["range"].str.slice(len(prefix)), end_ns=found["end_ns"].astype("int64"))
    return found[["name", "domain", "start_ns", "end_ns", "thread"]].sort_values("start_ns").reset_index(drop=True)


def read_report_windows(path: Union[str, os.PathLike], prefix: str) -> list[tuple[str, object]]:
    """``[(name, tables)]``: the four tables of each instance of an NVTX range named
    ``<prefix><name>`` in one export (e.g. ``point:<point_id>`` around each point of a sweep),
    read as :func:`read_report` with that instance's window; the export is read once. Each
    table's ``attrs["window"]`` is the instance's ``(start_ns, end_ns)``. Empty list: no such
    range. Where a window holds no NVTX ranges and no kernels, its entry is the NoProfileData
    exception (with the reason) instead of the tables, and the other windows are still read."""
    path = Path(path)
    out: list[tuple[str, object]] = []
    with _opened(path) as export:
        for w in range_windows(export, prefix).itertuples():
            try:
                tables = _tables(export.within((w.start_ns, w.end_ns)), path)
            except NoProfileData as exc:
                out.append((w.name, exc))
                continue
            for table in tables.values():
                table.attrs["window"] = (int(w.start_ns), int(w.end_ns))
            out.append((w.name, tables))
    return out


def _tables(export: _Export, path: Path) -> dict[str, pd.DataFrame]:
    """The four tables of an open export (or a window of it); see :func:`read_report`."""
    if export.window is None:
        styles = ", ".join(map(str, _NVTX_RANGE_STYLES))
        n_ranges = export.count(_NVTX, f"WHERE eventType IN ({styles})")
        n_kernels = export.count(_KERNEL)
        where = ""
        found = (f"{export.count(_RUNTIME)} CUDA API calls, {export.count(_MEMCPY)} memcpys, "
                 f"{export.count(_MEMSET)} memsets")
    else:
        events = _window_events(export) if _NVTX in export.tables else pd.DataFrame(columns=["start_ns", "end_ns"])
        # the range that defines the window (point:<id>) is not evidence that the work was captured
        n_ranges = int(((events["start_ns"] != export.window[0]) | (events["end_ns"] != export.window[1])).sum())
        n_kernels = int(export.gpu_ops["is_kernel"].sum())
        where = f" (window {export.window[0]}..{export.window[1]} ns)"
        found = f"{len(export.api_calls)} CUDA API calls, {len(export.gpu_ops)} memcpys/memsets"
    if n_ranges == 0 and n_kernels == 0:
        raise NoProfileData(
            f"{path.name}{where}: capture holds no NVTX ranges and no GPU kernels: the capture "
            f"range probably missed the work; it has {found} "
            f"(check where profiling starts and stops: --capture-range, "
            f"cudaProfilerStart/Stop, --delay/--duration)"
        )
    tables = {
        "nvtx_ranges": nvtx_ranges(export),
        "kernels": kernel_summary(export),
        "cuda_api": cuda_api_summary(export),
        "gpu_activity": gpu_activity(export),
    }
    notes = [n for t in tables.values() for n in t.attrs.get("notes", [])]
    if n_ranges == 0:
        notes.append("capture holds no NVTX ranges: nvtx_ranges is empty "
                     "(were ranges enabled, and NVTX traced: nsys --trace=cuda,nvtx?)")
    if n_kernels == 0:
        notes.append("capture holds no GPU kernels: kernels is empty and gpu_ms of every "
                     "range counts memcpy/memset only")
    for table in tables.values():
        table.attrs["notes"] = notes
        table.attrs["source"] = str(path)
    return tables
