"""Sweeps through Hydra's submitit launchers (hydra/launcher=submitit_local, submitit_slurm, slurm_*).

Three things the plugin (hydra-submitit-launcher 1.2) does not do, done here:

* **A job that dies is a result.** The plugin waits for its jobs with
  ``[job.results()[0] for job in jobs]``: one job that ends without a result (killed at Slurm's
  time limit, a node failure, a crash) raises there, the sweep stops and every later result is
  lost. ``launch`` below collects each job on its own; one that died becomes an ``error`` row of
  its point whose message says what Slurm said ("killed by Slurm: time limit (TIMEOUT)"), and
  the sweep goes on. A job's point comes from the ``vggt_point.json`` it wrote when it started
  (so a GPU node's ``auto`` choices are kept), else from its config resolved here.
  A job that stopped on bad input (``vggt_bench: error: ...`` in its log) stops the sweep with
  that one line, exit code 2, as it does without a launcher.
* **Job states without accounting.** submitit asks ``sacct``, which needs Slurm's accounting
  database. Where accounting is off (``AccountingStorageType=accounting_storage/none``, e.g. the
  one-node Slurm of ``scripts/local_slurm.sh``) every poll fails with a warning and a job that
  died is never seen to end, so the sweep would wait forever. There, states come from
  ``squeue`` (which knows finished jobs for MinJobAge, 300 s by default), said once. Elsewhere
  repeated sacct warnings are shown once.
* **No early-warning signal in the job.** submitit asks Slurm for USR2 shortly before the time
  limit, to checkpoint and requeue; a measurement cannot resume, and the signal would surface
  as an exception inside the timed forward. Jobs ignore it and run until Slurm's time limit
  kills them, which the sweep then records.

``prepare`` (the sweep's process, at the start of a multirun) installs ``launch`` on the
plugin's launcher class: Hydra instantiates launchers only from the ``hydra_plugins`` package,
so a subclass of ours could not be named in a config.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from submitit.slurm.slurm import SlurmInfoWatcher

from ..core import claims
from ..core.config import approx_label
from ..core.errors import UserError, fail
from ..core.results import ResultStore
from ..measure.point import resolve
from ..measure.record import point_columns
from . import progress

PLUGIN = "hydra_plugins.hydra_submitit_launcher.submitit_launcher"
POLL_S = 1.0          # how often the sweep looks at its jobs' result files (as submitit's own wait)
RESULT_GRACE_S = 15   # how long a result file may lag behind the job's end (shared filesystems; as submitit)
GONE = "GONE"  # our name for a job squeue no longer knows (no accounting: its end state is lost)

# What Slurm's end states of a job that wrote no result mean, for the row's message.
SLURM_ENDS = {
    "TIMEOUT": "killed by Slurm: time limit (TIMEOUT); give points more time with hydra.launcher.timeout_min",
    "OUT_OF_MEMORY": "killed by Slurm: out of memory (OUT_OF_MEMORY); ask for more with hydra.launcher.mem_gb",
    "NODE_FAIL": "killed by Slurm: node failure (NODE_FAIL)",
    "PREEMPTED": "killed by Slurm: preempted (PREEMPTED)",
    "DEADLINE": "killed by Slurm: deadline reached (DEADLINE)",
    "BOOT_FAIL": "the node failed to boot (BOOT_FAIL)",
    "CANCELLED": "cancelled in Slurm (CANCELLED)",
    GONE: "ended without a result; Slurm no longer knows the job and, without accounting, how it ended is lost",
}
_USER_ERROR = re.compile(r"^vggt_bench: error: (.*)$", re.MULTILINE)


# ---- the sweep's process -----------------------------------------------------------------------
def runs_elsewhere(config) -> bool:
    """Whether a submitit launcher runs the sweep's jobs, each in a process of its own."""
    return str(config.hydra.launcher.get("_target_", "")).startswith(PLUGIN + ".")


def prepare(config) -> None:
    """At the start of a multirun: if a submitit launcher runs it, install what this module adds."""
    if not runs_elsewhere(config):
        return
    target = str(config.hydra.launcher.get("_target_", ""))
    import importlib

    plugin = importlib.import_module(PLUGIN)
    plugin.BaseSubmititLauncher.launch = launch
    if target.endswith(".SlurmLauncher"):
        _choose_state_source()


def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
    """``BaseSubmititLauncher.launch`` of hydra-submitit-launcher 1.2, collecting each job on its own."""
    import submitit
    from hydra.core.singleton import Singleton
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    # -- as the plugin: an executor from hydra.launcher, one job per point (a job array) --
    params = self.params
    specific_init_keys = {"max_num_timeout"}
    init_params = {"folder": params["submitit_folder"]}
    init_params.update({f"{self._EXECUTOR}_{k}": v for k, v in params.items() if k in specific_init_keys})
    executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)
    baseparams = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{
        k if k in baseparams else f"{self._EXECUTOR}_{k}": v
        for k, v in params.items() if k not in specific_init_keys | {"submitit_folder"}
    })
    sweep_dir = Path(str(self.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if "mode" in self.config.hydra.sweep:
        os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
    job_params = [
        (list(overrides), "hydra.sweep.dir", initial_job_idx + i, f"job_id_for_{initial_job_idx + i}",
         Singleton.get_state())
        for i, overrides in enumerate(job_overrides)
    ]
    jobs = executor.map_array(self, *zip(*job_params))

    # -- ours: collect each job as it ends; one that died is recorded, not raised --
    returns: List = [None] * len(jobs)
    pending = {i: job for i, job in enumerate(jobs)}
    ended_at: Dict[int, float] = {}  # when a job was seen to end without a result file yet
    user_errors: List[str] = []
    while pending:
        for i, job in list(pending.items()):
            overrides, idx = job_params[i][0], job_params[i][2]
            if not job.done():  # its result file exists, or the cluster says it ended
                continue
            if not job.paths.result_pickle.exists():
                if time.time() - ended_at.setdefault(i, time.time()) < RESULT_GRACE_S:
                    continue  # a shared filesystem may show the file late
                returns[i] = _job_died(self, job, overrides, idx, None, user_errors)
            else:
                try:
                    returns[i] = job.results()[0]
                except Exception as exc:  # the job raised outside our task (submitit's own error)
                    returns[i] = _job_died(self, job, overrides, idx, exc, user_errors)
            del pending[i]
        if pending:
            time.sleep(POLL_S)
    if user_errors:
        progress.end_progress()
        fail(user_errors[0])
    return returns


def _job_died(launcher, job, overrides: List[str], idx: int, exc: Optional[Exception], user_errors: List[str]):
    """Record a job that ended without a result as an ``error`` row of its point; its JobReturn."""
    from hydra.core.utils import JobReturn, JobStatus, filter_overrides
    from omegaconf import open_dict
    from tqdm import tqdm

    cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
    with open_dict(cfg.hydra.job):
        cfg.hydra.job.num = idx
    job_dir = os.path.join(str(cfg.hydra.sweep.dir), str(cfg.hydra.sweep.subdir))
    returned = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=None)
    shown = " ".join(filter_overrides(overrides)) or "(no overrides)"
    log = _log(job)
    user_error = _USER_ERROR.findall(log)
    if user_error:  # bad input: the whole sweep stops with that line, after the other jobs
        user_errors.append(user_error[-1])
        progress.mark_done(job_dir)
        return returned
    if progress.is_done(job_dir):  # it finished its point; what failed came after (its result file)
        tqdm.write(f"vggt_bench: job {idx} ({shown}) ended its point but returned no result "
                   f"({_state(job)}; see {job.paths.folder})")
        return returned
    message = why_no_result(_state(job), log, exc, where=str(job.paths.folder))
    columns = progress.read_point(job_dir) or _resolve_here(cfg)
    if columns is None:
        tqdm.write(f"vggt_bench: job {idx} ({shown}) died before it measured: {message}; its point is "
                   f"unknown here, nothing recorded")
    else:
        row = dict(columns, status="error", message=message,
                   timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        store = ResultStore(str(cfg.out))
        with progress.writes_into(str(cfg.out)):
            store.ensure_writable()
            store.add(row)
            claims.release(str(cfg.out), row["point_id"], whoever=True)  # the job is gone: its claim with it
        tqdm.write(f"error {_describe(columns)}: {message}")
    progress.mark_done(job_dir)
    returned.return_value = columns
    return returned


def _describe(c: dict) -> str:
    """As the sweep's own lines say which point ran."""
    return (f"{c.get('arch')} S={c.get('frames')} {c.get('frame_exec')} k={c.get('prune_depth')}{approx_label(c)} "
            f"{c.get('attention')} {c.get('dtype')} {c.get('part')}")


def _resolve_here(cfg) -> Optional[dict]:
    """The job's point as this process resolves it (``auto`` choices are this machine's)."""
    try:
        point = resolve(cfg)
    except UserError:
        return None
    return {**point_columns(point, str(cfg.experiment)), "host": ""}  # it ran on no host


def _log(job) -> str:
    try:
        return (job.stderr() or "") + "\n" + (job.stdout() or "")
    except OSError:
        return ""


def _state(job) -> str:
    try:
        return str(job.state)
    except Exception:  # noqa: BLE001 - the state is only for the message
        return "UNKNOWN"


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0].strip() if lines else type(exc).__name__


def why_no_result(state: str, log: str = "", exc: Optional[BaseException] = None, where: str = "") -> str:
    """One line saying why a job left no result: Slurm's verdict, else the end of its log."""
    base = state.split()[0].upper() if state.strip() else "UNKNOWN"  # "CANCELLED by 0" -> CANCELLED
    if base in SLURM_ENDS:
        return SLURM_ENDS[base]
    last = [line.strip() for line in log.splitlines() if line.strip() and not line.startswith("submitit ")]
    if last:
        detail = last[-1]
    elif exc is not None:
        detail = _first_line(exc)
    else:
        detail = f"it left no log{f' (see {where})' if where else ''}"
    return f"job ended without a result ({state}): {detail}"[:500]


# ---- job states: sacct, or squeue where there is no accounting ------------------------------
_NOTICE = "vggt_bench: Slurm accounting is off ({}): job states come from squeue, not sacct"


def accounting_storage() -> Optional[str]:
    """Slurm's AccountingStorageType (e.g. ``accounting_storage/none``), or None if unknown."""
    try:
        done = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"^AccountingStorageType\s*=\s*(\S+)", done.stdout, re.MULTILINE)
    return found.group(1) if done.returncode == 0 and found else None


def _choose_state_source() -> None:
    from submitit.slurm import slurm
    from tqdm import tqdm

    storage = accounting_storage()
    if storage == "accounting_storage/none":
        if not isinstance(slurm.SlurmJob.watcher, SqueueWatcher):
            slurm.SlurmJob.watcher = SqueueWatcher(delay_s=10)
            tqdm.write(_NOTICE.format(storage))
    submitit_logger = logging.getLogger("submitit")
    if not any(isinstance(f, OnceSacctWarning) for f in submitit_logger.filters):
        submitit_logger.addFilter(OnceSacctWarning())


class OnceSacctWarning(logging.Filter):
    """Lets submitit's first 'Bypassing sacct error' warning through and drops the repeats."""

    def __init__(self):
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "sacct error" not in record.getMessage():
            return True
        if self.seen:
            return False
        self.seen = True
        record.msg = f"{record.getMessage()} (shown once; job states may be inaccurate)"
        record.args = ()
        return True


class SqueueWatcher(SlurmInfoWatcher):
    """submitit's Slurm job-state watcher, reading ``squeue`` instead of ``sacct``.

    ``squeue --states=all`` lists pending, running and recently finished jobs (for MinJobAge);
    a job it no longer lists has ended long ago and is reported as ``GONE``.
    """

    def _make_command(self) -> Optional[List[str]]:
        to_check = sorted({x.split("_")[0] for x in self._registered - self._finished})
        if not to_check:
            return None
        return ["squeue", "--noheader", "--states=all", "--format=%i|%T|%N", f"--jobs={','.join(to_check)}"]

    def update(self) -> None:
        command = self._make_command()
        if command is None:
            return
        self._num_calls += 1
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            done = subprocess.CompletedProcess(command, 1, "", str(exc))
        if done.returncode == 0 or "Invalid job id" in done.stderr:  # the latter: none is known any more
            self._info_dict.update(self.read_info(done.stdout))
        else:
            logging.getLogger("submitit").warning(f"squeue failed ({done.stderr.strip()}); job states may be late")
        self._last_status_check = time.time()
        for job_id in self._registered - self._finished:
            if self.is_done(job_id, mode="cache"):
                self._finished.add(job_id)

    def read_info(self, string) -> Dict[str, Dict[str, str]]:
        if not isinstance(string, str):
            string = string.decode()
        header = "JobID|State|NodeList"
        info = super().read_info("\n".join([header] + [line for line in string.splitlines() if line.strip()]))
        for job_id in self._registered - self._finished:
            if job_id not in info:  # asked for, not listed: long finished (or cancelled before it ran)
                info[job_id] = {"JobID": job_id, "State": GONE, "NodeList": ""}
        return info


# ---- in the job --------------------------------------------------------------------------------
def in_job() -> None:
    """In a Slurm job of the submitit launcher: ignore submitit's early-warning signal (see above)."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    sig = getattr(signal, f"SIG{name}", None)
    if sig is not None:
        signal.signal(sig, signal.SIG_IGN)
