#!/usr/bin/env bash
# Here, before device calls: FlashAttention-4's wheels (98 MB: ../shared/device/fa4/fa4_wheels.sh
# downloads them) packed for the GPU machine in two pieces that each fit one call beside the working
# tree (64 MiB a call): the 92 MB CuTe DSL library wheel unpacked and recompressed with xz (64 MB),
# split in two, the second piece carrying the small wheels. On the machine, call 1 carries .fa4x/a
# and runs `mkdir -p /tmp/fa4parts && cp .fa4x/a/* /tmp/fa4parts/`; call 2, within 30 s on the warm
# machine, carries .fa4x/b and sources scripts/gpu_env.sh, which installs both into /tmp/fa4site.
# Usage: scripts/fa4_pack.sh [WHEELS_DIR]   (default .fa4, made by fa4_wheels.sh; .fa4x is git-ignored)
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-.fa4}
tmp=$(mktemp -d)
cat "$src"/d0*/part* > "$tmp/big.whl"
mkdir "$tmp/x" && (cd "$tmp/x" && python3 -m zipfile -e "$tmp/big.whl" .)
rm -rf .fa4x && mkdir -p .fa4x/a .fa4x/b
tar -C "$tmp/x" -cf - . | xz -9 -T2 | split -b 32m -d - .fa4x/a/xzpart
mv .fa4x/a/xzpart01 .fa4x/b/
cp "$src"/w/*.whl .fa4x/b/
rm -rf "$tmp"
du -sh .fa4x/*
