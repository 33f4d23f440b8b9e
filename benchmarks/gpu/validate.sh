#!/usr/bin/env bash
# A first GPU call: every new code path once, small, each step bounded (a failure does not stop
# the rest). From the checkout's root on the GPU machine:
#   source scripts/gpu_env.sh; bash benchmarks/gpu/validate.sh
# Logs and result tables go to $OUT/validate.tgz.
set -u
R=${VGGT_REPO:-$PWD}; W=${VGGT_WORK:-/tmp/vggt-work}/validate; mkdir -p "$W"; cd "$W"
LOG=$W/logs; mkdir -p "$LOG"
step() { local name=$1 limit=$2; shift 2; echo "=== $name"; local t0=$SECONDS
  timeout "$limit" "$@" > "$LOG/$name.log" 2>&1; local rc=$?; tail -n 14 "$LOG/$name.log"; echo "=== $name rc=$rc $((SECONDS-t0))s"; }
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader
python3 -c "import torch, vggt_bench, vggt_model; print('torch', torch.__version__, 'cudnn', torch.backends.cudnn.version(), vggt_bench.__file__)"
S="python3 -m vggt_bench sweep report=false experiment=adhoc"
CASES=$R/tests/fixtures/reference
step backends 90 python3 -m vggt_bench backends
step verify 240 bash -c "for plan in lean offload upstream; do for c in tiny_vggt tiny_dinov2_aggregator; do
  python3 -m vggt_bench verify case=$CASES/\$c device=cuda tolerance_scale=10 model.memory_plan=\$plan model.token_chunk=40 model.attention=sdpa | tail -n 1; done; done
  python3 -m vggt_bench verify case=$CASES/tiny_vggt device=cuda model.dtype=bf16_autocast model.attention=auto model.global_attention=auto | tail -n 1"
step plans 240 $S out=$W/plans frames=1,10,100 model.memory_plan=upstream,lean,offload model.dtype=bf16_autocast measure.warmup=1 measure.repeats=3
step upstream 240 $S out=$W/plans frames=10,100 model.impl=upstream model.upstream_path=$R/.upstream model.dtype=bf16_autocast measure.warmup=1 measure.repeats=3
step graph 200 $S out=$W/fast frames=1,10 model.dtype=bf16 model.attention=sdpa_cudnn model.compile=default model.cuda_graph=true measure.warmup=2 measure.repeats=5
step auto 150 $S out=$W/fast frames=100 model.dtype=bf16 model.attention=auto model.global_attention=auto measure.warmup=1 measure.repeats=3
step memprof 150 python3 -m vggt_bench profile profiler=memory frames=8 model.dtype=bf16_autocast out=$W/memprof
python3 - <<'PY'
import glob, pandas as pd
for d in sorted(glob.glob("*/results.csv")):
    t = pd.read_csv(d)
    cols = [c for c in ["impl", "frames", "memory_plan", "dtype", "attention", "compile", "cuda_graph", "status",
                        "latency_ms_median", "act_gib", "peak_alloc_gib", "noisy", "throttle_reasons", "attention_ran",
                        "first_call_ms", "compile_s", "message"] if c in t]
    print(d); print(t[cols].to_string(index=False, max_colwidth=60))
PY
tar czf "${OUT:-/tmp}/validate.tgz" --exclude='*.pickle' --exclude='hydra' -C "$W" . 2>/dev/null
ls -la "${OUT:-/tmp}"
