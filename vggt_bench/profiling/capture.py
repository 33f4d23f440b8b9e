"""Capturing a configuration's forwards for a profiler: one function per profiler, shared by the
``profile`` command (one configuration) and ``sweep profiler=...`` (every point of a grid).

* ``profile_torch``: in this process, under ``torch.profiler`` (CPU or GPU); a Chrome trace.
* ``profile_nsys``: re-runs the configuration as ``python -m vggt_bench profile profiler=none``
  in a child process under ``nsys profile --capture-range=cudaProfilerApi``; SQLite export and
  what ``nsys stats`` says.
* ``capture(..., "bare")``: warm-up, then the captured forwards between cudaProfilerStart and
  cudaProfilerStop, for an nsys attached from outside (``profile profiler=none``, the child
  above, and ``sweep profiler=external``).

Every capture runs ``measure.warmup`` untimed forwards first, then ``iterations`` forwards with
the model's NVTX ranges on, inside one NVTX range ``point:<point_id>`` (domain ``vggt``) that
sits inside cudaProfilerStart/Stop (``captured_forwards``). Under
``nsys profile --capture-range=cudaProfilerApi --capture-range-end=repeat`` each point is then a
report of its own; in one report holding several points, ``profile analyze=`` splits them by that
range. What a sweep does with them for one point is ``commands.profile.profile_point``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shlex
import subprocess
import sys
import tempfile
from typing import Callable, Dict, List, Optional

import pandas as pd
import torch

from vggt_model.nvtx import Ranges

from ..core.config import BenchConfig
from ..core.errors import UserError
from ..core.overrides import schema_keys
from ..core.schema import POINT_RANGE_PREFIX
from ..measure import build
from .nsys_cli import export_sqlite, find_nsys, stats_text
from .store import read_any

SWEEP_PROFILERS = ("none", "torch", "nsys", "external")
# Settings a child `profile` run does not take from its parent: where it writes, how it is
# profiled (the parent's nsys runs it), and what only labels or drives the parent.
_NOT_FOR_CHILD = {"out", "profiler", "resume", "report", "experiment", "nsys", "nsys_args", "dry_run", "analyze",
                  "tag", "results"}


def point_range(point_id: str) -> str:
    """The NVTX range around a point's captured forwards: ``point:<point_id>``."""
    return f"{POINT_RANGE_PREFIX}{point_id}"


def uses_cuda(device: str) -> bool:
    """Whether a capture on ``device`` calls cudaProfilerStart/Stop and synchronises CUDA."""
    return str(device).startswith("cuda")


def check_profiler(cfg, device: Optional[str]) -> str:
    """Refuse a sweep's profiler settings that cannot work, in one line, before any point runs.

    device: the resolved device (None: not known yet; the device checks are left to the job).
    Returns the profiler name.
    """
    profiler = str(cfg.profiler)
    if profiler not in SWEEP_PROFILERS:
        extra = " (profiler=memory profiles one configuration: `python -m vggt_bench profile profiler=memory`)" \
            if profiler == "memory" else ""
        raise UserError(f"unknown profiler {profiler!r} for run/sweep; use profiler=none, torch, nsys or external{extra}")
    if profiler == "none":
        return profiler
    if int(cfg.iterations) < 1:
        raise UserError(f"iterations must be >= 1, got {cfg.iterations}")
    if profiler == "nsys":
        find_nsys(cfg.nsys)  # first: the fix for a missing nsys is the more useful message
    if profiler in ("nsys", "external") and device is not None and not uses_cuda(device):
        raise UserError(f"profiler={profiler} traces CUDA work between cudaProfilerStart/Stop: it needs device=cuda "
                        f"(use profiler=torch on the CPU)")
    return profiler


# ---- the capture itself --------------------------------------------------------------------------
def captured_forwards(fn: Callable[[], object], iterations: int, cuda: bool, range_name: str,
                      sync: Callable[[], None]) -> None:
    """cudaProfilerStart (when ``cuda``), push NVTX range ``range_name`` (domain vggt, and a
    profiler record_function), ``iterations`` calls of ``fn``, ``sync()``, pop, cudaProfilerStop.

    The range sits inside start/stop: nsys records only between them, so each capture holds its
    range whole. Stop is called even when a forward raises.
    """
    ranges = Ranges(True)
    if cuda:
        torch.cuda.profiler.start()
    try:
        with ranges(range_name):
            for _ in range(int(iterations)):
                fn()
            sync()
    finally:
        if cuda:
            torch.cuda.profiler.stop()


# What the PyTorch profiler's Kineto writes straight to file descriptor 2 as it starts and stops
# ("USDT:2026-12-07 20:07:10 26361:26361 SyncActivityProfilerHandler.cpp:52] profiler_start", and
# STAGE lines), whatever KINETO_LOG_LEVEL says.
KINETO_CHATTER = re.compile(r"^(USDT|STAGE):\d{4}-\d\d-\d\d ")


@contextlib.contextmanager
def without_kineto_chatter():
    """Run the block with file descriptor 2 caught, then pass on every line of it but Kineto's
    (KINETO_CHATTER): the lines come from C++, below Python's sys.stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            lines = caught.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not KINETO_CHATTER.match(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


@contextlib.contextmanager
def quiet(profiler):
    """``with quiet(torch.profiler.profile(...)) as prof``: the profiler, started and stopped without
    Kineto's lines on the terminal; what runs inside the block writes to stderr as usual."""
    with without_kineto_chatter():
        profiler.__enter__()
    try:
        yield profiler
    finally:
        with without_kineto_chatter():
            profiler.__exit__(None, None, None)


def capture(cfg, point, mode: str, point_id: str, trace_path: Optional[str] = None) -> None:
    """Capture ``cfg.iterations`` forwards of ``point`` with its NVTX ranges on.

    Builds (or reuses) the model, runs ``cfg.measure.warmup`` untimed forwards, then
    ``mode="torch"``: the captured forwards under ``torch.profiler`` (CPU, and CUDA on a GPU),
    Chrome trace written to ``trace_path``; ``mode="bare"``: the captured forwards between
    cudaProfilerStart/Stop for an attached nsys. Either way inside range ``point:<point_id>``.
    ``point`` itself is not changed (the ranges are switched on in a copy).
    """
    profiled = dataclasses.replace(point, execution=point.execution.replace(nvtx=True))
    net = build.MODELS.get(profiled)
    net.configure(profiled.execution)
    images, queries = build.make_inputs(profiled)
    fn = build.forward_fn(net, profiled, images, queries)
    cuda = uses_cuda(point.device)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    with torch.inference_mode():
        for _ in range(int(cfg.measure.warmup)):
            fn()
        sync()
        if mode == "torch":
            activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
            with quiet(torch.profiler.profile(activities=activities)) as prof:
                captured_forwards(fn, int(cfg.iterations), False, point_range(point_id), sync)
            prof.export_chrome_trace(trace_path)
        elif mode == "bare":
            captured_forwards(fn, int(cfg.iterations), cuda, point_range(point_id), sync)
        else:
            raise ValueError(f"capture mode {mode!r}: use torch or bare")
    del images, queries, fn


# ---- one function per profiler -------------------------------------------------------------------
def profile_torch(cfg, point, point_id: str, directory: str) -> Dict[str, pd.DataFrame]:
    """Capture under the PyTorch profiler into ``<directory>/trace.json``; its tables."""
    os.makedirs(directory, exist_ok=True)
    trace = os.path.join(directory, "trace.json")
    capture(cfg, point, "torch", point_id, trace)
    return read_any(trace)


def _hydra_value(value) -> str:
    """A value as a Hydra command-line override reads it back (strings quoted where needed)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_./-]*", text) and text not in ("null", "true", "false"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def child_overrides(cfg) -> List[str]:
    """The configuration as ``key=value`` overrides for a child ``profile`` run: every key of the
    run/sweep schema (so presets and swept values travel resolved), less _NOT_FOR_CHILD."""
    from omegaconf import OmegaConf

    out = []
    for key, _ in schema_keys(BenchConfig):
        if key in _NOT_FOR_CHILD:
            continue
        value = OmegaConf.select(cfg, key, default=None)
        if OmegaConf.is_config(value):
            continue
        out.append(f"{key}={_hydra_value(value)}")
    return out


def nsys_command(cfg, directory: str, nsys: str) -> List[str]:
    """``nsys profile ... python -m vggt_bench profile <the configuration> profiler=none`` writing
    ``<directory>/report.nsys-rep``."""
    report = os.path.join(directory, "report")
    child = [sys.executable, "-m", "vggt_bench", "profile", *child_overrides(cfg), "profiler=none",
             f"out={_hydra_value(str(cfg.out))}"]
    return [nsys, "profile", *cfg.nsys_args, "--capture-range=cudaProfilerApi", "--capture-range-end=stop",
            "--force-overwrite=true", "-o", report, *child]


def profile_nsys(cfg, directory: str, dry_run: bool = False, log_file: Optional[str] = None) -> str:
    """Run the configuration under nsys in a child process, export SQLite and keep
    ``nsys_stats.txt``; return the SQLite path ("" for a dry run, which prints the command).

    log_file: where the child's output goes (None: this terminal). Raises UserError with the
    reason when nsys fails or writes no report.
    """
    try:
        nsys = find_nsys(cfg.nsys)
    except UserError:
        if not dry_run:
            raise
        nsys = "nsys"  # a dry run only prints the command
    command = nsys_command(cfg, directory, nsys)
    if dry_run:
        print(shlex.join(command))
        return ""
    os.makedirs(directory, exist_ok=True)
    report = os.path.join(directory, "report")
    if log_file is None:
        print(f"$ {shlex.join(command)}", flush=True)
        done = subprocess.run(command)
    else:
        with open(log_file, "w") as log:
            log.write(f"$ {shlex.join(command)}\n")
            log.flush()
            done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0 or not os.path.exists(report + ".nsys-rep"):
        last = ""
        if log_file is not None and os.path.exists(log_file):
            lines = [l.strip() for l in open(log_file, errors="replace") if l.strip()]
            last = f": {lines[-1][:300]}" if len(lines) > 1 else ""
        where = f" (log: {log_file})" if log_file else ""
        raise UserError(f"nsys profile failed (exit {done.returncode}); no {report}.nsys-rep was written{last}{where}")
    sqlite = report + ".sqlite"
    export_sqlite(nsys, report + ".nsys-rep", sqlite)
    # What nsys itself says, kept beside our tables so anyone can compare them.
    with open(os.path.join(directory, "nsys_stats.txt"), "w") as f:
        f.write(stats_text(nsys, sqlite))
    return sqlite
