"""Sweeps on a real Slurm: the one-node cluster of scripts/local_slurm.sh (Debian's slurm-wlm, as root).

The time-limit sweep starts first, in the background: Slurm's smallest time limit is one minute
and it looks for jobs past their limit every 30 s, so that sweep takes about 1.5 minutes; the
other sweeps run meanwhile (the partition lets two jobs share a core).

Each sweep runs in a process of its own (run_cli_subprocess): the driver keeps per-process state
(submitit's job watcher, the one notice that job states come from squeue) that these tests count.
"""

import glob
import os
import shutil
import subprocess

import pandas as pd
import pytest

from conftest import ROOT, cli_process, run_cli_subprocess
from vggt_bench.core.results import load_results

SCRIPT = os.path.join(ROOT, "scripts", "local_slurm.sh")
SACCT_WARNING = "sacct error"


@pytest.fixture(scope="module")
def slurm():
    """The partition of a running local Slurm; started (and stopped at the end) unless it already ran."""
    if os.geteuid() != 0:
        pytest.skip("the local Slurm needs root: scripts/local_slurm.sh installs slurm-wlm and starts slurmd")
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        pytest.skip("Slurm is not installed and there is no apt-get to install it")
    already = subprocess.run([SCRIPT, "status"], capture_output=True).returncode == 0
    started = subprocess.run([SCRIPT, "start"], capture_output=True, text=True, timeout=900)
    assert started.returncode == 0, started.stdout + started.stderr
    partition = started.stdout.strip().splitlines()[-1]
    env = {
        "SLURM_CONF": os.path.join(os.environ.get("VGGT_SLURM_DIR", "/tmp/vggt-slurm"), "slurm.conf"),
        # Jobs share the cores here: one thread each, or OpenMP threads wait on each other for seconds.
        "OMP_NUM_THREADS": "1",
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    yield partition
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key)
        else:
            os.environ[key] = value
    if not already:
        stopped = subprocess.run([SCRIPT, "stop"], capture_output=True, text=True, timeout=120)
        assert stopped.returncode == 0, stopped.stderr
        assert subprocess.run([SCRIPT, "status"], capture_output=True).returncode == 3  # nothing left running


def sweep_args(partition, out, *extra):
    return ("sweep", "experiment=smoke", "hydra/launcher=submitit_slurm", f"hydra.launcher.partition={partition}",
            f"out={out}", "report=false", *extra)


@pytest.fixture(scope="module", autouse=True)
def time_limit_sweep(slurm, tmp_path_factory):
    """A point that never ends (10^8 repeats) under a one-minute time limit, in the background."""
    out = tmp_path_factory.mktemp("time-limit")
    logs = tmp_path_factory.mktemp("time-limit-logs")
    with open(logs / "stdout", "w") as stdout, open(logs / "stderr", "w") as stderr:
        proc = cli_process(*sweep_args(slurm, out, "frames=1", "model.frame_exec=fused", "measure.repeats=100000000",
                                       "hydra.launcher.timeout_min=1"),
                           stdout=stdout, stderr=stderr)
    yield proc, out, logs
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def check_quiet_and_counted(done, points):
    """The bar reached every point, the summary was printed, sacct complained at most once."""
    output = done.stdout + done.stderr
    assert f"{points}/{points} points ended" in done.stdout, done.stdout[-2000:]  # no terminal: a line per job
    assert f"{points} points in" in done.stdout
    assert output.count(SACCT_WARNING) <= 1
    assert output.count("accounting storage is disabled") <= 1  # sacct's own complaint
    assert output.count("job states come from squeue") == 1


def slurm_jobs(out):
    """{job id: folder} of the jobs submitit submitted for sweeps into `out` (array tasks: <array>_<task>)."""
    folders = {os.path.basename(p): p for p in glob.glob(os.path.join(out, "hydra", ".submitit", "*"))}
    arrays = {name.split("_")[0] for name in folders if "_" in name}
    return {name: path for name, path in folders.items() if name not in arrays}  # not an array's own folder


def test_sweep_point_by_point_with_the_cpu_preset(slurm, tmp_path):
    done = run_cli_subprocess("sweep", "experiment=smoke", "hydra/launcher=slurm_cpu", f"hydra.launcher.partition={slurm}",
                   f"out={tmp_path}", "report=false", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = load_results(str(tmp_path))
    assert len(table) == 4 and set(table["status"]) == {"ok"}
    assert len(set(table["point_id"])) == 4
    jobs = slurm_jobs(tmp_path)
    assert len(jobs) == 4 and all("_" not in job for job in jobs)  # one job per point, one after another
    check_quiet_and_counted(done, 4)


def _job_times(array_id):
    """(start, end) of each task of a job array, as squeue reports them (finished jobs stay listed)."""
    listed = subprocess.run(["squeue", "--noheader", "--states=all", "--format=%i %S %e", f"--jobs={array_id}"],
                            capture_output=True, text=True, check=True).stdout.split("\n")
    return [tuple(pd.Timestamp(t) for t in line.split()[1:]) for line in listed if line.strip()]


def test_whole_grid_at_once_then_resume_skips_it(slurm, tmp_path):
    args = sweep_args(slurm, tmp_path, "hydra.sweeper.max_batch_size=null")
    done = run_cli_subprocess(*args, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    check_quiet_and_counted(done, 4)
    jobs = slurm_jobs(tmp_path)
    arrays = {job.split("_")[0] for job in jobs}
    assert len(jobs) == 4 and len(arrays) == 1  # all submitted at once, as one job array
    times = sorted(_job_times(arrays.pop()))
    assert len(times) == 4
    assert any(later[0] < earlier[1] for earlier, later in zip(times, times[1:])), times  # they overlapped
    # Every point once, in intact tables written by concurrent jobs.
    parquet, csv = load_results(str(tmp_path)), pd.read_csv(tmp_path / "results.csv")
    assert len(parquet) == len(csv) == 4 and len(set(parquet["point_id"])) == 4
    assert set(parquet["status"]) == {"ok"} and (parquet["latency_ms_median"] > 0).all()
    assert sorted(os.listdir(tmp_path / "points")) == sorted(f"{p}.json" for p in parquet["point_id"])

    before = {p: os.path.getmtime(tmp_path / "points" / p) for p in os.listdir(tmp_path / "points")}
    again = run_cli_subprocess(*args, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    check_quiet_and_counted(again, 4)
    rerun = set(slurm_jobs(tmp_path)) - set(jobs)
    logs = "".join(open(f).read() for job in rerun for f in glob.glob(os.path.join(tmp_path, "hydra", ".submitit",
                                                                                   job, "*_log.out")))
    assert len(rerun) == 4 and logs.count("already measured") == 4, logs[-2000:]
    assert {p: os.path.getmtime(tmp_path / "points" / p) for p in os.listdir(tmp_path / "points")} == before
    assert len(load_results(str(tmp_path))) == 4


def test_a_job_that_dies_is_an_error_row_and_the_sweep_goes_on(slurm, tmp_path):
    # The first job's batch script fails before Python starts (as on a broken node); the second runs.
    once = tmp_path / "failed-once"
    done = run_cli_subprocess(*sweep_args(slurm, tmp_path / "out", "frames=1",
                               f"hydra.launcher.setup=['mkdir {once} 2>/dev/null && exit 3 || true']"), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    check_quiet_and_counted(done, 2)
    table = load_results(str(tmp_path / "out")).set_index("frame_exec")
    assert table.loc["fused", "status"] == "error"
    assert table.loc["fused", "message"].startswith("job ended without a result (FAILED)")
    assert table.loc["fused", "frames"] == 1 and table.loc["fused", "arch"] == "small"  # its point, resolved
    assert table.loc["sequential", "status"] == "ok"
    assert "error small S=1 fused k=0 sdpa fp32 aggregator: job ended without a result (FAILED)" in done.stdout


def test_bad_value_inside_a_job_stops_the_sweep_in_one_line(slurm, tmp_path):
    done = run_cli_subprocess(*sweep_args(slurm, tmp_path, "frames=1", "model.frame_exec=fused", "model.attention=flashy"),
                   timeout=600)
    assert done.returncode == 2, (done.stdout[-2000:], done.stderr[-2000:])
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("vggt_bench: error: unknown model.attention 'flashy'"), done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert not os.path.exists(tmp_path / "points") or not os.listdir(tmp_path / "points")  # no row for it


def test_a_job_killed_at_the_time_limit_is_recorded_as_such(time_limit_sweep):
    proc, out, logs = time_limit_sweep
    proc.wait(timeout=400)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, (logs / "stdout").read_text(),
                                       (logs / "stderr").read_text())
    assert done.returncode == 0, done.stderr[-3000:]
    check_quiet_and_counted(done, 1)
    row = load_results(str(out)).iloc[0]
    assert row["status"] == "error"
    assert row["message"].startswith("killed by Slurm: time limit (TIMEOUT)")
    assert row["frames"] == 1 and row["host"]  # the point the job said it measured, and where
    assert "killed by Slurm: time limit (TIMEOUT)" in done.stdout
