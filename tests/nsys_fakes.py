"""Simulating what Nsight Systems writes, from the real exports in tests/fixtures/nsys.

Used by tests/test_profiled_sweep.py and by the stand-in `nsys` executable it writes (which
imports this module): add the NVTX range ``point:<point_id>`` that ``sweep profiler=external``
pushes inside each capture, and join two exports into one report holding several points, as
one nsys session without ``--capture-range-end=repeat`` records them.
"""

from __future__ import annotations

import gzip
import sqlite3
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "nsys"
RANGE_PUSHPOP = 59
_OPS = ("CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_MEMCPY", "CUPTI_ACTIVITY_KIND_MEMSET")
_RUNTIME = "CUPTI_ACTIVITY_KIND_RUNTIME"
_STRING_REFS = {"NVTX_EVENTS": ["textId"], _RUNTIME: ["nameId"],
                "CUPTI_ACTIVITY_KIND_KERNEL": ["demangledName", "shortName"]}


def load(name: str) -> sqlite3.Connection:
    """An in-memory, writable copy of a fixture export (``<name>.sqlite.gz``)."""
    conn = sqlite3.connect(":memory:")
    conn.deserialize(gzip.decompress((FIXTURES / f"{name}.sqlite.gz").read_bytes()))
    return conn


def save(conn: sqlite3.Connection, path) -> Path:
    path = Path(path)
    if path.exists():
        path.unlink()
    dst = sqlite3.connect(str(path))
    conn.backup(dst)
    dst.close()
    return path


def _tables(conn) -> set:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def span(conn: sqlite3.Connection) -> tuple[int, int]:
    """(first start, last end) in ns of the export's NVTX ranges, CUDA API calls and GPU ops."""
    lo, hi = [], []
    for table in ("NVTX_EVENTS", _RUNTIME, *_OPS):
        if table in _tables(conn):
            where = f"WHERE eventType = {RANGE_PUSHPOP}" if table == "NVTX_EVENTS" else ""
            a, b = conn.execute(f"SELECT min(start), max(end) FROM {table} {where}").fetchone()
            lo.append(a)
            hi.append(b)
    return min(lo), max(hi)


def add_point_range(conn: sqlite3.Connection, point_id: str, window=None) -> tuple[int, int]:
    """Add the range ``point:<point_id>`` (domain of the model's ranges, their thread) around
    ``window`` (default: everything in the export, 1 us either side); return the window."""
    tid, domain = conn.execute(
        f"SELECT globalTid, domainId FROM NVTX_EVENTS WHERE eventType = {RANGE_PUSHPOP} ORDER BY start LIMIT 1").fetchone()
    lo, hi = window or span(conn)
    if window is None:
        lo, hi = lo - 1000, hi + 1000
    conn.execute("INSERT INTO NVTX_EVENTS (start, end, eventType, text, globalTid, domainId) VALUES (?, ?, ?, ?, ?, ?)",
                 (lo, hi, RANGE_PUSHPOP, f"point:{point_id}", tid, domain))
    conn.commit()
    return lo, hi


def append(dst: sqlite3.Connection, src: sqlite3.Connection, gap_ns: int = 50_000_000) -> int:
    """Append export ``src`` to ``dst`` as later work of the same process: its times shifted to
    start ``gap_ns`` after ``dst`` ends, string ids and correlation ids moved past ``dst``'s,
    threads and processes renamed to ``dst``'s process. Returns the time shift (ns)."""
    shift = span(dst)[1] + gap_ns - span(src)[0]
    strings = dst.execute("SELECT max(id) FROM StringIds").fetchone()[0] + 1
    correlation = dst.execute(f"SELECT max(correlationId) FROM {_RUNTIME}").fetchone()[0] + 1
    pid = dst.execute(f"SELECT globalTid >> 24 FROM {_RUNTIME} LIMIT 1").fetchone()[0]

    def thread(value):
        return None if value is None else (pid << 24) | (value & 0xFFFFFF)

    for sid, value in src.execute("SELECT id, value FROM StringIds"):
        dst.execute("INSERT INTO StringIds VALUES (?, ?)", (sid + strings, value))
    for table in ("NVTX_EVENTS", _RUNTIME, *_OPS):
        if table not in _tables(src):
            continue
        if table not in _tables(dst):
            dst.execute(src.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0])
        cols = [r[1] for r in src.execute(f"PRAGMA table_info({table})")]
        for row in src.execute(f"SELECT {', '.join(cols)} FROM {table}").fetchall():
            row = dict(zip(cols, row))
            for c in ("start", "end"):
                if row.get(c) is not None:
                    row[c] += shift
            for c in _STRING_REFS.get(table, []):
                if row.get(c) is not None:
                    row[c] += strings
            if row.get("correlationId") is not None:
                row["correlationId"] += correlation
            for c in ("globalTid", "endGlobalTid"):
                if c in row:
                    row[c] = thread(row[c])
            if row.get("globalPid") is not None:
                row["globalPid"] = pid << 24
            dst.execute(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                        [row[c] for c in cols])
    dst.commit()
    return shift
