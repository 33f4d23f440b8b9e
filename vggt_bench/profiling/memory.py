"""GPU memory of one forward, per named stage and per allocation, as tidy tables.

Two independent sources, joined where both exist:

**Stage tracker** (``MemoryRanges``). The model wraps every stage in ``ranges("name")``
(``model/nvtx.py``); a ``Ranges`` object with a ``recorder`` calls ``recorder.on_enter(name)`` /
``on_exit(name)`` around each range. At every such boundary the tracker reads the allocator's
counters and resets its peak, so the peak read at the next boundary is the most memory allocated
*between* the two boundaries. That interval lies inside every range still open, so it is folded
into the innermost open range, and a range hands its peak to its parent when it closes: nested
peaks stay exact although the counter is reset all the time. Per range instance it records the
path ("vggt/aggregator/layer_03/global_block"), allocated bytes at entry and exit, the peak
inside, and the allocator's cumulative allocation/free counts (to place the boundary in the
snapshot's trace, below).

The counters come from a pluggable source (``read() -> Counters``, ``reset_peak()``).
``CudaCounters`` reads ``torch.cuda.memory_stats_as_nested_dict`` and calls
``torch.cuda.reset_peak_memory_stats``: both only copy or reset the caching allocator's host-side
statistics under its mutex (``DeviceCachingAllocator::getStats`` / ``resetPeakStats``), with no
CUDA call and no device synchronisation, so the tracker does not change when kernels run. Tests
use a fake source. The CPU allocator keeps no such counters: CPU memory per stage is not
available (a run's ``peak_rss_gib`` is the process peak).

**Snapshot parser** (``memory_tables``). ``torch.cuda.memory._snapshot()`` after recording with
``torch.cuda.memory._record_memory_history(...)`` returns ``{"segments": [...], "device_traces":
[[...], ...]}``: segments (cudaMalloc'd memory) with their ``blocks`` (``address``, ``size``,
``requested_size``, ``state`` active_allocated / active_awaiting_free / inactive, ``frames``), and
per device an ordered trace of allocator actions (``action``, ``addr``, ``size``, ``stream``,
``frames`` innermost first as ``{filename, line, name}``, ``time_us`` on newer torch). Trace
sizes are *requested* sizes, so "allocated" here is the sum of requested sizes of live
allocations (``torch.cuda.memory_allocated`` counts rounded block sizes, a little more) and the
slack below includes that rounding. Replaying the trace:

* ``alloc`` makes an allocation live; ``free_requested`` ends it (the allocator's allocated-bytes
  counter drops there too; ``free_completed`` follows once other streams are done, and only
  ends an allocation whose request was not recorded).
* ``segment_alloc`` / ``segment_map`` grow reserved memory, ``segment_free`` / ``segment_unmap``
  shrink it; ``snapshot`` and ``oom`` change nothing.
* An allocation freed in the trace but never allocated in it, or live in the final segments but
  never allocated in the trace, existed before the trace began (weights, inputs, anything the
  warm-up kept). Reserved memory at the start is the final segments' total less the trace's
  segment changes.

The peak is the largest allocated total after any event from ``forward_start`` (the trace index
where the recorded forward began) on. Each allocation live then is put in a category by
``CATEGORY_RULES`` (first match wins), from where it was allocated: the innermost frame *of our
code* (a ``.py`` file outside site-packages and the standard library) is its attribution frame.

====================  ==========================================================================
weights and inputs    allocated before the recorded forward began (including what the warm-up
                      left allocated: cuBLAS workspaces, cached RoPE tables)
unattributed          no stack recorded (history without stacks)
workspace             a C++ frame names a cuBLAS / cuDNN workspace (only with stacks="all")
kept layer outputs    allocated in ``Aggregator.new_output`` or ``Aggregator.snapshot`` (or
                      ``Offloader.snapshot``): every memory plan builds kept outputs there
workspace             allocated inside an attention backend call (``attention.py``: the kernel's
                      output, logsumexp and scratch)
workspace             no frame of our code at all (allocated by library internals)
activations           everything else allocated during the forward
====================  ==========================================================================

``allocator slack`` = reserved minus allocated at the peak (cached free blocks, split remainders
and size rounding). Compiled models allocate from generated code: their blocks mostly land in
activations.

Tables (columns in ``vggt_bench.core.schema``): ``memory_timeline``, ``memory_at_peak``,
``memory_by_category``, ``memory_stages`` (from the tracker, aligned to trace indices when the
tracker's allocation counts match the trace), ``memory_stage_calls`` (the tracker's raw rows,
kept so a snapshot can be re-analysed) and ``memory_summary``; notes in
``tables["memory_summary"].attrs["notes"]``.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from vggt_bench.core.schema import (
    MEMORY_AT_PEAK_COLUMNS,
    MEMORY_BY_CATEGORY_COLUMNS,
    MEMORY_STAGE_CALL_COLUMNS,
    MEMORY_STAGE_COLUMNS,
    MEMORY_SUMMARY_COLUMNS,
    MEMORY_TIMELINE_COLUMNS,
)

GIB = float(2**30)
MEMORY_TABLES = ("memory_timeline", "memory_at_peak", "memory_by_category", "memory_stages",
                 "memory_stage_calls", "memory_summary")
COLUMNS = {
    "memory_timeline": MEMORY_TIMELINE_COLUMNS,
    "memory_at_peak": MEMORY_AT_PEAK_COLUMNS,
    "memory_by_category": MEMORY_BY_CATEGORY_COLUMNS,
    "memory_stages": MEMORY_STAGE_COLUMNS,
    "memory_stage_calls": MEMORY_STAGE_CALL_COLUMNS,
    "memory_summary": MEMORY_SUMMARY_COLUMNS,
}
NOTES_FILE = "memory_notes.txt"
CPU_UNAVAILABLE = "CPU memory per stage is not available: only the CUDA caching allocator keeps counters"

WEIGHTS, KEPT, ACTIVATIONS, WORKSPACE, UNATTRIBUTED, SLACK = (
    "weights and inputs", "kept layer outputs", "activations", "workspace", "unattributed", "allocator slack")
CATEGORIES = (WEIGHTS, KEPT, ACTIVATIONS, WORKSPACE, UNATTRIBUTED, SLACK)


# ==== stage tracker ==============================================================================
@dataclass
class Counters:
    """One reading of an allocator's counters (bytes; counts cumulative, None when unknown)."""

    allocated: int
    peak: int                      # most allocated since the last reset_peak()
    allocs: Optional[int] = None   # allocation requests so far
    frees: Optional[int] = None    # frees so far


class CudaCounters:
    """The CUDA caching allocator's host-side counters of one device (no device sync)."""

    def __init__(self, device=None):
        import torch

        if device is not None and not isinstance(device, int) and torch.device(device).type != "cuda":
            raise ValueError(CPU_UNAVAILABLE)
        self._torch = torch
        self.device = device

    def read(self) -> Counters:
        stats = self._torch.cuda.memory_stats_as_nested_dict(self.device)
        if not stats:  # CUDA not initialised yet: nothing allocated
            return Counters(0, 0, 0, 0)
        alloc, count = stats["allocated_bytes"]["all"], stats["allocation"]["all"]
        return Counters(int(alloc["current"]), int(alloc["peak"]), int(count["allocated"]), int(count["freed"]))

    def reset_peak(self) -> None:
        self._torch.cuda.reset_peak_memory_stats(self.device)


@dataclass
class _Call:
    call: int
    path: str
    name: str
    depth: int
    entry: int
    peak: int
    enter_allocs: Optional[int]
    enter_frees: Optional[int]
    exit: Optional[int] = None
    exit_allocs: Optional[int] = None
    exit_frees: Optional[int] = None


class MemoryRanges:
    """Allocated memory per named-range instance; plug into ``Ranges.recorder`` (see ``attached``).

    ``source`` gives ``read() -> Counters`` and ``reset_peak()``. Call ``start()`` where the
    recorded forward begins (it also happens at the first range) and ``stop()`` after it.
    """

    def __init__(self, source):
        self.source = source
        self.calls: List[_Call] = []
        self.notes: List[str] = []
        self.peak_bytes = 0
        self._stack: List[_Call] = []
        self._origin = None

    def _read(self) -> Counters:
        counters = self.source.read()
        self.peak_bytes = max(self.peak_bytes, counters.peak)
        if self._stack:  # the interval since the last boundary lies inside the innermost open range
            top = self._stack[-1]
            top.peak = max(top.peak, counters.peak)
        return counters

    def _since_start(self, counters: Counters):
        if self._origin is None or counters.allocs is None or counters.frees is None or self._origin[0] is None:
            return None, None
        return counters.allocs - self._origin[0], counters.frees - self._origin[1]

    def start(self) -> None:
        counters = self.source.read()
        self._origin = (counters.allocs, counters.frees)
        self.peak_bytes = counters.allocated
        self.source.reset_peak()

    def on_enter(self, name: str) -> None:
        if self._origin is None:
            self.start()
        counters = self._read()
        path = "/".join([c.name for c in self._stack] + [name])
        allocs, frees = self._since_start(counters)
        call = _Call(len(self.calls), path, name, len(self._stack), counters.allocated, counters.allocated,
                     allocs, frees)
        self.calls.append(call)
        self._stack.append(call)
        self.source.reset_peak()

    def on_exit(self, name: str) -> None:
        if not any(c.name == name for c in self._stack):
            self.notes.append(f"range {name!r} closed without being open; ignored")
            return
        counters = self._read()
        while self._stack:
            call = self._stack.pop()
            call.exit = counters.allocated
            call.exit_allocs, call.exit_frees = self._since_start(counters)
            if self._stack:
                parent = self._stack[-1]
                parent.peak = max(parent.peak, call.peak)
            if call.name == name:
                break
            self.notes.append(f"range {call.path!r} was still open when {name!r} closed; closed it there")
        self.source.reset_peak()

    def stop(self) -> None:
        self._read()
        for call in self._stack:
            self.notes.append(f"range {call.path!r} never closed")
        self.source.reset_peak()

    def calls_table(self) -> pd.DataFrame:
        """One row per range instance (``memory_stage_calls``)."""
        def gib(v):
            return np.nan if v is None else v / GIB

        def count(v):
            return np.nan if v is None else float(v)

        rows = [(c.call, c.path, c.name, c.depth, gib(c.entry), gib(c.peak), gib(c.exit), count(c.enter_allocs),
                 count(c.enter_frees), count(c.exit_allocs), count(c.exit_frees)) for c in self.calls]
        return pd.DataFrame(rows, columns=MEMORY_STAGE_CALL_COLUMNS)


@contextlib.contextmanager
def attached(recorder, *ranges):
    """Set ``recorder`` on each distinct ``Ranges`` object for the duration; restore after.

    The model shares one ``Ranges`` between itself and its aggregator: pass both, it is set
    once. Raises ValueError when ranges are off (nothing would be recorded) or a ranges object
    has no recorder hook.
    """
    objects = list({id(r): r for r in ranges if r is not None}.values())
    if not objects:
        raise ValueError("no named ranges to attach the memory tracker to")
    for r in objects:
        if not getattr(r, "enabled", False):
            raise ValueError("the model's named ranges are off: configure it with nvtx=True")
        if not hasattr(r, "recorder"):
            raise ValueError(f"{type(r).__name__} has no recorder hook (on_enter/on_exit)")
    previous = [r.recorder for r in objects]
    for r in objects:
        r.recorder = recorder
    try:
        yield recorder
    finally:
        for r, p in zip(objects, previous):
            r.recorder = p


# ==== categories =================================================================================
_LIBRARY_WORKSPACE = re.compile(r"workspace|cublas|cudnn", re.IGNORECASE)
# Our packages, by folder name: the checkout's model/ and vggt_bench/, or the installed vggt_model/
# and vggt_bench/ (wherever they are installed, and on whichever machine the snapshot was taken).
_OUR_FOLDERS = ("model", "vggt_model", "vggt_bench")
# Where kept layer outputs are made: every plan builds them in these functions, by name.
_KEPT_OUTPUT_FUNCTIONS = {("aggregator.py", "new_output"), ("aggregator.py", "snapshot"), ("offload.py", "snapshot")}


def is_ours(filename: str) -> bool:
    """A frame of this project: a Python file in one of our packages' folders."""
    parts = filename.replace("\\", "/").split("/")
    return filename.endswith(".py") and any(p in _OUR_FOLDERS for p in parts[-4:-1])


def attribution_frame(frames: Optional[Sequence[dict]]) -> Optional[dict]:
    """The innermost frame of our code (frames are innermost first), or None."""
    for frame in frames or ():
        if is_ours(str(frame.get("filename", ""))):
            return frame
    return None


def frame_label(frame: Optional[dict]) -> str:
    """``dir/file.py:function:line`` (the last two path components)."""
    if not frame:
        return ""
    parts = str(frame.get("filename", "")).replace("\\", "/").split("/")
    return f"{'/'.join(parts[-2:])}:{frame.get('name', '?')}:{frame.get('line', '?')}"


@dataclass
class Allocation:
    """What the category rules look at."""

    before_forward: bool
    frames: list
    ours: Optional[dict] = field(init=False)

    def __post_init__(self):
        self.ours = attribution_frame(self.frames)


def _names_library_workspace(a: Allocation) -> bool:
    return any(not is_ours(str(f.get("filename", ""))) and _LIBRARY_WORKSPACE.search(str(f.get("name", "")))
               for f in a.frames)


def _builds_kept_outputs(a: Allocation) -> bool:
    f = a.ours
    return f is not None and (os.path.basename(str(f.get("filename", ""))), f.get("name")) in _KEPT_OUTPUT_FUNCTIONS


def _in_attention_call(a: Allocation) -> bool:
    return a.ours is not None and os.path.basename(str(a.ours.get("filename", ""))) == "attention.py"


# (category, rule, why): the first rule that holds names the category.
CATEGORY_RULES = (
    (WEIGHTS, lambda a: a.before_forward, "allocated before the recorded forward began"),
    (UNATTRIBUTED, lambda a: not a.frames, "no stack recorded"),
    (WORKSPACE, _names_library_workspace, "a C++ frame names a cuBLAS/cuDNN workspace"),
    (KEPT, _builds_kept_outputs, "made by Aggregator.new_output / snapshot (or Offloader.snapshot)"),
    (WORKSPACE, _in_attention_call, "inside an attention backend call"),
    (WORKSPACE, lambda a: a.ours is None, "no frame of our code: library internals"),
    (ACTIVATIONS, lambda a: True, "allocated during the forward"),
)


def categorize(allocation: Allocation) -> str:
    for category, rule, _ in CATEGORY_RULES:
        if rule(allocation):
            return category
    return ACTIVATIONS


# ==== snapshot parsing ===========================================================================
_GROW = ("segment_alloc", "segment_map")
_SHRINK = ("segment_free", "segment_unmap")


@dataclass
class _Life:
    address: int
    size: int
    alloc_event: int            # -1: before the trace began
    frames: list
    free_event: float = np.inf  # trace index of its free (inf: still live at the snapshot)


def device_trace(snapshot: dict, device: int) -> list:
    traces = snapshot.get("device_traces") or []
    return list(traces[device]) if 0 <= device < len(traces) else []


def _pick_device(snapshot: dict, device: Optional[int]) -> int:
    traces = snapshot.get("device_traces")
    if traces is None:
        raise ValueError("the snapshot has no device_traces: record it with "
                         "torch.cuda.memory._record_memory_history() before the forward")
    if device is not None:
        return int(device)
    lengths = [len(t or []) for t in traces]
    return int(np.argmax(lengths)) if lengths else 0


def _segments(snapshot: dict, device: int) -> list:
    return [s for s in snapshot.get("segments") or [] if s.get("device", device) == device]


def _final_blocks(segments: list):
    """(address, requested size, frames) of each allocated block at the snapshot. Blocks without
    an ``address`` (older formats) lie back to back from their segment's address."""
    for seg in segments:
        address = seg.get("address") or 0
        for block in seg.get("blocks") or []:
            addr = block.get("address", address)
            if block.get("state") == "active_allocated":
                yield int(addr), int(block.get("requested_size", block.get("size", 0))), list(block.get("frames") or [])
            address = addr + int(block.get("size", 0))


def _replay(trace: list, segments: list, notes: List[str]):
    """Lifetimes of every allocation the trace touches, plus those live throughout; the allocated
    and reserved totals after each event."""
    live: Dict[int, _Life] = {}
    requested = set()
    lives: List[_Life] = []
    before: List[_Life] = []  # live when the trace began
    n = len(trace)
    delta = np.zeros(n, dtype=np.int64)
    reserved_delta = np.zeros(n, dtype=np.int64)
    for i, e in enumerate(trace):
        action, addr, size = e.get("action"), e.get("addr"), int(e.get("size") or 0)
        if action == "alloc":
            if addr in live:  # its free was not recorded
                notes.append(f"trace event {i}: allocation at an address already live; the earlier one ends there")
                old = live.pop(addr)
                old.free_event = i
                delta[i] -= old.size
            life = _Life(int(addr), size, i, list(e.get("frames") or []))
            live[addr] = life
            lives.append(life)
            delta[i] += size
        elif action == "free_requested" or (action == "free_completed" and addr not in requested):
            life = live.pop(addr, None)
            if life is None:
                if action == "free_completed":
                    continue  # requested before the trace began: already not allocated
                life = _Life(int(addr), size, -1, [])  # allocated before the trace began
                before.append(life)
                lives.append(life)
            delta[i] = -life.size
            life.free_event = i
            if action == "free_requested":
                requested.add(addr)
        elif action == "free_completed":
            requested.discard(addr)
        elif action in _GROW:
            reserved_delta[i] = size
        elif action in _SHRINK:
            reserved_delta[i] = -size
    # allocations live at the snapshot that the trace never allocated: live throughout
    allocated_in_trace = {l.address for l in lives if l.alloc_event >= 0}
    for addr, size, frames in _final_blocks(segments):
        if addr in live:
            continue
        if addr in allocated_in_trace:
            notes.append(f"block at {addr:#x} is allocated at the snapshot but the trace freed it last")
            continue
        life = _Life(addr, size, -1, frames)
        before.append(life)
        lives.append(life)
    initial = sum(l.size for l in before)
    allocated = initial + np.cumsum(delta)
    final_reserved = sum(int(s.get("total_size") or 0) for s in segments)
    initial_reserved = final_reserved - int(reserved_delta.sum())
    if initial_reserved < 0:
        notes.append("reserved memory does not add up (the trace misses segment events); reserved starts at 0")
        initial_reserved = 0
    reserved = initial_reserved + np.cumsum(reserved_delta)
    end_live = {l.address for l in lives if not np.isfinite(l.free_event)}
    final = {addr for addr, _, _ in _final_blocks(segments)}
    if segments and end_live != final:
        notes.append(f"replayed trace ends with {len(end_live)} live allocations, the snapshot's segments hold "
                     f"{len(final)}: the trace is incomplete (ring buffer full?)")
    return lives, allocated, reserved, initial


def _stage_positions(actions: np.ndarray, forward_start: int, calls: pd.DataFrame, notes: List[str]):
    """Trace index of each call's entry and exit from the allocator's allocation/free counts."""
    if calls is None or calls.empty:
        return None
    counts = calls[["enter_allocs", "enter_frees", "exit_allocs", "exit_frees"]]
    if counts.isna().any().any():
        notes.append("the stage tracker has no allocation counts: stages are not placed on the timeline")
        return None
    index = np.arange(len(actions))
    allocs = index[(actions == "alloc") & (index >= forward_start)]
    frees = index[(actions == "free_requested") & (index >= forward_start)]
    need_a = int(max(counts["enter_allocs"].max(), counts["exit_allocs"].max()))
    need_f = int(max(counts["enter_frees"].max(), counts["exit_frees"].max()))
    if need_a > len(allocs) or need_f > len(frees):
        notes.append(f"the stage tracker counted {need_a} allocations and {need_f} frees, the trace holds "
                     f"{len(allocs)} and {len(frees)} after the forward began: stages are not placed on the timeline")
        return None

    def position(a, f):
        a, f = a.astype(int).to_numpy(), f.astype(int).to_numpy()
        pa = np.where(a > 0, allocs[np.maximum(a, 1) - 1] + 1 if len(allocs) else forward_start, forward_start)
        pf = np.where(f > 0, frees[np.maximum(f, 1) - 1] + 1 if len(frees) else forward_start, forward_start)
        return np.maximum(pa, pf)

    return position(counts["enter_allocs"], counts["enter_frees"]), position(counts["exit_allocs"], counts["exit_frees"])


def stage_table(calls: Optional[pd.DataFrame], starts=None, ends=None) -> pd.DataFrame:
    """``memory_stages``: the tracker's instances grouped by path, in the order paths first began."""
    if calls is None or calls.empty:
        return pd.DataFrame(columns=MEMORY_STAGE_COLUMNS)
    c = calls.sort_values("call").copy()
    c["_above"] = c["peak_gib"] - c["entry_gib"]
    c["_delta"] = c["exit_gib"] - c["entry_gib"]
    c["_start"] = np.nan if starts is None else np.asarray(starts, dtype=float)[c.index.to_numpy()]
    c["_end"] = np.nan if ends is None else np.asarray(ends, dtype=float)[c.index.to_numpy()]
    g = c.groupby("path", sort=False)
    table = pd.DataFrame({
        "path": list(g.groups.keys()),
        "range": g["range"].first().to_numpy(),
        "depth": g["depth"].first().to_numpy(),
        "calls": g.size().to_numpy(),
        "peak_gib": g["peak_gib"].max().to_numpy(),
        "peak_above_entry_gib": g["_above"].max().to_numpy(),
        "entry_gib": g["entry_gib"].first().to_numpy(),
        "exit_gib": g["exit_gib"].last().to_numpy(),
        "delta_gib": g["_delta"].sum(min_count=1).to_numpy(),
        "first_event": g["_start"].min().to_numpy(),
        "last_event": g["_end"].max().to_numpy(),
    })
    return table[MEMORY_STAGE_COLUMNS]


def _stage_per_event(n: int, calls: Optional[pd.DataFrame], positions) -> np.ndarray:
    stage = np.full(n, "", dtype=object)
    if positions is None:
        return stage
    starts, ends = positions
    order = np.argsort(calls["depth"].to_numpy(), kind="stable")  # deeper ranges overwrite their parents
    paths = calls["path"].to_numpy()
    for k in order:
        stage[int(starts[k]):int(ends[k])] = paths[k]
    return stage


def memory_tables(snapshot: dict, stage_calls: Optional[pd.DataFrame] = None, forward_start: int = 0,
                  device: Optional[int] = None) -> Dict[str, pd.DataFrame]:
    """The memory tables of one snapshot (``MEMORY_TABLES``), notes in ``memory_summary.attrs``.

    ``stage_calls``: ``MemoryRanges.calls_table()`` of the same forward (optional);
    ``forward_start``: trace index where the recorded forward began (events before it, and
    allocations live when it began, are "weights and inputs"); ``device``: which device's trace
    (default: the longest). Raises ValueError for a snapshot without a trace.
    """
    notes: List[str] = []
    device = _pick_device(snapshot, device)
    trace = device_trace(snapshot, device)
    segments = _segments(snapshot, device)
    forward_start = max(0, min(int(forward_start), len(trace)))
    lives, allocated, reserved, initial = _replay(trace, segments, notes)
    n = len(trace)
    actions = np.array([str(e.get("action", "")) for e in trace], dtype=object)

    calls = stage_calls.reset_index(drop=True) if stage_calls is not None and len(stage_calls) else None
    positions = _stage_positions(actions, forward_start, calls, notes) if calls is not None else None
    stage = _stage_per_event(n, calls, positions)

    times = [e.get("time_us") for e in trace]
    timeline = pd.DataFrame({
        "event": np.arange(n, dtype=np.int64),
        "time_us": pd.to_numeric(pd.Series(times, dtype=object), errors="coerce").astype("float64"),
        "action": actions,
        "size_gib": np.array([float(e.get("size") or 0) for e in trace]) / GIB,
        "allocated_gib": allocated / GIB,
        "reserved_gib": reserved / GIB,
        "in_forward": np.arange(n) >= forward_start,
        "stage": stage,
    }, columns=MEMORY_TIMELINE_COLUMNS)

    # the peak: the largest total after an event of the forward
    if n > forward_start:
        peak_event = forward_start + int(np.argmax(allocated[forward_start:]))
        peak_bytes, reserved_at_peak = int(allocated[peak_event]), int(reserved[peak_event])
        peak_reserved = int(reserved[forward_start:].max())
    else:
        notes.append("no allocator event after the forward began: the peak is what was allocated before it")
        peak_event = None
        peak_bytes = int(allocated[-1]) if n else initial
        reserved_at_peak = peak_reserved = int(reserved[-1]) if n else sum(int(s.get("total_size") or 0) for s in segments)
    at = peak_event if peak_event is not None else n - 1  # -1: before any event
    live = [l for l in lives if l.alloc_event <= at < l.free_event]

    rows = []
    for l in live:
        allocation = Allocation(l.alloc_event < forward_start, l.frames)
        ours = allocation.ours
        label = frame_label(ours if ours is not None else (l.frames[0] if l.frames else None))
        where = stage[l.alloc_event] if 0 <= l.alloc_event < n else ""
        rows.append((l.address, l.size / GIB, categorize(allocation), label, where, l.alloc_event))
    at_peak = pd.DataFrame(rows, columns=MEMORY_AT_PEAK_COLUMNS)
    at_peak = at_peak.sort_values(["size_gib", "alloc_event"], ascending=[False, True], kind="stable").reset_index(drop=True)

    by_category = []
    reserved_gib = reserved_at_peak / GIB
    for category in CATEGORIES:
        if category == SLACK:
            size, blocks = max(reserved_at_peak - peak_bytes, 0) / GIB, 0
        else:
            sel = at_peak["category"] == category
            size, blocks = float(at_peak.loc[sel, "size_gib"].sum()), int(sel.sum())
        by_category.append((category, blocks, size, size / reserved_gib if reserved_gib > 0 else np.nan))
    by_category = pd.DataFrame(by_category, columns=MEMORY_BY_CATEGORY_COLUMNS)

    starts, ends = positions if positions is not None else (None, None)
    stages = stage_table(calls, starts, ends)
    oom = bool((actions == "oom").any())
    for e in trace:
        if e.get("action") == "oom":
            notes.append(f"the allocator ran out of memory: {int(e.get('size') or 0) / GIB:.2f} GiB requested, "
                         f"{int(e.get('device_free') or 0) / GIB:.2f} GiB free on the device")
    summary = pd.DataFrame([{
        "device_index": device,
        "events": n,
        "forward_start_event": forward_start,
        "peak_event": np.nan if peak_event is None else peak_event,
        "allocated_before_gib": (int(allocated[forward_start - 1]) if forward_start > 0 else initial) / GIB,
        "peak_allocated_gib": peak_bytes / GIB,
        "reserved_at_peak_gib": reserved_gib,
        "peak_reserved_gib": peak_reserved / GIB,
        "end_allocated_gib": (int(allocated[-1]) if n else initial) / GIB,
        "tracker_peak_gib": float(calls["peak_gib"].max()) if calls is not None else np.nan,
        "peak_stage": stage[peak_event] if peak_event is not None else "",
        "oom": oom,
    }], columns=MEMORY_SUMMARY_COLUMNS)
    summary.attrs["notes"] = list(dict.fromkeys(notes))
    return {
        "memory_timeline": timeline,
        "memory_at_peak": at_peak,
        "memory_by_category": by_category,
        "memory_stages": stages,
        "memory_stage_calls": calls if calls is not None else pd.DataFrame(columns=MEMORY_STAGE_CALL_COLUMNS),
        "memory_summary": summary,
    }


# ==== files =====================================================================================
def write_memory_tables(tables: Dict[str, pd.DataFrame], directory: str) -> List[str]:
    """``<directory>/<name>.csv`` for each memory table present, and ``memory_notes.txt``."""
    os.makedirs(directory, exist_ok=True)
    written = []
    for name in MEMORY_TABLES:
        if name in tables:
            path = os.path.join(directory, f"{name}.csv")
            tables[name].reindex(columns=COLUMNS[name]).to_csv(path, index=False)
            written.append(path)
    notes = tables.get("memory_summary", pd.DataFrame()).attrs.get("notes", [])
    path = os.path.join(directory, NOTES_FILE)
    with open(path, "w") as f:
        f.write("\n".join(notes) + ("\n" if notes else ""))
    return written + [path]


_BOOL_COLUMNS = {"in_forward", "oom"}


def _text(value) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)

_TEXT_COLUMNS = {"action", "stage", "category", "frame", "path", "range", "peak_stage"}


def read_memory_tables(directory: str) -> Dict[str, pd.DataFrame]:
    """The memory tables written by ``write_memory_tables`` (absent ones as empty frames)."""
    tables = {}
    for name in MEMORY_TABLES:
        path = os.path.join(directory, f"{name}.csv")
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""]) if os.path.exists(path) else pd.DataFrame()
        frame = frame.reindex(columns=COLUMNS[name])
        for col in frame.columns:
            if col in _TEXT_COLUMNS:
                frame[col] = frame[col].map(_text).astype(object)
            elif col in _BOOL_COLUMNS:
                frame[col] = frame[col].map(lambda v: str(v).strip().lower() in ("true", "1")).astype(bool)
            else:
                frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
        tables[name] = frame
    notes_path = os.path.join(directory, NOTES_FILE)
    if os.path.exists(notes_path):
        with open(notes_path) as f:
            tables["memory_summary"].attrs["notes"] = [line.rstrip("\n") for line in f if line.strip()]
    return tables


# ==== text ======================================================================================
def top_stages(stages: pd.DataFrame, n: int = 5) -> pd.DataFrame:
    """The ``n`` highest-peak stages, each the innermost range that reached its peak (an outer
    range sharing a listed range's peak is not listed again)."""
    if stages.empty:
        return stages
    ordered = stages.sort_values(["peak_gib", "depth"], ascending=[False, False], kind="stable")
    picked: List[str] = []
    rows = []
    for _, row in ordered.iterrows():
        if any(p == row["path"] or p.startswith(row["path"] + "/") for p in picked):
            continue
        picked.append(row["path"])
        rows.append(row)
        if len(rows) == n:
            break
    return pd.DataFrame(rows, columns=stages.columns)


def summary_lines(tables: Dict[str, pd.DataFrame]) -> List[str]:
    """A few lines for the terminal: peak, what is live then, the top stages."""
    s = tables["memory_summary"].iloc[0]
    lines = [f"peak allocated {s['peak_allocated_gib']:.3f} GiB (reserved {s['reserved_at_peak_gib']:.3f} GiB at "
             f"the peak, at most {s['peak_reserved_gib']:.3f} GiB); {s['allocated_before_gib']:.3f} GiB allocated "
             f"before the forward" + (f"; peak in {s['peak_stage']}" if s["peak_stage"] else "")]
    cats = tables["memory_by_category"]
    cats = cats[cats["size_gib"] > 0].sort_values("size_gib", ascending=False)
    if len(cats):
        lines.append("live at the peak: " + ", ".join(f"{r['category']} {r['size_gib']:.3f} GiB"
                                                      for _, r in cats.iterrows()))
    top = top_stages(tables["memory_stages"])
    if len(top):
        lines.append("top stages by peak (allocator counter): " + ", ".join(
            f"{r['path']} {r['peak_gib']:.3f} GiB" for _, r in top.iterrows()))
    return lines
