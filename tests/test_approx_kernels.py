"""K/V subsampling and block sparsity on dense kernels (``model.approx_kernel``) and FP8 linear layers
(``model.linear_precision``): each computes what it claims, against the flex path and the bf16 model."""

import math
import os
import sys
import types
from typing import NamedTuple

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


SLOW_S = 0.2  # what the slowed kernel adds per call in the auto tests: far above the CPU's jitter under load


def test_auto_times_both_kernels_once_per_layout_and_keeps_the_faster(monkeypatch):
    net, images = _small(frames=4)
    flex_calls = []
    real = A.subsampled_attention

    def slow_flex(*args, **kw):
        flex_calls.append(1)
        import time

        time.sleep(SLOW_S)
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

        time.sleep(SLOW_S)
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


# ---- block sparsity (global_sparsity) on its kernels -----------------------------------------------
def _sdpa(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def _reordered(q, k, plan):
    """The patch queries and the keys in the order block sparsity attends them (patches, then specials)."""
    return q[:, plan.patch_idx], k[:, torch.cat((plan.patch_idx, plan.special_idx))]


@pytest.mark.parametrize("B", [1, 2])
def test_the_block_list_kernel_computes_the_flex_paths_function_in_fp32(B):
    """The eager kernel on the compact block lists (what FlashAttention-4 is handed) against flex's padded
    BlockMask, to 1e-5 in fp32, with a partial last query block and a partial last key block; it reads
    exactly the listed entries: entries past a count change nothing, one entry fewer is another function."""
    layout = A.Layout(frames=40, **GRID)
    plan = A.SparsePlan(layout, None, "cpu")
    assert plan.n_patch % A.BLOCK and plan.length % A.BLOCK  # both last blocks partial
    q, k, v = _qkv(layout, B=B, H=3)
    flex = A.block_sparse_attention(q, k, v, layout, 0.5, _sdpa)
    eager = A.block_sparse_attention(q, k, v, layout, 0.5, _sdpa, PA.KERNELS["eager"])
    assert eager.shape == flex.shape == (B, 3, layout.length, 8)
    assert (eager - flex).abs().max() < 1e-5
    assert (eager - _sdpa(*(t.transpose(1, 2) for t in (q, k, v)))).abs().max() > 1e-2  # blocks were skipped
    q_patch, k_cat = _reordered(q, k, plan)
    v_cat = _reordered(q, v, plan)[1]
    counts, indices = A.block_lists(A.block_selection(q_patch, k_cat, plan, 0.5), plan)
    assert indices.shape[-1] < plan.kv_blocks
    out = PA.KERNELS["eager"].block_sparse(q_patch, k_cat, v_cat, counts, indices, A.BLOCK)
    assert out.shape == q_patch.shape
    assert (out - flex[:, :, plan.patch_idx].transpose(1, 2)).abs().max() < 1e-5
    junk = torch.randint(0, plan.kv_blocks, indices.shape[:-1] + (3,), dtype=torch.int32)
    wider = PA.KERNELS["eager"].block_sparse(q_patch, k_cat, v_cat, counts, torch.cat((indices, junk), -1), A.BLOCK)
    assert torch.equal(wider, out)
    fewer = PA.KERNELS["eager"].block_sparse(q_patch, k_cat, v_cat, counts - 1, indices, A.BLOCK)
    assert (fewer - out).abs().max() > 1e-3  # without its last listed block (the partial key block)


def test_the_model_with_block_sparsity_on_each_kernel_computes_the_same_and_reports_which_ran():
    net, images = _small(frames=24)
    flex = _last(net, images, global_sparsity=0.75, approx_kernel="flex", memory_plan="lean", token_chunk=100)
    assert net.attention_report() == "frame=sdpa global=sdpa approx=flex"
    dense = _last(net, images, global_sparsity=0.75, approx_kernel="dense", memory_plan="lean", token_chunk=100)
    # FlashAttention-4 does not run on the CPU: the eager kernel on the same lists, and the label says so
    assert net.attention_report() == "frame=sdpa global=sdpa approx=dense(eager)"
    assert (dense - flex).abs().max() / flex.abs().max() < 1e-5
    auto = _last(net, images, global_sparsity=0.75, memory_plan="lean", token_chunk=100)  # approx_kernel=auto
    assert net.attention_report() in ("frame=sdpa global=sdpa approx=auto(flex)",
                                      "frame=sdpa global=sdpa approx=auto(dense(eager))")
    assert (auto - flex).abs().max() / flex.abs().max() < 1e-5
    exact = _last(net, images, memory_plan="lean", token_chunk=100)
    assert "approx" not in net.attention_report()
    assert (dense - exact).abs().max() > 1e-3


def test_without_flash_attention_4_block_sparsity_falls_back_to_the_eager_kernel():
    assert PA._fa4_why_not("cpu", torch.bfloat16, 64)  # not installed here, or not on the CPU: the reason
    assert PA.fastest("cpu", torch.bfloat16, 64) is PA.KERNELS["eager"]
    choice = A.KernelChoice("dense", torch.device("cpu"), torch.bfloat16, 64)
    assert choice.dense.block_sparse is PA._eager_block_sparse and choice.label() == "dense(not run yet)"


def test_auto_times_both_block_sparse_kernels_once_per_layout_and_keeps_the_faster(monkeypatch):
    import time

    net, images = _small(frames=24)
    calls = []
    real = A.block_sparse_attention

    def slow(which):
        def run(q, k, v, layout, sparsity, attend, kernel=None):
            calls.append("flex" if kernel is None else "dense")
            if ("flex" if kernel is None else "dense") == which:
                time.sleep(SLOW_S)
            return real(q, k, v, layout, sparsity, attend, kernel)
        return run

    monkeypatch.setattr(A, "block_sparse_attention", slow("flex"))
    _last(net, images, global_sparsity=0.75)
    choice = net.sites["approx"]
    assert choice.label() == "auto(dense(eager))"
    (shapes, timings), = choice.timings.items()  # measured once for the layout, for every layer after it
    assert set(timings) == {"flex", "dense(eager)"} and timings["flex"] > timings["dense(eager)"]
    # one untimed call and the timed ones each; the layers run _block_sparse, not this
    assert sorted(calls) == ["dense"] * (1 + A.AUTO_REPEATS) + ["flex"] * (1 + A.AUTO_REPEATS)
    assert shapes[0] == (1, A.AUTO_FRAMES * 45, 2, 64)  # the layer's own first AUTO_FRAMES frames
    monkeypatch.setattr(A, "block_sparse_attention", slow("dense"))
    _last(net, images, global_sparsity=0.75)  # a new configure: measured again
    assert net.sites["approx"].label() == "auto(flex)"


def _fake_flash_attn(monkeypatch, calls):
    """FlashAttention-4's block-sparse entry point as the CPU can run it: it checks what it is handed as the
    SM90 kernel needs it and computes the function with the eager kernel from exactly those lists."""

    class BlockSparseTensorsTorch(NamedTuple):
        mask_block_cnt: torch.Tensor
        mask_block_idx: torch.Tensor
        full_block_cnt: torch.Tensor = None
        full_block_idx: torch.Tensor = None
        cu_total_m_blocks: torch.Tensor = None
        cu_block_idx_offsets: torch.Tensor = None
        block_size: tuple = None

    def flash_attn_func(q, k, v, causal=False, block_sparse_tensors=None, return_lse=False, **rest):
        t = block_sparse_tensors
        assert not rest and not causal and not return_lse and t.block_size == (A.BLOCK, A.BLOCK)
        assert all(x.is_contiguous() for x in (q, k, v))
        assert not t.mask_block_cnt.any() and t.mask_block_idx.shape == t.mask_block_cnt.shape + (1,)
        for x in (t.mask_block_cnt, t.mask_block_idx, t.full_block_cnt, t.full_block_idx):
            assert x.dtype == torch.int32
        calls.append((q.shape, k.shape, t.full_block_cnt, t.full_block_idx))
        return PA._eager_block_sparse(q, k, v, t.full_block_cnt, t.full_block_idx, t.block_size[1]), None

    package, cute, sparsity = (types.ModuleType(n) for n in ("flash_attn", "flash_attn.cute",
                                                              "flash_attn.cute.block_sparsity"))
    sparsity.BlockSparseTensorsTorch = BlockSparseTensorsTorch
    for module in (package, cute, sparsity):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(PA, "_fa4", lambda: (flash_attn_func, None))
    monkeypatch.setattr(PA, "fastest", lambda *a: PA.KERNELS["flash_attn4"])


def test_flash_attention_4_is_handed_token_major_tensors_and_the_compact_ascending_lists(monkeypatch):
    calls = []
    _fake_flash_attn(monkeypatch, calls)
    net, images = _small(frames=24)
    fa4 = _last(net, images, global_sparsity=0.75, approx_kernel="dense")
    assert net.attention_report() == "frame=sdpa global=sdpa approx=dense(flash_attn4)"
    flex = _last(net, images, global_sparsity=0.75, approx_kernel="flex")
    assert (fa4 - flex).abs().max() / flex.abs().max() < 1e-5
    assert len(calls) == net.config.aggregator.depth  # once per global layer
    plan = A.SparsePlan(A.Layout(24, 45, 5, 5, 8), None, "cpu")
    width = A.kept_blocks(plan.scored, 0.75, plan.own_max) + plan.kv_blocks - plan.scored
    for q_shape, k_shape, counts, indices in calls:
        assert q_shape == (1, plan.n_patch, 2, 64) and k_shape == (1, plan.length, 2, 64)  # [B, L, H, D]
        assert indices.shape == (1, 2, plan.q_blocks, width) and width < plan.kv_blocks  # compact
        assert bool((counts == width).all()) and bool((indices.diff(dim=-1) > 0).all())
        assert bool((indices[..., -1] == plan.kv_blocks - 1).all())  # the partial last key block: first processed


def test_dense_block_sparsity_holds_no_padded_index_nor_every_score(monkeypatch):
    """At 800 frames the padded ``[B, H, q_blocks, kv_blocks]`` index flex's BlockMask takes and the
    ``[B, H, q_blocks, scored]`` fp32 selection scores are each about 1.4 x one of Q, K, V (16 heads x ~5,550
    blocks squared). Here, with 8-token blocks so that they weigh as much against Q, K, V, counted with the
    live-tensor counter and the fused kernels stood in by their outputs: the dense kernel's path holds the
    reordered Q, K, V, its output and the compact lists at most; flex's holds the padded index too."""
    from vggt_bench.profiling.tensor_memory import LiveTensorMemory

    monkeypatch.setattr(A, "BLOCK", 8)
    monkeypatch.setattr(A, "_PLANS", {})
    monkeypatch.setattr(A, "SIM_ELEMENTS", 4096)
    def output(q, v, *rest):
        return q.new_zeros(q.shape[:-1] + v.shape[-1:])

    monkeypatch.setattr(A, "_flex", lambda q, k, v, block_mask, score_mod=None: output(q, v))
    standin = PA.Kernel("standin", None, None, lambda *a: None, lambda q, k, v, *lists: output(q, v))
    layout = A.Layout(frames=64, tokens=45, specials=5, rows=5, cols=8)
    q, k, v = _qkv(layout, B=1, H=4, D=16)
    plan = A.SparsePlan(layout, None, "cpu")
    one = q.numel() * 4
    padded = plan.q_blocks * plan.kv_blocks * 4 * 4  # [1, H, q_blocks, kv_blocks] int32
    assert padded > 2 * one

    def peak(kernel):
        with torch.inference_mode(), LiveTensorMemory() as counter:
            A.block_sparse_attention(q, k, v, layout, 0.9, _sdpa, kernel)
        return counter.peak_bytes

    width = A.kept_blocks(plan.scored, 0.9, plan.own_max) + plan.kv_blocks - plan.scored
    lists = plan.q_blocks * width * 4 * 4
    dense, flex = peak(standin), peak(None)
    assert dense <= 4 * one + lists + 0.3 * one, (dense / one, lists / one)
    assert flex > dense + padded, (flex / one, dense / one)


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


def test_the_committed_2026_12_08_study_backs_the_readmes_compiled_400_frame_row():
    """reports/h100-2026-12-08/approx: every row compiled on one H100, the approximations on their dense
    FlashAttention-4 kernels (block sparsity too), at 400 frames: kv_keep=0.03 at 8.60x over the compiled
    exact model (the README's row), every approximation under the exact model's activation memory, and no
    yardstick in the run (prune_depth=4 not run again), which the tool says rather than inventing one."""
    from pathlib import Path

    from vggt_bench.analysis import findings
    from vggt_bench.analysis.approximations import approximation_table, best_within_yardstick
    from vggt_bench.core.results import load_results

    rows = load_results(str(Path(__file__).resolve().parents[1] / "reports" / "h100-2026-12-08" / "approx"))
    assert rows["gpu_uuid"].nunique() == 1 and set(rows["compile"]) == {"default"} and set(rows["frames"]) == {400}
    dense = rows[(rows["kv_keep"] < 1) | (rows["global_sparsity"] > 0)]
    assert len(dense) == 3 and dense["attention_ran"].str.contains(r"approx=dense\(flash_attn4\)").all()
    table = approximation_table(rows).set_index("setting")
    assert table.loc["kv_keep=0.03", "speedup"] == pytest.approx(25_096.3 / 2_918.3, rel=1e-4)
    assert table.loc["kv_keep=0.03", "speedup_fastest"] == table.loc["kv_keep=0.03", "speedup"]
    assert table.loc["kv_keep=0.05", "speedup"] == pytest.approx(7.355, abs=1e-3)
    assert table.loc["merge_ratio=0.65", "noisy"] and not table.drop("merge_ratio=0.65")["noisy"].any()
    exact = rows[(rows["kv_keep"] == 1) & (rows["global_sparsity"] == 0) & (rows["merge_ratio"] == 0)]
    assert (rows.drop(exact.index)["act_gib"] < float(exact["act_gib"].iloc[0])).all()
    assert best_within_yardstick(approximation_table(rows)) is None
    text = " ".join(line for f in findings.findings(rows) for line in f.lines)
    assert "the fastest measured is kv_keep=0.03, 8.60× over the exact model" in text and "No yardstick" in text
