"""Our VGGT against upstream's golden outputs, its checkpoint layout, and its input contract."""

import json
import os

import pytest
import torch

import vggt_model
from vggt_model.config import VGGTConfig
from vggt_bench.commands.verify import verify_case

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "reference")
CASES = ["tiny_vggt", "tiny_dinov2_aggregator"]


def settings(**kw):
    from vggt_bench.core.config import ModelSettings

    base = dict(dtype="fp32", attention="sdpa_math")
    base.update(kw)
    return ModelSettings(**base)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("attention", ["sdpa_math", "eager", "sdpa"])
@pytest.mark.parametrize("frame_exec", ["fused", "sequential", "chunked"])
def test_reference_cases_pass_in_fp32(case, attention, frame_exec):
    checks = verify_case(os.path.join(FIXTURES, case), "cpu", settings(attention=attention, frame_exec=frame_exec, frame_chunk=2))
    failed = [(c.name, c.max_abs, c.note) for c in checks if not c.passed]
    assert not failed
    names = {c.name for c in checks}
    assert "aggregated_tokens.3" in names and "patch_embed_tokens" in names
    if case == "tiny_vggt":  # every head is compared, not only the aggregator
        assert {"depth", "world_points_conf", "pose_enc_list", "intrinsic", "track_list", "vis", "conf"} <= names


def test_prune_depth_changes_only_converted_and_later_layers():
    checks = {c.name: c for c in verify_case(os.path.join(FIXTURES, "tiny_vggt"), "cpu", settings(prune_depth=2))}
    # Layers 0 and 1 are the converted ones: layer 0's frame half is untouched, but its global half changes.
    assert checks["patch_embed_tokens"].passed
    for i in range(4):
        assert not checks[f"aggregated_tokens.{i}"].passed, f"layer {i} should drift"
    assert not checks["depth"].passed


def test_prune_depth_keeps_frame_half_of_first_converted_layer():
    case = os.path.join(FIXTURES, "tiny_vggt")
    from safetensors.torch import load_file

    cfg = VGGTConfig.from_modules(json.load(open(os.path.join(case, "case.json")))["modules"])
    net = vggt_model.VGGT(cfg).eval()
    net.load_state_dict(load_file(os.path.join(case, "state_dict.safetensors")))
    images = load_file(os.path.join(case, "io.safetensors"))["input.images"]
    net.configure(vggt_model.ExecutionConfig(attention="sdpa_math"))
    with torch.inference_mode():
        exact, _ = net.aggregate(images)
        net.configure(vggt_model.ExecutionConfig(attention="sdpa_math", prune_depth=1))
        pruned, _ = net.aggregate(images)
    C = cfg.aggregator.embed_dim
    assert torch.equal(exact[0][..., :C], pruned[0][..., :C])  # frame block of layer 0: same input, same output
    assert not torch.allclose(exact[0][..., C:], pruned[0][..., C:])  # its global block now attends per frame
    assert not torch.allclose(exact[3], pruned[3])


def test_prune_weights_frame_reuses_frame_block():
    cfg = VGGTConfig.from_modules(json.load(open(os.path.join(FIXTURES, "tiny_vggt", "case.json")))["modules"])
    torch.manual_seed(0)
    net = vggt_model.VGGT(cfg).eval()
    images = torch.rand(1, 3, 3, 56, 98)
    with torch.inference_mode():
        out = {}
        for weights in ("global", "frame"):
            net.configure(vggt_model.ExecutionConfig(prune_depth=1, prune_weights=weights))
            out[weights] = net.aggregate(images)[0][0]
        # With frame weights the converted global layer is the frame block applied a second time.
        block = net.aggregator.frame_blocks[0]
        x = out["frame"][..., : cfg.aggregator.embed_dim].reshape(3, -1, cfg.aggregator.embed_dim)
        rope = net.aggregator.rope_tables(4, 7, "cpu")
        again = block(x, net.aggregator.attend, rope)
    assert not torch.allclose(out["global"], out["frame"])
    torch.testing.assert_close(again.reshape(out["frame"].shape[:-1] + (-1,)), out["frame"][..., cfg.aggregator.embed_dim :])


def test_vggt1b_state_dict_equals_the_manifest():
    manifest = json.load(open(os.path.join(FIXTURES, "vggt1b_manifest.json")))
    with torch.device("meta"):
        net = vggt_model.VGGT(vggt_model.VGGTConfig())
    ours = [(k, list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in net.state_dict().items()]
    ref = [(e["name"], e["shape"], e["dtype"]) for e in manifest["entries"]]
    assert ours == ref
    assert sum(p.numel() for p in net.parameters()) == manifest["total_params"]


def test_only_cached_layers_are_kept():
    cfg = VGGTConfig.small()
    net = vggt_model.build(cfg, "cpu")
    with torch.inference_mode():
        tokens, start = net.aggregate(torch.rand(1, 2, 3, 28, 42))
    kept = [i for i, t in enumerate(tokens) if t is not None]
    assert kept == sorted(cfg.aggregator.cached_layers())
    assert tokens[-1].shape == (1, 2, 2 * 3 + start, 2 * cfg.aggregator.embed_dim)


@pytest.mark.parametrize(
    "shape, message",
    [
        ((1, 2, 3, 50, 98), "multiples of 14"),
        ((1, 2, 4, 56, 98), r"3 \(RGB\) channels"),
        ((1, 0, 3, 56, 98), "at least one"),
        ((3, 56, 98), "must be"),
    ],
)
def test_bad_images_get_one_line_errors(shape, message):
    net = vggt_model.build(VGGTConfig.small(), "cpu")
    with pytest.raises(vggt_model.InputError, match=message) as info:
        net(torch.rand(*shape))
    assert "\n" not in str(info.value)


def test_query_points_outside_the_image_are_refused():
    net = vggt_model.build(VGGTConfig.small(), "cpu")
    with pytest.raises(vggt_model.InputError, match="inside the image"):
        net(torch.rand(1, 2, 3, 28, 42), torch.tensor([[[41.5, 3.0]]]))


def test_execution_settings_are_validated():
    net = vggt_model.build(VGGTConfig.small(), "cpu")
    for bad, message in (
        (dict(frame_exec="parallel"), r"^unknown frame_exec 'parallel'; choose one of \['fused', 'sequential', 'chunked'\]$"),
        (dict(prune_depth=9), r"^prune_depth must be in 0\.\.8 \(depth\), got 9$"),
        (dict(frame_chunk=0), r"^frame_chunk must be >= 1, got 0$"),
        (dict(attention="nope"), r"^unknown attention 'nope'; choose one of \['eager', 'sdpa', "),
        (dict(prune_weights="other"), r"^unknown prune_weights 'other'; choose one of \['global', 'frame'\]$"),
        (dict(compile="fast"), r"^unknown compile 'fast'; choose one of \['off', "),
    ):
        with pytest.raises(vggt_model.ConfigError, match=message):
            net.configure(vggt_model.ExecutionConfig(**bad))


def test_every_execution_knob_is_one_field_with_its_metadata():
    """The knob list the harness, the results table and the report use is ExecutionConfig's fields."""
    from vggt_bench.core.config import ModelSettings
    from vggt_bench.core.schema import EXECUTION, KNOBS
    from vggt_model.config import APPROX, knob_fields

    names = [f.name for f in knob_fields(vggt_model.ExecutionConfig)]
    assert EXECUTION == names and set(names) <= set(KNOBS)
    assert set(names) <= {f.name for f in __import__("dataclasses").fields(ModelSettings)}
    for f in knob_fields(vggt_model.ExecutionConfig):
        assert f.metadata["help"], f.name
        if f.metadata["fidelity"] == APPROX and f.metadata["exact"] is not None:
            assert f.default == f.metadata["exact"], f"{f.name}: the default must be the exact model"
    assert vggt_model.ExecutionConfig().is_exact()
    assert not vggt_model.ExecutionConfig(prune_depth=2).is_exact()


def test_unavailable_backend_names_what_is_available():
    net = vggt_model.build(VGGTConfig.small(), "cpu")
    with pytest.raises(vggt_model.attention.BackendUnavailable, match="available here: .*sdpa_math"):
        net.configure(vggt_model.ExecutionConfig(attention="sdpa_cudnn"))


def test_every_backend_says_why_it_is_unavailable():
    table = vggt_model.attention.available("cpu", torch.float32, 64)
    assert set(table) == {"eager", "sdpa", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "sdpa_math", "flash_attn",
                          "flash_attn4", "flex"}
    assert table["eager"] is None and table["sdpa_math"] is None
    assert "CUDA" in table["sdpa_cudnn"]
    for name, reason in table.items():
        assert reason is None or len(reason) > 10


def test_available_backends_agree_with_eager():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 50, 64) for _ in range(3))
    ref = vggt_model.attention.eager(q.double(), k.double(), v.double())
    for name, reason in vggt_model.attention.available("cpu", torch.float32, 64).items():
        if reason is None:
            out = vggt_model.attention.BACKENDS[name].run(q, k, v)
            assert (out.double() - ref).norm() / ref.norm() < 1e-5, name


def test_random_init_is_seeded_and_finite():
    a = vggt_model.build(VGGTConfig.small(), "cpu", seed=3)
    b = vggt_model.build(VGGTConfig.small(), "cpu", seed=3)
    c = vggt_model.build(VGGTConfig.small(), "cpu", seed=4)
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.isfinite(pa).all(), name
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.aggregator.frame_blocks[0].attn.qkv.weight, c.aggregator.frame_blocks[0].attn.qkv.weight)
    with torch.inference_mode():
        out = a(torch.rand(1, 2, 3, 28, 42))
    assert all(torch.isfinite(t).all() for t in out.values() if isinstance(t, torch.Tensor))


def test_bf16_and_fp16_run_and_stay_close_to_fp32():
    net = vggt_model.build(VGGTConfig.small(), "cpu", seed=0)
    images = torch.rand(1, 2, 3, 28, 42)
    with torch.inference_mode():
        ref = net.aggregate(images)[0][-1]
        for precision in ("bf16_autocast", "bf16"):
            vggt_model.set_precision(net, precision)
            out = net.aggregate(images)[0][-1].float()
            assert (out - ref).norm() / ref.norm() < 3e-2, precision
        vggt_model.set_precision(net, "fp32")


def test_precision_round_trip_keeps_normalisation_constants_exact():
    # Regression: casting the whole model to bf16 and back rounded the ImageNet mean/std buffers,
    # which the checkpoint does not hold, so reloading the weights did not restore fp32 outputs.
    net = vggt_model.build(VGGTConfig.small(), "cpu", seed=0)
    images = torch.rand(1, 2, 3, 28, 42)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.inference_mode():
        ref = net.aggregate(images)[0][-1]
        vggt_model.set_precision(net, "bf16")
        vggt_model.set_precision(net, "fp32")
        net.load_state_dict(state)
        out = net.aggregate(images)[0][-1]
    assert torch.equal(out, ref)
    assert net.aggregator._resnet_mean.dtype == torch.float32
