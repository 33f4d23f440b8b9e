#!/usr/bin/env bash
# The 2026-12-06 GPU study: sweeps under Nsight Systems (issue 18), the fastest exact VGGT with
# FlashAttention-4 and upstream's plan, same run with upstream's code, and its nsys profile (issue 16),
# the attention approximations against the exact model (issue 13). From the checkout's root on the
# GPU machine:
#   source scripts/gpu_env.sh; DEADLINE=$(( $(date +%s) + 560 )) bash benchmarks/gpu/study_2026-12-06.sh <stage> ...
# Every stage writes into $VGGT_WORK/study/<stage>; each command is bounded by its own limit and by
# DEADLINE (epoch seconds; the stages stop starting work 25 s before it so that `pack` still runs).
# Sweeps are resumable: running a stage again on the same warm machine skips measured points, so a
# stage larger than one device call (approx) is simply called again.
set -u
SELF=$(readlink -f "$0"); R=${VGGT_REPO:-$PWD}; W=${VGGT_WORK:-/tmp/vggt-work}/study; mkdir -p "$W/logs"; cd "$W"
DEADLINE=${DEADLINE:-$(( $(date +%s) + 580 ))}
UP="model.upstream_path=$R/.upstream"
S="python3 -m vggt_bench sweep report=false experiment=adhoc"
FAST="model.dtype=bf16 model.attention=sdpa_cudnn model.global_attention=flash_attn4 model.memory_plan=upstream"
. "$(dirname "$SELF")/lib.sh"  # run, pack
for stage in "$@"; do
  case $stage in
    env)    # what this machine is
      nvidia-smi --query-gpu=name,uuid,driver_version,memory.total --format=csv,noheader
      python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
      python3 -c "import flash_attn.cute, importlib.metadata as m; print('flash-attn-4', m.version('flash-attn-4'))" 2>&1 | tail -n 1
      nsys --version ;;
    nsys)   # issue 18: sweep profiler=nsys over frames x frame_exec (x k), the external-nsys path, checked against nsys stats
      GRID_MANAGED="frames=16,64 model.frame_exec=fused,sequential model.attention=sdpa_cudnn" \
      GRID_EXTERNAL="frames=4,16,64 model.frame_exec=fused,sequential model.prune_depth=0,4 model.attention=sdpa_cudnn" \
      COMMON="experiment=adhoc model.dtype=bf16 iterations=2 measure.warmup=2 measure.repeats=5" \
        run nsys 460 env OUT=$W/nsys bash $R/benchmarks/gpu/nsys_sweep.sh managed external check
      cat "$W/logs/nsys.log" | grep -vE "^\s*$" | tail -n 60 ;;
    fastest) # issue 16: upstream's code and our fastest exact setting, same machine, back to back
      run fastest 120 $S out=$W/fastest model.impl=upstream $UP model.dtype=bf16_autocast frames=100,200 measure.warmup=1 measure.repeats=3
      run fastest 200 $S out=$W/fastest $FAST model.compile=default model.cuda_graph=true frames=100,200 measure.warmup=2 measure.repeats=3 ;;
    fastest-drift) # issue 16, left for the next lease: the fastest setting's drift against the eager fp32 model
      # (one fp32 reference per frame count since adc848d), and one 1,000-frame forward of it without compile
      run fastest_drift 200 $S out=$W/fastest_drift $FAST model.compile=default model.cuda_graph=true frames=100 measure.drift=true measure.warmup=2 measure.repeats=3
      # upstream's plan keeps every layer's output (~72 GiB of activations at 1,000 frames, past an H100's
      # 80 GB): the lean plan, exact too. An 8-frame point first, in the same process, so FlashAttention-4's
      # kernels are compiled before the one timed 1,000-frame forward.
      run thousand 330 $S out=$W/thousand ${FAST/memory_plan=upstream/memory_plan=lean} frames=8,1000 measure.warmup=0 measure.repeats=1 ;;
    auto)   # issue 16: auto against the best single backends at 100 frames, bf16, eager, upstream's plan
      run auto 130 $S out=$W/auto model.dtype=bf16 model.memory_plan=upstream frames=100 measure.warmup=1 measure.repeats=3 \
        model.attention=sdpa_cudnn,auto model.global_attention=flash_attn4,auto ;;
    profile) # issue 16: where the time goes in the fastest eager configuration, 100 and 200 frames
      for f in 100 200; do
        run profile 110 python3 -m vggt_bench profile profiler=nsys out=$W/profile $FAST frames=$f iterations=1 measure.warmup=1 tag=fastest_eager_S$f
        rep=$(ls $W/profile/profiles/fastest_eager_S$f/*.sqlite 2>/dev/null | head -n 1)
        [ -n "$rep" ] && python3 $R/scripts/trim_nsys_sqlite.py "$rep" -o $W/profile/fastest_eager_S$f.sqlite.gz
      done ;;
    approx) # issue 13: the exact model and the approximations, same weights and inputs (measure.eager_reference=false
            # since bae803e). The first call (before that commit) ran frames=100 with the full list of settings and
            # got 4 points in 200 s (drift_vs_eager's fp32 reference per point), and no 400-frame point in 279 s.
            # Without compile to amortise (cuDNN, merging), one forward is timed with no warm-up; flex attention's
            # settings (kv_keep, global_sparsity) get one warm-up forward to compile.
      A="python3 -m vggt_bench sweep report=false experiment=approximations out=$W/approx model.dtype=bf16"
      run approx 150 $A frames=400 measure.warmup=0 measure.repeats=1 approx=exact,prune4,merge_65
      run approx 150 $A frames=400 measure.warmup=1 measure.repeats=1 approx=kv_keep_10,sparse_90
      run approx 120 $A frames=100 measure.warmup=1 measure.repeats=3 approx=sparse_90,kv_keep_25,merge_50,sparse_75,kv_keep_50,merge_30,sparse_50
      run approx 240 $A frames=400 measure.warmup=1 measure.repeats=1 approx=kv_keep_25,merge_50,sparse_75
      run approx 300 $A frames=800 measure.warmup=0 measure.repeats=1 approx=exact,merge_65
      run approx 240 $A frames=800 measure.warmup=1 measure.repeats=1 approx=kv_keep_10,sparse_90 ;;
    approx100|approx400|approx800a|approx800b|approx800c|approx800d)
      # issue 13, the second lease (after 12e1c57: approximations chunk their projections under the lean plan;
      # drift read from the last timed forward, no extra aggregator forward per point). Every setting at
      # every frame count against the exact model of this lease. Settings that run on flex attention
      # (kv_keep, global_sparsity) get one warm-up forward (its compilation); at 400 and 800 frames the
      # others are timed on their first forward (one 30-130 s forward; cuDNN's and cuBLAS's first-call
      # set-up is under a second). In priority order: 100 frames; 800 frames exact and prune4; the
      # cheapest setting of each technique at 800; 400 frames; the other settings at 800.
      A="python3 -m vggt_bench sweep report=false experiment=approximations out=$W/approx model.dtype=bf16"
      FLEX0=kv_keep_10,sparse_90; FLEX1=kv_keep_25,sparse_75; FLEX2=kv_keep_50,sparse_50
      case $stage in
        approx100) run approx 300 $A frames=100 measure.warmup=1 measure.repeats=3 \
                     approx=exact,prune4,kv_keep_10,sparse_90,merge_65,kv_keep_25,sparse_75,merge_50,kv_keep_50,sparse_50,merge_30 ;;
        approx800a) run approx 420 $A frames=800 measure.warmup=0 measure.repeats=1 approx=exact,prune4 ;;
        approx800b) run approx 120 $A frames=800 measure.warmup=0 measure.repeats=1 approx=merge_65
                    run approx 240 $A frames=800 measure.warmup=1 measure.repeats=1 approx=$FLEX0 ;;
        approx400) run approx 200 $A frames=400 measure.warmup=0 measure.repeats=1 approx=exact,prune4,merge_65,merge_50,merge_30
                   run approx 300 $A frames=400 measure.warmup=1 measure.repeats=1 approx=$FLEX0,$FLEX1,$FLEX2 ;;
        approx800c) run approx 120 $A frames=800 measure.warmup=0 measure.repeats=1 approx=merge_50
                    run approx 300 $A frames=800 measure.warmup=1 measure.repeats=1 approx=$FLEX1 ;;
        approx800d) run approx 160 $A frames=800 measure.warmup=0 measure.repeats=1 approx=merge_30
                    run approx 400 $A frames=800 measure.warmup=1 measure.repeats=1 approx=$FLEX2 ;;
      esac ;;
    approx800bg) # issue 13, the third lease: the 800-frame settings left by the second (and prune4 and the
            # most aggressive settings again, as a second sample of each), as one queue that outlives the device
            # call (setsid; a warm machine keeps /tmp), one point per process so that each gets its own warm-up
            # (flex attention's settings: one warm-up forward, its compilation; the others: none). The exact
            # point runs first: every drift and speedup of the queue is against it. The queue runs from a copy
            # of this script (the next call's checkout copy may replace it); `wait` waits for it, `pack` packs.
      cp "$SELF" "$W/queue.sh"; cp "$(dirname "$SELF")/lib.sh" "$W/lib.sh"
            # QUEUE (optional): other points, each frames:approx:warmup:repeats, the exact points first; e.g.
            # after cf369e0 (kv_keep's score_mod no longer gathers) and 8532b65 (the approximations' memory),
            # both predicted in docs/BENCHMARKS.md, about 14 minutes of device time (the fourth lease ran it, then
            # QUEUE="800:prune4:0:1" for the yardstick, and the 400-frame kv_keep points: reports/h100-2026-12-06c/):
            #   QUEUE="800:exact:0:1 800:kv_keep_10:1:1 800:sparse_90:1:1 800:merge_65:0:1 800:kv_keep_25:1:1 800:kv_keep_50:1:1 100:exact:1:3 100:kv_keep_10:1:3 100:kv_keep_25:1:3 100:kv_keep_50:1:3"
      setsid nohup env DEADLINE=$(( $(date +%s) + 4000 )) VGGT_REPO="$R" QUEUE="${QUEUE:-}" bash "$W/queue.sh" approx800queue \
        > "$W/logs/queue.out" 2>&1 < /dev/null &
      echo "queue started: pid $!" ;;
    approx800queue)
      A="python3 -m vggt_bench sweep report=false experiment=approximations out=$W/approx model.dtype=bf16"
      for spec in ${QUEUE:-800:exact:0:1 800:sparse_75:1:1 800:merge_50:0:1 800:kv_keep_25:1:1 800:sparse_50:1:1 \
                  800:merge_30:0:1 800:kv_keep_50:1:1 800:prune4:0:1 800:kv_keep_10:1:1 800:sparse_90:1:1 800:merge_65:0:1}; do
        IFS=: read -r f name warm reps <<< "$spec"
        run approx 900 $A frames=$f measure.warmup=$warm measure.repeats=$reps approx=$name
      done
      date +%T > "$W/queue.done" ;;
    wait)   # until the background queue is done or DEADLINE is near
      while [ ! -f "$W/queue.done" ] && [ $(( DEADLINE - $(date +%s) )) -gt 40 ]; do sleep 5; done
      grep -E "^=== |^ok|^oom|^error" "$W/logs/queue.out" | tail -n 30
      [ -f "$W/queue.done" ] && echo "queue done at $(cat "$W/queue.done")" ;;
    approx-one) # issue 13, one sweep of the approximations named in $APPROX (a short call: pack after each)
      run approx 300 python3 -m vggt_bench sweep report=false experiment=approximations out=$W/approx model.dtype=bf16 $APPROX ;;
    pack)   pack ;;
    *) echo "unknown stage $stage" ;;
  esac
done
