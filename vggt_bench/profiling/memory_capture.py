"""Capturing one forward's CUDA allocator history for ``profile profiler=memory``.

``check_point`` refuses what cannot be memory-profiled before anything is built: no CUDA (one line,
exit 2), or CUDA-graph replays (``model.cuda_graph``, compile modes that use CUDA graphs), which
allocate nothing. ``capture`` builds the model with its named ranges on, runs ``measure.warmup``
forwards, then records the allocator's history
(``torch.cuda.memory._record_memory_history(max_entries=MAX_ENTRIES, context="all",
stacks="python")``) around ONE forward while a ``MemoryRanges`` tracker sits on the model's
``Ranges``; snapshot, stop recording. A marker snapshot taken just before the forward gives the
trace index where the forward starts. A failure is one line (``CaptureError``); an out-of-memory
forward still returns the snapshot up to the failure. The tables are ``profiling.memory``'s.
"""

from __future__ import annotations

import contextlib
from typing import List

from ..core.errors import UserError, one_line
from ..measure import build
from .memory import CudaCounters, MemoryRanges, attached, device_trace


MAX_ENTRIES = 1_000_000  # allocator trace ring buffer; a VGGT-1B forward needs a few 10^4
CPU_MESSAGE = ("profiler=memory records the CUDA caching allocator: it needs device=cuda "
               "(on the CPU, peak process memory is in every run's peak_rss_gib column)")
GRAPH_MESSAGE = ("profiler=memory records allocations and a CUDA-graph replay makes none: use model.cuda_graph=false "
                 "and model.compile=off|default|max-autotune-no-cudagraphs")


class CaptureError(RuntimeError):
    """The GPU path failed: one line, exit 1."""


def check_point(point) -> None:
    """Refuse what cannot be memory-profiled, before anything is built."""
    if not str(point.device).startswith("cuda"):
        raise UserError(CPU_MESSAGE)
    ex = point.execution
    if ex.cuda_graph or ex.compile in ("reduce-overhead", "max-autotune"):
        raise UserError(GRAPH_MESSAGE)


# ---- CUDA only ---------------------------------------------------------------------------------
@contextlib.contextmanager
def _recording(torch, max_entries: int):
    torch.cuda.memory._record_memory_history(enabled="all", context="all", stacks="python", max_entries=max_entries)
    try:
        yield
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)


def capture(cfg, point):
    """Warm up, then record one forward. Returns (snapshot, stage calls, forward start, device
    index, out-of-memory message or "", notes). CUDA only; raises CaptureError."""
    import torch

    step = "building the model"
    notes: List[str] = []
    try:
        device = torch.device(point.device)
        index = device.index if device.index is not None else torch.cuda.current_device()
        net = build.MODELS.get(point)
        net.configure(point.execution)
        images, queries = build.make_inputs(point)
        fn = build.forward_fn(net, point, images, queries)
        recorder = MemoryRanges(CudaCounters(index))
        ranges = (getattr(net, "ranges", None), getattr(getattr(net, "aggregator", None), "ranges", None))
        oom = ""
        with torch.inference_mode():
            step = "the warm-up forward"
            for _ in range(int(cfg.measure.warmup)):
                fn()
            torch.cuda.synchronize(device)
            step = "recording the allocator history"
            with attached(recorder, *ranges), _recording(torch, MAX_ENTRIES):
                forward_start = len(device_trace(torch.cuda.memory._snapshot(), index))
                recorder.start()
                out = None
                step = "the recorded forward"
                try:
                    out = fn()
                    torch.cuda.synchronize(device)
                except torch.cuda.OutOfMemoryError as exc:
                    oom = one_line(exc, limit=None)
                recorder.stop()
                step = "the snapshot"
                snapshot = torch.cuda.memory._snapshot()
            del out
    except UserError:
        raise
    except Exception as exc:  # one line on the terminal, never a traceback
        raise CaptureError(f"profiler=memory: {step} failed: {one_line(exc, limit=None)}") from exc
    if len(device_trace(snapshot, index)) >= MAX_ENTRIES:
        notes.append(f"the allocator trace filled its {MAX_ENTRIES} entries: the earliest events were dropped")
    notes += recorder.notes
    return snapshot, recorder.calls_table(), forward_start, index, oom, notes
