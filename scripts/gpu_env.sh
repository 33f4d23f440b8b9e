# Source this on the lent GPU machine (Python 3.12, torch 2.11 + CUDA 13, no network):
#   source scripts/gpu_env.sh
# It installs the carried wheels (Hydra, OmegaConf, nvtx, submitit) into /tmp/site and makes
# Nsight Systems work: its importer needs libdw.so.1, which the image lacks.
# Expects the checkout's ignored .gpu/ folder (wheels + libdw deb), carried with the run.
set -e
python3 -m pip install -q --no-index --no-deps --upgrade --target /tmp/site .gpu/*.whl >/dev/null 2>&1
export PYTHONPATH=$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
mkdir -p /tmp/dw && dpkg -x .gpu/libdw1_*.deb /tmp/dw
export LD_LIBRARY_PATH=/tmp/dw/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PATH=/opt/nvidia/nsight-compute/2025.3.1/host/target-linux-x64:$PATH
export PYTHONUNBUFFERED=1
set +e
