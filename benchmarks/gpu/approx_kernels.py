"""K/V subsampling's attention on its two kernels, and FP8 linear layers, at VGGT-1B's shapes.

For each frame count: one global layer's kv_keep attention (16 heads x 64, 893 tokens per frame, bf16)
through flex attention (``approx_kernel=flex``) and through the three merged dense parts on
FlashAttention-4 (``approx_kernel=dense``): time (CUDA events, median), TFLOP/s counted over the keys each
query attends, and, up to ``--check-frames``, each output's relative L2 error against the same function in
fp32 (the eager kernel on the bf16 inputs upcast). Then the FP8 linear layer against bf16 at the blocks'
shapes. Written for the H100 studies (docs/BENCHMARKS.md):

    python benchmarks/gpu/approx_kernels.py --frames 64,800,1000 --keep 0.1,0.05

With ``--sparsity`` (e.g. ``0.9``), first, per frame count: one global layer's block-sparse attention
(``global_sparsity``) on the same block lists through flex attention (``approx_kernel=flex``: the padded
``BlockMask``) and through FlashAttention-4's block-sparse forward (``approx_kernel=dense``: the compact
lists, token-major Q, K, V): the patch queries' kernel alone (ms, TFLOP/s counted over the key blocks each
query block attends, the partial last key block at its length), the whole function (camera/register
queries, reordering, block selection, lists, ms), and up to ``--check-frames`` each kernel's relative L2
error against the eager block-list kernel in fp32 on the same lists. Check it at 64 frames first:

    python benchmarks/gpu/approx_kernels.py --frames 64 --sparsity 0.9 --keep "" --linear-rows ""
"""

from __future__ import annotations

import argparse

import torch

from flex_kv_keep import timed  # CUDA-event median, beside this script (benchmarks/gpu/)
from vggt_model import approximate as A
from vggt_model import fp8, partial_attention as PA

H, D, TOKENS, SPECIALS, ROWS, COLS = 16, 64, 893, 5, 24, 37


def rel(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def attended_flops(layout: A.Layout, keep: float) -> int:
    """QK^T and AV over the keys each query attends (own frame, other frames' kept tokens and means)."""
    plan = A.WindowPlan(layout, keep, "cpu")
    others = (layout.frames - 1) * (plan.per + (1 if plan.dropped else 0))
    return 4 * layout.length * (layout.tokens + others) * H * D


def attention(frames: list, keeps: list, check: int, repeats: int, flex_frames: int):
    print("frames keep | flex ms TFLOP/s | dense ms TFLOP/s (own, kept, means ms) | rel L2 vs fp32: flex dense")
    for S in frames:
        layout = A.Layout(S, TOKENS, SPECIALS, ROWS, COLS)
        gen = torch.Generator(device="cuda").manual_seed(S)
        q, k, v = (torch.randn(1, layout.length, H, D, device="cuda", dtype=torch.bfloat16, generator=gen)
                   for _ in range(3))
        fa4 = PA.KERNELS["flash_attn4"]
        for keep in keeps:
            flops = attended_flops(layout, keep)
            with_flex = S <= flex_frames  # compiling flex takes a minute per layout: where it is compared
            flex = A.subsampled_attention(q, k, v, layout, keep) if with_flex else None
            dense = A.subsampled_attention_dense(q, k, v, layout, keep, fa4)
            errors = ""
            if S <= check:
                ref = A.subsampled_attention_dense(q.float(), k.float(), v.float(), layout, keep, PA.KERNELS["eager"])
                errors = f"{rel(flex, ref) if with_flex else float('nan'):.2e} {rel(dense, ref):.2e}"
                del ref
            del flex, dense
            t_flex = timed(lambda: A.subsampled_attention(q, k, v, layout, keep), repeats) if with_flex else float("nan")
            t_dense = timed(lambda: A.subsampled_attention_dense(q, k, v, layout, keep, fa4), repeats)
            # the parts alone: where the dense path's time goes
            plan = A.WindowPlan(layout, keep, "cuda")
            pools = A._Pools(k, 1, plan, layout)
            pools.fill(k.view(1, S, TOKENS, H, D), v.view(1, S, TOKENS, H, D), slice(0, S), plan)
            qf, kf, vf = (t[0].view(S, TOKENS, H, D) for t in (q, k, v))
            t_own = timed(lambda: fa4.attend(qf, kf, vf), repeats)
            pk, pv = (t[0].view(-1, H, D) for t in pools.kept)
            t_kept = timed(lambda: fa4.windows(qf, pk, pv, plan.kept_starts, (S - 1) * plan.per), repeats) if S > 1 else 0
            t_means = 0.0
            if pools.means is not None and S > 1:
                mk, mv = (t[0].view(-1, H, D) for t in pools.means)
                t_means = timed(lambda: fa4.windows(qf, mk, mv, plan.mean_starts, S - 1), repeats)
            kept_flops = 4 * layout.length * (S - 1) * plan.per * H * D
            print(f"{S:5d} {keep:.3f} | {t_flex:9.2f} {flops / t_flex / 1e9:6.0f} | {t_dense:9.2f} {flops / t_dense / 1e9:6.0f} "
                  f"({t_own:.2f}, {t_kept:.2f} = {kept_flops / max(t_kept, 1e-9) / 1e9:.0f} TFLOP/s, {t_means:.2f}) | {errors}",
                  flush=True)
            del pools
        del q, k, v
        torch.cuda.empty_cache()


def sparse_flops(plan, counts, indices) -> int:
    """QK^T and AV over the key blocks each query block attends: its rows x the keys of its listed blocks
    (every block BLOCK keys but the last, which holds what is left of the sequence)."""
    keys = torch.clamp(plan.length - torch.arange(plan.kv_blocks, device=indices.device) * A.BLOCK, max=A.BLOCK)
    rows = torch.clamp(plan.n_patch - torch.arange(plan.q_blocks, device=indices.device) * A.BLOCK, max=A.BLOCK)
    listed = torch.arange(indices.shape[-1], device=indices.device) < counts[..., None]
    per_block = torch.where(listed, keys[indices.long()], 0).sum(-1)  # [B, H, q_blocks] keys attended
    return int((per_block * rows).sum()) * 4 * D


def _specials(q, k, v):
    """The camera/register queries' dense part of block sparsity: the same for both kernels."""
    return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def sparse_point(layout, plan, qkv, reordered, s: float, check: bool, repeats: int, with_flex: bool) -> str:
    """One line of the block-sparsity table: ``qkv`` the layer's Q, K, V, ``reordered`` its patch queries and
    its keys and values in block sparsity's order (patches, then specials), each ``[1, L, H, D]``."""
    fa4, eager = PA.KERNELS["flash_attn4"], PA.KERNELS["eager"]
    q_patch, k_cat, v_cat = reordered
    counts, indices = A.block_lists(A.block_selection(q_patch, k_cat, plan, s), plan)
    flops = sparse_flops(plan, counts, indices)
    mask = A.sparse_block_mask((counts, indices), plan, with_mask_mod=False) if with_flex else None
    qt, kt, vt = (t.transpose(1, 2) for t in reordered)

    def run_flex():
        return A._flex(qt, kt, vt, mask).transpose(1, 2)

    def run_fa4():
        return fa4.block_sparse(q_patch, k_cat, v_cat, counts, indices, A.BLOCK)

    errors = ""
    if check:
        ref = eager.block_sparse(q_patch.float(), k_cat.float(), v_cat.float(), counts, indices, A.BLOCK)
        errors = f"{rel(run_flex(), ref) if with_flex else float('nan'):.2e} {rel(run_fa4(), ref):.2e}"
        del ref
    nan = float("nan")
    t_flex = timed(run_flex, repeats) if with_flex else nan
    t_fa4 = timed(run_fa4, repeats)
    w_flex = timed(lambda: A.block_sparse_attention(*qkv, layout, s, _specials), repeats) if with_flex else nan
    w_fa4 = timed(lambda: A.block_sparse_attention(*qkv, layout, s, _specials, fa4), repeats)
    return (f"{layout.frames:5d} {s:.3f} | {t_flex:9.2f} {flops / t_flex / 1e9:6.0f} | {t_fa4:9.2f} "
            f"{flops / t_fa4 / 1e9:6.0f} | {w_flex:9.2f} | {w_fa4:9.2f} | {errors}")


def sparsity(frames: list, sparsities: list, check: int, repeats: int, flex_frames: int):
    print("frames sparsity | kernel: flex ms TFLOP/s | fa4 ms TFLOP/s | whole: flex ms | fa4 ms "
          "| rel L2 vs fp32 eager: flex fa4", flush=True)
    for S in frames:
        layout = A.Layout(S, TOKENS, SPECIALS, ROWS, COLS)
        plan = A.SparsePlan(layout, None, "cuda")
        gen = torch.Generator(device="cuda").manual_seed(S)
        qkv = [torch.randn(1, layout.length, H, D, device="cuda", dtype=torch.bfloat16, generator=gen)
               for _ in range(3)]
        order = torch.cat((plan.patch_idx, plan.special_idx))
        reordered = [qkv[0][:, plan.patch_idx], qkv[1][:, order], qkv[2][:, order]]  # token-major, contiguous
        for s in sparsities:
            # compiling flex takes a minute per layout: compared up to flex_frames
            print(sparse_point(layout, plan, qkv, reordered, s, S <= check, repeats, S <= flex_frames), flush=True)
        del qkv, reordered
        torch.cuda.empty_cache()


def linears(rows: list, repeats: int):
    print("rows in->out | bf16 ms TFLOP/s | fp8 ms TFLOP/s | rel L2 of fp8 vs bf16")
    for M in rows:
        for fan_in, fan_out in ((1024, 3072), (1024, 1024), (1024, 4096), (4096, 1024)):
            layer = torch.nn.Linear(fan_in, fan_out, device="cuda", dtype=torch.bfloat16)
            x = torch.randn(M, fan_in, device="cuda", dtype=torch.bfloat16)
            with torch.no_grad():
                ref = layer(x)
                t_bf16 = timed(lambda: layer(x), repeats)
                fp8.to_fp8(layer)
                out = layer(x)
                t_fp8 = timed(lambda: layer(x), repeats)
            flops = 2 * M * fan_in * fan_out
            print(f"{M:6d} {fan_in}->{fan_out} | {t_bf16:.3f} {flops / t_bf16 / 1e9:5.0f} | {t_fp8:.3f} "
                  f"{flops / t_fp8 / 1e9:5.0f} | {rel(out, ref):.2e}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", default="64,800")
    ap.add_argument("--keep", default="0.1")
    ap.add_argument("--check-frames", type=int, default=64)
    ap.add_argument("--flex-frames", type=int, default=800, help="compare with flex attention up to this many frames")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--linear-rows", default="8037,65536")
    ap.add_argument("--sparsity", default="", help="global_sparsity values to time block sparsity at (empty: skip)")
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    frames = [int(f) for f in args.frames.split(",")]
    if args.sparsity:
        sparsity(frames, [float(s) for s in args.sparsity.split(",")], args.check_frames, args.repeats,
                 args.flex_frames)
    if args.keep:
        attention(frames, [float(k) for k in args.keep.split(",")], args.check_frames, args.repeats,
                  args.flex_frames)
    if args.linear_rows:
        linears([int(m) for m in args.linear_rows.split(",")], args.repeats)


if __name__ == "__main__":
    main()
