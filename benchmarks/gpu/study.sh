#!/usr/bin/env bash
# The GPU study, stage by stage (each a `python -m vggt_bench sweep` into $OUT/<stage>):
#   source scripts/gpu_env.sh; OUT=/tmp/study bash benchmarks/gpu/study.sh baseline backends
# Stages:
#   baseline   fused vs sequential at 1, 10, 100 frames (bf16 autocast, sdpa)
#   backends   every backend at 100 frames (eager and sdpa_math run out of memory there: recorded)
#   dtypes     pure bf16 weights vs bf16 autocast, cuDNN vs flash, at 1 and 100 frames
#   ladder     the optimisation ladder: bf16 autocast vs bf16 weights, cuDNN vs flash, CUDA graphs,
#              torch.compile, at 1/10/100/200 frames
#   wall       the scaling wall, fused, best backend, up to the memory limit
#   pruning    k = 0..12 at 10, 100 frames, with drift
#   nsys       Nsight Systems profiles, fused vs sequential at 8 and 32 frames
set -u
OUT=${OUT:-/tmp/vggt-study}; mkdir -p "$OUT"
S="python3 -m vggt_bench sweep report=false"
for stage in "$@"; do
  echo "=== $stage"; t0=$SECONDS
  case $stage in
    baseline) $S out=$OUT/baseline frames=1,10,100 model.frame_exec=fused,sequential model.prune_depth=0 ;;
    backends) $S out=$OUT/backends experiment=backends frames=100 ;;
    dtypes)   $S out=$OUT/dtypes frames=1,100 model.frame_exec=fused model.prune_depth=0 \
                 model.dtype=bf16,bf16_autocast model.attention=sdpa_cudnn,sdpa_flash ;;
    ladder)   timeout 150 $S out=$OUT/ladder frames=1,10,100 model.dtype=bf16_autocast,bf16 model.attention=sdpa_cudnn,sdpa_flash measure.warmup=2 measure.repeats=3
              timeout 60 $S out=$OUT/ladder frames=1,10 model.dtype=bf16 model.attention=sdpa_cudnn,sdpa_flash model.cuda_graph=true measure.warmup=2 measure.repeats=5
              timeout 100 $S out=$OUT/ladder frames=200 model.dtype=bf16,bf16_autocast model.attention=sdpa_cudnn measure.warmup=1 measure.repeats=2
              timeout 200 $S out=$OUT/ladder frames=1,100 model.dtype=bf16 model.attention=sdpa_cudnn model.compile=default model.cuda_graph=false measure.warmup=2 measure.repeats=3
              timeout 100 $S out=$OUT/ladder frames=1,10 model.dtype=bf16 model.attention=sdpa_cudnn model.compile=default model.cuda_graph=true measure.warmup=2 measure.repeats=5 ;;
    wall)     $S out=$OUT/wall experiment=scaling_wall ${WALL_OVERRIDES:-} ;;
    pruning)  $S out=$OUT/pruning experiment=pruning ${PRUNING_OVERRIDES:-} ;;
    nsys)     for f in 8 32; do for e in fused sequential; do
                python3 -m vggt_bench profile profiler=nsys out=$OUT/nsys frames=$f model.frame_exec=$e iterations=2 ${NSYS_OVERRIDES:-} | tail -n 30
              done; done ;;
    *) echo "unknown stage $stage" ;;
  esac
  echo "=== $stage done in $((SECONDS - t0)) s"
done
