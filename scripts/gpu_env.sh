# Source this on the lent GPU machine (Python 3.12, torch 2.11 + CUDA 13, no network), from the
# checkout's root:   source scripts/gpu_env.sh
# It installs the carried wheels in .gpu/ (Hydra, OmegaConf, nvtx, submitit, nvidia-ml-py and
# vggt-bench's own wheel, built here by scripts/gpu_pack.sh) into /tmp/site, adds FlashAttention-4
# when an earlier call installed it into /tmp/fa4site (../shared/device/fa4/README.md), and makes
# Nsight Systems work (its importer needs libdw.so.1, which the image lacks). The package is used
# as installed, like any user's: run it from a directory other than the checkout ($VGGT_WORK), so
# the checkout's vggt_bench/ does not shadow it. $VGGT_REPO is the checkout.
set -e
python3 -m pip install -q --no-index --no-deps --upgrade --target /tmp/site .gpu/*.whl >/dev/null 2>&1
export VGGT_REPO=$PWD
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
# FlashAttention-4 from the two pieces scripts/fa4_pack.sh made (the first copied to /tmp/fa4parts by
# the call before, this call carrying .fa4x/b), once per machine
if [ ! -d /tmp/fa4site ] && [ -d .fa4x/b ] && [ -f /tmp/fa4parts/xzpart00 ]; then
  mkdir -p /tmp/fa4site
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/fa4site .fa4x/b/*.whl >/dev/null 2>&1
  cat /tmp/fa4parts/xzpart00 .fa4x/b/xzpart01 \
    | python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer)" \
    | tar -x -C /tmp/fa4site
fi
if [ -d /tmp/fa4site ]; then
  export PYTHONPATH=/tmp/fa4site:/tmp/fa4site/nvidia_cutlass_dsl/dsl_packages:$PYTHONPATH
fi
mkdir -p /tmp/dw && dpkg -x .gpu/libdw1_*.deb /tmp/dw
export LD_LIBRARY_PATH=/tmp/dw/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PATH=/opt/nvidia/nsight-compute/2025.3.1/host/target-linux-x64:$PATH
export PYTHONUNBUFFERED=1
export FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1  # FlashAttention-4 compiles each kernel once per machine, not per process
export VGGT_WORK=${VGGT_WORK:-/tmp/vggt-work}
mkdir -p "$VGGT_WORK"

export VGGT_BENCH_GIT_COMMIT=$(cat .gpu/COMMIT 2>/dev/null || echo unknown)
set +e
