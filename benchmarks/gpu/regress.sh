#!/usr/bin/env bash
# The GPU regression check: a fixed small grid measured on this GPU, compared with the committed baseline
# of the same GPU kind (reports/baselines/<gpu kind>/) by `python -m vggt_bench compare ... fail_above=0.05`.
#
#   bash benchmarks/gpu/regress.sh                  measure, compare; exit 0, 1 (a point slower by more than 5%
#                                                   beyond doubt) or 2 (no baseline for this GPU, a user error)
#   bash benchmarks/gpu/regress.sh --make-baseline  measure into reports/baselines/<gpu kind>/ (then commit it)
#   bash benchmarks/gpu/regress.sh --print          the GPU kind, its baseline and both commands; runs nothing
#
# The GPU kind is nvidia-smi's name of the first GPU, lower case, "NVIDIA " dropped, other characters as "-"
# ("NVIDIA H100 80GB HBM3" -> h100-80gb-hbm3): one baseline per card model, never compared across models.
# Environment: PYTHON (default .venv/bin/python, else python3), REGRESS_GPU (the GPU's name instead of
# nvidia-smi's), REGRESS_BASELINES (default reports/baselines), REGRESS_OUT (default
# reports/runs/regress-<time>), FAIL_ABOVE (default 0.05), REGRESS_GRID (overrides replacing the grid below). docs/compare.md says what the comparison reports.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
FAIL_ABOVE=${FAIL_ABOVE:-0.05}
# VGGT-1B's aggregator at upstream's precision and frame size, fused, SDPA; 3 untimed and 10 timed forwards a
# point (a bootstrap interval needs the samples); about two minutes on an H100.
GRID=(experiment=adhoc device=cuda model.arch=vggt1b model.dtype=bf16_autocast inputs.height=336 inputs.width=518
      part=aggregator model.frame_exec=fused model.attention=sdpa frames=1,8,32 measure.warmup=3 measure.repeats=10
      report=false)
[ -z "${REGRESS_GRID:-}" ] || read -r -a GRID <<< "$REGRESS_GRID"  # another grid (the tests run one on the CPU)

refuse() { echo "regress.sh: $*" >&2; exit 2; }

mode=check
case "${1:-}" in
  "") ;;
  --make-baseline) mode=make ;;
  --print) mode=print ;;
  *) refuse "unknown option ${1}; use --make-baseline, --print or none" ;;
esac

name=${REGRESS_GPU:-$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)}
[ -n "$name" ] || refuse "no NVIDIA GPU visible (nvidia-smi answered nothing): run it on the GPU it checks, or name one with REGRESS_GPU=..."
kind=$(printf '%s' "$name" | tr '[:upper:]' '[:lower:]' | sed -e 's/^nvidia //' -e 's/[^a-z0-9]\{1,\}/-/g' -e 's/^-//' -e 's/-$//')
baseline=${REGRESS_BASELINES:-reports/baselines}/$kind
has_table() { [ -f "$1/results.parquet" ] || [ -f "$1/results.csv" ]; }

if [ "$mode" = make ]; then
  has_table "$baseline" && refuse "a baseline for $name is already in $baseline: remove it first to make a new one"
  out=$baseline
else
  out=${REGRESS_OUT:-reports/runs/regress-$(date +%Y-%m-%d_%H-%M-%S)}
fi
sweep=("$PY" -m vggt_bench sweep "${GRID[@]}" "out=$out")
compare=("$PY" -m vggt_bench compare "baseline=$baseline" "candidate=$out" "fail_above=$FAIL_ABOVE")

if [ "$mode" = print ]; then
  echo "gpu: $name"
  echo "kind: $kind"
  echo "baseline: $baseline ($(has_table "$baseline" && echo present || echo none yet))"
  echo "sweep: ${sweep[*]}"
  echo "compare: ${compare[*]}"
  exit 0
fi
[ "$mode" = make ] || has_table "$baseline" || refuse "no baseline for $name ($kind) in $baseline: make one on this GPU kind with 'bash benchmarks/gpu/regress.sh --make-baseline' (reports/baselines/README.md)"

"${sweep[@]}" || exit $?
if [ "$mode" = make ]; then
  echo "regress.sh: baseline for $name written to $baseline: commit it, and add a line to reports/baselines/README.md"
  exit 0
fi
"${compare[@]}"
