"""The environment a result was measured in, recorded with every row."""

from __future__ import annotations

import datetime
import functools
import os
import platform
import socket
import subprocess

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout (vggt_bench/measure/../..)


@functools.lru_cache(maxsize=None)
def git_commit() -> str:
    """The checkout's commit (``-dirty`` with uncommitted changes). Where the code runs from a
    copy without ``.git`` (a lent GPU machine), the caller can say it in VGGT_BENCH_GIT_COMMIT."""
    stated = os.environ.get("VGGT_BENCH_GIT_COMMIT")
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return stated or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return stated or "unknown"


@functools.lru_cache(maxsize=None)
def _driver() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
    except (OSError, subprocess.SubprocessError, IndexError):
        return ""


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_memory_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return float("nan")


def environment(device: torch.device) -> dict:
    cuda = device.type == "cuda"
    props = torch.cuda.get_device_properties(device) if cuda else None
    return {
        "gpu_name": props.name if cuda else "",
        "gpu_mem_gib": props.total_memory / 2**30 if cuda else float("nan"),
        "driver": _driver() if cuda else "",
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda or "",
        "cudnn_version": str(torch.backends.cudnn.version() or "") if cuda else "",
        "python_version": platform.python_version(),
        "cpu": f"{_cpu_name()} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)",
        "git_commit": git_commit(),
        "host": socket.gethostname(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
