"""A sweep's progress, whichever launcher runs its jobs: each job leaves files, the sweep counts them.

Hydra calls job callbacks in the process that runs the job: the sweep's own process with the
basic launcher, but a separate process (local, or on a Slurm node) with the submitit
launchers, where the sweep's progress bar cannot be reached. So each job leaves two small
files in its Hydra output directory (``<out>/hydra/<job number>/``):

* ``vggt_point.json`` as soon as it knows its point (id, knobs, host), so that the sweep can
  record a job that died without writing its row (``launchers``);
* ``vggt_done`` when it ends: measured, skipped as already measured, or failed.

``Progress`` is a thread of the sweep's process that counts the ``vggt_done`` files of the
sweep twice a second and moves the bar. The sweep's process holds one bar (``start_bar``); lines
printed while it shows go through ``say``, and ``end_progress`` closes it (at the end of the
multirun, or when a launcher stops the sweep early).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import socket
import sys
import threading
from typing import Any, Optional

from ..core.errors import fail
from ..core.results import LOST_WRITE, atomic_write, lost_write
from ..measure.record import point_columns

POINT_FILE = "vggt_point.json"
DONE_FILE = "vggt_done"


def _job_dir() -> Optional[str]:
    """This job's Hydra output directory when it is one job of a multirun (else None)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return HydraConfig.get().runtime.output_dir


def job_started(point, experiment: str) -> None:
    """In the job: say which point it measures."""
    directory = _job_dir()
    if directory is not None:
        payload = json.dumps({**point_columns(point, experiment), "host": socket.gethostname()}, default=str).encode()
        atomic_write(os.path.join(directory, POINT_FILE), lambda f: f.write(payload))


def read_point(job_dir: str) -> Optional[dict]:
    """The point a job said it measures, or None if it never got that far."""
    try:
        with open(os.path.join(job_dir, POINT_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def mark_done(job_dir: str) -> None:
    os.makedirs(job_dir, exist_ok=True)
    with open(os.path.join(job_dir, DONE_FILE), "w"):
        pass


def is_done(job_dir: str) -> bool:
    return os.path.exists(os.path.join(job_dir, DONE_FILE))


def job_ended(config) -> None:
    """In the job (a Hydra ``on_job_end`` callback): count it as done."""
    if _job_dir() is not None:
        mark_done(config.hydra.runtime.output_dir)


def _files(sweep_dir: str, name: str):
    # recursive: whatever hydra.sweep.subdir is; glob skips hidden folders such as .submitit
    return glob.glob(os.path.join(glob.escape(sweep_dir), "**", name), recursive=True)


class Progress:
    """Moves ``bar`` to the number of jobs of ``sweep_dir`` that have ended, from a thread."""

    def __init__(self, bar, sweep_dir: str, interval_s: float = 0.5):
        self.bar, self.sweep_dir, self.interval_s = bar, sweep_dir, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vggt-progress", daemon=True)

    def start(self) -> "Progress":
        # Files of an earlier sweep into the same `out` would count as this sweep's jobs.
        for name in (DONE_FILE, POINT_FILE):
            for path in _files(self.sweep_dir, name):
                os.unlink(path)
        self._thread.start()
        return self

    def update(self) -> None:
        ended = len(_files(self.sweep_dir, DONE_FILE))
        if ended > self.bar.n:
            self.bar.update(ended - self.bar.n)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.update()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.update()


# ---- the sweep's bar ----------------------------------------------------------------------------
_BAR: Any = None
_PROGRESS: Any = None


class Lines:
    """The bar without a terminal, for jobs that run in other processes (submitit launchers), whose
    own lines go to their logs: one line as each job ends."""

    def __init__(self, total: Optional[int]):
        self.n, self.total = 0, total

    def update(self, ended: int) -> None:
        for _ in range(ended):
            self.n += 1
            print(f"{self.n}/{self.total or '?'} points ended", flush=True)

    @staticmethod
    def write(text: str) -> None:
        print(text, flush=True)

    def close(self) -> None:
        pass


def start_bar(total: Optional[int], sweep_dir: str, jobs_elsewhere: bool = False) -> None:
    """Show the sweep's progress (``total`` jobs, None: unknown), moved by a ``Progress``: a bar on a
    terminal; without one (a log file, where the bar's redraws would interleave with the points'
    lines) none where each job prints its own line here, else a line as each job ends (``Lines``)."""
    global _BAR, _PROGRESS
    from tqdm import tqdm

    if sys.stderr.isatty():
        _BAR = tqdm(total=total, unit="point", dynamic_ncols=True, file=sys.stderr)
    elif jobs_elsewhere:
        _BAR = Lines(total)
    else:
        return
    _PROGRESS = Progress(_BAR, sweep_dir).start()


def say(text: str) -> None:
    """Print a line of the sweep: above the bar while it shows."""
    if _BAR is not None:
        _BAR.write(text)
    else:
        print(text, flush=True)


def end_progress() -> None:
    """Count the jobs that ended one last time and close the bar."""
    global _BAR, _PROGRESS
    if _PROGRESS is not None:
        _PROGRESS.stop()
        _PROGRESS = None
    if _BAR is not None:
        _BAR.close()
        _BAR = None


@contextlib.contextmanager
def writes_into(out: str, point_file: str = "", unsaved: str = ""):
    """Writes into the results directory ``out``: one that fails as a full or read-only disk fails
    (LOST_WRITE) closes the bar and ends the sweep with one line naming the path and what is kept,
    exit 2. ``unsaved`` is said lost when the write that failed was ``point_file`` (a point's row)."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in LOST_WRITE:
            raise
        end_progress()
        fail(lost_write(exc, out, unsaved if point_file and exc.filename == point_file else ""))
