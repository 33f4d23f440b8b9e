"""Attention per call site, FlashAttention-4 in the registry, and `auto` chosen by measurement."""

import os
import sys
import types

import pytest
import torch
import torch.nn.functional as F

import vggt_model
from conftest import run_cli as cli
from vggt_bench.core.results import load_results
from vggt_bench.commands.verify import verify_case
from vggt_model import attention

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "reference")
CASES = ["tiny_vggt", "tiny_dinov2_aggregator"]


def settings(**kw):
    from vggt_bench.core.config import ModelSettings

    return ModelSettings(**{"dtype": "fp32", "attention": "sdpa_math", **kw})


def test_flash_attn4_is_in_the_registry_and_says_why_it_cannot_run_here():
    assert "flash_attn4" in attention.BACKENDS and attention.BACKENDS["flash_attn4"].auto
    reason = attention.why_unavailable("flash_attn4", "cpu", torch.bfloat16, 64)
    assert reason is not None and ("flash-attn-4" in reason or "CUDA only" in reason)
    done = cli("backends")
    assert done.returncode == 0 and "flash_attn4" in done.stdout


def test_flash_attn4_wrapper_hands_the_kernel_token_major_tensors_in_the_autocast_dtype(monkeypatch):
    """With a stand-in for flash_attn.cute (the real one needs a Hopper GPU): layout and dtype."""
    seen = []

    def flash_attn_func(q, k, v, causal=False):  # FA4's layout: [B, N, H, D]
        seen.append((q.dtype, q.shape, q.stride(-1), causal))
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2), None

    cute = types.ModuleType("flash_attn.cute")
    cute.flash_attn_func = flash_attn_func
    package = types.ModuleType("flash_attn")
    package.cute = cute
    monkeypatch.setitem(sys.modules, "flash_attn", package)
    monkeypatch.setitem(sys.modules, "flash_attn.cute", cute)
    attention._flash_attn4_fn.cache_clear()
    try:
        fn = attention._flash_attn4_fn()
        q, k, v = (torch.randn(2, 4, 10, 8) for _ in range(3))  # [B, H, N, D]
        ref = F.scaled_dot_product_attention(q, k, v)
        assert torch.allclose(fn(q, k, v), ref, atol=1e-6)
        assert seen[-1] == (torch.float32, (2, 10, 4, 8), 1, False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn(q, k[:, :, :7], v[:, :, :7])  # fewer keys than queries: chunked queries do this
        assert seen[-1][0] == torch.bfloat16 and out.shape == (2, 4, 10, 8)
        assert attention._flash_attn_fn() is None  # FA4's namespace is not the FA2/FA3 package
    finally:
        attention._flash_attn4_fn.cache_clear()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("frame_site, global_site", [("eager", "sdpa_math"), ("sdpa_math", "eager"),
                                                     ("auto", "same"), ("sdpa", "auto"), ("auto", "auto")])
def test_per_site_backends_and_auto_are_exact_on_every_reference_case(case, frame_site, global_site):
    checks = verify_case(os.path.join(FIXTURES, case), "cpu", settings(attention=frame_site, global_attention=global_site))
    assert all(c.passed for c in checks), [(c.name, c.worst) for c in checks if not c.passed]


def test_each_site_runs_its_own_backend():
    net = vggt_model.build(vggt_model.VGGTConfig.small(), "cpu")
    calls = {"frame": 0, "global": 0}
    real = attention.BACKENDS["sdpa_math"].fn

    def counting(site):
        def fn(q, k, v):
            calls[site] += 1
            return real(q, k, v)
        return fn

    net.configure(vggt_model.ExecutionConfig(attention="sdpa_math", global_attention="eager"))
    assert net.attention_report() == "frame=sdpa_math global=eager"
    net.aggregator.attend, net.aggregator.attend_global = counting("frame"), counting("global")
    with torch.inference_mode():
        net.aggregate(torch.rand(1, 2, 3, 28, 42))
    depth, vit_depth = net.config.aggregator.depth, net.config.vit_config().depth
    assert calls == {"frame": depth + vit_depth, "global": depth}


def test_auto_keeps_the_fastest_candidate_it_timed():
    slow, fast = [], []

    def make(name, log, delay):
        def fn(q, k, v):
            log.append(1)
            torch.ones(delay).cumsum(0)  # work that takes time in proportion to `delay`
            return F.scaled_dot_product_attention(q, k, v)
        return attention.Backend(name, fn, name, lambda *a: None, auto=True)

    auto = attention.Auto("global", [make("slow", slow, 3_000_000), make("fast", fast, 10)])
    q = torch.randn(1, 2, 5, 8)
    for _ in range(4):
        auto(q, q, q)
    assert auto.label() == "auto(fast)"
    key = next(iter(auto.timings))
    assert auto.timings[key]["slow"] > auto.timings[key]["fast"]
    assert len(slow) == 1 + attention.AUTO_REPEATS  # timed once, never used after
    assert len(fast) == 1 + attention.AUTO_REPEATS + 4


def test_auto_skips_a_candidate_that_fails_and_says_why():
    def broken(q, k, v):
        raise RuntimeError("no kernel for this layout")

    auto = attention.Auto("frame", [attention.Backend("broken", broken, "", lambda *a: None),
                                    attention.BACKENDS["sdpa"]])
    q = torch.randn(1, 2, 5, 8)
    auto(q, q, q)
    key = next(iter(auto.timings))
    assert auto.label() == "auto(sdpa)" and "no kernel" in auto.timings[key]["broken"]
    with pytest.raises(attention.BackendUnavailable, match="no exact fused backend"):
        attention.Auto("global", [])


def test_rows_record_what_each_site_ran(tmp_path):
    done = cli("run", "experiment=smoke", "frames=2", "model.attention=auto", "model.global_attention=sdpa_math",
               f"out={tmp_path}")
    assert done.returncode == 0, done.stderr[-2000:]
    row = load_results(str(tmp_path)).iloc[0]
    assert row["status"] == "ok" and row["global_attention"] == "sdpa_math"
    assert row["attention_ran"].startswith("frame=auto(") and row["attention_ran"].endswith("global=sdpa_math")
    assert '"frame"' in row["attention_auto"]


@pytest.mark.parametrize("arg, message", [
    ("model.global_attention=fastest", "unknown model.global_attention 'fastest'; choose one of ['same', 'eager',"),
    ("model.attention=flash4", "unknown model.attention 'flash4'; choose one of ['eager', 'sdpa',"),
])
def test_bad_backend_names_are_one_line(arg, message, tmp_path):
    done = cli("run", "experiment=smoke", arg, f"out={tmp_path}")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_an_unavailable_site_backend_is_an_unavailable_row(tmp_path):
    done = cli("run", "experiment=smoke", "frames=1", "model.global_attention=flash_attn4", f"out={tmp_path}")
    assert done.returncode == 0, done.stderr[-2000:]
    row = load_results(str(tmp_path)).iloc[0]
    assert row["status"] == "unavailable" and "flash_attn4" in row["message"]
