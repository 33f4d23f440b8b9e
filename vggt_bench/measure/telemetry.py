"""The machine's state around a point's timed section: GPU clocks, power, heat and throttling,
CPU threads, load and how much of the CPU other processes took.

A number measured on a throttled GPU or on a CPU that other processes were using is not the
number the configuration would give on a quiet machine. Each row records that state, so
:mod:`vggt_bench.measure.noise` can say how far to trust the row.

Entry points:

* :class:`Meter` -- ``Meter(device).start()`` before the timed loop, ``.stop()`` after it; ``stop``
  returns the flat row columns (:data:`COLUMNS`). It never raises.
* :func:`gpu_snapshot` -- one reading of the GPU through NVML (``nvidia-ml-py``, imported lazily).
  Without the library, without an NVIDIA driver, or on a CPU run the GPU fields are empty and
  ``note`` says why.
* :class:`CpuMeter` -- the share of CPU time other processes took during an interval
  (``/proc/stat`` minus this process's own ``/proc/self/stat``).
* :func:`columns` -- start/end snapshots plus the CPU interval as flat row columns.

Units are in the names: ``_mhz`` megahertz, ``_w`` watts, ``_c`` degrees Celsius, ``_share``
a fraction 0..1, ``_1m`` the kernel's 1-minute load average (runnable tasks).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

NAN = float("nan")

# NVML clocks-event (formerly "clocks throttle") reason bits, as in nvml.h; stable across driver
# versions, so they are spelled out here instead of read from whichever pynvml is installed.
THROTTLE_BITS: Dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake",
    0x100: "display_clock_setting",
    0x200: "board_limit",
    0x400: "reliability",
}
# Reasons that do not make a timing untrustworthy: an idle GPU lowers its clocks (it was idle
# between calls), application clocks are a setting, and the software power cap is an H100's
# steady state under sustained bf16 load (seen on our H100 after ~300 large matmuls: SM clock
# 1440 instead of 1980 MHz). A capped card is the card as it runs; the row records the reason, and
# the spread still says whether the clocks moved while it was timed. Thermal and hardware
# slowdowns and the power brake are not benign.
BENIGN_THROTTLE = frozenset({"gpu_idle", "applications_clocks_setting", "sw_power_cap"})

# The row columns this module writes (units in the names).
GPU_COLUMNS = [
    "gpu_uuid",                                   # NVML UUID of the GPU that ran the point ("" if unknown)
    "sm_clock_mhz_start", "sm_clock_mhz_end",     # SM clock before / after the timed section (MHz)
    "mem_clock_mhz_start", "mem_clock_mhz_end",   # memory clock (MHz)
    "power_w_start", "power_w_end",               # board power draw (W)
    "temp_c_start", "temp_c_end",                 # GPU temperature (C)
    "throttle_reasons",                           # union of start/end clock-event reasons, comma-separated ("" none)
    "gpu_processes",                              # processes with a context on the GPU (this one included), the
                                                  # most at start or end (NaN unknown)
    "gpu_other_processes",                        # the others as "pid:MiB", comma-separated ("" none or unknown)
    "gpu_telemetry_note",                         # why the GPU fields are empty ("" when read)
]
CPU_COLUMNS = [
    "cpu_threads",        # torch.get_num_threads() during the timed section
    "cpu_cores",          # os.cpu_count(): logical CPUs of the machine
    "cpu_usable_cores",   # CPUs this process may run on (os.sched_getaffinity)
    "load_avg_1m",        # 1-minute load average at the end of the timed section (machine-wide)
    "cpu_other_share",    # share of the usable CPUs' time other processes took during the timed section, 0..1
    "cpu_self_share",     # share of the usable CPUs' time this process took during the timed section, 0..1
    "cpu_window_s",       # wall seconds the shares were measured over (the timed section, at least 0.25)
]
COLUMNS = GPU_COLUMNS + CPU_COLUMNS


def throttle_names(mask: int) -> List[str]:
    """Readable names of an NVML clocks-event reason bit mask, lowest bit first."""
    names, rest = [], int(mask)
    for bit, name in THROTTLE_BITS.items():
        if rest & bit:
            names.append(name)
            rest &= ~bit
    bit = 1
    while rest:
        if rest & bit:
            names.append(f"bit_{bit:#x}")
            rest &= ~bit
        bit <<= 1
    return names


def real_throttling(reasons, benign=BENIGN_THROTTLE) -> List[str]:
    """The reasons (names, or a comma-separated string) that are not in ``benign``."""
    if isinstance(reasons, str):
        reasons = [r.strip() for r in reasons.split(",")]
    return [r for r in reasons if r and r not in benign]


# ---- GPU through NVML -------------------------------------------------------------------------
@dataclass
class GpuSnapshot:
    """One NVML reading of one GPU. Empty (NaN / "") with ``note`` set when it could not be read."""

    uuid: str = ""
    sm_clock_mhz: float = NAN
    mem_clock_mhz: float = NAN
    power_w: float = NAN
    temp_c: float = NAN
    throttle: List[str] = field(default_factory=list)
    processes: float = NAN                               # processes on the GPU, this one included
    others: List[str] = field(default_factory=list)      # the others, "pid:MiB"
    note: str = ""


_NVML: dict = {}  # {"module": pynvml} once initialised, or {"error": reason}


def _nvml():
    """The initialised pynvml module, or raise RuntimeError with a one-line reason (cached)."""
    if "module" in _NVML:
        return _NVML["module"]
    if "error" in _NVML:
        raise RuntimeError(_NVML["error"])
    try:
        import pynvml
    except ImportError:
        _NVML["error"] = "nvidia-ml-py (pynvml) is not installed"
        raise RuntimeError(_NVML["error"])
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound / _DriverNotLoaded / anything else
        _NVML["error"] = f"NVML unavailable: {type(exc).__name__}: {exc}"
        raise RuntimeError(_NVML["error"])
    _NVML["module"] = pynvml
    return pynvml


def reset_nvml_cache() -> None:
    """Forget the cached NVML state (tests; or after installing the driver in-process)."""
    _NVML.clear()


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bare_uuid(value) -> str:
    text = _text(value).strip().lower()
    return text[4:] if text.startswith("gpu-") else text


def _torch_uuid(index: int) -> Optional[str]:
    """UUID of CUDA device ``index`` as the CUDA runtime sees it (None if unknown)."""
    try:
        import torch

        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
        return _bare_uuid(uuid) if uuid is not None else None
    except Exception:
        return None


def _visible_devices() -> Optional[List[str]]:
    text = os.environ.get("CUDA_VISIBLE_DEVICES")
    if text is None:
        return None
    return [d.strip() for d in text.split(",") if d.strip()]


def nvml_handle(nvml, index: int):
    """The NVML handle of CUDA device ``index``.

    CUDA and NVML number GPUs differently: CUDA hides devices outside ``CUDA_VISIBLE_DEVICES``
    and by default orders them fastest first, NVML lists every GPU in PCI order. So the handle is
    found by the device's UUID, which this PyTorch exposes as
    ``torch.cuda.get_device_properties(i).uuid`` (its properties have no PCI bus id). Without a
    UUID: the ``index``-th entry of ``CUDA_VISIBLE_DEVICES`` (an NVML index when numeric -- exact
    only with ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` -- or a ``GPU-`` UUID), else NVML index ``index``.
    """
    uuid = _torch_uuid(index)
    if uuid:
        try:
            return nvml.nvmlDeviceGetHandleByUUID("GPU-" + uuid)
        except Exception:
            for i in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
                if _bare_uuid(nvml.nvmlDeviceGetUUID(handle)) == uuid:
                    return handle
    visible = _visible_devices()
    if visible is not None:
        if index >= len(visible):
            raise RuntimeError(f"CUDA device {index} is not in CUDA_VISIBLE_DEVICES={','.join(visible)}")
        entry = visible[index]
        if entry.isdigit():
            return nvml.nvmlDeviceGetHandleByIndex(int(entry))
        return nvml.nvmlDeviceGetHandleByUUID(entry)
    return nvml.nvmlDeviceGetHandleByIndex(index)


def _read(fn, scale: float = 1.0) -> float:
    try:
        return float(fn()) * scale
    except Exception:
        return NAN


def gpu_snapshot(device: str) -> GpuSnapshot:
    """Clocks, power, temperature and clock-event reasons of the GPU behind ``device``.

    ``device`` is ``cpu``, ``cuda`` or ``cuda:N``. Never raises: what cannot be read stays empty
    and ``note`` says why (a field the GPU does not support is NaN without a note).
    """
    if not str(device).startswith("cuda"):
        return GpuSnapshot(note="cpu run")
    index = int(str(device).split(":", 1)[1]) if ":" in str(device) else _current_cuda_index()
    try:
        nvml = _nvml()
        handle = nvml_handle(nvml, index)
    except Exception as exc:
        return GpuSnapshot(note=str(exc) if isinstance(exc, RuntimeError) else f"{type(exc).__name__}: {exc}")
    snap = GpuSnapshot()
    try:
        snap.uuid = _text(nvml.nvmlDeviceGetUUID(handle))
    except Exception:
        pass
    snap.sm_clock_mhz = _read(lambda: nvml.nvmlDeviceGetClockInfo(handle, getattr(nvml, "NVML_CLOCK_SM", 1)))
    snap.mem_clock_mhz = _read(lambda: nvml.nvmlDeviceGetClockInfo(handle, getattr(nvml, "NVML_CLOCK_MEM", 2)))
    snap.power_w = _read(lambda: nvml.nvmlDeviceGetPowerUsage(handle), 1e-3)  # NVML reports milliwatts
    snap.temp_c = _read(lambda: nvml.nvmlDeviceGetTemperature(handle, getattr(nvml, "NVML_TEMPERATURE_GPU", 0)))
    for name in ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"):
        fn = getattr(nvml, name, None)
        if fn is None:
            continue
        try:
            snap.throttle = throttle_names(fn(handle))
            break
        except Exception:
            continue
    snap.processes, snap.others = _gpu_processes(nvml, handle)
    return snap


def _gpu_processes(nvml, handle) -> Tuple[float, List[str]]:
    """How many processes hold a context on the GPU (this one included), and the others as "pid:MiB".

    A second process on the card shares its SMs and memory bandwidth, and a timing taken beside it is
    steady (a narrow spread) yet wrong: on 2026-12-07 a point left running on an H100 made a regression
    check's 8-frame point 2.2x slower with p90/p10 1.02. In a container NVML may report the host's pids,
    so this process is not always found by its pid: then it is taken to be one of those listed, and the
    count, not the pids, says whether anyone else is there."""
    procs: Dict[int, float] = {}
    read = False
    for name in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
        fn = getattr(nvml, name, None)
        if fn is None:
            continue
        try:
            listed = fn(handle)
        except Exception:
            continue
        read = True
        for proc in listed:
            used = getattr(proc, "usedGpuMemory", None)
            procs[int(getattr(proc, "pid", -1))] = float(used) / 2**20 if isinstance(used, (int, float)) else NAN
    if not read:
        return NAN, []
    me = os.getpid()
    if not procs:  # NVML sees no process, not even this one: it cannot see them here
        return NAN, []
    if me not in procs and len(procs) == 1:  # this process, under the host's pid
        return 1.0, []
    # this process by its pid, or (other pids) one of those listed: the count tells
    shown = [f"{pid}:{'?' if math.isnan(mib) else f'{mib:.0f}'}MiB" for pid, mib in sorted(procs.items()) if pid != me]
    return float(len(procs)), shown


def _current_cuda_index() -> int:
    try:
        import torch

        return torch.cuda.current_device()
    except Exception:
        return 0


# ---- CPU ------------------------------------------------------------------------------------
PROC_STAT = "/proc/stat"             # machine-wide CPU ticks, per CPU
PROC_SELF_STAT = "/proc/self/stat"   # this process's CPU ticks


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_avg_1m() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return NAN


def _proc_stat_jiffies(cpus: Optional[set]) -> Optional[Tuple[int, int]]:
    """(busy, total) clock ticks since boot summed over ``cpus`` (None: the whole machine).

    busy = user + nice + system + irq + softirq + steal (guest time is already in user);
    total adds idle and iowait. Steal -- time the hypervisor gave other virtual machines --
    counts as busy: it is CPU time this process could not have.
    """
    try:
        with open(PROC_STAT) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    busy = total = 0
    found = False
    for line in lines:
        if not line.startswith("cpu"):
            continue
        name, *values = line.split()
        if cpus is None:
            if name != "cpu":
                continue
        elif name == "cpu" or not name[3:].isdigit() or int(name[3:]) not in cpus:
            continue
        v = [int(x) for x in values[:8]] + [0] * (8 - len(values[:8]))
        user, nice, system, idle, iowait, irq, softirq, steal = v
        b = user + nice + system + irq + softirq + steal
        busy += b
        total += b + idle + iowait
        found = True
    return (busy, total) if found else None


def _self_jiffies() -> Optional[int]:
    """This process's CPU clock ticks (all threads, plus children it has waited for)."""
    try:
        with open(PROC_SELF_STAT) as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may contain spaces
    # fields[0] is field 3 (state); utime, stime, cutime, cstime are fields 14..17
    return sum(int(x) for x in fields[11:15])


@dataclass
class CpuShares:
    other: float = NAN     # share of the usable CPUs' time other processes took, 0..1
    own: float = NAN       # share this process took, 0..1
    seconds: float = NAN   # wall seconds of the interval


# /proc counts CPU time in 10 ms ticks per CPU, and a tick can land on either side of a reading:
# over 0.25 s the share is good to a few percent, over 30 ms (a small model's timed loop) it is not.
MIN_WINDOW_S = 0.25


class CpuMeter:
    """Share of CPU time other processes took between :meth:`start` and :meth:`stop`.

    ``other = (busy ticks of the usable CPUs - this process's ticks) / total ticks of those CPUs``,
    read from ``/proc/stat`` (per CPU, restricted to this process's affinity) and
    ``/proc/self/stat`` (all threads, plus children waited for). Shares are clamped to 0..1 and
    NaN where ``/proc`` is missing.

    A window shorter than ``min_window_s`` is extended by sleeping in :meth:`stop` until it is that
    long: the ticks are too coarse for less, and other processes that keep the CPU busy while this
    one sleeps are just as present while it computes (they are then counted fully, where during
    the timed calls the scheduler shared the cores between them and us).
    """

    def __init__(self, min_window_s: float = MIN_WINDOW_S):
        self.min_window_s = min_window_s
        try:
            self.cpus = set(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            self.cpus = None
        self._start = None

    def _read(self):
        return _proc_stat_jiffies(self.cpus), _self_jiffies(), time.perf_counter()

    def start(self) -> "CpuMeter":
        self._start = self._read()
        return self

    def stop(self) -> CpuShares:
        if self._start is None:
            raise RuntimeError("CpuMeter.stop() before start()")
        short = self.min_window_s - (time.perf_counter() - self._start[2])
        if short > 0:
            time.sleep(short)
        (m0, s0, t0), (m1, s1, t1) = self._start, self._read()
        shares = CpuShares(seconds=t1 - t0)
        if m0 is None or m1 is None or s0 is None or s1 is None:
            return shares
        total = m1[1] - m0[1]
        if total <= 0:
            return shares
        busy, own = m1[0] - m0[0], s1 - s0
        shares.own = min(1.0, max(0.0, own / total))
        shares.other = min(1.0, max(0.0, (busy - own) / total))
        return shares


# ---- the row columns ---------------------------------------------------------------------------
def _torch_threads() -> int:
    try:
        import torch

        return torch.get_num_threads()
    except Exception:
        return -1


def columns(start: GpuSnapshot, end: GpuSnapshot, cpu: CpuShares, threads: Optional[int] = None,
            load_1m: Optional[float] = None) -> dict:
    """Flat row columns (:data:`COLUMNS`) from the start/end GPU snapshots and the CPU interval."""
    reasons = []
    for r in start.throttle + end.throttle:
        if r not in reasons:
            reasons.append(r)
    return {
        "gpu_uuid": end.uuid or start.uuid,
        "sm_clock_mhz_start": start.sm_clock_mhz, "sm_clock_mhz_end": end.sm_clock_mhz,
        "mem_clock_mhz_start": start.mem_clock_mhz, "mem_clock_mhz_end": end.mem_clock_mhz,
        "power_w_start": start.power_w, "power_w_end": end.power_w,
        "temp_c_start": start.temp_c, "temp_c_end": end.temp_c,
        "throttle_reasons": ",".join(reasons),
        "gpu_processes": max((n for n in (start.processes, end.processes) if not math.isnan(n)), default=NAN),
        "gpu_other_processes": ",".join(dict.fromkeys(start.others + end.others)),
        "gpu_telemetry_note": start.note or end.note,
        "cpu_threads": _torch_threads() if threads is None else threads,
        "cpu_cores": os.cpu_count() or -1,
        "cpu_usable_cores": usable_cores(),
        "load_avg_1m": load_avg_1m() if load_1m is None else load_1m,
        "cpu_other_share": cpu.other,
        "cpu_self_share": cpu.own,
        "cpu_window_s": cpu.seconds,
    }


class Meter:
    """GPU snapshot + CPU interval around a timed section; ``stop()`` gives the row columns.

    Usage: ``meter = Meter("cuda:0").start()``, the timed loop, ``row.update(meter.stop())``.
    Neither call raises: telemetry that fails leaves its columns empty with a note.
    """

    def __init__(self, device: str):
        self.device = str(device)
        self._gpu_start: Optional[GpuSnapshot] = None
        self._cpu = CpuMeter()

    def start(self) -> "Meter":
        self._gpu_start = gpu_snapshot(self.device)
        try:
            self._cpu.start()  # last, so the GPU query is not inside the CPU interval
        except Exception:
            pass  # stop() then reports the failure
        return self

    def stop(self) -> dict:
        try:
            end = gpu_snapshot(self.device)  # first: the CPU meter may idle to fill its window
            cpu = self._cpu.stop()
            return columns(self._gpu_start or GpuSnapshot(note="not started"), end, cpu)
        except Exception as exc:  # telemetry must never cost a measurement
            out = {c: NAN for c in COLUMNS}
            out.update(gpu_uuid="", throttle_reasons="", gpu_other_processes="",
                       gpu_telemetry_note=f"telemetry failed: {exc}")
            return out
