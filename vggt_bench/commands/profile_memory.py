"""``profile profiler=memory``: the CUDA caching allocator over one forward, as tables and figures.

Entry points (``profile.main`` calls them):

* ``profile_memory(cfg, point, directory)``: on CUDA, capture one forward's allocator history
  (``profiling.memory_capture``); without CUDA it refuses in one line (exit 2) before building
  anything.
* ``analyze_memory(cfg)``: ``analyze=.../memory_snapshot.pickle`` re-reads a kept snapshot (on any
  machine, no GPU needed), with the tracker rows and forward start saved beside it when present.

Both write into ``<out>/profiles/<tag>/``: ``memory_snapshot.pickle`` (the dict
``torch.cuda.memory._snapshot()`` returned, pickled as ``_dump_snapshot`` does: open it at
https://pytorch.org/memory_viz), the tables of ``vggt_bench.profiling.memory``,
``memory_timeline.png|svg`` and ``memory_at_peak.png|svg``, ``point.json``; and print a summary.
A failure on the GPU path is one line (exit 1); an out-of-memory forward still writes the
snapshot and tables up to the failure, then exits 1.
"""

from __future__ import annotations

import json
import os
import pickle
from typing import List, Optional

import pandas as pd

from ..core.errors import UserError, fail, one_line
from ..core.schema import MEMORY_STAGE_CALL_COLUMNS
from ..measure import env
from ..profiling.memory import memory_tables, read_memory_tables, summary_lines, write_memory_tables
from ..profiling.memory_capture import CaptureError, capture, check_point
from ..report.memory_profile import render_memory_figures


SNAPSHOT_FILE = "memory_snapshot.pickle"
VIZ = "https://pytorch.org/memory_viz"


def profile_memory(cfg, point, directory: str) -> int:
    """``profile profiler=memory`` for one resolved point; tables in ``directory``."""
    check_point(point)
    point.execution.nvtx = True  # the tracker hooks the named ranges
    try:
        snapshot, calls, forward_start, index, oom, notes = capture(cfg, point)
    except CaptureError as exc:
        fail(str(exc), 1)
    import torch

    try:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, SNAPSHOT_FILE)
        with open(path, "wb") as f:
            pickle.dump(snapshot, f)
        meta = {**point.knobs(), "tag": os.path.basename(directory),
                "profiler": "memory", "iterations": 1, "source": path, "forward_start_event": forward_start,
                "device_index": index, **env.environment(torch.device(point.device))}
        _finish(snapshot, calls, forward_start, index, directory, meta, notes)
    except UserError:
        raise
    except Exception as exc:  # one line, never a traceback
        fail(f"profiler=memory: writing the snapshot and tables into {directory} failed: {one_line(exc, limit=None)}", 1)
    if oom:
        fail(f"the recorded forward ran out of GPU memory ({oom}); the snapshot up to the failure and its tables "
             f"are in {directory}", 1)
    return 0


# ---- any machine -------------------------------------------------------------------------------
def analyze_memory(cfg) -> int:
    """``profile analyze=PATH/memory_snapshot.pickle``: tables and figures of a kept snapshot."""
    source = str(cfg.analyze)
    if not os.path.exists(source):
        raise UserError(f"analyze={source}: no such file")
    try:
        with open(source, "rb") as f:
            snapshot = pickle.load(f)
    except Exception as exc:
        raise UserError(f"analyze={source}: not a readable memory snapshot pickle ({one_line(exc, limit=None)})")
    if not isinstance(snapshot, dict) or "device_traces" not in snapshot:
        raise UserError(f"analyze={source}: not a torch.cuda.memory._snapshot() dict (no device_traces)")
    here = os.path.dirname(os.path.abspath(source))
    meta = {}
    if os.path.exists(os.path.join(here, "point.json")):
        with open(os.path.join(here, "point.json")) as f:
            meta = json.load(f)
    calls_path = os.path.join(here, "memory_stage_calls.csv")
    calls = pd.read_csv(calls_path) if os.path.exists(calls_path) else pd.DataFrame(columns=MEMORY_STAGE_CALL_COLUMNS)
    tag = cfg.tag or os.path.basename(here)
    directory = os.path.join(cfg.out, "profiles", tag)
    meta.update(tag=tag, profiler=meta.get("profiler", "memory"), source=source)
    index = meta.get("device_index")
    try:
        _finish(snapshot, calls, int(meta.get("forward_start_event", 0)), None if index is None else int(index),
                directory, meta, [])
    except UserError:
        raise
    except Exception as exc:  # one line, never a traceback
        fail(f"analyze={source}: writing the tables into {directory} failed: {one_line(exc, limit=None)}", 1)
    return 0


def _finish(snapshot, calls, forward_start: int, index: Optional[int], directory: str, meta: dict,
            notes: List[str]) -> None:
    try:
        tables = memory_tables(snapshot, calls, forward_start, index)
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"cannot read the memory snapshot: {one_line(exc, limit=None)}")
    summary = tables["memory_summary"]
    summary.attrs["notes"] = list(dict.fromkeys(notes + summary.attrs.get("notes", [])))
    os.makedirs(directory, exist_ok=True)
    write_memory_tables(tables, directory)
    with open(os.path.join(directory, "point.json"), "w") as f:
        json.dump(meta, f, indent=1, default=str)
    try:
        written, figure_notes = render_memory_figures(read_memory_tables(directory), directory, meta)
    except Exception as exc:  # the tables are written: a figure failure is a note
        written, figure_notes = [], [f"figures failed: {one_line(exc, limit=None)}"]
    print(f"memory profile {meta.get('tag', '')}: one forward, "
          f"{int(summary.iloc[0]['events'])} allocator events")
    for line in summary_lines(tables):
        print(line)
    for note in summary.attrs["notes"] + figure_notes:
        print(f"note: {note}")
    print(f"snapshot {meta.get('source', '')} (open it at {VIZ})")
    print(f"tables in {directory}" + (f", figures {', '.join(os.path.basename(p) for p in written if p.endswith('.png'))}"
                                      if written else ""))
