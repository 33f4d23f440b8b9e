"""The tracker against golden data made with upstream VGGT (commit a288dd0f) and its VGGT-1B state-dict layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.nn.attention import SDPBackend, sdpa_kernel

from vggt_model.config import TrackerConfig
from vggt_model.tracker import Tracker

REFERENCE = Path(__file__).parent / "fixtures" / "reference"
CASE_DIR = REFERENCE / "tiny_vggt"
PREFIX = "track_head.tracker."


@pytest.fixture(scope="module")
def case():
    return json.loads((CASE_DIR / "case.json").read_text())


@pytest.fixture(scope="module")
def io():
    return load_file(str(CASE_DIR / "io.safetensors"))


@pytest.fixture(scope="module")
def tracker_state():
    state = load_file(str(CASE_DIR / "state_dict.safetensors"))
    return {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}


@pytest.fixture
def deterministic():
    """Deterministic CPU kernels and the SDPA math backend, as the reference was computed."""
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.use_deterministic_algorithms(was)


def tolerance(case: dict, output: str):
    """(atol, rtol) of the longest output prefix in the case that ``output`` starts with."""
    table = case["tolerances_atol_rtol_by_output_prefix"]
    prefix = max((p for p in table if output.startswith(p)), key=len)
    return tuple(table[prefix])


def reference_tracker(case, tracker_state) -> Tracker:
    tracker = Tracker(TrackerConfig(**case["modules"]["track_head.tracker"])).eval()
    tracker.load_state_dict(tracker_state, strict=True)
    return tracker


def test_matches_upstream_reference(case, io, tracker_state, deterministic):
    tracker = reference_tracker(case, tracker_state)
    iters = case["modules"]["track_head_forward"]["iters"]
    query_points = io["input.query_points"]
    with torch.no_grad():
        coord_preds, vis, conf = tracker(query_points, io["output.track_feature_maps"].float(), iters=iters)

    assert len(coord_preds) == iters
    outputs = {"track_list": torch.stack(coord_preds), "track": coord_preds[-1], "vis": vis, "conf": conf}
    for name, actual in outputs.items():
        expected = io[f"output.{name}"]
        atol, rtol = tolerance(case, name)
        assert actual.dtype == torch.float32
        torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")

    # The golden tracks really move away from the queries (frame 0 excepted), so the check above
    # is not satisfied by an identity tracker.
    moved = (io["output.track"][:, 1:] - query_points[:, None]).abs().max()
    assert moved > 100 * tolerance(case, "track")[0]
    torch.testing.assert_close(coord_preds[-1][:, 0], query_points, atol=1e-6, rtol=0)


def test_state_dict_layout_matches_vggt1b(deterministic):
    manifest = json.loads((REFERENCE / "vggt1b_manifest.json").read_text())
    expected = [
        (e["name"][len(PREFIX):], tuple(e["shape"]), e["dtype"])
        for e in manifest["entries"]
        if e["name"].startswith(PREFIX)
    ]
    assert expected, "manifest has no tracker entries"
    with torch.device("meta"):
        tracker = Tracker(TrackerConfig())
    actual = [(name, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in tracker.state_dict().items()]
    assert [a[0] for a in actual] == [e[0] for e in expected]  # names, in upstream's order
    assert actual == expected


def test_optional_parts_change_the_state_dict():
    base = dict(latent_dim=16, hidden_size=32, corr_levels=2, corr_radius=1, depth=2)
    with torch.device("meta"):
        full = Tracker(TrackerConfig(**base)).state_dict()
        no_conf = Tracker(TrackerConfig(**base, predict_conf=False)).state_dict()
        no_space = Tracker(TrackerConfig(**base, use_spaceatt=False)).state_dict()
    assert set(full) - set(no_conf) == {"conf_predictor.0.weight", "conf_predictor.0.bias"}
    assert not any(k.startswith("updateformer.space_") or k == "updateformer.virual_tracks" for k in no_space)
    assert set(no_space) < set(full)


def test_without_conf_and_space_attention(deterministic):
    torch.manual_seed(0)
    cfg = TrackerConfig(latent_dim=16, hidden_size=32, corr_levels=2, corr_radius=1, depth=2,
                        use_spaceatt=False, predict_conf=False, stride=4)
    tracker = Tracker(cfg).eval()
    B, S, N, HH, WW = 2, 3, 5, 9, 11
    query_points = torch.rand(B, N, 2) * torch.tensor([(WW - 1) * cfg.stride, (HH - 1) * cfg.stride])
    with torch.no_grad():
        coord_preds, vis, conf = tracker(query_points, torch.randn(B, S, cfg.latent_dim, HH, WW), iters=2)
    assert conf is None
    assert [tuple(c.shape) for c in coord_preds] == [(B, S, N, 2)] * 2
    assert vis.shape == (B, S, N) and bool(((vis > 0) & (vis < 1)).all())
    torch.testing.assert_close(coord_preds[-1][:, 0], query_points, atol=1e-6, rtol=0)
