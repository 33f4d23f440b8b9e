#!/usr/bin/env bash
# Here, before a device call: (re)build vggt-bench's wheel into the ignored .gpu/ folder that the
# call carries (scripts/gpu_env.sh installs it there), and name the commit it was built from.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu
rm -f .gpu/vggt_bench-*.whl
python3 -m pip wheel -q --no-deps -w .gpu . 2> >(grep -v "^WARNING: Location" >&2)
git rev-parse --short=12 HEAD > .gpu/COMMIT
ls .gpu
