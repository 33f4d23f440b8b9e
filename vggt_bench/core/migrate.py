"""Bring a results directory written in an older store format up to the current one, on disk.

Readers upgrade older rows in memory (``store_format.upgrade_table``) and leave the files alone;
a command that writes into a directory (a sweep resuming into it, ``profile analyze=`` adding
profiles to it) first calls ``migrate(out)``: every older point file is rewritten in the current
format under its current id (``points/<id>.json``), its profile directory renamed with it, the
ids inside the profile files and tables replaced, and the results tables rebuilt. Then a resumed
sweep finds every point it measured before. It runs once, under the directory's lock (parallel
launcher jobs wait for the first), and leaves ``<out>/.format_version`` saying the directory is
current, so later calls cost one file read.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Dict

import pandas as pd

from .results import ResultStore, atomic_write, locked
from .store_format import FORMAT_VERSION, upgrade_row, version_of

MARKER = ".format_version"
_ID_TABLES = ("profile_grid.parquet", "profile_grid.csv", "profile_ranges.csv", "profile_summary.csv")


def is_current(out: str) -> bool:
    try:
        with open(os.path.join(out, MARKER)) as f:
            return int(f.read().strip()) >= FORMAT_VERSION
    except (OSError, ValueError):
        return False


def migrate(out: str) -> Dict[str, str]:
    """Upgrade ``out``'s point files (and their profiles) to FORMAT_VERSION; return ``{former id:
    current id}`` of the points moved (empty when the directory was current, or holds no points)."""
    points = os.path.join(out, "points")
    if is_current(out) or not os.path.isdir(points):
        return {}
    moved: Dict[str, str] = {}
    with locked(out):
        if is_current(out):  # another job migrated it while this one waited for the lock
            return {}
        for path in sorted(glob.glob(os.path.join(points, "*.json"))):
            try:
                with open(path) as f:
                    row = json.load(f)
            except (OSError, ValueError):
                continue  # an unreadable point is the store's reader's to report, not the upgrade's
            if not isinstance(row, dict) or version_of(row) >= FORMAT_VERSION:
                continue
            new = upgrade_row(row)
            target = os.path.join(points, f"{new['point_id']}.json")
            if not os.path.exists(target):  # a point measured again in the current format wins
                payload = json.dumps(new, indent=1, default=str).encode()
                atomic_write(target, lambda f: f.write(payload))
            if os.path.realpath(target) != os.path.realpath(path):
                os.unlink(path)
            moved[new["former_point_id"] or os.path.basename(path)[: -len(".json")]] = new["point_id"]
        _move_profiles(out, moved)
        atomic_write(os.path.join(out, MARKER), lambda f: f.write(f"{FORMAT_VERSION}\n".encode()))
    if moved:
        ResultStore(out).rebuild()
    return moved


def _move_profiles(out: str, moved: Dict[str, str]) -> None:
    """``profiles/<former id>/`` to ``profiles/<current id>/``, and the ids inside the profile files
    and the tables across profiles (``point_id``, and ``tag``, which a sweep's profile names by it)."""
    profiles = os.path.join(out, "profiles")
    if not moved or not os.path.isdir(profiles):
        return
    for former, current in moved.items():
        source, target = os.path.join(profiles, former), os.path.join(profiles, current)
        if os.path.isdir(source) and not os.path.exists(target):
            os.rename(source, target)
        for name in ("point.json", "profile_status.json"):
            path = os.path.join(target, name)
            if not os.path.exists(path):
                continue
            with open(path) as f:
                record = json.load(f)
            renamed = {k: (current if k in ("point_id", "tag") and v == former else v) for k, v in record.items()}
            if renamed != record:
                payload = json.dumps(renamed, indent=1, default=str).encode()
                atomic_write(path, lambda f: f.write(payload))
    for name in _ID_TABLES:
        path = os.path.join(out, name)
        if not os.path.exists(path):
            continue
        parquet = name.endswith(".parquet")
        table = pd.read_parquet(path) if parquet else pd.read_csv(path)
        columns = [c for c in ("point_id", "tag") if c in table]
        if not columns:
            continue
        for column in columns:
            table[column] = table[column].map(lambda v: moved.get(v, v) if isinstance(v, str) else v)
        if parquet:
            atomic_write(path, lambda f: table.to_parquet(f, index=False))
        else:
            text = table.to_csv(index=False).encode()
            atomic_write(path, lambda f: f.write(text))
