"""Analytic FLOPs against upstream's published facts and against torch's own FLOP counter."""

import json
import os

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import vggt_model
from vggt_bench.measure import flops

FACTS = json.load(open(os.path.join(os.path.dirname(__file__), "fixtures", "reference", "vggt1b_facts.json")))


def _shape(key):
    parts = dict(p.split("=") for p in key.split(","))
    return int(parts["H"]), int(parts["W"]), int(parts["S"])


@pytest.mark.parametrize("key", [k for k in FACTS["analytic_aggregator_flops"] if k != "formula"])
def test_vggt1b_aggregator_matches_upstream_facts(key):
    H, W, S = _shape(key)
    ours = flops.aggregator_flops(vggt_model.VGGTConfig(), H, W, S)
    theirs = FACTS["analytic_aggregator_flops"][key]
    assert ours["total"] == theirs["total"]
    assert ours["patch_embed"] == theirs["dinov2"] and ours["global_blocks"] == theirs["global_blocks"]


@pytest.mark.parametrize("key", [k for k in FACTS["measured_flops_random_weights"] if k != "note"])
def test_vggt1b_heads_match_upstream_flop_counter(key):
    H, W, S = _shape(key)
    theirs = FACTS["measured_flops_random_weights"][key]
    heads = flops.head_flops(vggt_model.VGGTConfig(), H, W, S)
    assert heads["camera_head"] == theirs["camera_head"]
    assert heads["depth_head"] == theirs["depth_head"] and heads["point_head"] == theirs["point_head"]


@pytest.mark.parametrize("prune_depth", [0, 3])
def test_small_aggregator_matches_flop_counter(prune_depth):
    cfg = vggt_model.VGGTConfig.small()
    net = vggt_model.build(cfg, "cpu")
    net.configure(vggt_model.ExecutionConfig(attention="sdpa_math", prune_depth=prune_depth))
    images = torch.rand(1, 3, 3, 56, 84)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net.aggregate(images)
    assert counter.get_total_flops() == flops.aggregator_flops(cfg, 56, 84, 3, prune_depth=prune_depth)["total"]


def test_conversion_removes_quadratic_global_cost():
    cfg = vggt_model.VGGTConfig()
    exact = flops.aggregator_flops(cfg, 336, 518, 100)
    pruned = flops.aggregator_flops(cfg, 336, 518, 100, prune_depth=9)
    per_layer_global = (exact["global_blocks"] - exact["frame_blocks"]) / 24  # global minus frame attention cost
    assert exact["total"] - pruned["total"] == pytest.approx(9 * per_layer_global)
