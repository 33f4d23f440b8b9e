import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(args):
    """The command line and environment of `python -m vggt_bench ARGS` from the repository root."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return [sys.executable, "-m", "vggt_bench", *args], env


def run_cli(*args, timeout=300):
    """`python -m vggt_bench ARGS` from the repository root, as a user types it."""
    command, env = _cli(args)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def cli_process(*args, **popen):
    """The same, started in the background."""
    command, env = _cli(args)
    return subprocess.Popen(command, cwd=ROOT, env=env, **popen)
