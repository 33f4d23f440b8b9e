"""Claims on points, so that sweeps sharing one results directory split its grid.

Two sweeps started into the same ``out`` (two terminals, a retried job, an array job restarted)
would both measure every point, contend for the machine, and the last row written would win. So a
job claims its point before measuring it: ``<out>/claims/<point_id>.json`` holds the host, pid and
start time of the process that measures it, and goes when the point is done. A point another live
process holds is not measured again here: the sweep says who holds it and goes on to its next point
(the holder's row lands in the same ``out``).

A claim is stale, and taken over, when its process is gone: on the same host, no process of that
pid; on another host, where the pid means nothing here, when the claim has not been refreshed for
STALE_S (its holder refreshes it every HEARTBEAT_S while it measures, so a long point stays held).
Claims are read and written under the results directory's lock (``results.locked``), so two
processes never both take one.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import threading
import time
from typing import Dict, List, Optional, Tuple

from .results import atomic_write, locked

CLAIMS_DIR = "claims"
HEARTBEAT_S = 30.0  # how often a holder refreshes its claim's modification time
STALE_S = 600.0  # a claim of another host not refreshed for this long is taken over (its holder is gone)

_HELD: Dict[str, threading.Event] = {}  # this process's claims: path -> the event that stops its heartbeat


def claim_path(out: str, point_id: str) -> str:
    return os.path.join(out, CLAIMS_DIR, f"{point_id}.json")


def _mine() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _is_mine(held: Optional[dict]) -> bool:
    """Whether the claim ``held`` names this process."""
    mine = _mine()
    return held is not None and held.get("host") == mine["host"] and held.get("pid") == mine["pid"]


def _read(path: str) -> Optional[dict]:
    """The claim at ``path`` with its age in seconds (``age_s``), or None when there is none. A claim
    that cannot be read (cut short) counts as stale: it holds no one."""
    try:
        with open(path) as f:
            held = json.load(f)
        age = time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"host": "", "pid": -1, "started": "", "age_s": float("inf")}
    if not isinstance(held, dict):
        return {"host": "", "pid": -1, "started": "", "age_s": float("inf")}
    return {**held, "age_s": age}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    except (OSError, ValueError, OverflowError):
        return False
    return True


def stale(held: dict) -> Optional[str]:
    """Why the claim ``held`` (as ``_read`` gives it) no longer holds its point, or None while it does."""
    if held.get("host") == socket.gethostname() and isinstance(held.get("pid"), int) and not _alive(held["pid"]):
        return f"its process {held['pid']} is gone"
    if held.get("age_s", 0.0) > STALE_S:
        return f"not refreshed for {held['age_s']:.0f} s"
    return None


def describe(held: dict) -> str:
    """``host h, pid p, since 2026-12-07 20:10:06``."""
    since = f", since {held['started']}" if held.get("started") else ""
    return f"host {held.get('host') or '?'}, pid {held.get('pid')}{since}"


def claim(out: str, point_id: str) -> Tuple[Optional[dict], Optional[dict]]:
    """Claim ``point_id`` in ``out`` for this process. Returns ``(holder, taken_over)``: ``holder`` is
    the live claim of another process (the point is not ours; nothing written), else None and the
    point is ours; ``taken_over`` is the stale claim replaced, with ``why`` (else None)."""
    path = claim_path(out, point_id)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    mine = _mine()
    with locked(out):
        held = _read(path)
        ours = _is_mine(held)
        why = None if held is None or ours else stale(held)
        if held is not None and not ours and why is None:
            return held, None
        started = datetime.datetime.now().isoformat(sep=" ", timespec="seconds")
        payload = json.dumps({**mine, "started": started, "point_id": point_id}).encode()
        atomic_write(path, lambda f: f.write(payload))
    _heartbeat(path)
    return None, (dict(held, why=why) if why else None)


def release(out: str, point_id: str, whoever: bool = False) -> None:
    """Give the claim on ``point_id`` up (only this process's own, unless ``whoever``: a launcher
    clearing the claim of a job it saw die)."""
    path = claim_path(out, point_id)
    stop = _HELD.pop(path, None)
    if stop is not None:
        stop.set()
    # Not under the lock: Ctrl-C calls this from a handler that may have interrupted this very process
    # inside it (flock would wait on itself). Only a claim naming this process goes, and no other
    # process takes over the claim of a live one.
    held = _read(path)
    if held is not None and (whoever or _is_mine(held)):
        with contextlib.suppress(OSError):
            os.unlink(path)


def release_all() -> None:
    """Give up every claim this process holds (it is leaving: Ctrl-C)."""
    for path in list(_HELD):
        out = os.path.dirname(os.path.dirname(path))
        release(out, os.path.basename(path)[: -len(".json")])


def held_by_others(out: str) -> List[dict]:
    """The live claims in ``out`` of processes other than this one (each with its ``point_id``)."""
    folder = os.path.join(out, CLAIMS_DIR)
    found = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        held = _read(os.path.join(folder, name)) if name.endswith(".json") else None
        if held is None or _is_mine(held) or stale(held):
            continue
        found.append(dict(held, point_id=name[: -len(".json")]))
    return found


def _heartbeat(path: str) -> None:
    """Refresh ``path``'s modification time every HEARTBEAT_S until it is released (or taken)."""
    if path in _HELD:
        return
    stop = threading.Event()
    _HELD[path] = stop

    def beat():
        while not stop.wait(HEARTBEAT_S):
            try:
                os.utime(path)
            except OSError:  # released, or taken over after all: nothing left to refresh
                return

    threading.Thread(target=beat, name="vggt-claim", daemon=True).start()
