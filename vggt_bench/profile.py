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

The capturing is ``vggt_bench.capture`` (one function per profiler, shared with
``sweep profiler=...``); where profiles land and the tables built from them is
``vggt_bench.profile_store``: ``<out>/profiles/<tag>/`` (``nvtx_ranges.csv``, ``kernels.csv``,
``cuda_api.csv``, ``gpu_activity.csv``, ``point.json`` and the trace), and the combined
``<out>/profile_ranges.csv`` and ``<out>/profile_summary.csv`` that the report reads.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import sqlite3
import zlib
from typing import Dict

import pandas as pd
import torch

from . import profile_memory
from .capture import capture, profile_nsys, profile_torch
from .measure.env import environment
from .core.errors import UserError, fail
from .nsys import NSYS_HINT, find_nsys  # noqa: F401  (re-exported: the one-line install hint)
from .profile_store import analyze_points, profile_dir, read_any, rebuild_combined, write_profile
from .profiling import NoProfileData
from .measure.point import resolve

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
            capture(cfg, point, "bare", point_id)
            return 0
        tag = _tag(cfg, point)
        directory = profile_dir(cfg.out, tag)
        if cfg.profiler == "nsys":
            source = profile_nsys(cfg, directory, dry_run=bool(cfg.dry_run))
            if not source:
                return 0  # dry run
            tables = read_any(source)
        else:
            source = os.path.join(directory, "trace.json")
            tables = profile_torch(cfg, point, point_id, directory)
        meta = {**point.knobs(), "nvtx": True, "point_id": point_id, "tag": tag, "profiler": cfg.profiler,
                "iterations": int(cfg.iterations), "source": source, **environment(torch.device(point.device))}
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
