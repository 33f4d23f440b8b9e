"""model.impl=upstream: facebookresearch/vggt's own code through the same runner.

Upstream's code is not part of this project. These tests use a checkout when one is available:
VGGT_UPSTREAM_PATH, else the repository's git-ignored .upstream/ (README: how to get it), else an
importable `vggt`; without one they are skipped with that reason. The one-line errors are tested
everywhere.
"""

import importlib.util
import os

import pytest
import torch

import vggt_model
from conftest import ROOT, run_cli as cli
from vggt_bench.measure import upstream
from vggt_bench.core.results import load_results


def _checkout():
    for path in (os.environ.get("VGGT_UPSTREAM_PATH"), os.path.join(ROOT, ".upstream")):
        if path and os.path.isdir(os.path.join(path, "vggt", "models")):
            return path
    return "" if importlib.util.find_spec("vggt") is not None else None


CHECKOUT = _checkout()
needs_upstream = pytest.mark.skipif(
    CHECKOUT is None or importlib.util.find_spec("einops") is None,
    reason="no upstream VGGT checkout here (set VGGT_UPSTREAM_PATH, or put its vggt/ under .upstream/, "
           "and pip install einops huggingface_hub); upstream's code is never part of this project")


def _path_args():
    return [f"model.upstream_path={CHECKOUT}"] if CHECKOUT else []


@needs_upstream
@pytest.mark.parametrize("plan", ["upstream", "lean"])
def test_ours_equals_upstreams_code_bitwise_on_the_same_weights(plan):
    upstream.locate(CHECKOUT or None)
    cfg = vggt_model.VGGTConfig.small()
    ours = vggt_model.build(cfg, "cpu", seed=3)
    theirs = upstream.UpstreamVGGT(cfg, "full", "cpu", ours.state_dict(), "fp32", False)
    ours.configure(vggt_model.ExecutionConfig(attention="sdpa_math", memory_plan=plan))
    theirs.configure(vggt_model.ExecutionConfig(attention="sdpa_math", memory_plan="upstream"))
    images, queries = torch.rand(1, 3, 3, 56, 84), torch.rand(1, 4, 2) * 40
    with torch.inference_mode():
        a, b = ours(images, queries), theirs(images, queries)
    for key in ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf", "track", "vis", "conf"):
        assert torch.equal(a[key], b[key]), key


@needs_upstream
def test_a_sweep_measures_ours_and_upstream_side_by_side(tmp_path):
    done = cli("sweep", "experiment=smoke", "frames=2", "model.impl=ours,upstream", "model.frame_exec=fused",
               *_path_args(), f"out={tmp_path}", "report=false")
    assert done.returncode == 0, done.stderr[-3000:]
    table = load_results(str(tmp_path)).set_index("impl")
    assert set(table.index) == {"ours", "upstream"} and set(table["status"]) == {"ok"}
    up = table.loc["upstream"]
    assert up["memory_plan"] == "upstream" and "upstream's code keeps its own" in up["message"]
    assert "sources" in up["upstream_source"] and table.loc["ours", "upstream_source"] in ("", None)
    assert up["params"] == table.loc["ours", "params"]


@needs_upstream
@pytest.mark.parametrize("setting, reason", [
    ("model.frame_exec=sequential", "frame_exec=sequential is ours"),
    ("model.prune_depth=2", "no global-to-frame conversion"),
    ("model.compile=default", "measured as published"),
    ("model.attention=flex", "attention=flex has no equivalent"),
    ("model.memory_plan=offload", "no memory_plan=offload"),
    ("model.global_attention=eager", "one attention kernel everywhere"),
])
def test_what_upstream_cannot_run_is_an_unavailable_row(setting, reason, tmp_path):
    done = cli("run", "experiment=smoke", "frames=1", "model.impl=upstream", setting, *_path_args(), f"out={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    row = load_results(str(tmp_path)).iloc[0]
    assert row["status"] == "unavailable" and reason in row["message"], row["message"]


@needs_upstream
def test_upstreams_stages_have_our_range_names(tmp_path):
    done = cli("profile", "profiler=torch", "model.impl=upstream", "model.arch=small", "frames=2",
               "inputs.height=56", "inputs.width=84", "iterations=1", "measure.warmup=0", *_path_args(),
               f"out={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    import pandas as pd

    ranges = pd.read_csv(tmp_path / "profile_ranges.csv").groupby("range")["calls"].sum()
    depth = vggt_model.VGGTConfig.small().aggregator.depth
    assert ranges["frame_block"] == depth and ranges["global_block"] == depth
    assert ranges["aggregator"] == 1 and ranges["patch_embed"] == 1 and ranges["layer_00"] == 1


def test_without_upstream_the_error_says_how_to_get_it(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    done = cli("run", "experiment=smoke", "model.impl=upstream", f"model.upstream_path={empty}", f"out={tmp_path}")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "holds no vggt/models/ folder" in lines[0] and "pip install" in lines[0]


def test_an_unknown_impl_is_one_line(tmp_path):
    done = cli("run", "experiment=smoke", "model.impl=theirs", f"out={tmp_path}")
    assert done.returncode == 2 and "unknown model.impl 'theirs'; choose one of ['ours', 'upstream']" in done.stderr
