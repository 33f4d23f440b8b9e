#!/usr/bin/env bash
# Sweeps under Nsight Systems on a GPU, both ways, checked against what nsys itself says.
#   source scripts/gpu_env.sh; OUT=/tmp/nsys-sweep bash benchmarks/gpu/nsys_sweep.sh [managed] [external] [check]
# (no argument: all three, in that order). Stages:
#   managed   `sweep profiler=nsys`: every point timed without a profiler, then re-run by itself under
#             `nsys profile --capture-range=cudaProfilerApi` in a child process -> $OUT/managed
#   external  ONE `nsys profile --capture-range=cudaProfilerApi --capture-range-end=repeat` around
#             `sweep profiler=external`: each point's captured forwards in their own cudaProfilerStart/Stop
#             and NVTX range point:<point_id>, so nsys writes one report per point into $OUT/external/nsys;
#             export them to SQLite, `profile analyze=<that folder>` joins them to the sweep's results by
#             point id, `report` draws the grid figures -> $OUT/external
#   check     benchmarks/gpu/nsys_stats_check.py: every (point, stage) GPU-projected time of both runs
#             against `nsys stats --report nvtx_gpu_proj_sum` of the point's own report (1% tolerance;
#             exit 1 on a mismatch), and the latency ratio of the points both runs timed
# Grids (override with GRID_MANAGED= / GRID_EXTERNAL=): the managed path pays an nsys start, a model
# build and an export per point, so its grid is smaller.
set -u
OUT=${OUT:-/tmp/vggt-nsys-sweep}
PY=${PYTHON:-python3}
NSYS=${NSYS:-nsys}
COMMON=${COMMON:-"experiment=adhoc model.dtype=bf16 iterations=2 measure.warmup=2 measure.repeats=5"}
GRID_MANAGED=${GRID_MANAGED:-"frames=8,32 model.frame_exec=fused,sequential model.attention=sdpa_cudnn"}
GRID_EXTERNAL=${GRID_EXTERNAL:-"frames=2,8,32 model.frame_exec=fused,sequential model.attention=sdpa_cudnn,sdpa_flash"}
STAGES=${*:-managed external check}
status=0
for stage in $STAGES; do
  echo "=== $stage"; t0=$SECONDS
  case $stage in
    managed)
      timeout 560 $PY -m vggt_bench sweep $COMMON $GRID_MANAGED profiler=nsys nsys=$(command -v $NSYS) \
        out=$OUT/managed || status=1
      ls $OUT/managed/profiles/*/report.nsys-rep | wc -l ;;
    external)
      mkdir -p $OUT/external/nsys
      timeout 400 $NSYS profile --trace=cuda,nvtx --sample=none --cpuctxsw=none \
        --capture-range=cudaProfilerApi --capture-range-end=repeat --force-overwrite=true \
        -o $OUT/external/nsys/point \
        $PY -m vggt_bench sweep $COMMON $GRID_EXTERNAL profiler=external report=false out=$OUT/external || status=1
      ls -l $OUT/external/nsys
      for rep in $OUT/external/nsys/*.nsys-rep; do
        $NSYS export --type sqlite --force-overwrite true -o "${rep%.nsys-rep}.sqlite" "$rep" >/dev/null || status=1
      done
      $PY -m vggt_bench profile analyze=$OUT/external/nsys out=$OUT/external || status=1
      $PY -m vggt_bench report results=$OUT/external | tail -n 4
      $PY -c "import pandas as pd; g = pd.read_parquet('$OUT/external/profile_grid.parquet'); \
print(g[g.stage != ''].pivot_table(index=['frames', 'frame_exec', 'attention'], columns='stage', values='gpu_ms').round(2)); \
print(g.drop_duplicates('point_id')[['frames', 'frame_exec', 'attention', 'profile_status', 'idle_frac', 'launches']])" ;;
    check)
      $PY "$(dirname "$0")/nsys_stats_check.py" $OUT/managed $OUT/external --nsys "$(command -v $NSYS)" || status=1 ;;
    *) echo "unknown stage $stage"; status=1 ;;
  esac
  echo "=== $stage done in $((SECONDS - t0)) s"
done
exit $status
