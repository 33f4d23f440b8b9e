import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, timeout=300):
    """`python -m vggt_bench ARGS` from the repository root, as a user types it."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "vggt_bench", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)

