"""Column contracts of the tables vggt-bench writes. Plots and notebooks read only these.

Units are in the column names: ``_ms`` milliseconds, ``_gib`` GiB (2**30 bytes),
``_tflops`` TFLOP/s, ``flops`` floating-point operations (2 per multiply-add).
"""

from vggt_model.config import ExecutionConfig, knob_fields

# What identifies a measured point: the workload (what shapes the work) and every execution knob.
WORKLOAD = [
    "impl",            # ours | upstream (facebookresearch/vggt's own code)
    "arch",            # vggt1b | small
    "device",          # cuda | cpu (resolved, never "auto")
    "frames",          # S
    "batch",           # B
    "height",          # pixels
    "width",           # pixels
    "part",            # aggregator | full
    "query_points",    # tracks the track head follows (part=full)
    "inputs",          # synthetic | <image_dir>
    "seed",            # model.seed: the random weights' seed (without a checkpoint)
    "input_seed",      # inputs.seed: the synthetic frames' (and query points') seed
]
# A workload field at its default, like an execution knob at ExecutionConfig's, stays out of the
# point's id (core/identity.py): a field added later with its default here leaves every id as it was.
# The others (arch, device, frames, height, width) are resolved from the machine and always enter it.
WORKLOAD_DEFAULTS = {"impl": "ours", "batch": 1, "part": "aggregator", "query_points": 0, "inputs": "synthetic",
                     "seed": 0, "input_seed": 0}
# The model's execution knobs, in declaration order: one column each (vggt_model/config.py).
EXECUTION = [f.name for f in knob_fields(ExecutionConfig)]
KNOBS = WORKLOAD + EXECUTION

ENVIRONMENT = [
    "gpu_name", "gpu_mem_gib", "driver", "torch_version", "cuda_version", "cudnn_version",
    "python_version", "cpu", "git_commit", "host", "timestamp", "random_weights", "checkpoint",
    "upstream_source",  # impl=upstream: where upstream's code was found, its sources' fingerprint and commit
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
    "latency_ms_samples",  # JSON list of every timed call's latency (ms), in call order: what compare bootstraps
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
    "frac_of_peak",      # achieved / (peak x world_size)
    "attention_ran",     # what each call site ran: "frame=sdpa_cudnn global=flash_attn4" (auto: "auto(...)"; kv_keep: "approx=dense(flash_attn4)")
    "attention_auto",    # JSON: what attention=auto timed per site and shape (ms per backend), "" without auto
    "drift_vs_eager",    # measure.drift (and eager_reference): rel. L2 of the last layer's tokens vs the eager fp32 model, same weights/inputs
    # Output drift of an approximation (measure.drift=true and the execution not exact; NaN otherwise):
    # ||out - out_exact|| / ||out_exact|| against the exact model (every approximation at its exact value,
    # everything else as the point) on the same weights and inputs. Random weights (random_weights):
    # how far the outputs move, not accuracy.
    "drift_rel",         # kept for older tables: the same as drift_tokens_rel (before approximations: vs k=0)
    "drift_tokens_rel",  # the last layer's tokens [B, S, P, 2C]
    "drift_pose_rel",    # the camera head's pose encoding [B, S, 9] (translation, quaternion, field of view)
    "drift_depth_rel",   # the depth map [B, S, H, W, 1]
    "drift_points_rel",  # the world points [B, S, H, W, 3]
    # model.context_parallel (vggt_bench/measure/ranks.py): one row per point, written by rank 0
    "world_size",        # ranks that ran the forward together (1 without context parallelism)
    "comm_ms",           # time in collectives per timed forward (all-to-all, all-gather), the most of any rank
    "comm_mib",          # MiB a rank hands to other ranks per forward (payload), the most of any rank
    "rank_peak_gib_max",   # peak memory of the busiest rank (GPU: max allocated; CPU: peak RSS)
    "rank_peak_gib_mean",  # mean over ranks of the same
    "wall_s",            # seconds the whole point took (build, warm-up, timing)
    "profiled",          # bool: whether the row's timings come from a profiled run: always False for a
                         # sweep's row (profiles are separate captures: profile_grid, profiles/<point_id>/)
    # How far to trust the row (vggt_bench/measure/noise.py, telemetry.py, timing.py document each):
    "noisy",             # bool: the latency is not to be trusted as is; noise_reason says why
    "noise_reason",      # "; "-joined reasons, e.g. "spread p90/p10 1.34 > 1.10; GPU throttled: sw_power_cap"
    "backs_claim",       # bool: the latency may back a speed claim: a GPU row that is not noisy (never a CPU row)
    "claim_note",        # why it may not ("CPU timing: ... backs no speed claim", "noisy: see noise_reason")
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

# How the row is stored (core/store_format.py): tables and points written before format 2 are upgraded on read.
STORE = [
    "format_version",    # the results store's format the row was written in (FORMAT_VERSION; absent: 1)
    "former_point_id",   # an upgraded row's id under its old format ("" when written in this one)
]

RESULT_COLUMNS = ["point_id", "experiment"] + KNOBS + ENVIRONMENT + MEASUREMENTS + STORE

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
# NVTX range (domain vggt) around each profiled point's captured forwards, inside its
# cudaProfilerStart/Stop: "point:<point_id>". `profile analyze=` splits a report by these ranges.
POINT_RANGE_PREFIX = "point:"
# The model's named stages, as NVTX / record_function ranges: the aggregator's, and the heads'.
RANGE_STAGES = ["patch_embed", "frame_block", "global_block", "converted_block"]
HEADS = ["camera_head", "depth_head", "point_head", "track_head"]

GPU_ACTIVITY_COLUMNS = [
    "window_ms",            # captured window: first GPU op start to last GPU op end
    "busy_ms",              # union of GPU op intervals
    "idle_frac",            # 1 - busy / window
    "kernels",              # kernel launches in the window
    "gap_median_us",        # median idle gap between consecutive GPU ops
    "gap_p90_us",
]

# A sweep's profiles: <out>/profiles/<point_id>/profile_status.json, one per profiled point.
PROFILE_STATUSES = (
    "ok",        # profiled: the point's tables are in profiles/<point_id>/
    "error",     # the capture failed: profile_message says why (a rerun tries again)
    "skipped",   # not profiled because the point did not run (its status is oom/unavailable/error)
    "captured",  # profiler=external: captured under your nsys; `profile analyze=DIR` makes its tables
)
# Every profile's ranges / one summary row each, across <out>/profiles/ (the profile command's tables).
PROFILE_RANGES = "profile_ranges.csv"
PROFILE_SUMMARY = "profile_summary.csv"
# ONE tidy table across a profiled sweep: <out>/profile_grid.parquet and .csv, one row per (point,
# stage) for points with tables, one row with stage "" for the others. Times are per forward
# (the capture's totals divided by ``iterations``). Built by analysis.profiles.profile_grid.
PROFILE_GRID = "profile_grid"
PROFILE_GRID_COLUMNS = [
    "point_id",
    "profiled",         # True: these numbers come from a profiled run (NVTX ranges on, under a profiler)
    "profiler",         # torch | nsys | external
    "profile_status",   # PROFILE_STATUSES
    "profile_message",  # why it failed / was skipped / where the capture is ("" when ok)
    "iterations",       # captured forwards the totals cover
    *KNOBS,             # the point's knobs as its timing row has them (nvtx as timed)
    "gpu_name",
    "status",           # the timing row's status (ok | oom | unavailable | error)
    "latency_ms_median",  # the timing row's median latency, from the unprofiled run
    "stage",            # patch_embed | frame_block | global_block | converted_block | heads | forward ("" no tables)
    "calls",            # range instances per forward (heads: the four heads' summed)
    "cpu_ms",           # CPU time of the stage's ranges per forward (on their thread)
    "gpu_ms",           # GPU-projected time per forward (nsys nvtx_gpu_proj_sum; NaN without GPU data)
    "gpu_busy_ms",      # summed durations of the GPU ops the stage launched, per forward
    "kernels",          # kernels the stage launched, per forward
    "gpu_ops",          # kernels + memcpys + memsets the stage launched, per forward
    "window_ms",        # the capture's GPU window (first op start to last op end) per forward
    "busy_ms",          # the union of GPU op intervals in that window, per forward
    "idle_frac",        # 1 - busy / window over the whole capture (0..1)
    "launches",         # kernels launched in the capture, per forward
    "gap_median_us",    # median idle gap between consecutive GPU ops (microseconds)
    "gap_p90_us",
    "source",           # the trace the tables were read from
]

# `compare baseline=A candidate=B` (analysis/compare.py): <out>/compare.parquet|csv, one row per point
# of either side; <out>/compare_stages.csv and compare_kernels.csv where both sides hold its profile.
COMPARE_COLUMNS = [
    "point_id",           # the candidate's id of the point (the baseline's for a point only it holds)
    "label",              # S=8 · fused · sdpa · fp32: frames and the configuration (non-default knobs)
    "side",               # both | baseline only | candidate only
    "changed",            # the ignore= fields whose values differ: "model.frame_exec: fused -> sequential"
    "baseline_point_id", "candidate_point_id",
    "baseline_status", "candidate_status",  # ok | oom | unavailable | error ("" on the side without it)
    "baseline_ms", "candidate_ms",          # median latency of each side
    "ratio",              # candidate_ms / baseline_ms: above 1 the candidate is slower
    "ci_low", "ci_high",  # 95% interval of the ratio, bootstrap over both sides' samples (NaN: none)
    "interval",           # how the interval was made, or why there is none (medians only)
    "baseline_samples", "candidate_samples",  # per-repeat latencies each side holds
    "change",             # faster | slower | same: from the interval and the noise floor, noise flags aside
    "verdict",            # faster | slower | same | noisy | not_run | unmatched
    "baseline_noisy", "candidate_noisy",
    "noise_reason",       # "baseline: ...; candidate: ..." for flagged rows
    "act_gib_ratio", "peak_alloc_gib_ratio", "peak_rss_gib_ratio",  # candidate / baseline memory
    *KNOBS,               # the point's fields (the candidate's, else the baseline's)
]
COMPARE_STAGE_COLUMNS = [
    "point_id", "label", "frames",
    "stage",              # patch_embed | frame_block | global_block | converted_block | heads | other | forward
    "baseline_gpu_ms", "candidate_gpu_ms",  # GPU-projected time per forward (NaN: a CPU trace)
    "baseline_cpu_ms", "candidate_cpu_ms",  # CPU time of the stage's ranges per forward
    "baseline_kernels", "candidate_kernels",  # kernels launched in the stage per forward
    "basis",              # gpu | cpu: the time delta_ms and share_of_change are on
    "delta_ms",           # candidate - baseline, per forward
    "delta_kernels",
    "share_of_change",    # delta_ms / the forward's delta_ms
]
COMPARE_KERNEL_COLUMNS = [
    "point_id", "label", "frames",
    "kernel",             # kernel name (a CPU trace: the CPU operator, by self time)
    "presence",           # both | added (the candidate's only) | removed (the baseline's only)
    "baseline_calls", "candidate_calls",    # per forward
    "baseline_ms", "candidate_ms",          # per forward
    "delta_calls", "delta_ms",
]

# Memory profile tables (``profile profiler=memory``), one set per ``<out>/profiles/<tag>/``;
# written by ``vggt_bench.profiling.memory``. "allocated" in the snapshot tables is the sum of the
# *requested* sizes of live allocations, which is what the allocator's trace records;
# ``torch.cuda.memory_allocated`` counts rounded block sizes, a little more.
MEMORY_TIMELINE_COLUMNS = [
    "event",          # index in the device's allocator trace (0 = first recorded event)
    "time_us",        # host time the trace gives the event, microseconds (NaN when the trace has none)
    "action",         # alloc | free_requested | free_completed | segment_alloc | segment_free | segment_map |
                      # segment_unmap | snapshot | oom
    "size_gib",       # size the event names (allocation, segment, or the request that ran out of memory)
    "allocated_gib",  # live allocations after the event
    "reserved_gib",   # memory the allocator holds from cudaMalloc after the event (allocated + cached)
    "in_forward",     # the event happened in the recorded forward (after its start)
    "stage",          # path of the innermost named range open at the event ("" = none or no stage recorder)
]
MEMORY_AT_PEAK_COLUMNS = [
    "address",        # device address of the allocation
    "size_gib",       # requested size
    "category",       # weights and inputs | kept layer outputs | activations | workspace | unattributed
    "frame",          # where it was allocated: innermost frame of our code, "dir/file.py:function:line" ("" = no stack)
    "stage",          # named range open when it was allocated ("" = none known)
    "alloc_event",    # trace index of its allocation (-1: allocated before the trace began)
]
MEMORY_BY_CATEGORY_COLUMNS = [
    "category",       # the categories above, and "allocator slack" (reserved minus allocated at the peak)
    "blocks",         # live allocations of this category at the peak (0 for allocator slack)
    "size_gib",
    "share_of_reserved",  # size / reserved memory at the peak
]
MEMORY_STAGE_COLUMNS = [
    "path",           # range path, outermost first: "vggt/aggregator/layer_03/global_block"
    "range",          # the innermost name (an NVTX range name)
    "depth",          # 0 = outermost
    "calls",          # instances of this path in the forward
    "peak_gib",       # highest allocated inside any instance (allocator counter)
    "peak_above_entry_gib",  # max over instances of peak minus allocated at entry: what one call needs on top
    "entry_gib",      # allocated when the first instance began
    "exit_gib",       # allocated when the last instance ended
    "delta_gib",      # sum over instances of (exit - entry): what the calls left allocated
    "first_event",    # trace index where the first instance began (NaN: not aligned with a snapshot)
    "last_event",     # trace index where the last instance ended
]
MEMORY_STAGE_CALL_COLUMNS = [
    "call",           # order in which the instances began
    "path", "range", "depth",
    "entry_gib", "peak_gib", "exit_gib",
    "enter_allocs",   # allocation requests since the forward began, at entry (NaN: counter not available)
    "enter_frees",    # frees since the forward began, at entry
    "exit_allocs",
    "exit_frees",
]
MEMORY_SUMMARY_COLUMNS = [
    "device_index",
    "events",                 # trace entries of this device
    "forward_start_event",    # first trace index of the recorded forward
    "peak_event",             # trace index after which allocated peaked (NaN: no event in the forward)
    "allocated_before_gib",   # allocated when the forward began (weights, inputs, what the warm-up kept)
    "peak_allocated_gib",
    "reserved_at_peak_gib",
    "peak_reserved_gib",      # the most reserved at any event of the forward
    "end_allocated_gib",      # allocated at the snapshot (after the forward)
    "tracker_peak_gib",       # highest allocator-counter peak inside a named range (rounded block sizes)
    "peak_stage",             # range path open at the peak
    "oom",                    # the allocator ran out of memory during the trace
]
