"""`verify` and `profile` from the command line: exit codes, tables, one-line errors."""

import json
import os
import shutil

import pandas as pd
import pytest
import torch

import vggt_model
from conftest import run_cli as cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = os.path.join(ROOT, "tests", "fixtures", "reference")
NSYS = os.path.join(ROOT, "tests", "fixtures", "nsys")




def one_line_error(done, code=2):
    assert done.returncode == code, (done.stdout, done.stderr)
    lines = [l for l in done.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("vggt_bench: error:"), done.stderr
    return lines[0]


def test_verify_passes_and_prints_every_output():
    done = cli("verify", f"case={CASES}/tiny_vggt", "model.frame_exec=sequential", "model.attention=eager")
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("aggregated_tokens.3", "depth_conf", "track_list", "intrinsic", "PASS: all 18 outputs"):
        assert name in done.stdout


def test_verify_reports_drift_of_converted_layers():
    done = cli("verify", f"case={CASES}/tiny_dinov2_aggregator", "model.prune_depth=2")
    assert done.returncode == 1
    assert "FAIL" in done.stdout and "drift" in done.stdout
    assert "patch_embed_tokens" in done.stdout


def test_verify_names_what_is_wrong_in_a_malformed_case(tmp_path):
    case = tmp_path / "case"
    shutil.copytree(f"{CASES}/tiny_dinov2_aggregator", case)
    os.remove(case / "io.safetensors")
    assert "io.safetensors is missing" in one_line_error(cli("verify", f"case={case}"))
    shutil.copy(f"{CASES}/tiny_dinov2_aggregator/io.safetensors", case / "io.safetensors")
    meta = json.loads((case / "case.json").read_text())
    del meta["modules"]
    (case / "case.json").write_text(json.dumps(meta))
    assert "has no 'modules' key" in one_line_error(cli("verify", f"case={case}"))
    (case / "case.json").write_text("{not json")
    assert "is not valid JSON" in one_line_error(cli("verify", f"case={case}"))
    assert "give case=DIR" in one_line_error(cli("verify"))


def test_verify_checkpoint_loads_strictly_or_lists_the_differences(tmp_path):
    from safetensors.torch import save_file

    with torch.device("meta"):
        net = vggt_model.VGGT(vggt_model.VGGTConfig.small())
    state = {k: torch.zeros(v.shape) for k, v in net.state_dict().items()}
    good = tmp_path / "small.safetensors"
    save_file(state, str(good))
    done = cli("verify", f"checkpoint={good}", "arch=small")
    assert done.returncode == 0 and "PASS" in done.stdout and "loads strictly" in done.stdout
    torch.save(state, tmp_path / "small.pt")
    assert cli("verify", f"checkpoint={tmp_path / 'small.pt'}", "arch=small").returncode == 0
    bad = dict(state)
    del bad["aggregator.camera_token"]
    bad["aggregator.extra"] = torch.zeros(1)
    bad["aggregator.register_token"] = torch.zeros(1, 2, 5, 128)
    torch.save(bad, tmp_path / "bad.pt")
    done = cli("verify", f"checkpoint={tmp_path / 'bad.pt'}", "arch=small")
    assert one_line_error(done).endswith(f"{tmp_path / 'bad.pt'} does not load strictly into arch=small "
                                         f"({len(state)} tensors): 1 missing, 1 unexpected, 1 mis-shaped; give a "
                                         f"checkpoint of small (for vggt1b the official model.pt), or the arch= it "
                                         f"was made for (vggt1b | small)")
    assert done.stdout.splitlines() == [
        "missing (1):", "  aggregator.camera_token", "unexpected (1):", "  aggregator.extra", "mis-shaped (1):",
        "  aggregator.register_token: checkpoint (1, 2, 5, 128) vs model (1, 2, 4, 128)"]
    assert "checkpoint not found" in one_line_error(cli("verify", "checkpoint=/nope/model.pt"))


def test_verify_on_a_checkpoint_of_another_model_is_a_short_summary_naming_the_fix(tmp_path):
    # 2026-12-07: a safetensors of the wrong model printed 1,800 lines, the verdict on the last, exit 1
    from safetensors.torch import save_file

    with torch.device("meta"):
        small = vggt_model.VGGT(vggt_model.VGGTConfig.small())
    path = tmp_path / "small.safetensors"
    save_file({k: torch.zeros(v.shape) for k, v in small.state_dict().items()}, str(path))
    done = cli("verify", f"checkpoint={path}")  # arch=vggt1b, the default
    line = one_line_error(done)
    assert f"{path} does not load strictly into arch=vggt1b (" in line and line.endswith(
        "mis-shaped; it loads strictly into arch=small: pass arch=small"), line
    lines = done.stdout.splitlines()
    assert len(lines) + 1 <= 20, done.stdout
    assert [l.split(" (")[0] for l in lines if not l.startswith("  ")] == ["missing", "mis-shaped"]
    assert lines[-1].startswith("  ... and ") and lines[-1].endswith(" more")


def test_checkpoint_error_is_one_line_with_details():
    with torch.device("meta"):
        net = vggt_model.VGGT(vggt_model.VGGTConfig.small())
    state = {k: torch.zeros(v.shape) for k, v in net.state_dict().items() if "frame_blocks" not in k}
    with pytest.raises(vggt_model.checkpoint.CheckpointError) as info:
        vggt_model.checkpoint.check(net, state)
    assert "\n" not in str(info.value) and "missing" in str(info.value)
    assert len(info.value.details) == sum("frame_blocks" in k for k in net.state_dict())


def test_profile_torch_on_cpu_names_the_model_ranges(tmp_path):
    done = cli("profile", "profiler=torch", "part=full", "frames=2", "inputs.height=56", "inputs.width=84",
               "iterations=2", "measure.warmup=1", f"out={tmp_path}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "USDT:" not in done.stdout + done.stderr, done.stderr  # 2026-12-07: Kineto's start/stop lines leaked
    (directory,) = [p for p in (tmp_path / "profiles").iterdir()]
    ranges = pd.read_csv(directory / "nvtx_ranges.csv").set_index("range")
    for name in ("vggt", "aggregator", "patch_embed", "frame_block", "global_block", "attention", "mlp",
                 "layer_00", "camera_head", "depth_head", "point_head"):
        assert name in ranges.index, name
    small = vggt_model.VGGTConfig.small()
    assert ranges.loc["frame_block", "calls"] == 2 * small.aggregator.depth  # per forward, 2 forwards
    assert ranges.loc["aggregator", "cpu_ms"] >= ranges.loc["global_block", "cpu_ms"]
    assert (directory / "trace.json").exists() and (directory / "kernels.csv").exists()
    summary = pd.read_csv(tmp_path / "profile_summary.csv")
    assert len(summary) == 1 and summary.loc[0, "frames"] == 2 and summary.loc[0, "profiler"] == "torch"


def test_profile_nsys_without_nsys_says_how_to_get_it(tmp_path, monkeypatch):
    if shutil.which("nsys"):
        pytest.skip("nsys is installed here")
    line = one_line_error(cli("profile", "profiler=nsys", f"out={tmp_path}"))
    assert "no nsys on PATH" in line and "nsys=/path/to/nsys" in line
    dry = cli("profile", "profiler=nsys", "dry_run=true", "frames=4", f"out={tmp_path}")
    assert dry.returncode == 0 and "--capture-range=cudaProfilerApi" in dry.stdout and "profiler=none" in dry.stdout


def test_profile_analyze_reads_someone_elses_report(tmp_path):
    done = cli("profile", f"analyze={NSYS}/vggt_100report_A40.sqlite.gz", f"out={tmp_path}")
    assert done.returncode == 0, done.stderr
    ranges = pd.read_csv(tmp_path / "profiles" / "vggt_100report_A40" / "nvtx_ranges.csv").set_index("range")
    assert ranges.loc["Frame_Attention", "disagree"] and ranges.loc["Global_Attention", "disagree"]
    empty = cli("profile", f"analyze={NSYS}/vggt_20report_A40.sqlite.gz", f"out={tmp_path}")
    assert "no NVTX ranges and no GPU kernels" in one_line_error(empty, code=1)


def test_only_kinetos_own_lines_are_dropped_from_stderr(capfd):
    from vggt_bench.profiling.capture import without_kineto_chatter

    with without_kineto_chatter():
        os.write(2, b"USDT:2026-12-07 20:07:10 26361:26361 SyncActivityProfilerHandler.cpp:52] profiler_start\n")
        os.write(2, b"STAGE:2026-12-07 20:07:10 26361:26361 SyncActivityProfilerHandler.cpp:51] Completed Stage\n")
        os.write(2, b"a warning of our own\n")
    assert capfd.readouterr().err == "a warning of our own\n"
