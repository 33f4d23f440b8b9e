"""The pieces of cluster sweeps that need no cluster: job states, messages, warnings, progress, help."""

import io
import logging
import os
import re

from conftest import ROOT, run_cli


def test_squeue_states_and_what_they_mean():
    from vggt_bench.launch.launchers import GONE, SqueueWatcher, why_no_result

    watcher = SqueueWatcher(delay_s=10)
    for job in ("12_0", "12_1", "12_2", "13", "14"):
        watcher.register_job(job)
    info = watcher.read_info("12_0|RUNNING|vm\n12_[1-2]|PENDING|\n13|TIMEOUT|vm\n")
    assert {job: info[job]["State"] for job in info} == {
        "12_0": "RUNNING", "12_1": "PENDING", "12_2": "PENDING", "13": "TIMEOUT", "14": GONE}
    assert why_no_result("TIMEOUT") == ("killed by Slurm: time limit (TIMEOUT); give points more time with "
                                        "hydra.launcher.timeout_min")
    assert why_no_result("CANCELLED by 0").startswith("cancelled in Slurm")
    assert why_no_result("FAILED", "submitit INFO started\nImportError: no module named torch\n") == (
        "job ended without a result (FAILED): ImportError: no module named torch")
    assert why_no_result("FAILED", "", where="/x/.submitit/7") == (
        "job ended without a result (FAILED): it left no log (see /x/.submitit/7)")


def test_repeated_sacct_warnings_are_shown_once():
    from vggt_bench.launch.launchers import OnceSacctWarning

    stream = io.StringIO()
    logger = logging.getLogger("vggt-test-submitit")
    logger.addHandler(logging.StreamHandler(stream))
    logger.addFilter(OnceSacctWarning())
    for call in range(1, 4):
        logger.warning(f"Call #{call} - Bypassing sacct error Command 'sacct' returned 1, status may be inaccurate.")
    logger.warning("something else")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "Call #1" in lines[0] and "shown once" in lines[0] and lines[1] == "something else"


def test_progress_counts_the_jobs_that_ended(tmp_path):
    from tqdm import tqdm

    from vggt_bench.launch import progress

    stale = tmp_path / "0"
    stale.mkdir()
    progress.mark_done(str(stale))  # from an earlier sweep into the same `out`
    bar = tqdm(total=3, file=io.StringIO())
    watch = progress.Progress(bar, str(tmp_path), interval_s=0.05).start()
    assert not progress.is_done(str(stale))
    for job in ("0", "1", "sub/2"):  # whatever hydra.sweep.subdir makes of the job number
        progress.mark_done(str(tmp_path / job))
    progress.mark_done(str(tmp_path / ".submitit" / "9"))  # not a job's output directory
    watch.stop()
    assert bar.n == 3
    bar.close()
    assert re.search(r"3/3", bar.fp.getvalue())


def test_help_names_the_slurm_presets():
    done = run_cli("sweep", "--help")
    assert done.returncode == 0
    footer = done.stdout[done.stdout.index("Presets: experiment="):]
    assert "hydra/launcher=slurm_h100" in footer and "slurm_cpu" in footer and "submitit_slurm" in footer
    for preset in ("slurm_h100", "slurm_cpu"):
        assert os.path.exists(os.path.join(ROOT, "experiments", "hydra", "launcher", f"{preset}.yaml"))
