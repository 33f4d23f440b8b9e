"""conftest.run_cli runs the CLI in the test process: what it reads must be what a process of its own reads."""

import os
import subprocess
import sys

import torch

from conftest import run_cli
from vggt_bench.core.results import load_results


def test_a_run_in_process_gets_the_torch_threads_of_a_fresh_process(tmp_path):
    # OMP_NUM_THREADS=1 (the compare and store-format fixtures set it for steady CPU timings) set a fresh
    # process's torch to one thread; in process, torch had read it long before, and the sweeps ran on two.
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    fresh = int(subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=env,
                               capture_output=True, text=True, timeout=300).stdout)
    before = torch.get_num_threads()
    torch.set_num_threads(3)  # whatever an earlier test left
    try:
        for omp, expected in (("1", 1), (None, fresh)):
            run_env = dict(env, OMP_NUM_THREADS=omp) if omp else env
            out = tmp_path / f"omp-{omp}"
            done = run_cli("run", "experiment=smoke", "frames=1", "measure.warmup=0", "measure.repeats=1",
                           f"out={out}", env=run_env)
            assert done.returncode == 0, done.stderr[-2000:]
            assert load_results(str(out)).iloc[0]["cpu_threads"] == expected, omp
        assert torch.get_num_threads() == 3  # and this process's own count is put back
    finally:
        torch.set_num_threads(before)

