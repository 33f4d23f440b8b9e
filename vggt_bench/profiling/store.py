"""Profiles on disk, and the tables built from all of them. Shared by ``profile`` and ``sweep``.

Layout of a results directory ``<out>``:

* ``profiles/<name>/``: one profile. ``<name>`` is the ``tag`` for ``profile`` and the
  ``point_id`` for a profiled sweep and for ``profile analyze=`` of point-split reports. It holds
  ``nvtx_ranges.csv``, ``kernels.csv``, ``cuda_api.csv``, ``gpu_activity.csv`` (schema.py),
  ``notes.txt``, ``point.json`` (the profiled configuration: knobs, ``point_id``, ``profiler``,
  ``iterations``, ``source``, ``profiled: true``) and the trace it was read from.
* ``profiles/<point_id>/profile_status.json``: a sweep's record of that point's profile
  (``profile_status`` one of schema.PROFILE_STATUSES, ``profile_message``, ``profiler``,
  ``source``, ``timestamp``). A resumed sweep reads it to skip points already profiled.
* ``profile_ranges.csv`` / ``profile_summary.csv``: every profile's ranges / one summary row
  each (the ``profile`` command's combined tables).
* ``profile_grid.parquet`` / ``.csv``: ONE tidy table across a profiled sweep
  (``analysis.profiles.profile_grid``; columns schema.PROFILE_GRID_COLUMNS).
"""

from __future__ import annotations

import datetime
import glob
import json
import os
from typing import Dict, List, Optional, Tuple

import pandas as pd

from ..core.errors import UserError
from ..core.results import atomic_write, locked
from .nsys_cli import export_sqlite, find_nsys
from .nsys_sqlite import read_report
from .torch_trace import read_trace
from ..core.schema import (
    HEADS, KNOBS, PROFILE_GRID, PROFILE_RANGES, PROFILE_STATUSES, PROFILE_SUMMARY, RANGE_STAGES,
)

PROFILES = "profiles"
TABLE_NAMES = ("nvtx_ranges", "kernels", "cuda_api", "gpu_activity")
POINT_FILE = "point.json"
STATUS_FILE = "profile_status.json"
PROFILE_DONE = ("ok", "skipped", "captured")  # statuses a resumed sweep does not profile again
REPORT_SUFFIXES = (".sqlite", ".sqlite.gz", ".nsys-rep")  # in the order one stem's files are preferred


def profile_dir(out: str, name: str) -> str:
    return os.path.join(out, PROFILES, name)


# ---- reading traces ----------------------------------------------------------------------------
def sqlite_for(path: str, nsys: Optional[str] = None) -> str:
    """The SQLite export of an nsys report: ``path`` itself unless it is a ``.nsys-rep``; then
    the ``.sqlite`` beside it, made with ``nsys export`` when missing (needs nsys)."""
    if not path.endswith(".nsys-rep"):
        return path
    sqlite = path[: -len(".nsys-rep")] + ".sqlite"
    if not os.path.exists(sqlite):
        export_sqlite(find_nsys(nsys), path, sqlite)
    return sqlite


def read_any(path: str, nsys: Optional[str] = None) -> Dict[str, pd.DataFrame]:
    """Profile tables of an existing trace file of any supported kind."""
    if not os.path.exists(path):
        raise UserError(f"analyze={path}: no such file")
    if path.endswith(".json") or path.endswith(".json.gz"):
        return read_trace(path)
    path = sqlite_for(path, nsys)
    if path.endswith(".sqlite") or path.endswith(".sqlite.gz"):
        return read_report(path)
    raise UserError(f"analyze={path}: expected a .sqlite, .sqlite.gz, .nsys-rep or PyTorch trace .json")


# ---- writing one profile -----------------------------------------------------------------------
def write_tables(tables: Dict[str, pd.DataFrame], directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    for name in TABLE_NAMES:
        tables[name].to_csv(os.path.join(directory, f"{name}.csv"), index=False)
    notes = tables["nvtx_ranges"].attrs.get("notes", [])
    with open(os.path.join(directory, "notes.txt"), "w") as f:
        f.write("\n".join(notes) + ("\n" if notes else ""))


def write_profile(directory: str, tables: Dict[str, pd.DataFrame], meta: dict) -> None:
    """The four tables, notes.txt and point.json (``meta`` plus ``profiled: true``)."""
    write_tables(tables, directory)
    payload = json.dumps({**meta, "profiled": True}, indent=1, default=str).encode()
    atomic_write(os.path.join(directory, POINT_FILE), lambda f: f.write(payload))


def write_status(out: str, point_id: str, profiler: str, status: str, message: str = "", source: str = "",
                 iterations: Optional[int] = None) -> dict:
    """Record a sweep point's profile (``profiles/<point_id>/profile_status.json``); return it."""
    if status not in PROFILE_STATUSES:
        raise ValueError(f"profile status {status!r} is not one of {PROFILE_STATUSES}")
    record = {
        "point_id": point_id, "profiler": profiler, "profile_status": status, "profile_message": message,
        "source": source, "iterations": iterations,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    directory = profile_dir(out, point_id)
    os.makedirs(directory, exist_ok=True)
    payload = json.dumps(record, indent=1, default=str).encode()
    atomic_write(os.path.join(directory, STATUS_FILE), lambda f: f.write(payload))
    return record


def read_status(out: str, point_id: str) -> Optional[dict]:
    path = os.path.join(profile_dir(out, point_id), STATUS_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def profile_done(out: str, point_id: str, profiler: str) -> bool:
    """Whether a resumed sweep with ``profiler`` may skip this point's profile: it has a status
    of PROFILE_DONE from the same profiler, and an ``ok`` one still has its tables."""
    status = read_status(out, point_id)
    if status is None or status.get("profiler") != profiler or status.get("profile_status") not in PROFILE_DONE:
        return False
    if status["profile_status"] == "ok":
        return os.path.exists(os.path.join(profile_dir(out, point_id), "nvtx_ranges.csv"))
    return True


def _current(directory: str) -> bool:
    """A profile directory's tables are current unless its sweep status says the last capture failed
    (the tables of an earlier capture then stay on disk, out of the combined tables)."""
    path = os.path.join(directory, STATUS_FILE)
    if not os.path.exists(path):
        return True
    with open(path) as f:
        return json.load(f).get("profile_status") == "ok"


def point_profiles(out: str) -> Dict[str, str]:
    """``{point_id: profile directory}`` of ``out``'s current profiles with tables, keyed by the
    ``point_id`` their point.json names (the configuration as timed: a sweep's row, or the
    configuration a ``profile`` run was given); profiles that name none (``analyze=``) are left out."""
    found = {}
    for meta_path in sorted(glob.glob(os.path.join(out, PROFILES, "*", POINT_FILE))):
        directory = os.path.dirname(meta_path)
        if not os.path.exists(os.path.join(directory, "nvtx_ranges.csv")) or not _current(directory):
            continue
        with open(meta_path) as f:
            pid = json.load(f).get("point_id")
        if pid:
            found[str(pid)] = directory
    return found


def read_profile(directory: str) -> Tuple[dict, pd.DataFrame, pd.DataFrame]:
    """(point.json, nvtx_ranges, kernels) of one profile directory (an empty frame for a table it lacks)."""
    with open(os.path.join(directory, POINT_FILE)) as f:
        meta = json.load(f)
    tables = []
    for name in ("nvtx_ranges", "kernels"):
        path = os.path.join(directory, f"{name}.csv")
        tables.append(pd.read_csv(path) if os.path.exists(path) and os.path.getsize(path) else pd.DataFrame())
    return meta, tables[0], tables[1]


# ---- tables across profiles --------------------------------------------------------------------
def per_iteration(ranges: pd.DataFrame, name: str, column: str, iterations: int) -> float:
    rows = ranges[ranges["range"] == name]
    return float(rows[column].sum()) / iterations if len(rows) else float("nan")


def summary_row(ranges: pd.DataFrame, activity: pd.DataFrame, iterations: int) -> dict:
    """One profile's row of ``profile_summary.csv``: its GPU activity, kernels per frame layer and
    each stage's time per forward."""
    row = activity.iloc[0].to_dict() if len(activity) else {}
    frame = ranges[ranges["range"] == "frame_block"]
    row["kernels_per_frame_layer"] = float(frame["kernels"].sum() / frame["calls"].sum()) if len(frame) and frame["calls"].sum() else float("nan")
    for stage in RANGE_STAGES + HEADS:
        for column in ("gpu_ms", "gpu_busy_ms", "cpu_ms"):
            if column in ranges:
                row[f"{stage}_{column}"] = per_iteration(ranges, stage, column, iterations)
    return row


def rebuild_combined(out: str) -> None:
    """``profile_ranges.csv`` and ``profile_summary.csv`` from every ``<out>/profiles/*/``."""
    ranges, summaries = [], []
    for meta_path in sorted(glob.glob(os.path.join(out, PROFILES, "*", POINT_FILE))):
        directory = os.path.dirname(meta_path)
        table_path = os.path.join(directory, "nvtx_ranges.csv")
        if not os.path.exists(table_path) or not _current(directory):
            continue
        with open(meta_path) as f:
            meta = json.load(f)
        r = pd.read_csv(table_path)
        a = pd.read_csv(os.path.join(directory, "gpu_activity.csv"))
        for key, value in meta.items():
            r[key] = value
        ranges.append(r)
        summaries.append({**meta, **summary_row(r, a, int(meta.get("iterations", 1)))})
    if ranges:
        with locked(out):
            table = pd.concat(ranges, ignore_index=True).to_csv(index=False).encode()
            atomic_write(os.path.join(out, PROFILE_RANGES), lambda f: f.write(table))
            summary = pd.DataFrame(summaries).to_csv(index=False).encode()
            atomic_write(os.path.join(out, PROFILE_SUMMARY), lambda f: f.write(summary))


def grid_inputs(out: str) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """(points, ranges) for ``analysis.profiles.profile_grid``: every point with a sweep status
    file, its point.json and GPU activity where its profile is ok, and its range table."""
    points, ranges = [], []
    for status_path in sorted(glob.glob(os.path.join(out, PROFILES, "*", STATUS_FILE))):
        directory = os.path.dirname(status_path)
        with open(status_path) as f:
            status = json.load(f)
        row = dict(status)
        if status.get("profile_status") == "ok" and os.path.exists(os.path.join(directory, "nvtx_ranges.csv")):
            meta_path = os.path.join(directory, POINT_FILE)
            if os.path.exists(meta_path):
                with open(meta_path) as f:
                    meta = json.load(f)
                row.update({k: v for k, v in meta.items() if k in KNOBS or k in ("gpu_name", "iterations", "source")})
            activity = pd.read_csv(os.path.join(directory, "gpu_activity.csv"))
            if len(activity):
                row.update(activity.iloc[0].to_dict())
            r = pd.read_csv(os.path.join(directory, "nvtx_ranges.csv"))
            ranges.append(r.assign(point_id=status["point_id"]))
        points.append(row)
    return pd.DataFrame(points), (pd.concat(ranges, ignore_index=True) if ranges else pd.DataFrame())


def write_grid(out: str, grid: pd.DataFrame) -> None:
    """``<out>/profile_grid.parquet`` and ``.csv`` (``analysis.profiles.profile_grid``'s table)."""
    with locked(out):
        atomic_write(os.path.join(out, PROFILE_GRID + ".parquet"), lambda f: grid.to_parquet(f, index=False))
        text = grid.to_csv(index=False).encode()
        atomic_write(os.path.join(out, PROFILE_GRID + ".csv"), lambda f: f.write(text))


# ---- reports of a sweep run under someone else's nsys --------------------------------------------
def report_files(path: str) -> List[str]:
    """The nsys reports of a folder (one per stem: .sqlite, else .sqlite.gz, else .nsys-rep), or
    ``[path]`` for a file."""
    if not os.path.isdir(path):
        return [path]
    by_stem: Dict[str, str] = {}
    for name in sorted(os.listdir(path)):
        for rank, suffix in enumerate(REPORT_SUFFIXES):
            if name.endswith(suffix):
                stem = name[: -len(suffix)]
                best = by_stem.get(stem)
                if best is None or rank < REPORT_SUFFIXES.index(next(s for s in REPORT_SUFFIXES if best.endswith(s))):
                    by_stem[stem] = name
                break
    return [os.path.join(path, by_stem[s]) for s in sorted(by_stem)]
