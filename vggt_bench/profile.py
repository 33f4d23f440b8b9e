"""``profile``: one configuration under Nsight Systems or the PyTorch profiler, as tables.

profiler=torch  runs the capture under ``torch.profiler`` and parses its Chrome trace.
profiler=nsys   re-runs this command under ``nsys profile --capture-range=cudaProfilerApi``
                with profiler=none, exports SQLite and parses it.
profiler=none   runs warm-up, then cudaProfilerStart, the captured forwards, cudaProfilerStop:
                the child of profiler=nsys, and what to run under your own nsys command.
profiler=memory records the CUDA caching allocator over one forward (``profile_memory``).
analyze=PATH    re-reads an existing ``.sqlite`` / ``.sqlite.gz`` / ``.nsys-rep`` / trace ``.json``.

Every profile lands in ``<out>/profiles/<tag>/`` (``nvtx_ranges.csv``, ``kernels.csv``,
``cuda_api.csv``, ``gpu_activity.csv``, ``point.json`` and the trace), and the combined
``<out>/profile_ranges.csv`` and ``<out>/profile_summary.csv`` that the report reads.
"""

from __future__ import annotations

import glob
import json
import os
import shlex
import shutil
import subprocess
import sys
from typing import Dict, List, Optional

import pandas as pd
import torch

from . import profile_memory
from .analysis.tables import summary_row
from .profiling import NoProfileData, read_report, read_trace
from .env import environment
from .errors import UserError, fail
from .runner import forward_fn, get_model, make_inputs, resolve

PROFILERS = ("torch", "nsys", "none", "memory")
TABLE_NAMES = ("nvtx_ranges", "kernels", "cuda_api", "gpu_activity")
NSYS_HINT = (
    "install Nsight Systems (https://developer.nvidia.com/nsight-systems) and put `nsys` on PATH, "
    "or give its path with nsys=/path/to/nsys"
)


def find_nsys(configured: Optional[str]) -> str:
    if configured:
        if os.path.isfile(configured) and os.access(configured, os.X_OK):
            return configured
        raise UserError(f"nsys={configured} is not an executable file; {NSYS_HINT}")
    found = shutil.which("nsys")
    if found is None:
        raise UserError(f"no nsys on PATH; {NSYS_HINT}")
    return found


def _tag(cfg, point) -> str:
    if cfg.tag:
        return str(cfg.tag)
    ex = point.execution
    return f"{ex.frame_exec}_S{point.frames}_k{ex.prune_depth}_{ex.attention}_{ex.dtype}_{cfg.profiler}"


def _user_overrides() -> List[str]:
    """The Hydra overrides this command was given (to re-run it under nsys)."""
    from hydra.core.hydra_config import HydraConfig

    return [o for o in HydraConfig.get().overrides.task if not o.startswith(("profiler=", "dry_run=", "out="))]


# ---- capturing ------------------------------------------------------------------------------
def _capture(cfg, point, profiler: str, trace_path: Optional[str]):
    net = get_model(point)
    net.configure(point.execution)
    images, queries = make_inputs(point)
    fn = forward_fn(net, point, images, queries)
    cuda = point.device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    with torch.inference_mode():
        for _ in range(int(cfg.measure.warmup)):
            fn()
        sync()
        if profiler == "torch":
            activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
            with torch.profiler.profile(activities=activities) as prof:
                for _ in range(int(cfg.iterations)):
                    fn()
                sync()
            prof.export_chrome_trace(trace_path)
        else:
            if cuda:
                torch.cuda.profiler.start()
            for _ in range(int(cfg.iterations)):
                fn()
            sync()
            if cuda:
                torch.cuda.profiler.stop()


def _run_nsys(cfg, point, directory: str) -> str:
    try:
        nsys = find_nsys(cfg.nsys)
    except UserError:
        if not cfg.dry_run:
            raise
        nsys = "nsys"  # a dry run only prints the command
    report = os.path.join(directory, "report")
    child = [sys.executable, "-m", "vggt_bench", "profile", *_user_overrides(), "profiler=none", f"out={cfg.out}"]
    command = [nsys, "profile", *cfg.nsys_args, "--capture-range=cudaProfilerApi", "--capture-range-end=stop",
               "--force-overwrite=true", "-o", report, *child]
    if cfg.dry_run:
        print(shlex.join(command))
        return ""
    print(f"$ {shlex.join(command)}", flush=True)
    done = subprocess.run(command)
    if done.returncode != 0 or not os.path.exists(report + ".nsys-rep"):
        raise UserError(f"nsys profile failed (exit {done.returncode}); no {report}.nsys-rep was written")
    sqlite = report + ".sqlite"
    subprocess.run([nsys, "export", "--type", "sqlite", "--force-overwrite", "true", "-o", sqlite, report + ".nsys-rep"],
                   check=True, capture_output=True)
    # What nsys itself says, kept beside our tables so anyone can compare them.
    stats = subprocess.run([nsys, "stats", "--report", "nvtx_sum,nvtx_gpu_proj_sum,cuda_gpu_kern_sum,cuda_api_sum",
                            "--format", "csv", sqlite], capture_output=True, text=True)
    with open(os.path.join(directory, "nsys_stats.txt"), "w") as f:
        f.write(stats.stdout + stats.stderr)
    return sqlite


# ---- tables ---------------------------------------------------------------------------------
def read_any(path: str, nsys: Optional[str] = None) -> Dict[str, pd.DataFrame]:
    """Profile tables of an existing trace file of any supported kind."""
    if not os.path.exists(path):
        raise UserError(f"analyze={path}: no such file")
    if path.endswith(".json") or path.endswith(".json.gz"):
        return read_trace(path)
    if path.endswith(".nsys-rep"):
        sqlite = path[: -len(".nsys-rep")] + ".sqlite"
        if not os.path.exists(sqlite):
            exe = find_nsys(nsys)
            subprocess.run([exe, "export", "--type", "sqlite", "-o", sqlite, path], check=True, capture_output=True)
        path = sqlite
    if path.endswith(".sqlite") or path.endswith(".sqlite.gz"):
        return read_report(path)
    raise UserError(f"analyze={path}: expected a .sqlite, .sqlite.gz, .nsys-rep or PyTorch trace .json")


def write_tables(tables: Dict[str, pd.DataFrame], directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    for name in TABLE_NAMES:
        tables[name].to_csv(os.path.join(directory, f"{name}.csv"), index=False)
    notes = tables["nvtx_ranges"].attrs.get("notes", [])
    with open(os.path.join(directory, "notes.txt"), "w") as f:
        f.write("\n".join(notes) + ("\n" if notes else ""))


def rebuild_combined(out: str) -> None:
    """``profile_ranges.csv`` and ``profile_summary.csv`` from every ``<out>/profiles/*/``."""
    ranges, summaries = [], []
    for meta_path in sorted(glob.glob(os.path.join(out, "profiles", "*", "point.json"))):
        directory = os.path.dirname(meta_path)
        with open(meta_path) as f:
            meta = json.load(f)
        table_path = os.path.join(directory, "nvtx_ranges.csv")
        if not os.path.exists(table_path):
            continue
        r = pd.read_csv(table_path)
        a = pd.read_csv(os.path.join(directory, "gpu_activity.csv"))
        for key, value in meta.items():
            r[key] = value
        ranges.append(r)
        summaries.append({**meta, **summary_row(r, a, int(meta.get("iterations", 1)))})
    if ranges:
        pd.concat(ranges, ignore_index=True).to_csv(os.path.join(out, "profile_ranges.csv"), index=False)
        pd.DataFrame(summaries).to_csv(os.path.join(out, "profile_summary.csv"), index=False)


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


def main(cfg) -> int:
    try:
        if cfg.profiler not in PROFILERS:
            raise UserError(f"unknown profiler {cfg.profiler!r}; use profiler=torch, nsys, none or memory")
        if cfg.analyze and str(cfg.analyze).endswith(".pickle"):
            return profile_memory.analyze_memory(cfg)
        if cfg.analyze:
            tables = read_any(cfg.analyze, cfg.nsys)
            directory = os.path.join(cfg.out, "profiles", cfg.tag or os.path.basename(cfg.analyze).split(".")[0])
            write_tables(tables, directory)
            with open(os.path.join(directory, "point.json"), "w") as f:
                json.dump({"tag": os.path.basename(directory), "profiler": "analyze", "source": cfg.analyze, "iterations": 1}, f)
            rebuild_combined(cfg.out)
            _show(tables, 1)
            print(f"tables in {directory}")
            return 0
        point = resolve(cfg)
        if int(cfg.iterations) < 1:
            raise UserError(f"iterations must be >= 1, got {cfg.iterations}")
        if cfg.profiler == "nsys" and not cfg.dry_run:
            find_nsys(cfg.nsys)  # first: the fix for a missing nsys is the more useful message
        if cfg.profiler == "nsys" and not point.device.startswith("cuda") and not cfg.dry_run:
            raise UserError("profiler=nsys traces CUDA work: it needs device=cuda (use profiler=torch on the CPU)")
        point.execution.nvtx = True
        if cfg.profiler == "memory":
            return profile_memory.profile_memory(cfg, point, os.path.join(cfg.out, "profiles", _tag(cfg, point)))
        if cfg.profiler == "none":
            _capture(cfg, point, "none", None)
            return 0
        tag = _tag(cfg, point)
        directory = os.path.join(cfg.out, "profiles", tag)
        os.makedirs(directory, exist_ok=True)
        if cfg.profiler == "nsys":
            source = _run_nsys(cfg, point, directory)
            if not source:
                return 0  # dry run
        else:
            source = os.path.join(directory, "trace.json")
            _capture(cfg, point, "torch", source)
        tables = read_any(source)
        write_tables(tables, directory)
        meta = {**point.knobs(), "tag": tag, "profiler": cfg.profiler,
                "iterations": int(cfg.iterations), "source": source, **environment(torch.device(point.device))}
        with open(os.path.join(directory, "point.json"), "w") as f:
            json.dump(meta, f, indent=1, default=str)
        rebuild_combined(cfg.out)
        _show(tables, int(cfg.iterations))
        print(f"tables in {directory}")
        return 0
    except NoProfileData as exc:
        fail(str(exc), 1)
    except UserError as exc:
        fail(str(exc))
    return 0
