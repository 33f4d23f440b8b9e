#!/usr/bin/env bash
# GPU correctness checks and a first baseline, in one device call:
#   source scripts/gpu_env.sh; OUT=$OUT bash benchmarks/gpu/checks.sh
# Writes logs and tables under $OUT. Each step is bounded and its failure does not stop the rest.
set -u
OUT=${OUT:-/tmp/vggt-checks}; mkdir -p "$OUT"
R=${VGGT_REPO:-$PWD}; cd "${VGGT_WORK:-/tmp/vggt-work}"  # the installed package, not the checkout's folders
step() { local name=$1 limit=$2; shift 2; echo "=== $name"; local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; local rc=$?; tail -n 40 "$OUT/$name.log"; echo "=== $name rc=$rc $((SECONDS-t0))s"; }
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
python3 -c "import torch;print('torch',torch.__version__,'cuda',torch.version.cuda,'cudnn',torch.backends.cudnn.version())"
step backends 40 python3 -m vggt_bench backends
step verify_fp32 120 bash -c 'for a in "model.attention=sdpa" "model.attention=eager model.frame_exec=sequential" "model.attention=sdpa_efficient model.frame_exec=chunked model.frame_chunk=2"; do for c in tiny_vggt tiny_dinov2_aggregator; do python3 -m vggt_bench verify case=$R/tests/fixtures/reference/$c device=cuda tolerance_scale=10 $a | tail -2; done; done'
step precision 150 python3 $R/benchmarks/gpu/precision.py --frames 4 --out "$OUT/precision.json"
