"""K/V subsampling's kept-token window on FlashAttention-4 at each query tile size, and one layer's whole
dense kv_keep attention for Nsight Systems (issue 26: at least 500 TFLOP/s counted over the keys attended).

Each frame's 893 queries are one varlen item, so a tile of ``tile_m`` query rows leaves the last tile of
every frame part empty: 893 / 192 = 4.65 tiles (93% full; FlashAttention-4's SM90 default for head dim
64 is 192 x 128), 893 / 128 = 6.98 (99.7%). Whether the fuller 128-row tiles win depends on how much
slower a 128-row tile is per FLOP: this measures it. Every tile's output is checked against the default's.

Run on the lent GPU (FlashAttention-4 installed), alone or under nsys; the ``layer`` NVTX range holds the
dense layer's calls that nsys's kernel summary counts (``cuda_gpu_kern_sum`` over that range):

    python benchmarks/gpu/window_tiles.py --frames 1000 --keep 0.05 --tiles 192x128,128x128,192x192
    nsys profile -t cuda,nvtx -o /tmp/kv python benchmarks/gpu/window_tiles.py --frames 1000 --tiles ""
"""

from __future__ import annotations

import argparse

import torch

from flex_kv_keep import timed  # CUDA-event median, beside this script (benchmarks/gpu/)
from vggt_model import approximate as A
from vggt_model import partial_attention as PA

H, D, TOKENS, SPECIALS, ROWS, COLS = 16, 64, 893, 5, 24, 37


def window(q, pool_k, pool_v, starts, length, tile):
    """The kept window through FlashAttention-4's forward with ``tile`` (None: its own choice)."""
    from flash_attn.cute.interface import _flash_attn_fwd

    cu = torch.cat((starts, starts[-1:] + length)).to(torch.int32)
    used = torch.full_like(starts, length, dtype=torch.int32)
    out, lse = _flash_attn_fwd(q, pool_k, pool_v, cu_seqlens_k=cu, seqused_k=used, max_seqlen_k=length,
                               causal=False, tile_mn=tile, return_lse=True)[:2]
    return out, lse


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--keep", type=float, default=0.05)
    ap.add_argument("--tiles", default="192x128,128x128,192x192", help="tile_m x tile_n list; empty: skip")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    S = args.frames
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    layout = A.Layout(S, TOKENS, SPECIALS, ROWS, COLS)
    gen = torch.Generator(device="cuda").manual_seed(S)
    q, k, v = (torch.randn(1, layout.length, H, D, device="cuda", dtype=torch.bfloat16, generator=gen)
               for _ in range(3))
    fa4 = PA.KERNELS["flash_attn4"]
    plan = A.WindowPlan(layout, args.keep, "cuda")
    others = (S - 1) * (plan.per + (1 if plan.dropped else 0))
    layer_flops = 4 * layout.length * (TOKENS + others) * H * D  # over the keys each query attends
    # one layer's whole dense attention: the pools, own frame, kept window, mean tokens, merge
    run = lambda: A.subsampled_attention_dense(q, k, v, layout, args.keep, fa4)  # noqa: E731
    run()
    torch.cuda.synchronize()
    torch.cuda.nvtx.range_push("layer")
    for _ in range(args.repeats):
        run()
    torch.cuda.synchronize()
    torch.cuda.nvtx.range_pop()
    t_layer = timed(run, args.repeats)
    print(f"layer: {S} frames keep {args.keep}: {t_layer:.2f} ms, {layer_flops / t_layer / 1e9:.0f} TFLOP/s over "
          f"{TOKENS + others} keys a query (CUDA events; {args.repeats} calls inside NVTX range 'layer')", flush=True)
    if not args.tiles:
        return
    pools = A._Pools(k, 1, plan, layout)
    pools.fill(k.view(1, S, TOKENS, H, D), v.view(1, S, TOKENS, H, D), slice(0, S), plan)
    qf = q[0].view(S, TOKENS, H, D)
    pk, pv = (t[0].view(-1, H, D) for t in pools.kept)
    length = (S - 1) * plan.per
    kept_flops = 4 * layout.length * length * H * D
    reference = window(qf, pk, pv, plan.kept_starts, length, None)[0]
    print("tile | kept window ms | TFLOP/s | max |diff| against FA4's own choice", flush=True)
    for text in args.tiles.split(","):
        tile = tuple(int(n) for n in text.split("x"))
        try:
            out = window(qf, pk, pv, plan.kept_starts, length, tile)[0]
            ms = timed(lambda: window(qf, pk, pv, plan.kept_starts, length, tile), args.repeats)
            diff = float((out.float() - reference.float()).abs().max())
            print(f"{text} | {ms:.2f} | {kept_flops / ms / 1e9:.0f} | {diff:.2e}", flush=True)
        except Exception as exc:  # a tile this kernel does not build: say so, go on
            print(f"{text} | failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}", flush=True)


if __name__ == "__main__":
    main()
