"""K/V subsampling on dense kernels (``model.approx_kernel``) and FP8 linear layers
(``model.linear_precision``): each computes what it claims, against the flex path and the bf16 model."""

import math
import os

import pytest
import torch

import vggt_model
from conftest import run_cli as cli
from vggt_model import approximate as A
from vggt_model import attention, fp8
from vggt_model import partial_attention as PA
from vggt_model.config import ConfigError, ExecutionConfig, VGGTConfig

GRID = dict(tokens=5 + 6 * 7, specials=5, rows=6, cols=7)
APPROX_PRESETS = os.path.join(os.path.dirname(__file__), "..", "experiments", "approx")


def _qkv(layout, B=2, H=2, D=8, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(B, layout.length, H, D, generator=gen).to(dtype) for _ in range(3)]


# ---- the same function as the flex path ------------------------------------------------------------
@pytest.mark.parametrize("frames,keep", [(5, 0.25), (7, 0.01), (3, 0.5), (1, 0.25), (4, 0.999999)],
                         ids=["5x0.25", "7x0.01", "3x0.5", "one-frame", "nothing-dropped"])
def test_dense_parts_compute_the_flex_paths_function_in_fp32(frames, keep):
    """Own frame, the other frames' kept tokens (windows of a doubled pool) and their means (log-count
    shifted), merged by log-sum-exp: flex's single masked, score-modded attention to 1e-5 in fp32."""
    layout = A.Layout(frames=frames, **GRID)
    q, k, v = _qkv(layout)
    flex = A.subsampled_attention(q, k, v, layout, keep)
    dense = A.subsampled_attention_dense(q, k, v, layout, keep, PA.KERNELS["eager"])
    assert dense.shape == flex.shape
    assert (dense - flex).abs().max() < 1e-5
    # the exact model where a frame sees every key (one frame, or nothing dropped), another function otherwise
    exact = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)))
    whole = frames == 1 or A.WindowPlan(layout, keep, "cpu").dropped == 0
    assert ((dense - exact).abs().max() < 1e-5) == whole


def test_windows_of_the_doubled_pool_are_every_other_frame_in_turn():
    plan = A.WindowPlan(A.Layout(frames=4, **GRID), 0.25, "cpu")
    per = plan.per
    assert per == 5 + round(0.25 * 42)
    for f in range(4):
        start = int(plan.kept_starts[f])
        frames_seen = [(start + i * per) // per % 4 for i in range(3)]
        assert frames_seen == [(f + 1) % 4, (f + 2) % 4, (f + 3) % 4]  # all but its own
        assert int(plan.mean_starts[f]) == f + 1
    assert plan.log_count == pytest.approx(math.log(42 - round(0.25 * 42)))


def test_merge_of_parts_is_attention_over_their_union():
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 6, 3, 4, generator=gen) for _ in range(3))
    whole = PA._eager(q, k, v)
    parts = [PA._eager(q, k[:, a:b], v[:, a:b]) for a, b in ((0, 2), (2, 5), (5, 6))]
    merged = PA.merge(parts)
    assert (merged - whole[0]).abs().max() < 1e-6
    # a uniform bias on a part is its log-sum-exp shifted: the same as repeating those keys e^bias times
    twice = PA._eager(q, torch.cat((k, k[:, 5:]), 1), torch.cat((v, v[:, 5:]), 1))
    shifted = PA.merge(parts[:2] + [PA.shift(parts[2], math.log(2))])
    assert (shifted - twice[0]).abs().max() < 1e-6


def _small(frames=8):
    net = vggt_model.build(VGGTConfig.small(), "cpu", seed=1)
    images = torch.rand(1, frames, 3, 70, 112, generator=torch.Generator().manual_seed(0))
    return net, images


def _last(net, images, **execution):
    net.configure(ExecutionConfig(**execution))
    with torch.inference_mode():
        return net.aggregate(images)[0][-1]


@pytest.mark.parametrize("plan", ["upstream", "lean"])
def test_the_model_with_dense_kv_keep_matches_flex_and_reports_which_ran(plan):
    net, images = _small()
    flex = _last(net, images, kv_keep=0.25, approx_kernel="flex", memory_plan=plan, token_chunk=100)
    assert "approx=flex" in net.attention_report()
    dense = _last(net, images, kv_keep=0.25, approx_kernel="dense", memory_plan=plan, token_chunk=100)
    assert net.attention_report() == "frame=sdpa global=sdpa approx=dense(eager)"
    assert (dense - flex).abs().max() / flex.abs().max() < 1e-5
    exact = _last(net, images, memory_plan=plan, token_chunk=100)
    assert "approx" not in net.attention_report()
    assert (dense - exact).abs().max() > 1e-3


def test_auto_times_both_kernels_once_per_layout_and_keeps_the_faster(monkeypatch):
    net, images = _small(frames=4)
    flex_calls = []
    real = A.subsampled_attention

    def slow_flex(*args, **kw):
        flex_calls.append(1)
        import time

        time.sleep(0.05)
        return real(*args, **kw)

    monkeypatch.setattr(A, "subsampled_attention", slow_flex)
    _last(net, images, kv_keep=0.25, approx_kernel="auto")
    choice = net.sites["approx"]
    assert choice.label() == "auto(dense(eager))"
    (shapes, timings), = choice.timings.items()  # measured once for the layout, for every layer after it
    assert set(timings) == {"flex", "dense(eager)"} and timings["flex"] > timings["dense(eager)"]
    assert len(flex_calls) == 1 + A.AUTO_REPEATS  # one untimed call, then the timed ones; no layer ran flex
    assert shapes[0] == (1, 4 * 45, 2, 64)  # the layer's own first AUTO_FRAMES (here all 4) frames

    real_dense = A.subsampled_attention_dense

    def slow_dense(*args, **kw):
        import time

        time.sleep(0.05)
        return real_dense(*args, **kw)

    monkeypatch.setattr(A, "subsampled_attention", real)
    monkeypatch.setattr(A, "subsampled_attention_dense", slow_dense)
    _last(net, images, kv_keep=0.25, approx_kernel="auto")  # a new configure: measured again
    assert net.sites["approx"].label() == "auto(flex)"


def test_bad_approx_kernel_is_one_line():
    with pytest.raises(ConfigError, match=r"unknown model.approx_kernel 'fast'; choose one of \['auto', 'flex', 'dense'\]"):
        ExecutionConfig(approx_kernel="fast").validate(24, "model.")
    done = cli("run", "experiment=smoke", "frames=2", "model.kv_keep=0.5", "model.approx_kernel=fast")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith("choose one of ['auto', 'flex', 'dense']")


def test_dense_kv_keep_holds_less_than_the_exact_lean_model(monkeypatch):
    """The exact lean model holds a global layer's K and V whole; dense K/V subsampling holds the own-frame
    output and the pools of kept and mean tokens instead (K, V never whole), and queries ATTN_ROWS tokens at
    a time. Counted on the CPU with the live-tensor counter, the fused kernels stood in by their outputs (the
    CPU's eager kernel materialises every score, which FlashAttention never does), the query chunk the same
    share of the tokens as at 800 frames on a GPU (65,536 of 714,400), 160 patches a frame at keep 0.1
    (a pool of 21 of 165 tokens a frame; VGGT-1B's is 94 of 893)."""
    from vggt_bench.profiling.tensor_memory import LiveTensorMemory

    def attend(q, k, v):
        return q.new_zeros(q.shape[:-1] + v.shape[-1:]), q.new_zeros(q.shape[0], q.shape[2], q.shape[1], dtype=torch.float32)

    standin = PA.Kernel("standin", attend, lambda q, k, v, starts, length: attend(q, k, v), lambda *a: None)
    monkeypatch.setattr(PA, "fastest", lambda *a: standin)
    net = vggt_model.build(VGGTConfig.small(), "cpu", seed=1)
    vggt_model.set_precision(net, "bf16")
    S, tokens = 24, 5 + 10 * 16
    monkeypatch.setattr(A, "ATTN_ROWS", S * tokens * 65_536 // 714_400)
    images = torch.rand(1, S, 3, 140, 224, generator=torch.Generator().manual_seed(0)).bfloat16()
    one = S * tokens * 128 * 2  # one [N, C] in bf16

    def peak(**approx):
        net.configure(ExecutionConfig(memory_plan="lean", token_chunk=2 * tokens, attention="sdpa", **approx))
        with torch.inference_mode(), LiveTensorMemory() as counter:
            net.aggregate(images)
        return counter.peak_bytes / one

    exact, dense = peak(), peak(kv_keep=0.1, approx_kernel="dense")
    assert dense <= exact - 0.1, (dense, exact)


# ---- FP8 linear layers -----------------------------------------------------------------------------
def test_fp8_linears_are_unavailable_on_the_cpu_with_the_reason():
    net, images = _small(frames=2)
    vggt_model.set_precision(net, "bf16")
    with pytest.raises(attention.BackendUnavailable, match="needs a CUDA GPU with FP8 tensor cores"):
        net.configure(ExecutionConfig(linear_precision="fp8"))
    assert fp8.why_unavailable("cpu", torch.bfloat16).endswith("this is the CPU")


def test_fp8_linear_is_rowwise_scaled_and_undone_exactly():
    """The FP8 layer itself (torch._scaled_mm runs on this CPU build too): within e4m3's rounding of the bf16
    layer, any slice of output features as the whole layer gives them, the state dict unchanged, and bf16
    restored bit for bit."""
    gen = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(256, 96).bfloat16()
    x = torch.randn(3, 40, 256, generator=gen).bfloat16()
    with torch.no_grad():
        ref = layer(x)
        names = list(layer.state_dict())
        fp8.to_fp8(layer)
        out = layer(x)
        rows = layer.forward_rows(x, slice(32, 96))
    assert isinstance(layer, fp8.Fp8Linear) and list(layer.state_dict()) == names
    assert layer.weight_fp8.dtype == fp8.E4M3 and layer.weight_scale.shape == (96,)
    error = float((out.float() - ref.float()).norm() / ref.float().norm())
    assert 1e-3 < error < 0.06, error  # e4m3 keeps 3 mantissa bits: a few percent, not bf16's 0.4%
    assert torch.equal(rows, out[..., 32:96])
    fp8.to_bf16(layer)
    with torch.no_grad():
        assert type(layer) is torch.nn.Linear and torch.equal(layer(x), ref)


def test_fp8_on_the_command_line_is_an_unavailable_row(tmp_path):
    done = cli("sweep", "experiment=adhoc", f"out={tmp_path}", "frames=2", "model.arch=small", "report=false",
               "model.dtype=bf16", "approx=fp8", "measure.warmup=0", "measure.repeats=1")
    assert done.returncode == 0, done.stderr
    assert "unavailable" in done.stdout and "needs a CUDA GPU with FP8 tensor cores" in done.stdout


# ---- named combinations -----------------------------------------------------------------------------
def _preset(name):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(os.path.join(APPROX_PRESETS, f"{name}.yaml")))["model"]


def test_every_named_setting_is_a_valid_combination_and_says_every_approximation():
    names = sorted(f[:-5] for f in os.listdir(APPROX_PRESETS) if f.endswith(".yaml"))
    assert {"kv_keep_05", "kv_keep_10_fp8", "prune2_kv_keep_05_fp8", "fp8"} <= set(names)
    for name in names:
        values = _preset(name)
        # each names every approximation, so that one setting never inherits another's on the command line
        assert set(values) >= {"prune_depth", "kv_keep", "merge_ratio", "global_sparsity", "linear_precision"}, name
        ex = ExecutionConfig(**values).validate(24, "model.")
        assert ex.is_exact() == (name == "exact"), name
    combo = ExecutionConfig(**_preset("prune2_kv_keep_05_fp8"))
    assert combo.approximations() == ["kv_keep"] and combo.prune_depth == 2 and combo.linear_precision == "fp8"
    assert combo.approximated(2, 24) and not combo.approximated(1, 24)  # subsampled where not converted


def test_a_combination_that_leaves_no_global_layer_to_subsample_is_refused():
    with pytest.raises(ConfigError, match="has no global layer to act on"):
        ExecutionConfig(**{**_preset("prune2_kv_keep_05_fp8"), "prune_depth": 24}).validate(24, "model.")


# ---- two baselines: the exact model with the same backend, and the fastest exact setting ------------
def _row(**kw):
    base = dict(point_id="x", impl="ours", arch="vggt1b", device="cuda", frames=1000, batch=1, height=336, width=518,
                part="aggregator", query_points=0, inputs="synthetic", gpu_name="H100", status="ok", repeats=3,
                random_weights=True, checkpoint="", frame_exec="fused", attention="sdpa_cudnn", dtype="bf16",
                prune_depth=0, latency_ms_p10=None, latency_ms_p90=None)
    base.update(kw)
    if base["latency_ms_p10"] is None:
        base["latency_ms_p10"] = base["latency_ms_p90"] = base.get("latency_ms_median")
    return base


def test_every_approximation_names_its_exact_point_and_the_fastest_exact_setting():
    """An approximation on cuDNN beside an exact run on FlashAttention-4: a speedup over its own exact point
    flatters it; the table also gives the one over the fastest exact setting a user could run instead, never
    taking a noisy timing (or an FP8 row, an approximation) for that baseline."""
    import pandas as pd

    from vggt_bench.analysis import findings
    from vggt_bench.analysis.approximations import approximation_table, best_within_yardstick

    rows = pd.DataFrame([
        _row(latency_ms_median=200_000.0),                                              # exact, cuDNN
        _row(global_attention="flash_attn4", latency_ms_median=150_000.0),              # exact, FA4: the fastest
        _row(global_attention="flash_attn4", token_chunk=65536, latency_ms_median=140_000.0, repeats=1),  # noisy
        _row(linear_precision="fp8", global_attention="flash_attn4", latency_ms_median=145_000.0),  # FP8: approximate
        _row(prune_depth=4, latency_ms_median=168_000.0, drift_pose_rel=0.014, drift_depth_rel=0.0007, repeats=1),
        _row(kv_keep=0.05, latency_ms_median=20_000.0, drift_pose_rel=0.012, drift_depth_rel=0.0006),
    ])
    table = approximation_table(rows).set_index("setting")
    kv = table.loc["kv_keep=0.05"]
    assert kv["speedup"] == pytest.approx(10.0) and kv["speedup_fastest"] == pytest.approx(7.5)
    assert "flash_attn4" in kv["fastest_setting"] and "65536" not in kv["fastest_setting"]
    assert table.loc["fp8 linears", "technique"] == "linear_precision"  # listed as an approximation, not a baseline
    assert not kv["noisy"]
    best = best_within_yardstick(table.reset_index(), trusted=True)
    # the yardstick measured once (for its drift) leaves the verdict standing; its own flag is kept apart
    assert best["setting"] == "kv_keep=0.05" and not best["noisy"] and best["yardstick_noisy"]
    assert best["speedup_fastest"] == pytest.approx(7.5)
    text = " ".join(line for f in findings.findings(rows) for line in f.lines)
    assert ("is kv_keep=0.05: 10.00× over the exact model with the same backend, 7.50× over the fastest exact "
            "setting measured (fused · sdpa_cudnn · global_attention=flash_attn4 · bf16") in text


def test_the_pareto_figure_draws_the_speedup_over_the_fastest_exact_setting_where_it_differs():
    import pandas as pd

    from vggt_bench.report import plots

    def legend(rows):
        figure = plots.approximations(pd.DataFrame(rows)).figure
        return [h.get_label() for h in figure.axes[-1].get_legend().legend_handles], figure

    same = [_row(latency_ms_median=200_000.0),
            _row(prune_depth=4, latency_ms_median=168_000.0, drift_pose_rel=0.014, drift_depth_rel=0.0007),
            _row(kv_keep=0.05, latency_ms_median=20_000.0, drift_pose_rel=0.012, drift_depth_rel=0.0006)]
    labels, _ = legend(same)
    assert "hollow: over the fastest exact setting" not in labels  # one baseline: nothing more to draw
    labels, figure = legend(same + [_row(global_attention="flash_attn4", latency_ms_median=150_000.0)])
    assert "hollow: over the fastest exact setting" in labels
    hollow = {round(float(c.get_offsets()[0][0]), 4) for ax in figure.axes[:-1] for c in ax.collections
              if len(c.get_offsets()) and len(c.get_facecolors()) == 0}
    assert hollow == {7.5, round(150 / 168, 4)}  # kv_keep and prune_depth=4 over the 150 s FlashAttention-4 run


def test_the_committed_2026_12_07_study_gives_its_verdict_against_the_fastest_exact_setting():
    """reports/h100-2026-12-07/approx: at 1,000 frames every row runs the fastest exact setting (FA4 global,
    cuDNN frame, lean with 65,536-token chunks), so the two baselines are one row: kv_keep=0.05 at 8.85x,
    under prune_depth=4's camera and depth drift (prune_depth=4 measured once, for its drift); issue 26's
    targets (10x, 15 s) are not met, and the tool says 8.85x, not more."""
    from pathlib import Path

    from vggt_bench.analysis import findings
    from vggt_bench.analysis.approximations import approximation_table, best_within_yardstick
    from vggt_bench.core.results import load_results

    rows = load_results(str(Path(__file__).resolve().parents[1] / "reports" / "h100-2026-12-07" / "approx"))
    assert rows["gpu_uuid"].nunique() == 1
    table = approximation_table(rows)
    at = table[table["frames"] == 1000].set_index("setting")
    assert at.loc["kv_keep=0.05", "speedup"] == pytest.approx(149_882.921875 / 16_927.275391, rel=1e-6)
    assert at.loc["kv_keep=0.05", "speedup_fastest"] == at.loc["kv_keep=0.05", "speedup"]
    best = best_within_yardstick(table, trusted=True)
    assert best["frames"] == 1000 and best["setting"] == "kv_keep=0.05" and not best["noisy"]
    assert best["yardstick_noisy"] and best["drift_pose_rel"] < best["yardstick_drift_pose_rel"]
    assert 8.8 < best["speedup"] < 10.0  # issue 26's 10x: missed
    fp8 = table[table["technique"] == "linear_precision"].iloc[0]
    assert fp8["speedup"] < 1.0  # FP8 linears ran slower than bf16 on this stack
    text = " ".join(line for f in findings.findings(rows) for line in f.lines)
    assert "at S=1000 is kv_keep=0.05: 8.85× over the exact model (also the fastest exact setting measured)" in text
