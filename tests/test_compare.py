"""`compare`: A against B point by point, with intervals, verdicts, a gate and trace diffs, and the GPU
regression check built on it (benchmarks/gpu/regress.sh).

Synthetic tables with known ratios check the statistics; two real CPU sweeps (fused against sequential
frame execution, profiled) check the whole path; the committed H100 nsys fixtures check a trace diff with
GPU times. The store it reads (samples, format versions, ids) is tests/test_store_format.py's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT, run_cli as cli
from vggt_bench.analysis import compare as cmp
from vggt_bench.commands import compare as command
from vggt_bench.core.config import CompareConfig
from vggt_bench.core.errors import UserError
from vggt_bench.core.results import ResultStore
from vggt_bench.core.schema import COMPARE_COLUMNS, RESULT_COLUMNS
from vggt_bench.measure.point import Point
from vggt_model import ExecutionConfig

SEQ = ["experiment=smoke", "report=false", "frames=16", "inputs.height=14", "inputs.width=14", "measure.warmup=2",
       "measure.repeats=9", "profiler=torch", "iterations=3"]


# ---- tables with known ratios ---------------------------------------------------------------------
def point(frames=2, **knobs) -> Point:
    return Point(arch="small", device="cpu", frames=frames, batch=1, height=28, width=42, part="aggregator",
                 query_points=0, inputs="synthetic", execution=ExecutionConfig(**knobs))


def row(p: Point, times, **extra) -> dict:
    """A results row of point ``p`` timed at ``times`` (ms), as a sweep writes it (store format 2)."""
    times = [float(t) for t in times]
    return {**p.knobs(), "point_id": p.point_id, "status": "ok", "format_version": 2, "repeats": len(times),
            "latency_ms_median": float(np.median(times)), "latency_ms_p10": float(np.percentile(times, 10)),
            "latency_ms_p90": float(np.percentile(times, 90)), "latency_ms_samples": json.dumps(times),
            "noisy": False, "noise_reason": "", "torch_version": torch.__version__, "cpu_threads": 2, **extra}


def draws(seed: int, median: float, n: int = 12, sigma: float = 0.03):
    return median * np.random.default_rng(seed).lognormal(0.0, sigma, n)


def table(*rows) -> pd.DataFrame:
    return pd.DataFrame(list(rows)).reindex(columns=RESULT_COLUMNS)


def write(directory: Path, frame: pd.DataFrame) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(directory / "results.parquet", index=False)
    return str(directory)


@pytest.mark.parametrize("factor, verdict", [(1.5, "slower"), (1 / 1.5, "faster")])
def test_a_known_ratio_is_found_with_an_interval_that_excludes_1(factor, verdict):
    base = table(row(point(2), draws(1, 100.0)), row(point(4), draws(2, 200.0)))
    cand = table(row(point(2), draws(3, 100.0 * factor)), row(point(4), draws(4, 200.0 * factor)))
    found = cmp.compare(base, cand)
    assert list(found.columns) == COMPARE_COLUMNS and len(found) == 2
    for _, r in found.iterrows():
        assert r["ratio"] == pytest.approx(factor, rel=0.04)
        assert r["ci_low"] < r["ratio"] < r["ci_high"]
        assert (r["ci_low"] > 1.0) if factor > 1 else (r["ci_high"] < 1.0)
        assert r["ci_high"] / r["ci_low"] < 1.15  # 12 repeats at 3% spread: a tight interval
        assert r["change"] == verdict and r["verdict"] == verdict and r["interval"] == "95% bootstrap"
        assert r["baseline_samples"] == r["candidate_samples"] == 12


def test_identical_distributions_are_the_same_and_the_interval_holds_1():
    base = table(row(point(2), draws(5, 100.0, sigma=0.08)), row(point(4), draws(6, 200.0, sigma=0.08)))
    cand = table(row(point(2), draws(7, 100.0, sigma=0.08)), row(point(4), draws(8, 200.0, sigma=0.08)))
    found = cmp.compare(base, cand, noise_floor=0.0)  # the interval alone decides
    assert (found["ci_low"] <= 1.0).all() and (found["ci_high"] >= 1.0).all()
    assert set(found["verdict"]) == {"same"}


def test_a_change_under_the_noise_floor_is_same_whatever_its_interval():
    base = table(row(point(2), draws(9, 100.0, sigma=0.002)))
    cand = table(row(point(2), draws(10, 101.2, sigma=0.002)))
    tight = cmp.compare(base, cand, noise_floor=0.0).iloc[0]
    assert tight["ci_low"] > 1.0 and tight["verdict"] == "slower"  # a real 1.2%, beyond doubt within this run
    assert cmp.compare(base, cand).iloc[0]["verdict"] == "same"    # under the 2% two runs differ by anyway
    assert cmp.NOISE_FLOOR == 0.02


def test_older_rows_without_samples_compare_on_medians_and_say_so():
    old = row(point(2), [100.0] * 5)
    old.pop("latency_ms_samples")
    old.pop("format_version")
    found = cmp.compare(table(old), table(row(point(2), draws(11, 150.0)))).iloc[0]
    assert found["ratio"] == pytest.approx(1.5, rel=0.04) and np.isnan(found["ci_low"]) and np.isnan(found["ci_high"])
    assert found["interval"].startswith("none: no per-repeat samples") and found["verdict"] == "slower"
    few = cmp.compare(table(row(point(2), [100.0, 101.0])), table(row(point(2), draws(12, 150.0)))).iloc[0]
    assert few["interval"] == "none: fewer than 3 repeats on a side" and few["verdict"] == "slower"


def test_unmatched_points_are_listed_with_their_side_and_failures_are_not_run():
    oom = {**row(point(8), [1.0]), "status": "oom", "latency_ms_median": None, "latency_ms_samples": None}
    base = table(row(point(2), draws(13, 100.0)), row(point(4), draws(14, 200.0)), oom)
    cand = table(row(point(2), draws(15, 100.0)), row(point(8), draws(16, 900.0)), row(point(16), draws(17, 2e3)))
    found = cmp.compare(base, cand).set_index("frames")
    assert found.loc[4, "verdict"] == "unmatched" and found.loc[4, "side"] == "baseline only"
    assert found.loc[16, "verdict"] == "unmatched" and found.loc[16, "side"] == "candidate only"
    assert found.loc[8, "verdict"] == "not_run" and found.loc[8, "baseline_status"] == "oom"
    assert found.loc[2, "verdict"] == "same"
    assert cmp.counts(found.reset_index()) == "1 same, 1 not_run, 2 unmatched"


def test_a_noisy_row_makes_the_verdict_noisy_and_keeps_what_the_interval_says():
    cand = table(row(point(2), draws(18, 150.0), noisy=True, noise_reason="other processes took 60% of the CPU"))
    found = cmp.compare(table(row(point(2), draws(19, 100.0))), cand).iloc[0]
    assert found["verdict"] == "noisy" and found["change"] == "slower"
    assert found["noise_reason"] == "candidate: other processes took 60% of the CPU"


def test_ignore_matches_across_a_knob_and_names_what_changed():
    base = table(row(point(2), draws(20, 100.0)), row(point(4), draws(21, 200.0)))
    cand = table(row(point(2, frame_exec="sequential"), draws(22, 300.0)),
                 row(point(4, frame_exec="sequential"), draws(23, 600.0)))
    with pytest.raises(UserError, match=r"no point of the candidate matches one of the baseline; they differ in "
                                        r"model.frame_exec \(fused against sequential\): ignore=model.frame_exec"):
        cmp.compare(base, cand)
    found = cmp.compare(base, cand, cmp.ignore_columns(["model.frame_exec"]))
    assert set(found["verdict"]) == {"slower"} and set(found["side"]) == {"both"}
    assert set(found["changed"]) == {"model.frame_exec: fused -> sequential"}
    assert cmp.ignore_columns(["frame_exec", "inputs.batch", "model.frame_exec"]) == ["frame_exec", "batch"]
    with pytest.raises(UserError, match=r"ignore=model.frame_exex is not a field the points are matched on; "
                                        r"choose from model.impl, model.arch, device, frames, .*model.frame_exec, "):
        cmp.ignore_columns(["model.frame_exex"])
    both = table(row(point(2), draws(24, 100.0)), row(point(2, frame_exec="sequential"), draws(25, 300.0)))
    with pytest.raises(UserError, match=r"baseline has 2 points that differ only in model.frame_exec \(S=2\)"):
        cmp.compare(both, cand, ["frame_exec"])


def test_environment_differences_are_the_environments_not_the_knobs():
    base = table(row(point(2), draws(26, 100.0), torch_version="2.11.0+cu130", cpu_threads=16, gpu_name="H100"))
    cand = table(row(point(2), draws(27, 100.0), torch_version="2.13.0+cpu", cpu_threads=1, gpu_name="H100"))
    env = cmp.environment_diff(base, cand).set_index("field")
    assert env.loc["torch_version"].tolist() == ["2.11.0+cu130", "2.13.0+cpu"]
    assert env.loc["cpu_threads"].tolist() == ["16", "1"]
    assert "gpu_name" not in env.index and "frame_exec" not in env.index
    assert cmp.environment_diff(base, base).empty


# ---- the command: outputs, gate, exit codes, bad inputs ---------------------------------------------
def compare_cfg(**values):
    return OmegaConf.structured(CompareConfig(**values))


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("vggt_bench: error: "), err
    return err[0]


@pytest.fixture
def slower_by_half(tmp_path):
    base = write(tmp_path / "a", table(row(point(2), draws(30, 100.0)), row(point(4), draws(31, 200.0))))
    cand = write(tmp_path / "b", table(row(point(2), draws(32, 150.0)), row(point(4), draws(33, 202.0))))
    return base, cand


def test_the_command_writes_the_table_and_figure_and_gates(slower_by_half, tmp_path, capsys):
    base, cand = slower_by_half
    assert command.main(compare_cfg(baseline=base, candidate=cand)) == 0
    out = capsys.readouterr().out
    assert "1 slower, 1 same" in out and "environment: no difference" in out
    written = pd.read_parquet(Path(cand) / "compare" / "compare.parquet")
    assert list(written.columns) == COMPARE_COLUMNS and len(pd.read_csv(Path(cand) / "compare" / "compare.csv")) == 2
    assert (Path(cand) / "compare" / "compare.png").stat().st_size > 0
    assert not (Path(cand) / "compare" / "compare_stages.csv").exists()  # no profiles on either side
    # the gate: S=2 is 1.5x, its interval wholly above 1.05; S=4 is 1% (same)
    assert command.main(compare_cfg(baseline=base, candidate=cand, fail_above=0.05, out=str(tmp_path / "o"))) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vggt_bench: compare: 1 point(s) slower by more than 5% beyond doubt: "
                                               "S=2 · fused · k=0 · sdpa · fp32 (1.") and "S=4" not in err[0]
    assert command.main(compare_cfg(baseline=base, candidate=cand, fail_above=0.6, out=str(tmp_path / "o"))) == 0
    assert "gate: no point slower by more than 60% beyond doubt" in capsys.readouterr().out


def test_a_noisy_point_past_the_gate_fails_it_and_says_why(tmp_path, capsys):
    """The first regression check on an H100 (2026-12-07) ran beside a process left on the GPU: 1.39x
    slower, flagged noisy, and the gate's line named the point without saying it was noisy."""
    reason = "1 other process on the GPU (2087:22142MiB)"
    base = write(tmp_path / "a", table(row(point(2), draws(40, 92.0))))
    cand = write(tmp_path / "b", table(row(point(2), draws(41, 128.0), noisy=True, noise_reason=reason)))
    assert command.main(compare_cfg(baseline=base, candidate=cand, fail_above=0.05)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith(f"; noisy, candidate: {reason}: measure again on a quiet machine)")


def test_bad_inputs_are_one_line_each_and_exit_2(slower_by_half, tmp_path, capsys):
    base, cand = slower_by_half
    assert command.main(compare_cfg(baseline=str(tmp_path / "nowhere"), candidate=cand)) == 2
    assert one_error_line(capsys).endswith(f"baseline={tmp_path / 'nowhere'} is not a directory")
    assert command.main(compare_cfg(candidate=cand)) == 2
    assert "baseline=DIR is required" in one_error_line(capsys)
    (tmp_path / "empty").mkdir()
    assert command.main(compare_cfg(baseline=base, candidate=str(tmp_path / "empty"))) == 2
    assert "holds no results.parquet or results.csv" in one_error_line(capsys)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "results.parquet").write_bytes(b"PAR1 this is not a parquet file")
    assert command.main(compare_cfg(baseline=str(corrupt), candidate=cand)) == 2
    said = one_error_line(capsys)
    assert f"baseline={corrupt}: its results table cannot be read (" in said
    # the fix load_results names, whole: cut at 160 characters it was lost mid-path
    assert said.endswith(f"rerun the sweep with out={corrupt} to measure them again)"), said
    other = write(tmp_path / "other", table(row(point(2, attention="eager"), draws(34, 100.0))))
    assert command.main(compare_cfg(baseline=base, candidate=other)) == 2
    assert "they differ in model.attention (sdpa against eager)" in one_error_line(capsys)
    assert command.main(compare_cfg(baseline=base, candidate=cand, ignore=["model.attentoin"])) == 2
    assert "ignore=model.attentoin is not a field" in one_error_line(capsys)
    assert command.main(compare_cfg(baseline=base, candidate=cand, fail_above=-1.0)) == 2
    assert "fail_above=-1.0 must be a fraction >= 0" in one_error_line(capsys)


# ---- a real A/B on the CPU, profiled: fused against sequential frame execution ------------------------
@pytest.fixture(scope="module")
def fused_sequential(tmp_path_factory):
    """Two sweeps of one tiny point (16 one-patch frames, where a call per frame costs most): fused, then
    sequential, each profiled under the PyTorch profiler. One torch thread: on two cores that other
    processes share, two threads' spinning made single forwards of the same point range 113-2,880 ms
    (one thread: 19-26 ms)."""
    root = tmp_path_factory.mktemp("ab")
    with mock.patch.dict(os.environ, {"OMP_NUM_THREADS": "1"}):
        for name, exec_ in (("fused", "fused"), ("sequential", "sequential")):
            done = cli("sweep", *SEQ, f"model.frame_exec={exec_}", f"out={root / name}", timeout=600)
            assert done.returncode == 0, done.stderr[-2000:]
    return root / "fused", root / "sequential"


def test_a_real_slowdown_on_the_cpu_is_slower_and_the_frame_blocks_carry_it(fused_sequential):
    fused, sequential = fused_sequential
    done = cli("compare", f"baseline={fused}", f"candidate={sequential}", "ignore=model.frame_exec,model.nvtx")
    assert done.returncode == 0, done.stderr
    assert "matched without model.frame_exec, model.nvtx" in done.stdout
    assert "environment: no difference" in done.stdout  # one machine, one thread each
    found = pd.read_csv(sequential / "compare" / "compare.csv").iloc[0]
    assert found["side"] == "both" and found["changed"] == "model.frame_exec: fused -> sequential"
    assert found["baseline_samples"] == found["candidate_samples"] == 9
    # a call per frame: the candidate is slower beyond doubt (flagged noisy where the machine was busy)
    assert found["ratio"] > 1.3 and found["ci_low"] > 1.0 and found["change"] == "slower"
    assert found["verdict"] == ("noisy" if found["baseline_noisy"] or found["candidate_noisy"] else "slower")
    stages = pd.read_csv(sequential / "compare" / "compare_stages.csv").set_index("stage")
    assert set(stages["basis"]) == {"cpu"} and stages["baseline_gpu_ms"].isna().all()
    named = stages.drop(index="forward")
    assert named["delta_ms"].abs().idxmax() == "frame_block" and stages.loc["frame_block", "share_of_change"] > 0.5
    assert stages.loc["forward", "share_of_change"] == 1.0
    kernels = pd.read_csv(sequential / "compare" / "compare_kernels.csv")
    assert kernels["delta_calls"].sum() > 0  # the frames' calls: more operators per forward
    assert "frame blocks " in done.stdout and "CPU operator calls added per forward" in done.stdout
    for name in ("compare.png", "compare_stages.png"):
        assert (sequential / "compare" / name).stat().st_size > 0


def test_report_with_a_baseline_adds_a_against_b(fused_sequential, tmp_path):
    from test_report import error_outputs, notebook_text

    fused, sequential = fused_sequential
    work = tmp_path / "b"
    shutil.copytree(sequential, work)
    done = cli("report", f"results={work}", f"baseline={fused}", "ignore=model.frame_exec")
    assert done.returncode == 0, done.stderr[-2000:]
    assert error_outputs(work / "report.ipynb") == []
    text = notebook_text(work / "report.ipynb")
    assert f"**A** `{fused}` against **B** `{work}`: 1 points" in text
    assert "model.frame_exec: fused -> sequential" in text and "frame blocks " in text
    assert "No baseline given" not in text
    line = cli("report", f"results={work}", f"baseline={tmp_path / 'nowhere'}")
    assert line.returncode == 2 and line.stderr.strip().endswith(f"baseline={tmp_path / 'nowhere'} is not a directory")


def test_a_trace_diff_of_h100_captures_puts_the_change_in_the_frame_blocks():
    """The committed nsys fixtures: VGGT-1B, 2 frames, one forward each, fused against sequential."""
    from vggt_bench.profiling import read_report

    fixtures = Path(ROOT) / "tests" / "fixtures" / "nsys"
    fused, seq = (read_report(fixtures / f"vggt1b_{e}_S2_H100.sqlite.gz") for e in ("fused", "sequential"))
    stages = cmp.stage_diff(fused["nvtx_ranges"], seq["nvtx_ranges"], 1, 1).set_index("stage")
    assert set(stages["basis"]) == {"gpu"}
    frame = stages.loc["frame_block"]
    assert frame["candidate_gpu_ms"] == pytest.approx(2.0 * frame["baseline_gpu_ms"], rel=0.03)
    assert frame["share_of_change"] > 0.9 and frame["delta_kernels"] == 576  # 24 layers x 2 frames x 12 kernels
    assert abs(stages.loc["global_block", "share_of_change"]) < 0.1
    kernels = cmp.kernel_diff(fused["kernels"], seq["kernels"], 1, 1)
    assert kernels["delta_calls"].sum() == 576
    added = kernels[kernels["presence"] == "added"]
    assert list(added["kernel"]) == ["nvjet_sm90_tst_64x112_64x9_2x1_v_bz_bias_TNT"]
    assert cmp.trace_summary(stages.reset_index(), kernels) == (
        "frame blocks 2.0x slower (114% of the change); 576 launches added per forward; "
        "1 kernel added (nvjet_sm90_tst_64x112_64x9_2x1_v_bz_bias)")


# ---- the GPU regression check's CPU-checkable parts --------------------------------------------------------
@pytest.fixture
def regress(tmp_path):
    """``regress.sh ARGS`` with this interpreter and an nvidia-smi that sees no GPU, whatever the machine has."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\nexit 9\n")
    (fake / "nvidia-smi").chmod(0o755)

    def call(*args, **env):
        return subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu", "regress.sh"), *args],
                              capture_output=True, text=True, timeout=600, cwd=ROOT,
                              env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "PYTHON": sys.executable,
                                   "OMP_NUM_THREADS": "1", **env})

    return call


def test_regress_refuses_in_one_line_without_a_baseline_for_this_gpu_kind(regress, tmp_path):
    said = regress("--print", REGRESS_GPU="NVIDIA H100 80GB HBM3", REGRESS_BASELINES=str(tmp_path))
    assert said.returncode == 0 and "kind: h100-80gb-hbm3" in said.stdout
    assert f"baseline: {tmp_path}/h100-80gb-hbm3 (none yet)" in said.stdout and "fail_above=0.05" in said.stdout
    done = regress(REGRESS_GPU="NVIDIA H100 80GB HBM3", REGRESS_BASELINES=str(tmp_path))
    assert done.returncode == 2 and done.stderr.strip() == (
        f"regress.sh: no baseline for NVIDIA H100 80GB HBM3 (h100-80gb-hbm3) in {tmp_path}/h100-80gb-hbm3: make one "
        f"on this GPU kind with 'bash benchmarks/gpu/regress.sh --make-baseline' (reports/baselines/README.md)")
    no_gpu = regress(REGRESS_BASELINES=str(tmp_path))  # nvidia-smi sees no GPU
    assert no_gpu.returncode == 2 and len(no_gpu.stderr.strip().splitlines()) == 1
    assert "no NVIDIA GPU visible" in no_gpu.stderr

def test_the_committed_baselines_hold_the_grid_regress_sh_measures():
    """Each committed baseline is what regress.sh's fixed grid measures on its GPU kind: its frames, with
    every timed call kept (the bootstrap needs them), on a GPU whose name gives the folder's kind."""
    from vggt_bench.core.results import load_results

    root = Path(ROOT) / "reports" / "baselines"
    kinds = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert "h100-80gb-hbm3" in kinds
    for kind in kinds:
        table = load_results(str(root / kind))
        assert sorted(table["frames"]) == [1, 8, 32] and set(table["status"]) == {"ok"}, kind
        assert (table["repeats"] == 10).all() and table["latency_ms_samples"].map(lambda s: len(json.loads(s))).eq(10).all()
        names = {n.lower().replace("nvidia ", "").replace(" ", "-") for n in table["gpu_name"]}
        assert names == {kind}, (kind, names)
        assert f"`{kind}`" in (root / "README.md").read_text(), f"reports/baselines/README.md has no line for {kind}"


def test_regress_fails_on_a_regression_beyond_5_percent(regress, tmp_path):
    """The whole check on a CPU-sized grid: a baseline made, then doctored 4x faster than what ran."""
    grid = "experiment=adhoc device=cpu model.arch=small inputs.height=14 inputs.width=14 frames=2 " \
           "measure.warmup=1 measure.repeats=6 report=false"
    env = dict(REGRESS_GPU="Test GPU 1", REGRESS_BASELINES=str(tmp_path / "baselines"), REGRESS_GRID=grid)
    made = regress("--make-baseline", **env)
    assert made.returncode == 0, made.stderr[-2000:]
    baseline = tmp_path / "baselines" / "test-gpu-1"
    assert regress("--make-baseline", **env).returncode == 2  # never over an existing one
    for path in (baseline / "points").glob("*.json"):
        row = json.loads(path.read_text())
        row["latency_ms_samples"] = json.dumps([t / 4 for t in json.loads(row["latency_ms_samples"])])
        row["latency_ms_median"] /= 4
        path.write_text(json.dumps(row))
    ResultStore(str(baseline)).rebuild()
    checked = regress(**env, REGRESS_OUT=str(tmp_path / "run"))
    assert checked.returncode == 1, (checked.stdout[-2000:], checked.stderr[-2000:])
    assert checked.stderr.strip().splitlines()[-1].startswith(
        "vggt_bench: compare: 1 point(s) slower by more than 5% beyond doubt: S=2")
