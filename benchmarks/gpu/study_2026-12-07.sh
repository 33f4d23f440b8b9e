#!/usr/bin/env bash
# The 2026-12-07 GPU study (issue 26): K/V subsampling on dense FlashAttention-4 parts, FP8 linear layers
# and their combinations against the fastest exact setting of the same run, at 100, 800 and 1,000 frames.
# From the checkout's root on the GPU machine, after FlashAttention-4 is installed (scripts/fa4_pack.sh):
#   source scripts/gpu_env.sh; DEADLINE=$(( $(date +%s) + 560 )) bash benchmarks/gpu/study_2026-12-07.sh <stage> ...
# Stages write into $VGGT_WORK/study/<name>. `queue` starts the long points as one background queue (setsid:
# it outlives the device call; later calls run `wait` and `pack`).
set -u
SELF=$(readlink -f "$0"); R=${VGGT_REPO:-$PWD}; W=${VGGT_WORK:-/tmp/vggt-work}/study; mkdir -p "$W/logs"; cd "$W"
DEADLINE=${DEADLINE:-$(( $(date +%s) + 580 ))}
. "$(dirname "$SELF")/lib.sh"  # run, pack, machine, start_queue, wait_queue
# The fastest exact setting at these frame counts (docs/BENCHMARKS.md, 2026-12-07): bf16 weights, cuDNN frame
# attention, FlashAttention-4 global attention, the lean plan (upstream's holds ~72 GiB of activations at
# 1,000 frames) with 65,536-token chunks (8,192-token chunks leave FlashAttention-4's last wave of 132 SMs
# mostly empty: 672 tiles of 192 queries x 16 heads per call), eager. The approximations run on the same.
FAST="model.dtype=bf16 model.attention=sdpa_cudnn model.global_attention=flash_attn4 model.memory_plan=lean model.token_chunk=65536"
# EXTRA: overrides added to every sweep (EXTRA=model.compile=default: the next lease's compiled pair)
A="python3 -m vggt_bench sweep report=false experiment=approximations out=$W/approx $FAST model.approx_kernel=dense ${EXTRA:-}"
for stage in "$@"; do
  case $stage in
    env)     # what this machine is
      machine ;;
    kernels) # one global layer's kv_keep attention on the dense parts (errors against fp32 at 64 frames,
             # time and TFLOP/s at 800 and 1,000), and FP8 linears against bf16
      run kernels 150 python3 "$R/benchmarks/gpu/approx_kernels.py" --frames 64,1000 --keep 0.05,0.1 \
        --flex-frames 0 --check-frames 64 --linear-rows 65536
      grep -vE "^\s*$" "$W/logs/kernels.log" | grep -vE "Warning|warn" | tail -n 30 ;;
    dev100)  # through the harness at 100 frames: the settings with drift and memory, and the exact model's
             # token chunk (8,192 against 65,536) that the fastest setting above assumes; it also compiles
             # FlashAttention-4's kernels into the disk cache (scripts/gpu_env.sh) before the queue's points
      run dev100 200 $A frames=100 measure.warmup=1 measure.repeats=3 approx=exact,kv_keep_05,fp8
      run dev100 60 $A frames=100 measure.warmup=1 measure.repeats=3 approx=exact model.token_chunk=8192 ;;
    queue)   # the long points, one process each, the exact point of a frame count first (every drift and
             # speedup of that frame count is against it); QUEUE overrides: frames:approx:warmup:repeats
      start_queue "$SELF" QUEUE="${QUEUE:-}" EXTRA="${EXTRA:-}" ;;
    run-queue)
      # in priority order: issue 26's 1,000-frame target (exact, kv_keep=0.05, the yardstick's drift), the
      # other settings at 1,000 frames, then the 800-frame target
      for spec in ${QUEUE:-1000:exact:0:3 1000:kv_keep_05:1:3 1000:prune4:0:1 1000:kv_keep_10:1:3 \
                  1000:prune2_kv_keep_05_fp8:1:3 800:exact:0:3 800:kv_keep_05:1:3 800:prune4:0:1 800:kv_keep_10:1:3}; do
        IFS=: read -r f name warm reps <<< "$spec"
        run queue 900 $A frames=$f measure.warmup=$warm measure.repeats=$reps approx=$name
      done
      date +%T > "$W/queue.done" ;;
    wait)    # until the queue is done or DEADLINE is near
      wait_queue ;;
    pack)    pack ;;
    *) echo "unknown stage $stage" ;;
  esac
done
