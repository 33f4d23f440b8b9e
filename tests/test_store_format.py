"""The results store that lasts: every row keeps its per-repeat timings, every point and table carries the
store's format version, older rows are upgraded when read and older directories migrated before a sweep
writes into them, and a point's id does not change when a knob is added at its default.

The committed studies under reports/ are format-1 directories: they must still match new runs of the same
settings. A CPU sweep rewritten as format 1 wrote it must still resume."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ROOT, run_cli as cli
from vggt_bench.core.store_format import samples
from vggt_bench.core import identity, migrate, store_format
from vggt_bench.core.results import ResultStore, load_results
from vggt_bench.core.schema import KNOBS
from vggt_bench.measure import run
from vggt_bench.measure.point import Point
from vggt_model import ExecutionConfig

STUDY = os.path.join(ROOT, "reports", "h100-2026-12-06d", "approx")  # format 1: three VGGT-1B points, 800 frames


def point(frames=2, **knobs) -> Point:
    return Point(arch="small", device="cpu", frames=frames, batch=1, height=28, width=42, part="aggregator",
                 query_points=0, inputs="synthetic", execution=ExecutionConfig(**knobs))


@pytest.fixture(scope="module")
def profiled_sweep(tmp_path_factory):
    """One tiny point measured and profiled under the PyTorch profiler (one torch thread: a shared CPU)."""
    out = tmp_path_factory.mktemp("profiled")
    with mock.patch.dict(os.environ, {"OMP_NUM_THREADS": "1"}):
        done = cli("sweep", *SWEEP, f"out={out}", timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


SWEEP = ["experiment=smoke", "report=false", "frames=2", "model.frame_exec=fused", "inputs.height=14",
         "inputs.width=14", "profiler=torch", "iterations=1"]


# ---- per-repeat samples -----------------------------------------------------------------------------
def test_every_row_keeps_its_per_repeat_timings_through_json_csv_and_parquet(tmp_path):
    new = run.run_point(point(1), run.Method(warmup=0, repeats=4))
    times = json.loads(new["latency_ms_samples"])
    assert len(times) == 4 and np.median(times) == pytest.approx(new["latency_ms_median"], abs=1e-3)
    store = ResultStore(str(tmp_path))
    store.ensure_writable()
    store.add(new)
    kept = json.loads((tmp_path / "points" / f"{new['point_id']}.json").read_text())
    assert kept["format_version"] == store_format.FORMAT_VERSION == 2
    for frame in (pd.read_parquet(tmp_path / "results.parquet"), pd.read_csv(tmp_path / "results.csv")):
        assert json.loads(frame["latency_ms_samples"].iloc[0]) == times
        assert samples(frame["latency_ms_samples"].iloc[0]).tolist() == times
        assert int(frame["format_version"].iloc[0]) == 2


# ---- ids that survive new knobs, and the upgrade of older results ---------------------------------------
def v1_id(knobs: dict, fields) -> str:
    """How format 1 named a point: every knob's value hashed, null where the row lacked it."""
    canonical = json.dumps({k: knobs.get(k) for k in fields}, sort_keys=True, default=str)
    return hashlib.sha1(canonical.encode()).hexdigest()[:16]


# the fields format 1 hashed before c5ef8e4 added approx_kernel and linear_precision (seeds were not in ids)
V1_FIELDS = [k for k in KNOBS if k not in ("approx_kernel", "linear_precision", "seed", "input_seed")]


def test_format_1_named_the_committed_points_by_every_knob_so_a_new_knob_re_ids_them():
    for path in sorted(glob.glob(os.path.join(STUDY, "points", "*.json"))):
        row = json.loads(Path(path).read_text())
        assert v1_id(row, V1_FIELDS) == Path(path).stem  # the fixture below is how format 1 worked
        assert v1_id(row, V1_FIELDS + ["approx_kernel", "linear_precision"]) != Path(path).stem  # then c5ef8e4


def test_a_knob_added_at_its_default_leaves_every_id_as_it_was(monkeypatch):
    knobs = point(8, attention="sdpa_math", prune_depth=2).knobs()
    before = identity.point_id(knobs)
    monkeypatch.setattr(identity, "KNOBS", KNOBS + ["stream_count"])
    monkeypatch.setitem(identity.DEFAULTS, "stream_count", 2)
    monkeypatch.setitem(identity.TYPES, "stream_count", int)
    assert identity.point_id(knobs) == before                           # a row from before the knob
    assert identity.point_id({**knobs, "stream_count": 2}) == before    # a new row at its default
    assert identity.point_id({**knobs, "stream_count": 4}) != before    # another value is another point
    # one id whatever the row came through: a Point, JSON, Parquet's numpy scalars, CSV's floats and strings
    typed = {**knobs, "frames": np.float64(8.0), "tf32": "False", "kv_keep": np.float32(1.0), "prune_depth": 2.0}
    assert identity.point_id(typed) == before


def test_committed_study_rows_match_fresh_points_of_the_same_settings():
    """reports/h100-2026-12-06d/approx (format 1, before approx_kernel and linear_precision existed) against
    the points a GPU run of the same settings makes today."""
    from hydra import compose, initialize_config_dir

    from vggt_bench.core import config
    from vggt_bench.core.resources import experiments_dir
    from vggt_bench.measure.point import resolve

    study = load_results(STUDY).set_index("point_id")
    assert set(study["format_version"]) == {2} and study["former_point_id"].str.len().eq(16).all()
    config.register()
    made = {}
    with initialize_config_dir(config_dir=experiments_dir(), version_base=None):
        for name, extra in (("exact", ["approx=exact"]), ("prune4", ["approx=prune4"]),
                            ("kv_keep_10", ["approx=kv_keep_10"]),
                            ("kv_keep_10 flex", ["approx=kv_keep_10", "model.approx_kernel=flex"])):
            cfg = compose("bench", overrides=["experiment=approximations", "frames=800", "model.dtype=bf16",
                                              "device=cuda"] + extra)
            with mock.patch.object(torch.cuda, "is_available", return_value=True):
                made[name] = resolve(cfg).point_id
    assert study.loc[made["exact"], "prune_depth"] == 0 and study.loc[made["exact"], "kv_keep"] == 1.0
    assert study.loc[made["prune4"], "prune_depth"] == 4
    # kv_keep ran on flex attention then (its only kernel); today's default, auto, may pick dense: not that point
    assert study.loc[made["kv_keep_10 flex"], "kv_keep"] == pytest.approx(0.1)
    assert study.loc[made["kv_keep_10 flex"], "approx_kernel"] == "flex"
    assert made["kv_keep_10"] not in study.index
    assert (study["memory_plan"] == "lean").all() and (study["linear_precision"] == "bf16").all()


def test_an_older_table_gets_what_ran_before_a_knob_existed():
    frame = load_results(os.path.join(ROOT, "reports", "h100-2026-11-24", "baseline"))  # before memory plans
    assert (frame["memory_plan"] == "upstream").all() and (frame["impl"] == "ours").all()
    assert (frame["context_parallel"] == 1).all() and (frame["format_version"] == 2).all()
    assert frame["point_id"].is_unique and (frame["point_id"] != frame["former_point_id"]).all()
    again = store_format.upgrade_table(frame)
    pd.testing.assert_frame_equal(again, frame)  # current rows are left as they are


def _as_format_1(out: Path) -> dict:
    """Rewrite a results directory as format 1 wrote it before c5ef8e4: no version, no samples, no seeds, no
    approx_kernel or linear_precision, files and profiles named by the format-1 id. Returns {v1 id: v2 id}."""
    moved = {}
    for path in sorted((out / "points").glob("*.json")):
        row = json.loads(path.read_text())
        for key in ("format_version", "former_point_id", "latency_ms_samples", "seed", "input_seed", "approx_kernel",
                    "linear_precision"):
            row.pop(key, None)
        old = v1_id(row, V1_FIELDS)
        moved[old] = row["point_id"]
        row["point_id"] = old
        path.unlink()
        (out / "points" / f"{old}.json").write_text(json.dumps(row, indent=1))
        profile = out / "profiles" / moved[old]
        if profile.is_dir():
            profile.rename(out / "profiles" / old)
            for name in ("point.json", "profile_status.json"):
                record = json.loads((out / "profiles" / old / name).read_text())
                record.update(point_id=old, **({"tag": old} if "tag" in record else {}))
                (out / "profiles" / old / name).write_text(json.dumps(record))
    for name in ("profile_grid.parquet", "profile_grid.csv"):
        if (out / name).exists():
            grid = pd.read_parquet(out / name) if name.endswith("parquet") else pd.read_csv(out / name)
            grid["point_id"] = grid["point_id"].map({v: k for k, v in moved.items()})
            grid.to_parquet(out / name, index=False) if name.endswith("parquet") else grid.to_csv(out / name, index=False)
    (out / migrate.MARKER).unlink()
    ResultStore(str(out)).rebuild()
    return moved


def test_a_sweep_resumes_a_directory_written_before_the_format_change(profiled_sweep, tmp_path):
    work = tmp_path / "old"
    shutil.copytree(profiled_sweep, work)
    moved = _as_format_1(work)
    old_table = pd.read_parquet(work / "results.parquet")
    assert old_table["format_version"].isna().all() and set(old_table["point_id"]) == set(moved)
    assert set(pd.read_parquet(work / "profile_grid.parquet")["point_id"]) == set(moved)
    again = cli("sweep", *SWEEP, f"out={work}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("already measured (ok) and profiled") == 1 and "ok    small" not in again.stdout
    assert sorted(p.stem for p in (work / "points").glob("*.json")) == sorted(moved.values())
    kept = load_results(str(work)).set_index("point_id")
    assert kept["former_point_id"].to_dict() == {v: k for k, v in moved.items()}
    assert set(kept["format_version"]) == {2}
    for old, new in moved.items():
        assert not (work / "profiles" / old).exists()
        assert json.loads((work / "profiles" / new / "point.json").read_text())["point_id"] == new
    assert set(pd.read_parquet(work / "profile_grid.parquet")["point_id"]) == set(moved.values())
    assert migrate.migrate(str(work)) == {}  # once


def test_captures_named_by_former_ids_join_their_upgraded_rows(tmp_path):
    """`profile analyze=` of an nsys capture made before format 2 (its NVTX range names the point's
    format-1 id) into that sweep's format-1 directory."""
    import nsys_fakes
    from test_profiled_sweep import FIXTURE_POINTS, _fixture_point

    fused = _fixture_point("fused")
    old = {k: v for k, v in fused.knobs().items() if k not in ("approx_kernel", "linear_precision", "seed", "input_seed")}
    old_id = v1_id(old, V1_FIELDS)
    out = tmp_path / "sweep"
    out.mkdir()
    pd.DataFrame([{**old, "point_id": old_id, "status": "ok", "latency_ms_median": 9.5,
                   "gpu_name": "NVIDIA H100 80GB HBM3"}]).to_parquet(out / "results.parquet", index=False)
    conn = nsys_fakes.load(FIXTURE_POINTS["fused"])
    nsys_fakes.add_point_range(conn, old_id)
    reports = tmp_path / "nsys"
    reports.mkdir()
    nsys_fakes.save(conn, reports / "point.1.sqlite")
    done = cli("profile", f"analyze={reports}", f"out={out}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1 point(s)" in done.stdout and "not in the results" not in done.stdout
    meta = json.loads((out / "profiles" / fused.point_id / "point.json").read_text())
    assert meta["point_id"] == fused.point_id and meta["frame_exec"] == "fused" and not (out / "profiles" / old_id).exists()
    grid = pd.read_parquet(out / "profile_grid.parquet")
    assert set(grid["point_id"]) == {fused.point_id} and set(grid["latency_ms_median"]) == {9.5}
