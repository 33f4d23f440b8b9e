"""The ranks of a context-parallel point (``model.context_parallel=N``): started here, or by torchrun / srun.

Two ways in, one code path (``run.measure`` runs in every rank, in lockstep; ``run.measure_point``
dispatches a point to them):

* ``python -m vggt_bench run|sweep|verify ... model.context_parallel=N`` starts N ranks itself with
  PyTorch's own launcher (``torch.multiprocessing.start_processes``, spawn): one process per rank,
  one GPU each on CUDA (NCCL), gloo on the CPU, rendezvous over ``env://`` on this machine. Rank 0's
  columns come back to the command, which writes the row; the other ranks write nothing.
* Under an external launcher every process runs the command and they form one group:
  torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) or Slurm's
  srun (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``; the master is the step's first node,
  ``MASTER_PORT`` or 29500 + the job id modulo 20000). Only rank 0 writes rows and prints.

A rank that fails (out of memory on one GPU, an error) makes the launcher stop the others, which may
be waiting for it inside a collective; the row is that rank's failure, its message prefixed
``rank r:``. Rows record the ranks (``world_size``), each rank's peak memory (``rank_peak_gib_max``,
``rank_peak_gib_mean``) and the collectives per forward (``comm_ms``, ``comm_mib``).
"""

from __future__ import annotations

import datetime
import os
import pickle
import re
import socket
import subprocess
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

from ..core.errors import UserError

TIMEOUT = datetime.timedelta(minutes=30)  # a collective waits this long for a rank (slow forwards at scale)


class RankFailed(Exception):
    """Raised in a rank whose measurement did not give an ``ok`` row: that row's status and message."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status, self.message = status, message


# ---- where this process stands ---------------------------------------------------------------------
@dataclass(frozen=True)
class Launched:
    """This process's place in a group started by an external launcher (or by ``launch``)."""

    rank: int
    world: int
    local_rank: int
    source: str  # torchrun | srun
    master_addr: str
    master_port: str


def launched() -> Optional[Launched]:
    """The external launcher's ranks from the environment, or None outside a multi-rank launch."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env and int(env["WORLD_SIZE"]) > 1:
        return Launched(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)), "torchrun",
                        env.get("MASTER_ADDR", "127.0.0.1"), env.get("MASTER_PORT", "29500"))
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "")
        port = env.get("MASTER_PORT") or str(29500 + int(env.get("SLURM_JOB_ID", "0") or 0) % 20000)
        return Launched(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)), "srun",
                        env.get("MASTER_ADDR") or first_node(nodes), port)
    return None


def first_node(nodelist: str) -> str:
    """The first host of a Slurm node list (``gpu[03-04,07],cpu1`` -> ``gpu03``): scontrol's answer
    where Slurm is installed, else read here; ``127.0.0.1`` for an empty list."""
    if not nodelist:
        return "127.0.0.1"
    try:
        done = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=10)
        if done.returncode == 0 and done.stdout.split():
            return done.stdout.split()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    first = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist)
    prefix, ranges = first.group(1), first.group(3)
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def rank() -> int:
    """This process's rank: in the group it has joined, else the external launcher's, else 0."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    found = launched()
    return found.rank if found else 0


def writes_rows() -> bool:
    """Only rank 0 writes rows, tables and reports, and prints."""
    return rank() == 0


def in_group() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


# ---- what can run --------------------------------------------------------------------------------
def backend(device: str, ranks: int) -> str:
    """The torch.distributed backend for ``device`` (NCCL on CUDA, gloo on the CPU), or a UserError."""
    import torch
    import torch.distributed as dist

    knob = f"model.context_parallel={ranks}"
    if not dist.is_available():
        raise UserError(f"{knob} needs torch.distributed, which this PyTorch build ({torch.__version__}) lacks; "
                        f"install a build with it or use model.context_parallel=1")
    if device.startswith("cuda"):
        if not dist.is_nccl_available():
            raise UserError(f"{knob} on CUDA needs the NCCL backend, which this PyTorch build ({torch.__version__}) "
                            f"lacks; install a CUDA build with NCCL or use device=cpu")
        return "nccl"
    if not dist.is_gloo_available():
        raise UserError(f"{knob} on the CPU needs the gloo backend, which this PyTorch build ({torch.__version__}) "
                        f"lacks; install a build with gloo or use model.context_parallel=1")
    return "gloo"


def check(ranks: int, frames: int, heads: int, device: str) -> None:
    """Refuse a context-parallel setting that cannot run, in one line (exit 2): more ranks than
    frames or heads, no backend, too few GPUs, or a launcher that started another number of ranks."""
    import torch

    ext = launched()
    if ranks == 1:
        return
    knob = f"model.context_parallel={ranks}"
    if ranks > frames:
        raise UserError(f"{knob} needs at least {ranks} frames (every rank holds whole frames), got frames={frames}; "
                        f"use model.context_parallel <= {frames}")
    if ranks > heads:
        raise UserError(f"{knob} exceeds the {heads} attention heads of the global layers: all-to-all attention "
                        f"(Ulysses) gives every rank at least one head; use model.context_parallel <= {heads}")
    backend(device, ranks)
    if ext is not None and ext.world != ranks:
        raise UserError(f"{knob} but {ext.source} started {ext.world} ranks; start {ranks} "
                        f"(torchrun --nproc-per-node / srun --ntasks) or set model.context_parallel={ext.world}")
    if ext is None and device.startswith("cuda") and torch.cuda.device_count() < ranks:
        raise UserError(f"{knob} starts {ranks} ranks with a GPU each, but {torch.cuda.device_count()} GPU(s) are "
                        f"visible here; use model.context_parallel <= {torch.cuda.device_count()} or launch across "
                        f"machines with torchrun / srun")


# Knobs the context-parallel path runs as they are (approximations included). An approximation knob
# it does not know (another global-layer approximation) at a non-exact value is an `unavailable` row.
KNOWN_APPROXIMATIONS = ("prune_depth", "prune_weights")


def unavailable(point) -> Optional[str]:
    """Why a context-parallel point cannot run (an ``unavailable`` row), or None."""
    from vggt_model.config import APPROX, knob_fields

    ex = point.execution
    if ex.context_parallel == 1:
        return None
    if ex.cuda_graph:
        return ("model.cuda_graph=true with model.context_parallel > 1: the all-to-alls take their split sizes "
                "from the host and are not captured into one CUDA graph here; use model.cuda_graph=false")
    if point.impl != "ours":
        return f"model.impl={point.impl} has no context parallelism (upstream's code runs on one device); use model.impl=ours"
    for f in knob_fields(type(ex)):
        meta = f.metadata
        if (meta["fidelity"] == APPROX and f.name not in KNOWN_APPROXIMATIONS and meta["exact"] is not None
                and getattr(ex, f.name) != meta["exact"]):
            return (f"model.{f.name}={getattr(ex, f.name)!r} with model.context_parallel > 1: the context-parallel "
                    f"global layers are exact only; use model.{f.name}={meta['exact']!r}")
    return None




# ---- joining and starting ranks ----------------------------------------------------------------------
def join(device: str, ranks: int) -> None:
    """Join the group from the environment (torchrun's variables, Slurm's, or ``launch``'s): pick the
    rank's GPU (``LOCAL_RANK``) on CUDA and its share of the cores on the CPU."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    found = launched()
    if found is None:
        raise UserError(f"model.context_parallel={ranks}: no launcher's ranks in the environment (RANK/WORLD_SIZE or "
                        f"SLURM_PROCID/SLURM_NTASKS)")
    os.environ.setdefault("MASTER_ADDR", found.master_addr)
    os.environ.setdefault("MASTER_PORT", found.master_port)
    if device.startswith("cuda"):  # srun --gpus-per-task shows each task its one GPU as device 0
        torch.cuda.set_device(found.local_rank % max(1, torch.cuda.device_count()))
    elif "OMP_NUM_THREADS" not in os.environ:  # the ranks of one machine share its cores
        from .telemetry import usable_cores

        torch.set_num_threads(max(1, usable_cores() // found.world))
    dist.init_process_group(backend(device, found.world), init_method="env://", rank=found.rank,
                            world_size=found.world, timeout=TIMEOUT)


def leave() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(index: int, world: int, port: int, device: str, fn: Callable, args: tuple, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(index), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(index), LOCAL_WORLD_SIZE=str(world))
    # results travel pickled by value: torch.multiprocessing would share tensors through this process's
    # file descriptors, which are gone once it has ended
    try:
        join(device, world)
        results.put((index, "ok", pickle.dumps(fn(*args))))
    except RankFailed as exc:
        results.put((index, "failed", pickle.dumps((exc.status, exc.message))))
        os._exit(1)  # the launcher stops the ranks that wait for this one in a collective
    finally:
        leave()


def launch(ranks: int, fn: Callable, args: tuple = (), device: str = "cpu") -> Dict[int, Tuple[str, object]]:
    """Run ``fn(*args)`` in ``ranks`` fresh processes that form one group, with PyTorch's own launcher.

    Returns ``{rank: (state, value)}``: ``("ok", fn's return value)``, ``("failed", (status, message))``
    for a rank that raised RankFailed, ``("raised", the exception's last line)`` for any other failure.
    When a rank fails the others are stopped (they may be waiting for it in a collective)."""
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    procs = mp.start_processes(_worker, args=(ranks, _free_port(), device, fn, args, results), nprocs=ranks,
                               join=False, start_method="spawn")
    got: Dict[int, Tuple[str, object]] = {}

    def drain():
        while not results.empty():
            index, state, value = results.get()
            got[index] = (state, pickle.loads(value))

    while True:
        drain()
        try:
            if procs.join(timeout=0.2, grace_period=2):
                break
        except mp.ProcessRaisedException as exc:
            drain()
            lines = [line for line in str(exc).strip().splitlines() if line.strip()]
            got.setdefault(exc.error_index, ("raised", lines[-1] if lines else "failed"))
            break
        except mp.ProcessExitedException as exc:
            drain()
            got.setdefault(exc.error_index, ("raised", str(exc).strip()))
            break
    drain()
    return got


def first_result(got: Dict[int, Tuple[str, object]]):
    """Rank 0's value when every rank that answered succeeded; else raise what failed first."""
    for index, (state, value) in sorted(got.items()):
        if state == "failed":
            status, message = value
            raise RankFailed(status, f"rank {index}: {message}" if index else message)
        if state == "raised":
            raise RuntimeError(f"rank {index}: {value}")
    if 0 not in got:
        raise RuntimeError("rank 0 ended without a result")
    return got[0][1]


# ---- what the ranks measured together ----------------------------------------------------------------
def start_window(net) -> None:
    """Start counting the collectives of the timed forwards (after the warm-up's)."""
    if getattr(net, "context", None) is not None:
        net.context.comm.reset()


def rank_columns(net, memory, machine: dict, forwards: int) -> dict:
    """``world_size``, ``comm_ms``/``comm_mib`` (per forward; the most of any rank) and each rank's peak
    memory (GPU: max allocated; CPU: peak RSS), from this rank's ``memory`` (a ``record.Memory``) and
    telemetry columns (``machine``). One rank: no collectives, its own peak. Under context
    parallelism every rank calls this (an all-gather); on the CPU the sibling ranks' CPU time is
    moved from ``cpu_other_share`` to ``cpu_self_share`` (they are this measurement, not noise)."""
    on_gpu = not _nan(memory.peak_alloc_gib)  # NaN on the CPU
    peak = memory.peak_alloc_gib if on_gpu else memory.peak_rss_gib
    cp = getattr(net, "context", None)
    if cp is None:
        return {"world_size": 1, "comm_ms": 0.0, "comm_mib": 0.0, "rank_peak_gib_max": peak, "rank_peak_gib_mean": peak}
    forwards = max(1, forwards)
    mine = {"comm_ms": cp.comm.ms / forwards, "comm_mib": cp.comm.bytes_sent / forwards / 2**20, "peak": peak,
            "self": machine.get("cpu_self_share")}
    everyone = [None] * cp.ranks
    cp.dist.all_gather_object(everyone, mine, group=cp.group)
    peaks = [r["peak"] for r in everyone]
    out = {"world_size": cp.ranks, "comm_ms": max(r["comm_ms"] for r in everyone),
           "comm_mib": max(r["comm_mib"] for r in everyone),
           "rank_peak_gib_max": max(peaks), "rank_peak_gib_mean": sum(peaks) / len(peaks)}
    shares = [r["self"] for r in everyone]
    if not on_gpu and not any(_nan(s) for s in shares) and not _nan(machine.get("cpu_other_share")):
        siblings = sum(shares) - shares[cp.rank]
        out["cpu_other_share"] = max(0.0, machine["cpu_other_share"] - siblings)
        out["cpu_self_share"] = min(1.0, sum(shares))
    return out


def _nan(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)
