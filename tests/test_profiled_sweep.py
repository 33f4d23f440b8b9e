"""Sweeps with a profiler: every point measured unprofiled, then captured on its own; per-point
tables, one table across the grid, figures, resume, failures as statuses; the external-nsys path
simulated from the real exports in tests/fixtures/nsys; the capture's CUDA calls stubbed."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

import nsys_fakes
import vggt_model
from conftest import run_cli as cli
from vggt_bench.commands import profile, sweep
from vggt_bench.profiling import capture, store
from vggt_bench.analysis.profiles import grid_activity, grid_pivot, grid_stage_times, profile_grid
from vggt_bench.analysis.tidy import load_tables, read_grid
from vggt_bench.core.config import BenchConfig
from vggt_bench.report import plots
from vggt_bench.core.results import load_results
from vggt_bench.measure.point import Point
from vggt_bench.core.schema import KNOBS, PROFILE_GRID_COLUMNS, RESULT_COLUMNS
from vggt_model import ExecutionConfig

from test_nsys_parse import STATS  # what `nsys stats` printed for the fixtures

SMOKE = ["experiment=smoke", "report=false"]
H100 = "NVIDIA H100 80GB HBM3"


def one_line_error(done, code=2):
    assert done.returncode == code, (done.stdout[-2000:], done.stderr[-2000:])
    lines = [l for l in done.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("vggt_bench: error:"), done.stderr
    return lines[0]


def pngs(folder: Path) -> set:
    return {p.stem for p in folder.glob("*.png")}


# ---- a real CPU sweep under the PyTorch profiler -------------------------------------------------
@pytest.fixture(scope="module")
def torch_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("torch_sweep")
    done = cli("sweep", "experiment=smoke", "profiler=torch", "iterations=2", f"out={out}", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def test_torch_sweep_times_unprofiled_and_profiles_every_point(torch_sweep):
    out, done = torch_sweep
    results = load_results(str(out))
    assert len(results) == 4 and set(results["status"]) == {"ok"}
    assert (results["profiled"] == False).all()  # noqa: E712  the timing rows are never profiled runs
    assert not results["nvtx"].any()             # ... and ran without NVTX ranges
    for pid in results["point_id"]:
        directory = out / "profiles" / pid
        for name in ("nvtx_ranges.csv", "kernels.csv", "cuda_api.csv", "gpu_activity.csv", "trace.json"):
            assert (directory / name).stat().st_size > 0, (pid, name)
        meta = json.loads((directory / "point.json").read_text())
        assert meta["profiled"] is True and meta["point_id"] == pid and meta["profiler"] == "torch"
        assert meta["nvtx"] is True and meta["iterations"] == 2
        status = json.loads((directory / "profile_status.json").read_text())
        assert status["profile_status"] == "ok" and status["profiler"] == "torch"
        ranges = pd.read_csv(directory / "nvtx_ranges.csv").set_index("range")
        assert ranges.loc[f"point:{pid}", "calls"] == 1       # the point's own range, around its forwards
        assert ranges.loc["aggregator", "calls"] == 2          # iterations=2 captured forwards
    assert "profiles: 4 ok" in done.stdout


def test_torch_sweep_grid_table_joins_knobs_and_stage_times(torch_sweep):
    out, _ = torch_sweep
    results = load_results(str(out)).set_index("point_id")
    grid = pd.read_parquet(out / "profile_grid.parquet")
    assert list(grid.columns[: len(PROFILE_GRID_COLUMNS)]) == PROFILE_GRID_COLUMNS
    assert len(pd.read_csv(out / "profile_grid.csv")) == len(grid)
    assert set(grid["point_id"]) == set(results.index)
    assert grid["profiled"].all() and set(grid["profile_status"]) == {"ok"}
    depth = vggt_model.VGGTConfig.small().aggregator.depth
    for pid, rows in grid.groupby("point_id"):
        for knob in ("frames", "frame_exec", "attention", "prune_depth", "dtype", "arch"):
            assert (rows[knob] == results.loc[pid, knob]).all(), knob
        assert (rows["latency_ms_median"] == results.loc[pid, "latency_ms_median"]).all()
        stages = rows.set_index("stage")
        assert {"patch_embed", "frame_block", "global_block", "forward"} <= set(stages.index)
        assert stages.loc["frame_block", "calls"] == depth     # per forward, not per capture
        # the table is the per-point range table divided by the captured forwards
        ranges = pd.read_csv(out / "profiles" / pid / "nvtx_ranges.csv").set_index("range")
        assert stages.loc["global_block", "cpu_ms"] == pytest.approx(ranges.loc["global_block", "cpu_ms"] / 2)
        assert stages.loc["forward", "cpu_ms"] == pytest.approx(ranges.loc["aggregator", "cpu_ms"] / 2)
        assert stages["gpu_ms"].isna().all()                   # a CPU trace has no GPU times
    summary = pd.read_csv(out / "profile_summary.csv")
    assert len(summary) == 4 and summary["profiled"].all()


def test_torch_sweep_draws_the_grid_figures_and_the_notebook_shows_the_grid(torch_sweep):
    out, done = torch_sweep
    figures = pngs(out / "figures")
    assert "profile_grid_stages" in figures and "profile_stages" in figures
    assert "profile_grid_activity" not in figures          # no GPU kernels on the CPU: skipped, saying why
    assert "profile_grid_activity: skipped: no profiled point holds GPU kernels" in done.stdout
    from test_report import error_outputs, notebook_text, texts

    fig, _ = plots.profile_grid_stages(read_grid(str(out)))
    assert any("CPU time (no GPU times in the profiles)" in t for t in texts(fig))
    assert {"patch_embed", "frame_block", "global_block"} <= set(texts(fig))
    assert error_outputs(out / "report.ipynb") == []
    text = notebook_text(out / "report.ipynb")
    assert "global_block_cpu_ms" in text and "forward_cpu_ms" in text  # the grid, one row per point


def test_torch_sweep_resumes_measured_and_profiled_points(torch_sweep, tmp_path):
    out, _ = torch_sweep
    work = tmp_path / "again"
    shutil.copytree(out, work)
    points = {p.name: p.stat().st_mtime_ns for p in (work / "points").iterdir()}
    again = cli("sweep", *SMOKE, "profiler=torch", "iterations=2", f"out={work}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("already measured (ok) and profiled") == 4
    # a point measured but whose profile is missing gets profiled, and only that one; its timing row stays
    pid = sorted(points)[0][: -len(".json")]
    os.unlink(work / "profiles" / pid / "profile_status.json")
    again = cli("sweep", *SMOKE, "profiler=torch", "iterations=2", f"out={work}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("and profiled") == 3 and again.stdout.count("already measured (ok); profiling it") == 1
    assert {p.name: p.stat().st_mtime_ns for p in (work / "points").iterdir()} == points
    assert json.loads((work / "profiles" / pid / "profile_status.json").read_text())["profile_status"] == "ok"
    # another profiler is another profile: profiler=none leaves the profiles alone
    plain = cli("sweep", *SMOKE, f"out={work}")
    assert plain.stdout.count("already measured (ok)") == 4 and "profile small" not in plain.stdout


def test_a_failed_capture_is_a_status_and_the_sweep_goes_on(tmp_path, monkeypatch):
    calls = []
    real = capture.profile_torch

    def flaky(cfg, point, pid, directory):
        calls.append(point.frames)
        if point.frames == 1:
            raise RuntimeError("CUPTI_ERROR_NOT_INITIALIZED: the profiler could not start\nmore text")
        return real(cfg, point, pid, directory)

    monkeypatch.setattr(capture, "profile_torch", flaky)
    for frames in (1, 2):
        sweep.run_job(_cfg(tmp_path, frames=frames, profiler="torch", iterations=1))
    assert calls == [1, 2]
    grid = read_grid(str(tmp_path)).drop_duplicates("point_id").set_index("frames")
    assert grid.loc[1, "profile_status"] == "error" and grid.loc[1, "stage"] == ""
    assert grid.loc[1, "profile_message"] == "RuntimeError: CUPTI_ERROR_NOT_INITIALIZED: the profiler could not start"
    assert grid.loc[2, "profile_status"] == "ok"
    assert set(load_results(str(tmp_path))["status"]) == {"ok"}  # both points measured all the same
    # a rerun tries the failed capture again (and only that one)
    calls.clear()
    for frames in (1, 2):
        sweep.run_job(_cfg(tmp_path, frames=frames, profiler="torch", iterations=1))
    assert calls == [1]


def test_a_point_that_did_not_run_is_not_profiled(tmp_path, monkeypatch):
    from vggt_bench.measure import run
    from vggt_bench.measure.record import Measurement

    monkeypatch.setattr(run, "measure", lambda point, how: Measurement(point, status="oom", message="out of memory"))
    sweep.run_job(_cfg(tmp_path, frames=1, profiler="torch", iterations=1))
    status = json.loads(next((tmp_path / "profiles").glob("*/profile_status.json")).read_text())
    assert status["profile_status"] == "skipped" and "timing status is oom" in status["profile_message"]


# ---- settings that cannot work: one line, before any point runs --------------------------------------
def test_sweep_profiler_nsys_without_nsys_fails_before_any_point(tmp_path):
    if shutil.which("nsys"):
        pytest.skip("nsys is installed here")
    line = one_line_error(cli("sweep", *SMOKE, "profiler=nsys", f"out={tmp_path}"))
    assert "no nsys on PATH" in line and "nsys=/path/to/nsys" in line
    assert not (tmp_path / "points").exists() and not (tmp_path / "results.parquet").exists()


@pytest.mark.parametrize("args, message", [
    (["profiler=external"], "profiler=external traces CUDA work between cudaProfilerStart/Stop: it needs device=cuda"),
    (["profiler=perf"], "unknown profiler 'perf' for run/sweep; use profiler=none, torch, nsys or external"),
    (["profiler=memory"], "`python -m vggt_bench profile profiler=memory`"),
    (["profiler=torch", "iterations=0"], "iterations must be >= 1"),
])
def test_sweep_refuses_profiler_settings_before_any_point(tmp_path, args, message):
    assert message in one_line_error(cli("sweep", *SMOKE, *args, f"out={tmp_path}"))
    assert not (tmp_path / "points").exists()


# ---- the capture: cudaProfilerStart/Stop and the point's range, CUDA stubbed ------------------------
@pytest.fixture
def recorded(monkeypatch):
    """Every cudaProfilerStart/Stop, NVTX push/pop and CUDA synchronize, in order."""
    events = []
    monkeypatch.setattr(torch.cuda.profiler, "start", lambda: events.append("start"))
    monkeypatch.setattr(torch.cuda.profiler, "stop", lambda: events.append("stop"))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: events.append("sync"))
    monkeypatch.setattr(vggt_model.nvtx, "_nvtx_push_pop",
                        lambda: (lambda name: events.append(f"push {name}"), lambda: events.append("pop")))
    return events


def test_captured_forwards_sit_in_their_point_range_inside_start_stop(recorded):
    capture.captured_forwards(lambda: recorded.append("forward"), 2, True, "point:abc",
                              lambda: recorded.append("synced"))
    assert recorded == ["start", "push point:abc", "forward", "forward", "synced", "pop", "stop"]
    recorded.clear()
    capture.captured_forwards(lambda: recorded.append("forward"), 1, False, "point:cpu", lambda: None)
    assert recorded == ["push point:cpu", "forward", "pop"]  # no CUDA: no profiler API calls


def test_a_forward_that_raises_still_pops_and_stops(recorded):
    def boom():
        raise RuntimeError("CUDA error")

    with pytest.raises(RuntimeError):
        capture.captured_forwards(boom, 2, True, "point:abc", lambda: None)
    assert recorded == ["start", "push point:abc", "pop", "stop"]


def _cfg(out, **values):
    cfg = OmegaConf.structured(BenchConfig)
    cfg.out = str(out)
    cfg.experiment = "test"
    cfg.model.arch = "small"
    cfg.inputs.height, cfg.inputs.width = 28, 42
    cfg.measure.warmup, cfg.measure.repeats = 1, 2
    for key, value in values.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def test_external_sweep_brackets_each_point_for_an_outside_nsys(tmp_path, recorded, monkeypatch):
    """profiler=external: each point timed without ranges or profiler calls, then warm-up outside
    the capture, and `iterations` forwards between its own start/stop inside range point:<id>."""
    monkeypatch.setattr(capture, "uses_cuda", lambda device: True)  # the CPU stands in for the GPU
    for exec_ in ("fused", "sequential"):
        sweep.run_job(_cfg(tmp_path, profiler="external", iterations=2, frames=2, **{"model.frame_exec": exec_}))
    results = load_results(str(tmp_path))
    assert list(results["profiled"]) == [False, False]
    starts = [i for i, e in enumerate(recorded) if e == "start"]
    stops = [i for i, e in enumerate(recorded) if e == "stop"]
    assert len(starts) == len(stops) == 2
    previous_stop = -1
    for pid, start, stop in zip(results["point_id"], starts, stops):
        inside = recorded[start + 1: stop]
        assert inside[0] == f"push point:{pid}" and inside[-1] == "pop" and inside[-2] == "sync"
        assert inside.count("push aggregator") == 2                  # the captured forwards
        assert not any(e.startswith("push point:") for e in inside[1:])
        warmup = recorded[previous_stop + 1: start]
        assert warmup.count("push aggregator") == 1                  # measure.warmup, outside the capture
        previous_stop = stop
        status = store.read_status(str(tmp_path), pid)
        assert status["profile_status"] == "captured" and status["profiler"] == "external"
        assert f"point:{pid}" in status["profile_message"] and "profile analyze=" in status["profile_message"]
    # the timing itself pushed no range and made no profiler call
    assert recorded[: recorded.index("start")].count("push aggregator") == 1
    grid = read_grid(str(tmp_path))
    assert set(grid["profile_status"]) == {"captured"} and set(grid["stage"]) == {""}
    # resume: captured points are done
    recorded.clear()
    sweep.run_job(_cfg(tmp_path, profiler="external", iterations=2, frames=2, **{"model.frame_exec": "fused"}))
    assert recorded == []


# ---- the child a profiled point runs under nsys -----------------------------------------------------
def _compose(config_name: str, overrides):
    from hydra import compose, initialize_config_dir

    from vggt_bench.core import config
    from vggt_bench.core.resources import experiments_dir

    config.register()
    with initialize_config_dir(version_base=None, config_dir=experiments_dir()):
        return compose(config_name=config_name, overrides=list(overrides))


def test_child_overrides_resolve_to_the_same_point():
    from vggt_bench.measure.point import resolve

    parent = _compose("bench", ["experiment=smoke", "frames=2", "model.frame_exec=sequential", "model.prune_depth=1",
                                "inputs.image_dir=null", "model.checkpoint=null", "out='/tmp/a dir, with commas'"])
    overrides = capture.child_overrides(parent)
    assert "frames=2" in overrides and "model.frame_exec=sequential" in overrides and "inputs.height=56" in overrides
    assert not any(o.startswith(("out=", "profiler=", "experiment=", "nsys")) for o in overrides)
    child = _compose("profile", overrides + ["profiler=none"])
    assert resolve(child).point_id == resolve(parent).point_id
    command = capture.nsys_command(parent, "/tmp/x", "nsys")
    assert command[:2] == ["nsys", "profile"] and "--capture-range=cudaProfilerApi" in command
    assert command[command.index("-o") + 1] == "/tmp/x/report"
    assert command[-2:] == ["profiler=none", "out='/tmp/a dir, with commas'"]  # quoted for Hydra
    assert capture._hydra_value("a b,'c'") == "'a b,\\'c\\''" and capture._hydra_value(None) == "null"


FAKE_NSYS = '''#!{python}
"""A stand-in for nsys: `profile` runs the child as nsys would; `export` writes the capture the
child would have left (a real export plus its point range); `stats` prints a line."""
import gzip, os, shutil, sqlite3, subprocess, sys
sys.path.insert(0, {tests!r})
import nsys_fakes
args = sys.argv[1:]
if args[0] == "profile":
    report = args[args.index("-o") + 1]
    done = subprocess.run(args[args.index("-o") + 2:])
    if os.environ.get("FAKE_NSYS_FAIL"):
        print("fake nsys: collection failed: CUPTI could not be initialised", file=sys.stderr)
        sys.exit(3)
    open(report + ".nsys-rep", "w").write("fake")
    sys.exit(done.returncode)
if args[0] == "export":
    conn = nsys_fakes.load(os.environ["FAKE_NSYS_FIXTURE"])
    nsys_fakes.add_point_range(conn, os.environ["FAKE_NSYS_POINT"])
    nsys_fakes.save(conn, args[args.index("-o") + 1])
if args[0] == "stats":
    print("fake nsys stats")
'''


@pytest.fixture
def fake_nsys(tmp_path):
    path = tmp_path / "bin" / "nsys"
    path.parent.mkdir()
    path.write_text(FAKE_NSYS.format(python=sys.executable, tests=str(Path(__file__).parent)))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_nsys_point_runs_its_child_and_reads_the_report(tmp_path, fake_nsys, monkeypatch):
    """profiler=nsys per point: the child `profile profiler=none` runs under (a stand-in) nsys, the
    report is exported and read, and it must hold the point's own range."""
    out = tmp_path / "out"
    cfg = _cfg(out, profiler="nsys", iterations=1, frames=2, nsys=str(fake_nsys))
    point = sweep.resolve(cfg)
    pid = point.point_id
    row = {"point_id": pid, "status": "ok"}
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("FAKE_NSYS_FIXTURE", "vggt1b_fused_S2_H100")
    monkeypatch.setenv("FAKE_NSYS_POINT", pid)
    status = profile.profile_point(cfg, point, row)
    assert status["profile_status"] == "ok", status
    directory = out / "profiles" / pid
    assert (directory / "report.sqlite").exists() and (directory / "nsys_stats.txt").read_text() == "fake nsys stats\n"
    log = (directory / "nsys.log").read_text()
    assert "--capture-range=cudaProfilerApi" in log and "profiler=none" in log and "frames=2" in log
    ranges = pd.read_csv(directory / "nvtx_ranges.csv").set_index("range")
    assert ranges.loc["frame_block", "gpu_ms"] > 0
    # a report without this point's range is another configuration: an error, with the reason
    monkeypatch.setenv("FAKE_NSYS_POINT", "0123456789abcdef")
    status = profile.profile_point(cfg, point, row)
    assert status["profile_status"] == "error"
    assert f"holds no point:{pid} range" in status["profile_message"] and "0123456789abcdef" in status["profile_message"]
    # nsys failing: the reason from its output, and where the whole log is
    monkeypatch.setenv("FAKE_NSYS_FAIL", "1")
    status = profile.profile_point(cfg, point, row)
    assert status["profile_status"] == "error"
    assert "nsys profile failed (exit 3)" in status["profile_message"]
    assert "CUPTI could not be initialised" in status["profile_message"] and "nsys.log" in status["profile_message"]
    grid = read_grid(str(out))
    assert list(grid["profile_status"].unique()) == ["error"]


# ---- the external path: reports as nsys writes them, joined to the sweep by point id -----------------
FIXTURE_POINTS = {"fused": "vggt1b_fused_S2_H100", "sequential": "vggt1b_sequential_S2_H100"}


def _fixture_point(exec_: str) -> Point:
    """The configuration the H100 fixtures were captured with (benchmarks/gpu/study.sh, stage nsys)."""
    return Point(arch="vggt1b", device="cuda", frames=2, batch=1, height=336, width=518, part="aggregator",
                 query_points=0, inputs="synthetic",
                 execution=ExecutionConfig(frame_exec=exec_, attention="sdpa_cudnn", dtype="bf16"))


def _sweep_results(folder: Path, extra=True) -> dict:
    """A results table as the sweep wrote it: the two captured points, and one never captured."""
    rows, ids = [], {}
    for exec_, latency in (("fused", 9.5), ("sequential", 12.25)):
        point = _fixture_point(exec_)
        ids[exec_] = point.point_id
        rows.append({**point.knobs(), "point_id": point.point_id, "status": "ok", "latency_ms_median": latency,
                     "gpu_name": H100, "profiled": False})
    if extra:
        other = _fixture_point("fused")
        other.frames = 8
        rows.append({**other.knobs(), "point_id": other.point_id, "status": "ok", "latency_ms_median": 30.0,
                     "gpu_name": H100, "profiled": False})
    frame = pd.DataFrame(rows)
    frame = frame.reindex(columns=RESULT_COLUMNS)
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(folder / "results.parquet", index=False)
    return ids


def _proj(name: str) -> pd.DataFrame:
    return STATS[name]["nvtx_gpu_proj_sum"].set_index("Range")


def _check_grid_against_nsys_stats(out: Path, ids: dict) -> pd.DataFrame:
    grid = pd.read_parquet(out / "profile_grid.parquet")
    assert set(grid["point_id"]) == set(ids.values())  # the never-captured point is not profiled
    for exec_, pid in ids.items():
        rows = grid[grid["point_id"] == pid].set_index("stage")
        assert (rows["frame_exec"] == exec_).all() and (rows["frames"] == 2).all()
        assert (rows["attention"] == "sdpa_cudnn").all() and (rows["gpu_name"] == H100).all()
        assert (rows["profiler"] == "external").all() and (rows["profile_status"] == "ok").all()
        assert (rows["iterations"] == 1).all()  # one `aggregator` range: one forward
        proj = _proj(FIXTURE_POINTS[exec_])
        for stage, nsys_range in (("patch_embed", "vggt:patch_embed"), ("frame_block", "vggt:frame_block"),
                                  ("global_block", "vggt:global_block"), ("forward", "vggt:aggregator")):
            assert rows.loc[stage, "gpu_ms"] * 1e6 == pytest.approx(proj.loc[nsys_range, "Total Proj Time (ns)"], abs=1)
            assert rows.loc[stage, "gpu_ops"] == proj.loc[nsys_range, "Total GPU Ops"]
        assert rows["latency_ms_median"].iloc[0] == {"fused": 9.5, "sequential": 12.25}[exec_]
        assert 0 < rows["idle_frac"].iloc[0] < 1 and rows["launches"].iloc[0] > 0
    return grid


def test_analyze_a_folder_of_point_reports_joins_them_by_point_id(tmp_path):
    out = tmp_path / "sweep"
    ids = _sweep_results(out)
    reports = tmp_path / "nsys"
    reports.mkdir()
    for i, (exec_, name) in enumerate(FIXTURE_POINTS.items(), 1):  # --capture-range-end=repeat: one report each
        conn = nsys_fakes.load(name)
        nsys_fakes.add_point_range(conn, ids[exec_])
        nsys_fakes.save(conn, reports / f"point.{i}.sqlite")
    (reports / "point.1.nsys-rep").write_text("the report the .sqlite beside it was exported from")
    shutil.copy(nsys_fakes.FIXTURES / "vggt_report_A40.sqlite.gz", reports / "someone_else.sqlite.gz")
    done = cli("profile", f"analyze={reports}", f"out={out}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 point(s)" in done.stdout
    assert "someone_else.sqlite.gz holds no point:<point_id> range: left out" in done.stdout
    assert "point.1.nsys-rep" not in done.stdout  # the .sqlite of the same stem is read instead
    _check_grid_against_nsys_stats(out, ids)
    for pid in ids.values():
        meta = json.loads((out / "profiles" / pid / "point.json").read_text())
        assert meta["profiled"] is True and meta["nvtx"] is True and meta["point_id"] == pid
    # the figures of the grid, from real H100 captures
    written, notes = plots.render_figures(str(out))
    assert {"profile_grid_stages", "profile_grid_activity"} <= {Path(p).stem for p in written}
    fig, _ = plots.profile_grid_activity(read_grid(str(out)))
    from test_report import texts

    assert any("kernel launches per forward" in t for t in texts(fig)) and H100 in fig._suptitle.get_text()
    fig, _ = plots.profile_grid_stages(read_grid(str(out)))
    assert any("GPU-projected time per forward" in t for t in texts(fig))


def test_analyze_one_report_holding_several_points_splits_it_by_point(tmp_path):
    results = tmp_path / "sweep"
    ids = _sweep_results(results)
    combined = nsys_fakes.load(FIXTURE_POINTS["fused"])
    nsys_fakes.add_point_range(combined, ids["fused"])
    second = nsys_fakes.load(FIXTURE_POINTS["sequential"])
    nsys_fakes.add_point_range(second, ids["sequential"])
    nsys_fakes.append(combined, second)  # one session, one report: the points one after the other
    report = nsys_fakes.save(combined, tmp_path / "whole_sweep.sqlite")
    out = tmp_path / "analysis"
    done = cli("profile", f"analyze={report}", f"results={results}", f"out={out}")
    assert done.returncode == 0, done.stderr[-2000:]
    _check_grid_against_nsys_stats(out, ids)
    # each point's tables are exactly those of its own report
    from vggt_bench.profiling import read_report

    for exec_, pid in ids.items():
        own = read_report(nsys_fakes.FIXTURES / f"{FIXTURE_POINTS[exec_]}.sqlite.gz")
        for name in ("kernels", "cuda_api", "gpu_activity"):
            pd.testing.assert_frame_equal(pd.read_csv(out / "profiles" / pid / f"{name}.csv"),
                                          own[name].reset_index(drop=True), check_dtype=False)
        ranges = pd.read_csv(out / "profiles" / pid / "nvtx_ranges.csv")
        assert ranges[ranges["range"] == f"point:{pid}"]["calls"].tolist() == [1]
        mine = ranges[ranges["range"] != f"point:{pid}"].set_index("range")
        theirs = own["nvtx_ranges"].set_index("range")
        assert mine["gpu_ms"].to_dict() == pytest.approx(theirs["gpu_ms"].to_dict())
        assert mine["cpu_ms"].to_dict() == pytest.approx(theirs["cpu_ms"].to_dict())


def test_analyze_points_needs_the_sweep_results(tmp_path):
    ids = _sweep_results(tmp_path / "elsewhere")
    conn = nsys_fakes.load(FIXTURE_POINTS["fused"])
    nsys_fakes.add_point_range(conn, ids["fused"])
    one = nsys_fakes.save(conn, tmp_path / "one.sqlite")
    # one capture of one configuration (scripts/nsys_profile.sh: `profile profiler=none` under nsys) needs
    # no sweep: it is read as one profile, as before
    done = cli("profile", f"analyze={one}", f"out={tmp_path / 'single'}")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "single" / "profiles" / "one" / "nvtx_ranges.csv").exists()
    assert not (tmp_path / "single" / "profile_grid.parquet").exists()
    # several points are only points of a sweep: they need its results
    nsys_fakes.append(conn, nsys_fakes.load(FIXTURE_POINTS["sequential"]))
    nsys_fakes.add_point_range(conn, ids["sequential"], window=(nsys_fakes.span(conn)[1] - 10**6, nsys_fakes.span(conn)[1]))
    two = nsys_fakes.save(conn, tmp_path / "two.sqlite")
    line = one_line_error(cli("profile", f"analyze={two}", f"out={tmp_path / 'empty'}"))
    assert "has no results.parquet or results.csv to join the points to; give results=" in line
    line = one_line_error(cli("profile", f"analyze={one}", f"results={tmp_path / 'nowhere'}", f"out={tmp_path / 'e2'}"))
    assert line.endswith("give results=<the out directory of the sweep that was captured>")
    empty = tmp_path / "no_reports"
    empty.mkdir()
    assert "no .nsys-rep, .sqlite or .sqlite.gz reports" in one_line_error(
        cli("profile", f"analyze={empty}", f"out={tmp_path / 'x'}"))
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(nsys_fakes.FIXTURES / "vggt_report_A40.sqlite.gz", plain)
    line = one_line_error(cli("profile", f"analyze={plain}", f"out={tmp_path / 'elsewhere'}"))
    assert "no report holds a point:<point_id> NVTX range" in line


def test_a_point_window_that_missed_the_work_is_an_error_status(tmp_path):
    ids = _sweep_results(tmp_path)
    conn = nsys_fakes.load(FIXTURE_POINTS["fused"])
    nsys_fakes.add_point_range(conn, ids["fused"])
    lo, hi = nsys_fakes.span(conn)
    nsys_fakes.add_point_range(conn, ids["sequential"], window=(hi + 10_000, hi + 20_000))  # an empty capture
    report = nsys_fakes.save(conn, tmp_path / "r.sqlite")
    done = cli("profile", f"analyze={report}", f"out={tmp_path}")
    assert done.returncode == 0, done.stderr
    grid = read_grid(str(tmp_path)).drop_duplicates("point_id").set_index("point_id")
    assert grid.loc[ids["fused"], "profile_status"] == "ok"
    assert grid.loc[ids["sequential"], "profile_status"] == "error"
    assert "no NVTX ranges and no GPU kernels" in grid.loc[ids["sequential"], "profile_message"]


# ---- the analysis, on synthetic GPU-like grids --------------------------------------------------------
def synthetic_grid() -> pd.DataFrame:
    """profile_grid of an nsys sweep: frames 8/32/128 x fused/sequential x two backends, plus one
    failed capture; sequential launches S times the kernels and idles the GPU."""
    points, ranges = [], []
    for backend, scale in (("sdpa_cudnn", 1.0), ("sdpa_flash", 1.2)):
        for s in (8, 32, 128):
            for exec_ in ("fused", "sequential"):
                pid = f"{backend}-{s}-{exec_}"
                knobs = dict(arch="vggt1b", device="cuda", frames=s, batch=1, height=336, width=518,
                             part="aggregator", query_points=0, inputs="synthetic", frame_exec=exec_,
                             attention=backend, dtype="bf16", prune_depth=0)
                points.append({**knobs, "point_id": pid, "profiler": "nsys", "profile_status": "ok",
                               "profile_message": "", "iterations": 2, "window_ms": 2 * s * (3 if exec_ == "sequential" else 1.1),
                               "busy_ms": 2 * s, "idle_frac": 0.6 if exec_ == "sequential" else 0.05,
                               "kernels": 2 * 24 * (14 * s if exec_ == "sequential" else 14), "gap_median_us": 3.0,
                               "gap_p90_us": 9.0, "source": f"{pid}.sqlite"})
                stage_ms = {"patch_embed": 0.1 * s, "frame_block": 24 * 0.3 * s * (2 if exec_ == "sequential" else 1),
                            "global_block": 24 * scale * 0.01 * s * s, "aggregator": 0.0}
                stage_ms["aggregator"] = sum(stage_ms.values())
                for name, ms in stage_ms.items():
                    calls = 24 if name.endswith("block") else 1
                    ranges.append({"point_id": pid, "range": name, "domain": "vggt", "calls": 2 * calls,
                                   "cpu_ms": 2 * ms / 3, "gpu_ms": 2 * ms, "gpu_busy_ms": 1.8 * ms, "kernels": 2 * 10 * calls,
                                   "gpu_ops": 2 * 11 * calls})
    points.append({"point_id": "failed", "profiler": "nsys", "profile_status": "error",
                   "profile_message": "UserError: nsys profile failed (exit 1)", "frames": 512, "frame_exec": "fused",
                   "attention": "sdpa_cudnn", "device": "cuda", "arch": "vggt1b", "height": 336, "width": 518,
                   "batch": 1, "part": "aggregator", "inputs": "synthetic", "dtype": "bf16", "prune_depth": 0})
    results = pd.DataFrame([{**{k: p.get(k) for k in KNOBS}, "point_id": p["point_id"], "status": "ok",
                             "latency_ms_median": 1.0, "gpu_name": H100} for p in points])
    return profile_grid(pd.DataFrame(points), pd.DataFrame(ranges), results)


def test_profile_grid_is_per_forward_and_keeps_failed_points():
    grid = synthetic_grid()
    assert list(grid.columns[: len(PROFILE_GRID_COLUMNS)]) == PROFILE_GRID_COLUMNS
    row = grid[(grid["point_id"] == "sdpa_cudnn-32-fused") & (grid["stage"] == "global_block")].iloc[0]
    assert row["gpu_ms"] == pytest.approx(24 * 0.01 * 32 * 32)   # the capture's 2 forwards / iterations
    assert row["calls"] == 24 and row["kernels"] == 240 and row["gpu_busy_ms"] == pytest.approx(0.9 * row["gpu_ms"])
    assert row["launches"] == 24 * 14 and row["window_ms"] == pytest.approx(32 * 1.1)
    assert row["gpu_name"] == H100 and row["profiled"]
    failed = grid[grid["point_id"] == "failed"]
    assert len(failed) == 1 and failed["stage"].iloc[0] == "" and failed["profile_status"].iloc[0] == "error"
    assert "nsys profile failed" in failed["profile_message"].iloc[0]
    forward = grid[(grid["point_id"] == "sdpa_cudnn-8-fused") & (grid["stage"] == "forward")].iloc[0]
    assert forward["gpu_ms"] == pytest.approx(0.8 + 24 * 0.3 * 8 + 24 * 0.01 * 64)
    pivot = grid_pivot(grid)
    assert len(pivot) == 13 and "global_block_gpu_ms" in pivot.columns
    assert pivot.set_index(["frames", "frame_exec", "attention"]).loc[(512, "fused", "sdpa_cudnn"), "profile_status"] == "error"


def test_grid_figures_from_a_gpu_grid():
    from test_report import texts

    grid = synthetic_grid()
    stages = grid_stage_times(grid)
    assert set(stages["stage"]) == {"patch_embed", "frame_block", "global_block"} and (stages["basis"] == "gpu").all()
    assert len(stages) == 2 * 3 * 2 * 3
    fig, note = plots.profile_grid_stages(grid)
    drawn = texts(fig)
    assert {"patch_embed", "frame_block", "global_block", "sdpa_cudnn", "sdpa_flash", "fused", "sequential"} <= set(drawn)
    assert any("GPU-projected time per forward (ms, log scale)" in t for t in drawn)
    activity = grid_activity(grid)
    assert len(activity) == 12
    seq = activity[(activity["frame_exec"] == "sequential") & (activity["attention"] == "sdpa_cudnn")]
    assert list(seq.sort_values("frames")["launches"]) == [24 * 14 * s for s in (8, 32, 128)]
    fig, _ = plots.profile_grid_activity(grid)
    assert any("GPU idle, % of the captured window" in t for t in texts(fig))
    # pruned points are profiled too, but the figures draw the exact model and say so
    pruned = grid.assign(prune_depth=np.where(grid["attention"] == "sdpa_flash", 4, 0))
    fig, note = plots.profile_grid_stages(pruned)
    assert "prune_depth 4 profiles are in profile_grid" in note and "sdpa_flash" not in texts(fig)


def test_grid_figures_only_where_a_grid_exists(tmp_path):
    from test_report import synthetic_gpu_results, write_results

    out = write_results(tmp_path / "plain", synthetic_gpu_results())
    names = [p.name for p in plots.figures(load_tables(str(out)))]
    assert not any(n.startswith("profile_grid") for n in names)
    synthetic_grid().to_parquet(out / "profile_grid.parquet", index=False)
    written, notes = plots.render_figures(str(out))
    assert {"profile_grid_stages", "profile_grid_activity"} <= {Path(p).stem for p in written}


# ---- the GPU study's check, on the fixtures ------------------------------------------------------------
FAKE_STATS = '''#!{python}
"""A stand-in for `nsys stats`: what nsys 2025.3 printed for the fixture the report was made from,
with the row of the report's point range (which the fixture captures predate)."""
import sqlite3, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import nsys_fakes
source = sys.argv[-1]
point = sqlite3.connect(source).execute("SELECT text FROM NVTX_EVENTS WHERE text LIKE 'point:%'").fetchone()[0]
lines = (nsys_fakes.FIXTURES / (Path(source).name.split(".")[0] + ".stats.txt")).read_text().splitlines()
at = next(i for i, l in enumerate(lines) if l.startswith("Range,Style,Total Proj Time (ns)"))
lines.insert(at + 1, f"vggt:{{point}},PushPop,1,1,1,1,1,1,1,0,1,1.0,0.0,1.0")
print("\\n".join(lines))
'''


def test_gpu_check_script_compares_stage_times_with_nsys_stats(tmp_path):
    import subprocess

    out = tmp_path / "external"
    ids = _sweep_results(out)
    reports = tmp_path / "nsys"
    reports.mkdir()
    for exec_, name in FIXTURE_POINTS.items():
        conn = nsys_fakes.load(name)
        nsys_fakes.add_point_range(conn, ids[exec_])
        nsys_fakes.save(conn, reports / f"{name}.sqlite")
    assert cli("profile", f"analyze={reports}", f"out={out}").returncode == 0
    fake = tmp_path / "fake_nsys"
    fake.write_text(FAKE_STATS.format(python=sys.executable, tests=str(Path(__file__).parent)))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    script = Path(__file__).parents[1] / "benchmarks" / "gpu" / "nsys_stats_check.py"

    def check():
        return subprocess.run([sys.executable, str(script), str(out), "--nsys", str(fake)], capture_output=True,
                              text=True, timeout=120)

    done = check()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "8 (point, stage) pairs compared" in done.stdout and "MISMATCH" not in done.stdout
    grid = pd.read_parquet(out / "profile_grid.parquet")
    grid.loc[(grid["point_id"] == ids["sequential"]) & (grid["stage"] == "frame_block"), "gpu_ms"] *= 1.02
    grid.to_parquet(out / "profile_grid.parquet", index=False)
    done = check()
    assert done.returncode == 1 and f"MISMATCH: {ids['sequential']} frame_block" in done.stdout
