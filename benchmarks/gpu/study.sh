#!/usr/bin/env bash
# The GPU study, stage by stage (each a `python -m vggt_bench sweep` into $OUT/<stage>):
#   source scripts/gpu_env.sh; OUT=/tmp/study bash benchmarks/gpu/study.sh baseline backends
# Stages:
#   baseline   fused vs sequential at 1, 10, 100 frames (bf16 autocast, sdpa): upstream's setting
#   backends   every backend at 100 frames (eager and sdpa_math run out of memory there: recorded)
#   ladder     the optimisation ladder: bf16 autocast vs bf16 weights, cuDNN vs flash, CUDA graphs,
#              torch.compile, at 1/10/100/200 frames
#   wall       the scaling wall: fused vs sequential up to 200 frames, fused to 1000, and past the limit
#   pruning    k = 0..12 at 10 and 100 frames, with drift
#   compile    torch.compile at 10/200 frames, k=9 vs k=0 at 100 frames
#   final      the fastest exact configuration (bf16, cuDNN, torch.compile, CUDA graph) at upstream's frame counts
#   nvtx       NVTX ranges on vs off with no profiler attached (their overhead), at 1 and 100 frames
#   backends32 every backend at 32 frames in bf16
#   nsys       Nsight Systems profiles, fused vs sequential at 8 and 32 frames, and 2-frame fixtures
# The fastest exact configuration found: model.dtype=bf16 model.attention=sdpa_cudnn (+ compile, and
# CUDA graphs for few frames). Stages after `ladder` use it.
set -u
OUT=${OUT:-/tmp/vggt-study}; mkdir -p "$OUT"
cd "${VGGT_WORK:-/tmp/vggt-work}"  # the installed package, not the checkout's folders (scripts/gpu_env.sh)
S="python3 -m vggt_bench sweep report=false experiment=adhoc"
BEST="model.dtype=bf16 model.attention=sdpa_cudnn"
for stage in "$@"; do
  echo "=== $stage"; t0=$SECONDS
  case $stage in
    baseline) $S out=$OUT/baseline frames=1,10,100 model.frame_exec=fused,sequential model.prune_depth=0 ;;
    backends) python3 -m vggt_bench sweep report=false out=$OUT/backends experiment=backends frames=100 ;;
    dtypes)   $S out=$OUT/dtypes frames=1,100 model.frame_exec=fused model.prune_depth=0 \
                 model.dtype=bf16,bf16_autocast model.attention=sdpa_cudnn,sdpa_flash ;;
    ladder)   timeout 150 $S out=$OUT/ladder frames=1,10,100 model.dtype=bf16_autocast,bf16 model.attention=sdpa_cudnn,sdpa_flash measure.warmup=2 measure.repeats=3
              timeout 60 $S out=$OUT/ladder frames=1,10 model.dtype=bf16 model.attention=sdpa_cudnn,sdpa_flash model.cuda_graph=true measure.warmup=2 measure.repeats=5
              timeout 100 $S out=$OUT/ladder frames=200 model.dtype=bf16,bf16_autocast model.attention=sdpa_cudnn measure.warmup=1 measure.repeats=2
              timeout 200 $S out=$OUT/ladder frames=1,100 model.dtype=bf16 model.attention=sdpa_cudnn model.compile=default model.cuda_graph=false measure.warmup=2 measure.repeats=3
              timeout 100 $S out=$OUT/ladder frames=1,10 model.dtype=bf16 model.attention=sdpa_cudnn model.compile=default model.cuda_graph=true measure.warmup=2 measure.repeats=5 ;;
    wall)     timeout 240 $S out=$OUT/wall $BEST frames=1,2,4,8,16,32,64,100,128,200 model.frame_exec=fused,sequential measure.warmup=1 measure.repeats=3
              timeout 330 $S out=$OUT/wall $BEST frames=256,512,1000,6000 model.frame_exec=fused measure.warmup=0 measure.repeats=1 ;;
    pruning)  timeout 240 $S out=$OUT/pruning $BEST frames=10,100 model.prune_depth=0,1,2,3,4,6,8,9,10,12 measure.drift=true measure.warmup=1 measure.repeats=3 ;;
    compile)  timeout 150 $S out=$OUT/compile $BEST model.compile=default frames=100 model.prune_depth=0,9 measure.warmup=2 measure.repeats=3
              timeout 150 $S out=$OUT/compile $BEST model.compile=default frames=10,200 measure.warmup=1 measure.repeats=2
              ;;
    final)    timeout 570 $S out=$OUT/final $BEST model.compile=default model.cuda_graph=true frames=1,2,4,8,10,20,50,100,200 measure.warmup=1 measure.repeats=3 ;;
    nvtx)     timeout 90 $S out=$OUT/nvtx $BEST frames=1,100 model.nvtx=false,true measure.warmup=2 measure.repeats=5 ;;
    backends32) timeout 150 python3 -m vggt_bench sweep report=false experiment=backends out=$OUT/backends32 frames=32 model.dtype=bf16 ;;
    nsys)     for f in 8 32; do for e in fused sequential; do
                timeout 90 python3 -m vggt_bench profile profiler=nsys out=$OUT/nsys $BEST frames=$f model.frame_exec=$e iterations=2 | tail -n 12
              done; done
              for e in fused sequential; do
                timeout 60 python3 -m vggt_bench profile profiler=nsys out=$OUT/fixtures $BEST frames=2 model.frame_exec=$e iterations=1 measure.warmup=1 | tail -n 3
              done ;;
    *) echo "unknown stage $stage" ;;
  esac
  echo "=== $stage done in $((SECONDS - t0)) s"
done
