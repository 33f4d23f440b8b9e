"""The Nsight Systems command line, as the harness uses it: find it, export a report, ask it for stats.

Shared by ``profile`` and ``sweep`` (both run ``nsys profile`` per configuration) and by
``profile analyze=`` (which exports ``.nsys-rep`` reports to SQLite).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from typing import Dict, Optional, Union

from ..core.errors import UserError

NSYS_HINT = (
    "install Nsight Systems (https://developer.nvidia.com/nsight-systems) and put `nsys` on PATH, "
    "or give its path with nsys=/path/to/nsys"
)
# What `nsys stats` prints beside our tables, for anyone to compare (reports of nsys 2025.3).
STATS_REPORTS = "nvtx_sum,nvtx_gpu_proj_sum,cuda_gpu_kern_sum,cuda_api_sum"


def find_nsys(configured: Optional[str]) -> str:
    """The nsys executable: ``configured`` (the ``nsys=`` setting) when given, else the one on
    PATH. Raises UserError naming the fix (NSYS_HINT) when there is none."""
    if configured:
        if os.path.isfile(configured) and os.access(configured, os.X_OK):
            return configured
        raise UserError(f"nsys={configured} is not an executable file; {NSYS_HINT}")
    found = shutil.which("nsys")
    if found is None:
        raise UserError(f"no nsys on PATH; {NSYS_HINT}")
    return found


def export_sqlite(nsys: str, report: str, sqlite: str) -> None:
    """``nsys export --type sqlite`` of ``report`` (.nsys-rep) into ``sqlite`` (overwritten)."""
    subprocess.run([nsys, "export", "--type", "sqlite", "--force-overwrite", "true", "-o", sqlite, report],
                   check=True, capture_output=True)


def stats_text(nsys: str, sqlite: str) -> str:
    """What ``nsys stats --report STATS_REPORTS --format csv`` prints for an export (stdout and
    stderr joined; nsys's own messages included)."""
    done = subprocess.run([nsys, "stats", "--report", STATS_REPORTS, "--format", "csv", sqlite],
                          capture_output=True, text=True)
    return done.stdout + done.stderr


def parse_stats(text: str) -> Dict[str, object]:
    """What ``nsys stats --format csv`` printed, by report name: a DataFrame where it printed a table,
    the ``SKIPPED: ...`` line where it skipped the report, None where it printed nothing. Our own
    tables are checked against these (tests and ``benchmarks/gpu/nsys_stats_check.py``)."""
    import pandas as pd

    sections: Dict[str, list] = {}
    current = None
    for line in text.splitlines():
        match = re.match(r"Processing \[.*\] with \[.*/(\w+)\.py\]\.\.\.", line)
        if match:
            current = match.group(1)
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    parsed: Dict[str, Union[pd.DataFrame, str, None]] = {}
    for name, lines in sections.items():
        body = [l for l in lines if l.strip() and not l.startswith(("Generating SQLite", "NOTICE"))]
        if not body:
            parsed[name] = None
        elif body[0].startswith("SKIPPED"):
            parsed[name] = body[0]
        else:
            parsed[name] = pd.read_csv(io.StringIO("\n".join(body)))
    return parsed
