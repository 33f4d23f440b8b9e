#!/usr/bin/env python
"""Make a small copy of an Nsight Systems SQLite export that keeps what vggt-bench reads.

    python scripts/trim_nsys_sqlite.py report.sqlite[.gz] [-o trimmed.sqlite.gz]

Keeps every row of the tables ``vggt_bench.profiling.nsys_sqlite`` reads (NVTX ranges, CUDA
API calls, kernels, memcpys, memsets), only the columns it reads (plus a few cheap ones useful
to a reader: device, stream, bytes), and only the StringIds rows they reference. Everything
else is dropped: OS runtime and sampling data, callchains, and the target's environment, which
can hold secrets (an export carries the profiled process's environment variables). The result
is VACUUMed and gzipped; ``nsys_sqlite.read_report`` reads ``.sqlite.gz`` as it is, and gives
the same tables as for the full export.
"""

from __future__ import annotations

import argparse
import gzip
import sqlite3
import tempfile
from pathlib import Path

KEEP = {
    "NVTX_EVENTS": ["start", "end", "eventType", "rangeId", "text", "globalTid",
                    "endGlobalTid", "textId", "domainId"],
    "CUPTI_ACTIVITY_KIND_RUNTIME": ["start", "end", "eventClass", "globalTid",
                                    "correlationId", "nameId"],
    "CUPTI_ACTIVITY_KIND_KERNEL": ["start", "end", "deviceId", "streamId", "correlationId",
                                   "globalPid", "demangledName", "shortName"],
    "CUPTI_ACTIVITY_KIND_MEMCPY": ["start", "end", "deviceId", "streamId", "correlationId",
                                   "globalPid", "bytes", "copyKind"],
    "CUPTI_ACTIVITY_KIND_MEMSET": ["start", "end", "deviceId", "streamId", "correlationId",
                                   "globalPid", "bytes"],
}
# (table, column) pairs that point into StringIds
STRING_REFS = [
    ("NVTX_EVENTS", "textId"),
    ("CUPTI_ACTIVITY_KIND_RUNTIME", "nameId"),
    ("CUPTI_ACTIVITY_KIND_KERNEL", "demangledName"),
    ("CUPTI_ACTIVITY_KIND_KERNEL", "shortName"),
]
# export metadata that says which nsys wrote it (no paths, no host names)
META_PREFIXES = ("EXPORT_PRODUCT_", "EXPORT_SCHEMA_")


def _open(path: Path) -> sqlite3.Connection:
    if path.name.endswith(".gz"):
        conn = sqlite3.connect(":memory:")
        conn.deserialize(gzip.decompress(path.read_bytes()))
        return conn
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


def _tables(conn: sqlite3.Connection, schema: str = "main") -> set[str]:
    return {r[0] for r in conn.execute(f"SELECT name FROM {schema}.sqlite_master WHERE type='table'")}


def trim(src: Path, dst: Path) -> dict[str, int]:
    """Write the trimmed copy of ``src`` to ``dst`` (gzipped if it ends in .gz); rows kept."""
    conn = _open(src)
    present = _tables(conn)
    kept: dict[str, int] = {}
    columns: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "trimmed.sqlite"
        conn.execute("ATTACH DATABASE ? AS out", (str(out),))
        for table, wanted in KEEP.items():
            if table not in present:
                continue
            declared = {r[1]: r[2] for r in conn.execute(f"PRAGMA main.table_info({table})")}
            cols = columns[table] = [c for c in wanted if c in declared]
            conn.execute(f"CREATE TABLE out.{table} ({', '.join(f'{c} {declared[c]}' for c in cols)})")
            conn.execute(f"INSERT INTO out.{table} SELECT {', '.join(cols)} FROM main.{table} ORDER BY start")
            kept[table] = conn.execute(f"SELECT count(*) FROM out.{table}").fetchone()[0]
        refs = [f"SELECT {col} FROM out.{table}" for table, col in STRING_REFS
                if col in columns.get(table, [])]
        conn.execute("CREATE TABLE out.StringIds (id INTEGER NOT NULL PRIMARY KEY, value TEXT NOT NULL)")
        if refs and "StringIds" in present:
            conn.execute(
                f"INSERT INTO out.StringIds SELECT id, value FROM main.StringIds "
                f"WHERE id IN ({' UNION '.join(refs)})"
            )
        kept["StringIds"] = conn.execute("SELECT count(*) FROM out.StringIds").fetchone()[0]
        conn.execute("CREATE TABLE out.META_DATA_EXPORT (name TEXT NOT NULL, value TEXT)")
        if "META_DATA_EXPORT" in present:
            like = " OR ".join(f"name LIKE '{p}%'" for p in META_PREFIXES)
            conn.execute(f"INSERT INTO out.META_DATA_EXPORT SELECT name, value FROM main.META_DATA_EXPORT WHERE {like}")
        conn.execute("INSERT INTO out.META_DATA_EXPORT VALUES ('TRIMMED_FROM', ?)", (src.name,))
        conn.commit()
        conn.execute("DETACH DATABASE out")
        conn.close()
        small = sqlite3.connect(out)
        small.execute("VACUUM")
        small.close()
        data = out.read_bytes()
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(gzip.compress(data, compresslevel=9, mtime=0) if dst.name.endswith(".gz") else data)
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="nsys SQLite export (.sqlite or .sqlite.gz)")
    parser.add_argument("-o", "--output", type=Path,
                        help="trimmed copy (default: tests/fixtures/nsys/<name>.sqlite.gz)")
    args = parser.parse_args()
    stem = args.src.name.split(".sqlite")[0]
    dst = args.output or Path(__file__).resolve().parents[1] / "tests/fixtures/nsys" / f"{stem}.sqlite.gz"
    kept = trim(args.src, dst)
    print(f"{dst}: {dst.stat().st_size / 2**20:.2f} MiB; rows kept: "
          + ", ".join(f"{t} {n}" for t, n in kept.items()))


if __name__ == "__main__":
    main()
