"""The results table: one JSON file per measured point, and the Parquet/CSV tables built from them.

Each point is written atomically to ``<out>/points/<point_id>.json`` the moment it is
measured, so nothing measured is lost when a sweep is interrupted or a later point
crashes the process. ``results.parquet`` and ``results.csv`` are rebuilt from those
files (atomically, under a file lock, so parallel launcher jobs can write at once).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import io
import json
import math
import os
import tempfile
from typing import Iterable, Optional

import pandas as pd

from .schema import RESULT_COLUMNS
from .store_format import FORMAT_VERSION, upgrade_table

DONE = ("ok", "oom", "unavailable")  # statuses a resumed sweep does not measure again


_HELD_HERE: set = set()  # results directories whose lock this process holds right now


@contextlib.contextmanager
def locked(out: str, wait: bool = True):
    """An exclusive lock on the results directory ``out`` (``<out>/.lock``), for rebuilding the
    tables every point shares while parallel launcher jobs write. ``wait=False``: raise
    BlockingIOError at once when someone holds it."""
    os.makedirs(out, exist_ok=True)
    key = os.path.realpath(out)
    with open(os.path.join(out, ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        _HELD_HERE.add(key)
        try:
            yield
        finally:
            _HELD_HERE.discard(key)
            fcntl.flock(f, fcntl.LOCK_UN)


def atomic_write(path: str, write) -> None:
    """Write ``path`` through ``write(binary file)`` into a temporary file, then rename it over:
    readers see the old file or the new one, never half of one."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".tmp-{os.getpid()}-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are as readable as any file the user makes
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def new_run_dir(root: str, link: str = "latest") -> str:
    """A fresh ``<root>/<timestamp>`` directory; ``<root>/<link>`` is (re)pointed at it."""
    import datetime

    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out = os.path.join(root, stamp)
    n = 1
    while os.path.exists(out):  # two runs in one second
        n += 1
        out = os.path.join(root, f"{stamp}_{n}")
    os.makedirs(out)
    tmp = os.path.join(root, f".{link}.{os.getpid()}")
    with contextlib.suppress(OSError):
        os.unlink(tmp)
    try:
        os.symlink(os.path.basename(out), tmp)
        os.replace(tmp, os.path.join(root, link))
    except OSError:  # a filesystem without symlinks (or a real directory named latest): keep the run anyway
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return out


def unwritable(path: str) -> Optional[str]:
    """None if directory ``path`` can be created and written, else the reason."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, ".write-test")
        with open(probe, "w") as f:
            f.write("ok")
        os.unlink(probe)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


class ResultStore:
    def __init__(self, out: str):
        self.out = out
        self.points_dir = os.path.join(out, "points")

    def ensure_writable(self) -> None:
        """Create ``out``; raise OSError with a one-line reason if it cannot be written. Also runs the
        table path once in memory (``_warm_tables``), before any point is measured."""
        problem = unwritable(self.points_dir)
        if problem:
            raise OSError(problem)
        _warm_tables()

    def _lock(self, wait: bool = True):
        return locked(self.out, wait)

    def existing(self, pid: str) -> Optional[dict]:
        path = os.path.join(self.points_dir, f"{pid}.json")
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    def is_done(self, pid: str) -> bool:
        row = self.existing(pid)
        return row is not None and row.get("status") in DONE

    def add(self, row: dict) -> None:
        """Persist one point (replacing an earlier row of the same point) and rebuild the tables."""
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        clean["format_version"] = FORMAT_VERSION
        payload = json.dumps(clean, indent=1, default=str).encode()
        atomic_write(os.path.join(self.points_dir, f"{row['point_id']}.json"), lambda f: f.write(payload))
        self.rebuild()

    def rows(self) -> Iterable[dict]:
        for path in sorted(glob.glob(os.path.join(self.points_dir, "*.json"))):
            with open(path) as f:
                yield json.load(f)

    def table(self) -> pd.DataFrame:
        frame = pd.DataFrame(list(self.rows()))
        absent = [col for col in RESULT_COLUMNS if col not in frame.columns]
        if absent:  # at once: one column at a time fragments a wide frame (pandas warns)
            frame = pd.concat([frame, pd.DataFrame({col: [None] * len(frame) for col in absent}, index=frame.index)],
                              axis=1)
        extra = [c for c in frame.columns if c not in RESULT_COLUMNS]
        frame = frame[RESULT_COLUMNS + extra]
        if len(frame):
            frame = frame.sort_values(["timestamp", "point_id"], kind="stable").reset_index(drop=True)
        return frame

    def rebuild(self, wait: bool = True) -> pd.DataFrame:
        with self._lock(wait):
            frame = self.table()
            self._write_tables(frame)
        return frame


    def rebuild_before_exit(self) -> None:
        """Bring the tables up to date as the process leaves (Ctrl-C), and remove this process's
        half-written temporary files. The signal may land inside this process's own rebuild,
        which holds the lock and will never resume: then rebuild under that lock rather than wait
        for it. Another process holding it (a parallel launcher job) rebuilds them itself."""
        pid = os.getpid()
        for directory in (self.out, self.points_dir):
            for tmp in glob.glob(os.path.join(directory, f".tmp-{pid}-*")):
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        if os.path.realpath(self.out) in _HELD_HERE:
            self._write_tables(self.table())
            return
        try:
            self.rebuild(wait=False)
        except BlockingIOError:
            pass  # another writer holds the tables and rebuilds them after its point

    def _write_tables(self, frame: pd.DataFrame) -> None:
        atomic_write(os.path.join(self.out, "results.parquet"), lambda f: frame.to_parquet(f, index=False))
        atomic_write(os.path.join(self.out, "results.csv"), lambda f: f.write(frame.to_csv(index=False).encode()))


def _warm_tables() -> None:
    """Build and write a one-row table in memory, with a value of each kind a row holds (text, float,
    int, bool, none), so that every lazy import on the table path (pandas' Arrow-backed strings,
    pyarrow's pandas shim, its Parquet writer) happens now. The Ctrl-C handler rebuilds the tables;
    landing inside one of those first imports it re-entered it: pyarrow.parquet half-made ("cannot
    access submodule 'parquet'": points, no tables), and pyarrow's pandas shim, whose import lock is
    not re-entrant, deadlocked (CI, 2026-12-06: the sweep hung after its first point)."""
    frame = pd.DataFrame([{"status": "ok", "latency_ms_median": 1.0, "frames": 1, "noisy": False, "message": None}])
    frame.to_parquet(io.BytesIO(), index=False)
    frame.to_csv(index=False)


def load_results(directory: str) -> pd.DataFrame:
    """The results table of a results directory (Parquet if present, else CSV), its rows of older
    store formats upgraded (``store_format.upgrade_table``; the files are left as they are)."""
    for name, reader in (("results.parquet", pd.read_parquet), ("results.csv", pd.read_csv)):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            return upgrade_table(reader(path))
    raise FileNotFoundError(f"no results.parquet or results.csv in {directory} (run a sweep with out={directory} first)")
