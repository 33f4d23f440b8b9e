"""Column contracts of the tables vggt-bench writes. Plots and notebooks read only these.

Units are in the column names: ``_ms`` milliseconds, ``_gib`` GiB (2**30 bytes),
``_tflops`` TFLOP/s, ``flops`` floating-point operations (2 per multiply-add).
"""

from vggt_model.config import ExecutionConfig, knob_fields

# What identifies a measured point: the workload (what shapes the work) and every execution knob.
WORKLOAD = [
    "arch",            # vggt1b | small
    "device",          # cuda | cpu (resolved, never "auto")
    "frames",          # S
    "batch",           # B
    "height",          # pixels
    "width",           # pixels
    "part",            # aggregator | full
    "query_points",    # tracks the track head follows (part=full)
    "inputs",          # synthetic | <image_dir>
]
# The model's execution knobs, in declaration order: one column each (vggt_model/config.py).
EXECUTION = [f.name for f in knob_fields(ExecutionConfig)]
KNOBS = WORKLOAD + EXECUTION

ENVIRONMENT = [
    "gpu_name", "gpu_mem_gib", "driver", "torch_version", "cuda_version", "cudnn_version",
    "python_version", "cpu", "git_commit", "host", "timestamp", "random_weights", "checkpoint",
]

MEASUREMENTS = [
    "status",            # ok | oom | unavailable | error
    "message",           # reason / error text ("" when ok)
    "warmup",            # untimed runs before timing
    "repeats",           # timed runs
    "latency_ms_median",
    "latency_ms_p10",
    "latency_ms_p90",
    "latency_ms_mean",
    "latency_ms_min",
    "peak_alloc_gib",    # GPU: torch.cuda.max_memory_allocated; CPU: NaN
    "peak_reserved_gib", # GPU: torch.cuda.max_memory_reserved; CPU: NaN
    "static_gib",        # GPU memory allocated before the forward (weights, inputs)
    "act_gib",           # GPU: peak_alloc_gib - static_gib, what the forward itself held at its peak
    "kept_gib",          # the layer outputs kept for the heads (4 x [B, S, P, 2C]), wherever they are held
    "host_gib",          # pinned host memory holding them (memory_plan=offload on a GPU; else 0)
    "peak_rss_gib",      # process peak resident set (CPU runs; recorded on GPU too)
    "device_mem_gib",    # total memory of the device (GPU) or the machine (CPU)
    "fps",               # frames * batch / median latency
    "tokens_per_frame",
    "params",            # parameters of the timed part
    "flops",             # analytic FLOPs of one forward of the timed part
    "achieved_tflops",   # flops / median latency
    "peak_tflops",       # dense peak of the device at this dtype (NaN if unknown)
    "peak_source",       # where peak_tflops comes from
    "frac_of_peak",      # achieved / peak
    "drift_rel",         # ||out - out(k=0)|| / ||out(k=0)|| of the last layer's tokens (NaN: not measured)
    "wall_s",            # seconds the whole point took (build, warm-up, timing)
    # How far to trust the row (vggt_bench/noise.py, telemetry.py, timing.py document each):
    "noisy",             # bool: the latency is not to be trusted as is; noise_reason says why
    "noise_reason",      # "; "-joined reasons, e.g. "spread p90/p10 1.34 > 1.10; GPU throttled: sw_power_cap"
    "spread",            # latency_ms_p90 / latency_ms_p10
    "ci95_low_ms",       # distribution-free 95% CI of the median latency (NaN with < 6 repeats)
    "ci95_high_ms",
    "rel_ci95",          # CI half-width / median
    "stopped_by",        # repeats (fixed loop) | converged | budget | max_repeats (measure.adaptive)
    "first_call_ms",     # the point's first call, lazy init / compilation included (wall clock)
    "compile_s",         # torch.compile: warm-up seconds beyond steady state (NaN: compile off)
    "gpu_uuid",          # NVML UUID of the GPU ("" on CPU / without NVML)
    "sm_clock_mhz_start", "sm_clock_mhz_end",    # SM clock before / after the timed section (MHz)
    "mem_clock_mhz_start", "mem_clock_mhz_end",  # memory clock (MHz)
    "power_w_start", "power_w_end",              # board power (W)
    "temp_c_start", "temp_c_end",                # GPU temperature (C)
    "throttle_reasons",  # NVML clock-event reasons at start or end, comma-separated ("" none)
    "gpu_telemetry_note",  # why the GPU fields are empty ("" when read)
    "cpu_threads",       # torch.get_num_threads()
    "cpu_cores",         # os.cpu_count()
    "cpu_usable_cores",  # len(os.sched_getaffinity(0))
    "load_avg_1m",       # 1-minute load average after the timed section (machine-wide)
    "cpu_other_share",   # share of the usable CPUs' time other processes took while timing, 0..1
    "cpu_self_share",    # share this process took while timing, 0..1
    "cpu_window_s",      # wall seconds the CPU shares cover: the timed section, extended to >= 0.25 s
]

RESULT_COLUMNS = ["point_id", "experiment"] + KNOBS + ENVIRONMENT + MEASUREMENTS

STATUSES = ("ok", "oom", "unavailable", "error")

# Profile tables (one directory per profiled configuration, plus the combined tables).
NVTX_RANGE_COLUMNS = [
    "range",        # NVTX / record_function name (domain prefix removed)
    "domain",       # NVTX domain ("" = default)
    "calls",
    "cpu_ms",       # total wall time of the range's instances on their thread
    "gpu_ms",       # total GPU-projected time: first GPU op start to last GPU op end, per instance, summed
                    # (nsys's nvtx_gpu_proj_sum; includes GPU idle time inside the span)
    "gpu_busy_ms",  # summed durations of the GPU ops launched inside (the GPU work itself)
    "kernels",      # kernels launched inside the range (all instances)
    "gpu_ops",      # GPU operations (kernels + memcpy + memset) launched inside
    "cpu_gpu_ratio",  # cpu_ms / gpu_ms
    "disagree",     # True where cpu and gpu time differ by more than 2x either way
]
KERNEL_COLUMNS = ["kernel", "calls", "total_ms", "mean_ms", "median_ms", "min_ms", "max_ms", "pct"]
CUDA_API_COLUMNS = ["api", "calls", "total_ms", "mean_ms", "pct"]
GPU_ACTIVITY_COLUMNS = [
    "window_ms",            # captured window: first GPU op start to last GPU op end
    "busy_ms",              # union of GPU op intervals
    "idle_frac",            # 1 - busy / window
    "kernels",              # kernel launches in the window
    "gap_median_us",        # median idle gap between consecutive GPU ops
    "gap_p90_us",
]
