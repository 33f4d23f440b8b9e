"""Measure one point: build (or reuse) its model, warm up, time, and make its record.

``run_point`` is what a command calls: one complete results row, never an exception for a
failure of the point itself (out-of-memory, an unavailable backend and any other error each become
a row with a status, and the caller goes on to the next point). ``measure`` measures in this
process; a context-parallel point (``model.context_parallel=N``) is measured by N ranks in
lockstep (``measure_point``, each rank running ``measure``), started or joined through ``ranks``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import sys
import time
import traceback
from typing import Optional

import torch

import vggt_model
from vggt_model import attention

from ..core.errors import UserError, one_line, say_error
from . import build, drift, env, ranks, telemetry, timing, upstream
from .point import Point
from .record import Attention, Drift, Measurement, Memory, Ranks, Timing


@dataclasses.dataclass(frozen=True)
class Method:
    """How every point is measured: the ``measure`` config group, and where drift's exact outputs are
    kept. ``warmup`` untimed calls, then ``repeats`` timed ones (with ``adaptive``: at least that
    many, until the median's CI converges); with ``drift`` the drift columns against the exact
    model, and with ``eager_reference`` also ``drift_vs_eager`` against the eager fp32 model;
    ``reference_dir``: where the exact model's drift outputs are saved for later processes."""

    warmup: int = 1
    repeats: int = 3
    drift: bool = False
    eager_reference: bool = True
    adaptive: Optional[timing.AdaptiveSettings] = None
    reference_dir: Optional[str] = None

    @classmethod
    def from_config(cls, measure, out: Optional[str] = None) -> "Method":
        """From a ``measure`` config group; ``out``: the results directory (drift's exact outputs go to
        ``<out>/drift_reference/``). Raises ``timing.SettingsError`` for bad adaptive settings."""
        return cls(warmup=int(measure.warmup), repeats=int(measure.repeats), drift=bool(measure.drift),
                   eager_reference=bool(measure.eager_reference),
                   adaptive=timing.adaptive_settings(measure),
                   reference_dir=os.path.join(out, drift.DRIFT_REFERENCE_DIR) if out else None)


def run_point(point: Point, how: Method, experiment: str = "") -> dict:
    """One complete result row, measured as ``how`` says. Never raises for a failure of the point itself."""
    t0 = time.perf_counter()
    environment = {**env.environment(torch.device(point.device)),
                   "upstream_source": upstream.describe(point.upstream_path) if point.impl == "upstream" else ""}
    try:
        if point.execution.context_parallel > 1:  # N ranks measure it together
            record = measure_point(point, how)
        else:
            record = measure(point, how)
    except vggt_model.checkpoint.CheckpointError as exc:
        raise UserError(str(exc))
    except Exception as exc:  # a point's failure is a result; Ctrl-C and SystemExit (a launcher's requeue) pass
        if is_oom(exc):
            record = Measurement(point, status="oom", message=one_line(exc))
        else:
            record = Measurement(point, status="error", message=one_line(exc))
            traceback.print_exc(file=sys.stderr)
    finally:
        build.free_memory()
    held = build.MODELS.params()  # context parallel: none here, rank 0's count came with the record
    record = dataclasses.replace(record, experiment=experiment, environment=environment,
                                 params=record.params if held is None else held, wall_s=time.perf_counter() - t0)
    return record.to_row()


def measure(point: Point, how: Method) -> Measurement:
    """One point measured in this process (status ``ok``, or ``unavailable`` with the reason), or
    raise; ``how`` says how (warm-up, repeats, drift)."""
    warmup, repeats, with_drift, adaptive = how.warmup, how.repeats, how.drift, how.adaptive
    device = point.device
    why = ranks.unavailable(point)  # what context parallelism does not combine with
    if why:
        return Measurement(point, status="unavailable", message=why)
    with torch.inference_mode():
        # with drift on, the heads are held (not timed) at every point, so every row of the sweep
        # holds the same weights and drift covers cameras, depth and points
        heads = with_drift and point.impl == "ours"
        net = build.MODELS.get(point, heads=heads)
        ex = point.execution
        if ex.memory_plan == "offload" and ex.cuda_graph:
            return Measurement(point, status="unavailable", message=(
                "memory_plan=offload copies to host memory on a side stream, which is not captured into a "
                "CUDA graph here; use model.cuda_graph=false"))
        try:
            net.configure(ex)
        except attention.BackendUnavailable as exc:
            return Measurement(point, status="unavailable", message=str(exc))
        if ex.compile != "off":
            # Compiled code is cached per code object, shared by every point of the process:
            # without a reset, new shapes recompile until dynamo's recompile limit and then
            # silently run eager. Each point compiles afresh (in its warm-up, untimed).
            torch._dynamo.reset()
        images, queries = build.make_inputs(point)
        build.free_memory()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(device)
            static = torch.cuda.memory_allocated(device) / 2**30
        else:
            static = math.nan
        _reset_peak_rss()
        # Built after the reset: a CUDA graph's capture allocates its memory pool here.
        built = time.perf_counter()
        fn = build.forward_fn(net, point, images, queries)
        timing.synchronize(device)
        built = (time.perf_counter() - built) * 1e3
        warm = timing.warm_up(fn, device, warmup)
        warm.setup_ms = built
        ranks.start_window(net)
        meter = telemetry.Meter(device).start()
        last = None
        if adaptive is not None:
            run = timing.time_adaptive(fn, device, adaptive)
            times, ci = run.times_ms, run.columns()
        else:
            # with drift on, the last timed forward's aggregator output is kept and the drift outputs
            # are read from it (the heads run on it): no further aggregator forward for drift. Not
            # for a CUDA graph's replay (its static outputs live in the graph's pool, freed before
            # drift is measured) nor for the whole model (its output is the heads').
            timed = (timing.KeepLast(fn, repeats) if with_drift and point.impl == "ours"
                     and point.part == "aggregator" and not ex.cuda_graph else fn)
            times = timing.time_calls(timed, device, repeats)
            last = timed.output if isinstance(timed, timing.KeepLast) else None
            del timed
            ci = timing.ci_columns(times)
        machine = meter.stop()
        timed_part = Timing.of(warmup, times, ci, timing.cold_columns(warm, times, ex.compile != "off"))
        message = point.note
        if ex.memory_plan == "offload" and not device.startswith("cuda"):
            message = "memory_plan=offload on the CPU: the kept outputs are in host memory already (ran as lean)"
        if device.startswith("cuda"):
            peak = torch.cuda.max_memory_allocated(device) / 2**30
            held = Memory(static_gib=static, peak_rss_gib=_peak_rss_gib(), peak_alloc_gib=peak, act_gib=peak - static,
                          peak_reserved_gib=torch.cuda.max_memory_reserved(device) / 2**30,
                          device_mem_gib=torch.cuda.get_device_properties(device).total_memory / 2**30)
        else:
            held = Memory(static_gib=static, peak_rss_gib=_peak_rss_gib(), peak_alloc_gib=math.nan, act_gib=math.nan,
                          peak_reserved_gib=math.nan, device_mem_gib=env.machine_memory_gib())
        together = Ranks(**ranks.rank_columns(net, held, machine, len(times)))  # every rank's memory and collectives
        ran = Attention(attention_ran=net.attention_report(), attention_auto=_auto_timings(net))
        vs_eager = (drift.drift_vs_eager(point, fn, net, images, heads or point.part == "full", last)
                    if with_drift and how.eager_reference else math.nan)
        against_exact = {}
        reference_dir = how.reference_dir
        if with_drift and point.impl == "ours" and (not ex.is_exact() or reference_dir):
            del fn
            fn = None
            build.free_memory()
            if ex.is_exact():  # the exact point of a sweep keeps its outputs for the others' drift
                drift.exact_outputs(net, point, images, reference_dir, last)
            else:
                test = drift.drift_outputs(net, images, last)
                last = None  # this point's layer outputs are not held while the exact ones are computed
                against_exact = drift.measure_drift(net, point, images, reference_dir, test)
        del images, queries, fn, last
    return Measurement(point, message=message, timing=timed_part, memory=held, telemetry=machine, ranks=together,
                       attention=ran, drift=Drift(drift_vs_eager=vs_eager, **against_exact))


# ---- context parallelism: N ranks measure one point together ----------------------------------------
def measure_point(point: Point, how: Method) -> Measurement:
    """``measure(point, how)`` of a context-parallel point, by N ranks together: rank 0's record, with
    every rank's in its ``ranks`` part (``world_size``, ``rank_peak_gib_*``, ``comm_*``).

    Ranks are started here, unless this process already is one (torchrun, srun): then it joins the
    group and measures as that rank. A point context parallelism does not combine with is its
    ``unavailable`` record, without starting ranks. A failed rank's status (oom, error) and message are
    the record's; under an external launcher the failed rank ends its process (after rank 0 wrote the
    row), so that the launcher stops the ranks waiting for it in a collective."""
    if ranks.unavailable(point):
        return measure(point, how)
    if ranks.launched() is None and not ranks.in_group():
        got = ranks.launch(point.execution.context_parallel, _measure_rank, (point, how), point.device)
        try:
            return ranks.first_result(got)
        except ranks.RankFailed as exc:
            return Measurement(point, status=exc.status, message=exc.message)
    ranks.join(point.device, point.execution.context_parallel)
    try:
        return _measure_rank(point, how)
    except ranks.RankFailed as exc:  # possibly mid-forward: the other ranks may wait for this one in a collective
        if ranks.rank() != 0:
            say_error(f"rank {ranks.rank()}: {exc.status}: {exc.message}")
            os._exit(1)
        global _STOP_AFTER_ROW
        _STOP_AFTER_ROW = True
        return Measurement(point, status=exc.status, message=exc.message)


_STOP_AFTER_ROW = False  # rank 0 of an external launch failed mid-forward: the others may wait for it


def stop_if_stuck() -> None:
    """After rank 0 wrote a failed row under torchrun/srun: end the process (exit 1), so that the
    launcher stops the ranks that may still wait for it inside a collective."""
    if _STOP_AFTER_ROW:
        raise SystemExit(1)


def _measure_rank(point: Point, how: Method) -> Measurement:
    try:
        record = measure(point, how)  # ok, or unavailable on every rank alike
    except Exception as exc:  # noqa: BLE001 - a rank's failure is the row
        raise ranks.RankFailed("oom" if is_oom(exc) else "error", one_line(exc))
    held = build.MODELS.params()
    return record if held is None else dataclasses.replace(record, params=held)


# ---- what a point's record reads besides the timing ------------------------------------------------
def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        "out of memory" in text.lower() or "can't allocate memory" in text or isinstance(exc, MemoryError)
    )


def _reset_peak_rss() -> bool:
    """Linux lets a process reset its peak RSS (VmHWM) by writing 5 to clear_refs."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_gib() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 2**30
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30


def _auto_timings(net) -> str:
    """JSON of what ``auto`` measured per site and shape: ``{site: {"q [..] k [..] dtype": {backend: ms or why}}}``."""
    timings = {}
    for site, backend in net.sites.items():
        for key, results in getattr(backend, "timings", {}).items():
            q, k, dtype = key
            label = f"q {list(q)} k {list(k)} {dtype}"
            timings.setdefault(site, {})[label] = {n: (round(t, 4) if isinstance(t, float) else t) for n, t in results.items()}
    return json.dumps(timings) if timings else ""
