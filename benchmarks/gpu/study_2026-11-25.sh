#!/usr/bin/env bash
# The 2026-11-25 GPU study: memory plans and upstream's code side by side, FlashAttention-4 and
# the fastest exact VGGT, the memory wall. From the checkout's root on the GPU machine:
#   source scripts/gpu_env.sh; bash benchmarks/gpu/study_2026-11-25.sh <stage> ...
# Each stage is one or more sweeps/profiles into $VGGT_WORK/study/<stage>, bounded by a timeout (a
# failure is logged and the next stage runs). `pack` tars the tables (no traces) into $OUT.
set -u
R=${VGGT_REPO:-$PWD}; W=${VGGT_WORK:-/tmp/vggt-work}/study; mkdir -p "$W/logs"; cd "$W"
UP="model.upstream_path=$R/.upstream"
S="python3 -m vggt_bench sweep report=false experiment=adhoc"
FAST="model.dtype=bf16 model.attention=sdpa_cudnn model.global_attention=flash_attn4"
run() { local name=$1 limit=$2; shift 2; echo "=== $name $(date +%T)"; local t0=$SECONDS
  timeout "$limit" "$@" >> "$W/logs/$name.log" 2>&1; local rc=$?
  grep -E "^(ok|oom|error|unava|skip) |NOISY|Error|error:" "$W/logs/$name.log" | tail -n 12
  echo "=== $name rc=$rc $((SECONDS-t0))s"; }
for stage in "$@"; do
  case $stage in
    check)  # FA4 there? every plan and the new backends exact on the reference cases (GPU, bf16 autocast)
      run check 150 python3 -m vggt_bench backends
      for c in tiny_vggt tiny_dinov2_aggregator; do for extra in "model.global_attention=flash_attn4" "model.attention=auto model.global_attention=auto" "model.memory_plan=offload model.global_attention=flash_attn4"; do
        run check 60 python3 -m vggt_bench verify case=$R/tests/fixtures/reference/$c device=cuda model.dtype=bf16_autocast $extra
      done; done ;;
    same)   # upstream's code vs ours, same run, upstream's precision (bf16 autocast, fp32 weights, SDPA default)
      run same 150 $S out=$W/same model.impl=ours,upstream $UP model.dtype=bf16_autocast frames=1,10 measure.warmup=2 measure.repeats=10
      run same 150 $S out=$W/same model.impl=ours,upstream $UP model.dtype=bf16_autocast frames=20,50 measure.warmup=1 measure.repeats=5
      run same 150 $S out=$W/same model.impl=ours,upstream $UP model.dtype=bf16_autocast frames=100 measure.warmup=1 measure.repeats=10
      run same 170 $S out=$W/same model.impl=ours,upstream $UP model.dtype=bf16_autocast frames=200 measure.warmup=1 measure.repeats=3
      run same 200 $S out=$W/same model.memory_plan=upstream,offload model.dtype=bf16_autocast frames=100,200 measure.warmup=1 measure.repeats=3 ;;
    fastest) # the fastest exact setting: bf16 weights, FA4 in the global layers, cuDNN elsewhere, compile, CUDA graph
      run fastest 300 $S out=$W/fastest $FAST model.compile=default model.cuda_graph=true frames=1,10,100 measure.warmup=2 measure.repeats=10
      run fastest 260 $S out=$W/fastest $FAST model.compile=default model.cuda_graph=true frames=20,50,200 measure.warmup=1 measure.repeats=3 ;;
    auto)   # auto vs the best single backends, 100 frames, bf16, eager (and what auto timed)
      run auto 200 $S out=$W/auto model.dtype=bf16 frames=100 measure.warmup=1 measure.repeats=5 \
        model.attention=sdpa_cudnn,auto model.global_attention=same,flash_attn4,auto ;;
    slope)  # memory per frame in bf16 weights: upstream plan, lean, offload
      run slope 240 $S out=$W/slope $FAST model.memory_plan=upstream,lean,offload frames=100,200,400 measure.warmup=0 measure.repeats=1 ;;
    nsys)   # where the time goes in the fastest eager configuration at 100 frames
      run nsys 200 python3 -m vggt_bench profile profiler=nsys out=$W/nsys $FAST frames=100 iterations=1 measure.warmup=1 ;;
    memprof) # what is live at the peak: upstream's plan vs lean, 100 frames, upstream's precision
      run memprof 150 python3 -m vggt_bench profile profiler=memory out=$W/memprof model.dtype=bf16_autocast frames=100 model.memory_plan=upstream tag=upstream_plan
      run memprof 150 python3 -m vggt_bench profile profiler=memory out=$W/memprof model.dtype=bf16_autocast frames=100 model.memory_plan=lean tag=lean ;;
    chunks) # token_chunk: memory against time, 100 frames, upstream's precision (upstream's plan in the same run)
      run chunks 200 $S out=$W/chunks model.dtype=bf16_autocast frames=100 model.memory_plan=lean model.token_chunk=8192,16384,32768 measure.warmup=1 measure.repeats=3
      run chunks 60 $S out=$W/chunks model.dtype=bf16_autocast frames=100 model.memory_plan=upstream measure.warmup=1 measure.repeats=3 ;;
    wall)   # one exact forward past 1,200 frames (background-able: setsid bash study.sh wall)
      run wall 580 $S out=$W/wall $FAST frames=1200 measure.warmup=0 measure.repeats=1 ;;
    pack)
      python3 - <<'PY'
import glob, pandas as pd
for d in sorted(glob.glob("*/results.csv")):
    t = pd.read_csv(d)
    cols = [c for c in ["impl", "frames", "memory_plan", "dtype", "attention", "global_attention", "compile", "cuda_graph",
                        "status", "latency_ms_median", "latency_ms_p10", "latency_ms_p90", "act_gib", "noisy",
                        "attention_ran"] if c in t]
    print(d); print(t[cols].sort_values([c for c in ("impl", "memory_plan", "frames") if c in cols]).to_string(index=False, max_colwidth=48))
PY
      tar czf "${OUT:-/tmp}/study.tgz" --exclude='*.pickle' --exclude='*.sqlite' --exclude='*.nsys-rep' --exclude='*.qdstrm' \
        --exclude='hydra' --exclude='trace.json' -C "$W" . ; ls -la "${OUT:-/tmp}" ;;
    *) echo "unknown stage $stage" ;;
  esac
done
