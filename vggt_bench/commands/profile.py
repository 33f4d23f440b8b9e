"""``profile``: one configuration under Nsight Systems or the PyTorch profiler, as tables.

profiler=torch  runs the capture under ``torch.profiler`` and parses its Chrome trace.
profiler=nsys   re-runs this configuration under ``nsys profile --capture-range=cudaProfilerApi``
                with profiler=none, exports SQLite and parses it.
profiler=none   runs warm-up, then cudaProfilerStart, the captured forwards, cudaProfilerStop:
                the child of profiler=nsys, and what to run under your own nsys command.
profiler=memory records the CUDA caching allocator over one forward (``profile_memory``).
analyze=PATH    re-reads an existing ``.sqlite`` / ``.sqlite.gz`` / ``.nsys-rep`` / trace ``.json``;
                a folder of nsys reports, or one report, holding ``point:<point_id>`` ranges
                (``sweep profiler=external`` under your nsys) becomes one profile per point, joined
                to the sweep's results (``results=DIR``, default ``out``) by point id.

The capturing is ``vggt_bench.profiling.capture`` (one function per profiler, shared with
``sweep profiler=...``: ``profile_point`` profiles one sweep point); where profiles land and the
tables built from them is ``vggt_bench.profiling.store``: ``<out>/profiles/<tag>/``
(``nvtx_ranges.csv``, ``kernels.csv``, ``cuda_api.csv``, ``gpu_activity.csv``, ``point.json`` and
the trace), and the combined ``<out>/profile_ranges.csv`` and ``<out>/profile_summary.csv`` that
the report reads; a profiled sweep's ``profile_grid`` is rebuilt here (``rebuild_grid``).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import pickle
import sqlite3
import zlib
from typing import Callable, Dict, List, Optional, Tuple

import pandas as pd
import torch

from ..analysis.profiles import forwards_in, profile_grid
from ..core.errors import UserError, fail, one_line
from ..core.migrate import migrate
from ..core.results import load_results
from ..core.schema import KNOBS, POINT_RANGE_PREFIX
from ..measure import build, env
from ..measure.point import resolve
from ..profiling import NoProfileData, capture
from ..profiling.nsys_cli import find_nsys
from ..profiling.nsys_sqlite import read_report_windows
from ..profiling.store import (
    grid_inputs, profile_dir, read_any, rebuild_combined, report_files, sqlite_for, write_grid, write_profile,
    write_status,
)
from . import profile_memory

PROFILERS = ("torch", "nsys", "none", "memory")


def _tag(cfg, point) -> str:
    if cfg.tag:
        return str(cfg.tag)
    ex = point.execution
    return f"{ex.frame_exec}_S{point.frames}_k{ex.prune_depth}_{ex.attention}_{ex.dtype}_{cfg.profiler}"


def _show(tables: Dict[str, pd.DataFrame], iterations: int) -> None:
    r = tables["nvtx_ranges"]
    if len(r):
        view = r[["range", "calls", "cpu_ms", "gpu_ms", "kernels", "disagree"]].copy()
        view = view.sort_values("cpu_ms", ascending=False).head(25)
        print(view.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    a = tables["gpu_activity"]
    if len(a) and a.iloc[0]["window_ms"] == a.iloc[0]["window_ms"]:
        row = a.iloc[0]
        print(f"GPU window {row['window_ms']:.1f} ms, busy {row['busy_ms']:.1f} ms, idle {100 * row['idle_frac']:.1f}%, "
              f"{int(row['kernels'])} kernels ({row['kernels'] / iterations:.0f} per forward)")
    for note in r.attrs.get("notes", []):
        print(f"note: {note}")


# What reading a file that is not a trace raises: the file's own fault, said in one line.
UNREADABLE = (sqlite3.DatabaseError, json.JSONDecodeError, gzip.BadGzipFile, UnicodeDecodeError, EOFError,
              pickle.UnpicklingError, KeyError, zlib.error)


def _analyze(cfg) -> int:
    """``analyze=PATH``: a memory snapshot, point-split nsys reports, or one trace as one profile."""
    if str(cfg.analyze).endswith(".pickle"):
        return profile_memory.analyze_memory(cfg)
    if not os.path.exists(cfg.analyze):
        raise UserError(f"analyze={cfg.analyze}: no such file or folder")
    if not str(cfg.analyze).endswith((".json", ".json.gz")):
        points = analyze_points(cfg.analyze, cfg.out, cfg.results, cfg.nsys)
        if points is not None:
            print(f"{len(points)} point(s) from {cfg.analyze} joined to the results by point id: tables in "
                  f"{os.path.join(cfg.out, 'profiles')}/<point_id>/, the grid in {os.path.join(cfg.out, 'profile_grid.csv')}")
            return 0
    tables = read_any(cfg.analyze, cfg.nsys)
    directory = profile_dir(cfg.out, cfg.tag or os.path.basename(str(cfg.analyze).rstrip("/")).split(".")[0])
    write_profile(directory, tables, {"tag": os.path.basename(directory), "profiler": "analyze",
                                      "source": cfg.analyze, "iterations": 1})
    rebuild_combined(cfg.out)
    _show(tables, 1)
    print(f"tables in {directory}")
    return 0


def main(cfg) -> int:
    try:
        if cfg.profiler not in PROFILERS:
            raise UserError(f"unknown profiler {cfg.profiler!r}; use profiler=torch, nsys, none or memory")
        if cfg.analyze:
            try:
                return _analyze(cfg)
            except UNREADABLE as exc:
                raise UserError(f"analyze={cfg.analyze}: not a trace this reads ({type(exc).__name__}: "
                                f"{(str(exc).strip().splitlines() or [''])[0][:120]}); give an Nsight Systems "
                                f".nsys-rep/.sqlite export, a PyTorch profiler trace .json, a folder of them, or a "
                                f"memory_snapshot.pickle")
        point = resolve(cfg)
        if point.execution.context_parallel > 1:
            raise UserError("profile runs one process; model.context_parallel > 1 runs several (run/sweep rows have "
                            "comm_ms): profile its ranks with torchrun under your own nsys, or use context_parallel=1")
        point_id = point.point_id  # of the configuration as given, before its ranges are switched on
        if int(cfg.iterations) < 1:
            raise UserError(f"iterations must be >= 1, got {cfg.iterations}")
        if cfg.profiler == "nsys" and not cfg.dry_run:
            find_nsys(cfg.nsys)  # first: the fix for a missing nsys is the more useful message
        if cfg.profiler == "nsys" and not point.device.startswith("cuda") and not cfg.dry_run:
            raise UserError("profiler=nsys traces CUDA work: it needs device=cuda (use profiler=torch on the CPU)")
        if cfg.profiler == "memory":
            point.execution.nvtx = True
            return profile_memory.profile_memory(cfg, point, profile_dir(cfg.out, _tag(cfg, point)))
        if cfg.profiler == "none":
            capture.capture(cfg, point, "bare", point_id)
            return 0
        tag = _tag(cfg, point)
        directory = profile_dir(cfg.out, tag)
        if cfg.profiler == "nsys":
            source = capture.profile_nsys(cfg, directory, dry_run=bool(cfg.dry_run))
            if not source:
                return 0  # dry run
            tables = read_any(source)
        else:
            source = os.path.join(directory, "trace.json")
            tables = capture.profile_torch(cfg, point, point_id, directory)
        meta = {**point.knobs(), "nvtx": True, "point_id": point_id, "tag": tag, "profiler": cfg.profiler,
                "iterations": int(cfg.iterations), "source": source, **env.environment(torch.device(point.device))}
        write_profile(directory, tables, meta)
        rebuild_combined(cfg.out)
        _show(tables, int(cfg.iterations))
        print(f"tables in {directory}")
        return 0
    except NoProfileData as exc:
        fail(str(exc), 1)
    except UserError as exc:
        fail(str(exc))
    return 0


# ---- one point of a profiled sweep --------------------------------------------------------------
def profile_point(cfg, point, row: dict) -> dict:
    """Profile one sweep point with ``cfg.profiler``, after its timing row ``row`` was measured
    and stored; record the outcome in ``profiles/<point_id>/profile_status.json`` and return it.

    A point that did not run (status oom/unavailable/error) is ``skipped``; a capture that fails
    is ``error`` with the reason, and the sweep goes on (only Ctrl-C stops it). torch/nsys write
    the point's tables (point.json says ``profiled: true``) and rebuild the combined tables and
    ``profile_grid``; external leaves the point ``captured`` for ``profile analyze=``.
    """
    profiler = str(cfg.profiler)
    pid = row.get("point_id") or point.point_id
    out = str(cfg.out)
    directory = profile_dir(out, pid)
    iterations = int(cfg.iterations)
    if row.get("status") != "ok":
        status = write_status(out, pid, profiler, "skipped",
                              f"not profiled: the point's timing status is {row.get('status')}")
    elif point.execution.context_parallel > 1:
        status = write_status(out, pid, profiler, "skipped", "not profiled: model.context_parallel > 1 runs in "
                              "several processes (its row has comm_ms); profile its ranks under torchrun yourself")
    else:
        try:
            if profiler == "external":
                capture.capture(cfg, point, "bare", pid)
                status = write_status(
                    out, pid, profiler, "captured",
                    f"captured between cudaProfilerStart/Stop in NVTX range {capture.point_range(pid)}; read the reports with "
                    f"`python -m vggt_bench profile analyze=<nsys report folder> out={out}`", "", iterations)
            else:
                os.makedirs(directory, exist_ok=True)
                if profiler == "torch":
                    tables = capture.profile_torch(cfg, point, pid, directory)
                    source = os.path.join(directory, "trace.json")
                else:
                    source = capture.profile_nsys(cfg, directory, log_file=os.path.join(directory, "nsys.log"))
                    tables = read_any(source)
                names = set(tables["nvtx_ranges"]["range"])
                if capture.point_range(pid) not in names:
                    raise UserError(f"the capture holds no {capture.point_range(pid)} range: it profiled another "
                                    f"configuration (ranges found: {', '.join(sorted(n for n in names if n.startswith(POINT_RANGE_PREFIX))) or 'none'})")
                profiled = point.execution.replace(nvtx=True)
                meta = {**dataclasses.replace(point, execution=profiled).knobs(), "point_id": pid, "tag": pid,
                        "profiler": profiler, "iterations": iterations, "source": source,
                        **env.environment(torch.device(point.device))}
                write_profile(directory, tables, meta)
                status = write_status(out, pid, profiler, "ok", "", source, iterations)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a failed capture is a recorded status; the sweep goes on
            status = write_status(out, pid, profiler, "error", one_line(exc), "", iterations)
        finally:
            build.free_memory()
    rebuild_combined(out)
    rebuild_grid(out)
    return status


# ---- the profile grid, and reports of a sweep run under someone else's nsys -----------------------
def _native(value):
    """A numpy scalar as the Python value JSON writes as itself."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (str, bytes)) else value


def _results(directory: str) -> pd.DataFrame:
    try:
        return load_results(directory)
    except FileNotFoundError:
        return pd.DataFrame()


def rebuild_grid(out: str, results: Optional[str] = None) -> pd.DataFrame:
    """Write ``<out>/profile_grid.parquet`` and ``.csv`` from every profiled point of ``out``,
    joined to the timing table of ``results`` (default ``out``); return the table (empty, and
    nothing written, when no point of ``out`` has a profile status)."""
    points, ranges = grid_inputs(out)
    if points.empty:
        return pd.DataFrame()
    grid = profile_grid(points, ranges, _results(results or out))
    write_grid(out, grid)
    return grid


def analyze_points(source: str, out: str, results: Optional[str] = None, nsys: Optional[str] = None,
                   log: Callable[[str], None] = print) -> Optional[List[str]]:
    """Tables of every point in nsys reports captured from ``sweep profiler=external``, joined to
    the sweep's results by point id.

    source: a folder of reports (``.nsys-rep`` / ``.sqlite`` / ``.sqlite.gz``; one per point, as
        ``--capture-range-end=repeat`` writes them, or any mix) or one report holding several
        points. Each point is the window of its NVTX range ``point:<point_id>``
        (nsys_sqlite.read_report_windows).
    results: the sweep's out directory (its results table); default ``out``.

    Writes ``<out>/profiles/<point_id>/`` (tables, point.json with the point's knobs from the
    results row, profile_status.json ``ok`` with profiler ``external``), the combined tables and
    ``profile_grid``. A point whose window holds nothing gets status ``error`` with the reason.
    Returns the point ids written, or None when ``source`` is one file without point ranges, or
    with one point and no results table to join it to (a ``profile profiler=none`` capture): the
    caller reads it as one profile. Raises UserError for a folder without reports or point
    ranges, and when points need a results table that is not there.
    """
    files = report_files(source)
    if os.path.isdir(source) and not files:
        raise UserError(f"analyze={source}: no .nsys-rep, .sqlite or .sqlite.gz reports in this folder")
    found: Dict[str, Tuple[str, object]] = {}
    for path in files:
        try:
            windows = read_report_windows(sqlite_for(path, nsys), POINT_RANGE_PREFIX)
        except (OSError, ValueError) as exc:  # a report that cannot be opened or read
            if not os.path.isdir(source):
                raise
            log(f"note: {path}: cannot read it ({type(exc).__name__}: {exc}); left out")
            continue
        if not windows and os.path.isdir(source):
            log(f"note: {os.path.basename(path)} holds no {POINT_RANGE_PREFIX}<point_id> range: left out "
                f"(analyze={path} reads it as one profile)")
        for pid, tables in windows:
            if pid in found:
                log(f"note: point {pid} is in {found[pid][0]} and {path}: kept the later capture")
            found[pid] = (path, tables)
    if not found:
        if not os.path.isdir(source):
            return None
        raise UserError(f"analyze={source}: no report holds a {POINT_RANGE_PREFIX}<point_id> NVTX range; capture them "
                        f"with `sweep profiler=external` under nsys --trace=cuda,nvtx, or analyze one report at a time")
    where = results or out
    timing = _results(where)
    if timing.empty and not any(os.path.exists(os.path.join(where, n)) for n in ("results.parquet", "results.csv")):
        if not os.path.isdir(source) and len(found) == 1 and not results:
            return None  # one capture of one configuration (`profile profiler=none` under nsys): one profile
        flag = f"results={results}" if results else f"out={out}"
        raise UserError(f"{flag} has no results.parquet or results.csv to join the points to; give results=<the out "
                        f"directory of the sweep that was captured>")
    migrate(out)  # profiles of an older directory are named by their current ids before these join them
    rows = {r["point_id"]: r for r in timing.to_dict("records")} if len(timing) else {}
    for r in list(rows.values()):  # captures made before the store's format 2 name the points by their former ids
        if isinstance(r.get("former_point_id"), str) and r["former_point_id"]:
            rows.setdefault(r["former_point_id"], r)
    written = []
    for pid, (path, tables) in found.items():
        row = rows.get(pid)
        pid = row["point_id"] if row is not None else pid
        if row is None:
            log(f"note: point {pid} ({os.path.basename(path)}) is not in the results of {where}: its tables carry no knobs")
        if isinstance(tables, NoProfileData):
            write_status(out, pid, "external", "error", str(tables), path)
            continue
        knobs = {k: _native(row.get(k)) for k in KNOBS} if row is not None else {}
        if knobs:
            knobs["nvtx"] = True  # the capture ran with the model's ranges on
        iterations = forwards_in(tables["nvtx_ranges"])
        window = tables["nvtx_ranges"].attrs.get("window", (None, None))
        meta = {**knobs, "point_id": pid, "tag": pid, "profiler": "external", "iterations": iterations,
                "source": path, "window_start_ns": window[0], "window_end_ns": window[1],
                "gpu_name": (row or {}).get("gpu_name", "")}
        write_profile(profile_dir(out, pid), tables, meta)
        write_status(out, pid, "external", "ok", "", path, iterations)
        written.append(pid)
    rebuild_combined(out)
    rebuild_grid(out, results)
    return written
