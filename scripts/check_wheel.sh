#!/usr/bin/env bash
# The package as a user installs it: build the wheel (not editable), install it into a fresh venv,
# and from a directory outside the checkout run a smoke sweep (with its report) and a verify.
# Also checks that the distribution adds no top-level `model` module, and that a stray model.py
# in the working directory changes nothing, and that benchmarks/gpu/regress.sh, which runs from the
# checkout's root, uses the installed package (the GPU machine has no editable install: there the
# checkout's vggt_bench/ shadowed it and lacked vggt_bench.experiments). CI runs this after the tests (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
work=$(mktemp -d /tmp/vggt-wheel.XXXXXX)
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m pip wheel -q --no-deps -w "$work/dist" . 2> >(grep -v "^WARNING: Location" >&2)
"$PYTHON" -m venv "$work/venv"
pip() { "$work/venv/bin/python" -m pip "$@" 2> >(grep -v "^WARNING: Location" >&2); }
pip install -q --upgrade pip
pip install -q "$TORCH_SPEC"
pip install -q "$work"/dist/*.whl
cp -r tests/fixtures/reference/tiny_vggt "$work/case"
repo=$PWD
cd "$work"
printf 'raise SystemExit("a stray model.py in the working directory was imported")\n' > model.py
py=$work/venv/bin/python
"$py" -c "import vggt_bench, vggt_model; assert 'site-packages' in vggt_bench.__file__, vggt_bench.__file__"
if "$py" -c "import importlib.util, sys; sys.path.remove('') if '' in sys.path else None; sys.exit(importlib.util.find_spec('model') is None)"; then
  echo "check_wheel: the installed distribution provides a top-level 'model' module" >&2; exit 1
fi
"$py" -m vggt_bench sweep experiment=smoke out="$work/out"
test -s "$work/out/results.parquet" && test -s "$work/out/report.html"
"$py" -m vggt_bench verify case="$work/case"
REGRESS_GPU="check wheel" REGRESS_BASELINES="$work/baselines" PYTHON="$py" \
  REGRESS_GRID="experiment=smoke frames=1 measure.warmup=1 measure.repeats=3 report=false" \
  bash "$repo/benchmarks/gpu/regress.sh" --make-baseline
"$py" -m vggt_bench compare baseline="$work/baselines/check-wheel" candidate="$work/baselines/check-wheel" \
  out="$work/compare" fail_above=0.05
echo "check_wheel: ok (wheel $(basename "$work"/dist/*.whl) installed and used outside the checkout)"
