#!/usr/bin/env bash
# The 2026-12-08 GPU study (issue 26): model.compile over the approximated model too (its global layers'
# per-token work now runs through the compiled block), K/V subsampling at 5% and 3%, block sparsity on
# FlashAttention-4's block-sparse path, against the fastest exact setting of the same run, at 1,000 frames;
# the kept window's query tiles and an Nsight Systems reading of one dense kv_keep layer.
# From the checkout's root on the GPU machine, after FlashAttention-4 is installed (scripts/gpu_env.sh):
#   source scripts/gpu_env.sh; DEADLINE=$(( $(date +%s) + 560 )) bash benchmarks/gpu/study_2026-12-08.sh <stage> ...
# Stages write into $VGGT_WORK/study/<name>; `queue` starts the long points as one background queue (setsid:
# it outlives the device call; later calls run `wait` and `pack`).
set -u
SELF=$(readlink -f "$0"); R=${VGGT_REPO:-$PWD}; W=${VGGT_WORK:-/tmp/vggt-work}/study; mkdir -p "$W/logs"; cd "$W"
DEADLINE=${DEADLINE:-$(( $(date +%s) + 580 ))}
. "$(dirname "$SELF")/lib.sh"  # run, pack, machine, start_queue, wait_queue
# The fastest exact setting at these frame counts (docs/BENCHMARKS.md, 2026-12-07): bf16 weights, cuDNN frame
# attention, FlashAttention-4 global attention, the lean plan with 65,536-token chunks; compiled here (the
# prediction: 1-2% faster than eager at 1,000 frames). The approximations run on the same, on their dense
# FlashAttention-4 parts (model.approx_kernel=dense).
FAST="model.dtype=bf16 model.attention=sdpa_cudnn model.global_attention=flash_attn4 model.memory_plan=lean model.token_chunk=65536"
A="python3 -m vggt_bench sweep report=false experiment=approximations out=$W/approx $FAST model.approx_kernel=dense"
for stage in "$@"; do
  case $stage in
    env)     # what this machine is
      machine ;;
    tiles)   # the kept window at three query tiles, and one layer's dense kv_keep attention (CUDA events)
      run tiles 200 python3 "$R/benchmarks/gpu/window_tiles.py" --frames 1000 --keep 0.05 --tiles 192x128,128x128,192x192
      grep -vE "^\s*$|Warning|warn" "$W/logs/tiles.log" | tail -n 12 ;;
    nsys)    # the same layer under Nsight Systems: GPU time of the NVTX range 'layer' and its kernels
      run nsys 200 nsys profile -t cuda,nvtx -f true -o "$W/nsys-kv" python3 "$R/benchmarks/gpu/window_tiles.py" \
        --frames 1000 --keep 0.05 --tiles ""
      nsys stats -q --report nvtx_gpu_proj_sum --format csv -o "$W/logs/nsys-range" "$W/nsys-kv.nsys-rep" >/dev/null 2>&1
      nsys stats -q --report cuda_gpu_kern_sum --format csv -o "$W/logs/nsys-kern" "$W/nsys-kv.nsys-rep" >/dev/null 2>&1
      grep -E "layer" "$W/logs/nsys.log" | tail -n 2; head -n 3 "$W"/logs/nsys-range*.csv; head -n 8 "$W"/logs/nsys-kern*.csv | cut -c1-220 ;;
    sparse)  # one layer's block sparsity at 90%: flex against FlashAttention-4's block-sparse path
      # (63 frames: a partial last query block and a partial last key block; errors against fp32)
      run sparse 240 python3 "$R/benchmarks/gpu/approx_kernels.py" --frames 63,1000 --keep "" --flex-frames 1000 \
        --check-frames 64 --linear-rows "" --sparsity 0.9
      grep -vE "^\s*$|Warning|warn" "$W/logs/sparse.log" | tail -n 14 ;;
    queue)   # the long points, one process each, the exact point first (every drift and speedup is against it);
             # QUEUE overrides: frames:approx:warmup:repeats[:override,override...]
      start_queue "$SELF" QUEUE="${QUEUE:-}" ;;
    run-queue)
      # in priority order: the compiled exact model (the baseline of every speedup), kv_keep=0.05 and 0.03
      # and 0.02 compiled (issue 26's 1,000-frame target), kv_keep=0.05 eager (what compile bought), block sparsity on
      # FlashAttention-4 compiled
      for spec in ${QUEUE:-1000:exact:1:3:model.compile=default 1000:kv_keep_05:1:3:model.compile=default \
                  1000:kv_keep_03:1:3:model.compile=default 1000:kv_keep_02:1:3:model.compile=default 1000:kv_keep_05:1:3 \
                  1000:sparse_90:1:3:model.compile=default}; do
        IFS=: read -r f name warm reps extra <<< "$spec"
        run queue 900 $A frames=$f measure.warmup=$warm measure.repeats=$reps approx=$name ${extra//,/ }
      done
      date +%T > "$W/queue.done" ;;
    wait)    # until the queue is done or DEADLINE is near
      wait_queue ;;
    pack)    pack ;;
    *) echo "unknown stage $stage" ;;
  esac
done
