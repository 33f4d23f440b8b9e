"""The results table: one JSON file per measured point, and the Parquet/CSV tables built from them.

Each point is written atomically to ``<out>/points/<point_id>.json`` the moment it is
measured, so nothing measured is lost when a sweep is interrupted or a later point
crashes the process. ``results.parquet`` and ``results.csv`` are rebuilt from those
files (atomically, under a file lock, so parallel launcher jobs can write at once).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import glob
import io
import json
import math
import os
import sys
import tempfile
from typing import Iterable, Optional

import pandas as pd

from .errors import UserError, one_line
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
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename != path:  # name the file meant, not its temporary
            raise OSError(exc.errno, exc.strerror or str(exc), path) from exc
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def new_run_dir(root: str, link: str = "latest") -> str:
    """A fresh ``<root>/<timestamp>`` directory; ``<root>/<link>`` is (re)pointed at it."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    os.makedirs(root, exist_ok=True)
    out, n = os.path.join(root, stamp), 1
    while True:  # two runs in one second, possibly two processes at once: the one that makes it owns it
        try:
            os.mkdir(out)
            break
        except FileExistsError:
            n += 1
            out = os.path.join(root, f"{stamp}_{n}")
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


# What a disk that fills up or turns read-only mid-sweep raises: said in one line (``lost_write``).
LOST_WRITE = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def lost_write(exc: OSError, out: str, unsaved: str = "") -> str:
    """The line for a write into ``out`` that failed with one of LOST_WRITE: the path, why, what is
    kept and how to go on. ``unsaved``: what the failed write would have kept (a point's row)."""
    kept = len(glob.glob(os.path.join(out, "points", "*.json")))
    lost = f" ({unsaved} was not written: the rerun measures it again)" if unsaved else ""
    return (f"cannot write {exc.filename or out} ({exc.strerror or exc}); kept {kept} point{'s' if kept != 1 else ''} "
            f"in {os.path.join(out, 'points')}{lost}; free space or restore write access, then rerun the same command "
            f"to resume")


def unwritable(path: str) -> Optional[str]:
    """None if directory ``path`` can be created and written, else the reason."""
    try:
        os.makedirs(path, exist_ok=True)
        # a probe of this call's own: two sweeps starting into one out (core/claims.py) each probe at once,
        # and a shared name let one unlink the other's file ("No such file or directory": exit 2)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        with os.fdopen(fd, "w") as f:
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
        return read_point(os.path.join(self.points_dir, f"{pid}.json"), self.out)

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
            row = read_point(path, self.out)
            if row is not None:
                yield row

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


# ---- reading a point: an unreadable one is set aside, never deleted -------------------------------
CORRUPT_DIR = "corrupt"  # <out>/points/corrupt/: point files that could not be read, kept for a look


def read_point(path: str, out: str = "") -> Optional[dict]:
    """The row in ``points/<id>.json``; None when there is none, or when it cannot be read (a crash
    mid-write on a filesystem without atomic renames, a disk error, a hand edit): then the file is
    moved to ``points/corrupt/`` (``set_aside``), one warning line names it, and the point counts as
    not measured, so the next sweep into ``out`` measures it again."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        row = json.loads(data)
        if not isinstance(row, dict) or not isinstance(row.get("point_id"), str):
            raise ValueError(f"not a point's row (a JSON object with a point_id), but {type(row).__name__}")
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        set_aside(path, exc, out or os.path.dirname(os.path.dirname(path)))
        return None
    return row


def set_aside(path: str, why: BaseException, out: str) -> Optional[str]:
    """Move the unreadable point file ``path`` into ``points/corrupt/`` (under a new name when one of
    that name is there already) and say so in one line on stderr; return where it went, or None when
    it could not be moved (it is then left in place, skipped, and the line says so)."""
    folder = os.path.join(os.path.dirname(path), CORRUPT_DIR)
    name = os.path.basename(path)
    target = os.path.join(folder, name)
    reason = one_line(why, 160)
    try:
        os.makedirs(folder, exist_ok=True)
        if os.path.exists(target):
            stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S.%f")
            target = os.path.join(folder, f"{name[:-len('.json')]}.{stamp}.json")
        os.replace(path, target)
    except FileNotFoundError:
        return None  # another reader set it aside first, and said so
    except OSError as exc:
        _say(f"{path} is unreadable ({reason}) and cannot be set aside ({exc.strerror or exc}): left in place and "
             f"skipped; move it out of {os.path.dirname(path)} to measure its point again")
        return None
    _say(f"{path} is unreadable ({reason}); set aside to {target} (kept, not deleted): a sweep into {out} measures "
         f"its point again")
    return target


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
    """The results table of a results directory: Parquet if present, else CSV, its rows of older store
    formats upgraded (``store_format.upgrade_table``; the files are left as they are). A table that is
    missing or cannot be read (a truncated copy, a crash mid-write elsewhere) is rebuilt from the
    directory's points, said in one line on stderr; with no points to rebuild it from, an unreadable
    table raises UserError naming the fix, a missing one FileNotFoundError."""
    return upgrade_table(_read_table(directory))


def _read_table(directory: str) -> pd.DataFrame:
    """``load_results``' table as the directory holds it (older formats not yet upgraded)."""
    unreadable = []
    for name, reader in (("results.parquet", pd.read_parquet), ("results.csv", pd.read_csv)):
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            continue
        try:
            frame = reader(path)
        except Exception as exc:  # pyarrow's and pandas' errors for a damaged file share no base class
            unreadable.append(f"{name} is unreadable ({one_line(exc, 160)})")
            break  # the points, when there are any, are the record: rebuild from them, not from the CSV
        return frame
    store = ResultStore(directory)
    if glob.glob(os.path.join(store.points_dir, "*.json")):
        return _rebuilt(store, unreadable[0] if unreadable else "there is no results table")
    if unreadable:
        csv = os.path.join(directory, "results.csv")
        if unreadable[0].startswith("results.parquet") and os.path.exists(csv):
            try:
                frame = pd.read_csv(csv)
            except Exception:  # noqa: BLE001 - both tables damaged: the error below says so
                unreadable.append("results.csv too")
            else:
                _say(f"{unreadable[0]} in {directory}, which has no points to rebuild it from: read results.csv "
                     f"instead")
                return frame
        raise UserError(f"{', '.join(unreadable)} in {directory}, and there are no points in {store.points_dir} "
                        f"to rebuild it from: rerun the sweep with out={directory} to measure them again")
    raise FileNotFoundError(f"no results.parquet or results.csv in {directory} (run a sweep with out={directory} first)")


def _rebuilt(store: ResultStore, why: str) -> pd.DataFrame:
    """The table built from ``store``'s points, written back where the directory can be written."""
    try:
        frame = store.rebuild()
        kept = "rebuilt results.parquet and results.csv"
    except OSError as exc:
        frame = store.table()
        kept = f"built the table in memory (not written: {exc.strerror or exc})"
    _say(f"{why} in {store.out}; {kept} from its {len(frame)} point{'s' if len(frame) != 1 else ''}")
    return frame


_SAID: set = set()  # warnings said by this process: each once, however often the table is read


def _say(text: str) -> None:
    """One warning line on stderr (once per process), above a sweep's progress bar where one shows."""
    from tqdm import tqdm

    if text not in _SAID:
        _SAID.add(text)
        tqdm.write(f"vggt_bench: warning: {text}", file=sys.stderr)
