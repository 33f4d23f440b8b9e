#!/usr/bin/env bash
# Profile one vggt-bench configuration under Nsight Systems and turn the trace into tables.
#   scripts/nsys_profile.sh out=reports/runs/nsys frames=100 model.frame_exec=sequential
# The capture covers only the measured forwards (cudaProfilerStart/Stop around them, after
# warm-up), with NVTX ranges on every stage. Same as `python -m vggt_bench profile profiler=nsys`,
# spelled out for people who run nsys themselves.
set -euo pipefail
PY=${PYTHON:-python3}
OUT=$(printf '%s\n' "$@" | sed -n 's/^out=//p' | tail -1)
OUT=${OUT:-reports/runs/nsys-$(date +%Y-%m-%d_%H-%M-%S)}
mkdir -p "$OUT"
REP="$OUT/capture"
nsys profile --trace=cuda,nvtx --sample=none --cpuctxsw=none \
  --capture-range=cudaProfilerApi --capture-range-end=stop --force-overwrite=true -o "$REP" \
  "$PY" -m vggt_bench profile profiler=none "$@" "out=$OUT"
nsys export --type sqlite --force-overwrite true -o "$REP.sqlite" "$REP.nsys-rep"
"$PY" -m vggt_bench profile analyze="$REP.sqlite" "out=$OUT"
