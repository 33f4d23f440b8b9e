"""Where K/V subsampling's attention time goes: one global layer's flex attention at the study's shapes,
with the mean tokens' log(count) bias gathered from a tensor (as the studies up to cf369e0 ran it),
computed from the key index (``SubsamplePlan.score_mod``, since cf369e0), and without it (a timing
bound only: not the same function). Timed on an H100: reports/h100-2026-12-06b/logs/flex_kv_keep.txt.

    python benchmarks/gpu/flex_kv_keep.py --frames 800 --keep 0.1

The 800-frame study ran kv_keep=0.1 at 248-254 TFLOP/s of the FLOPs it computes against 337-366 for
block sparsity (also flex attention, no score_mod); its block mask covers 0.5% more blocks than the kept
keys need, so the mask is not the gap. This separates the score_mod.
"""

from __future__ import annotations

import argparse
import math

import torch

from vggt_model import approximate as A
from vggt_model.attention import _compiled_flex


def timed(fn, repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=800)
    ap.add_argument("--keep", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    layout = A.Layout(frames=args.frames, tokens=893, specials=5, rows=24, cols=37)
    plan = A.SubsamplePlan(layout, args.keep, "cuda")
    N, H, D = layout.length, 16, 64
    q = torch.randn(1, H, N, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, H, plan.length, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    blocks = int(plan.block_mask.kv_num_blocks.sum() + plan.block_mask.full_kv_num_blocks.sum())
    flops = 4 * H * D * blocks * A.BLOCK * A.BLOCK  # what the kernel computes: whole 128 x 128 blocks
    # the weight as the studies up to cf369e0 ran it: gathered from a [keys] tensor
    bias = torch.zeros(plan.length, device="cuda")
    bias[plan.first_mean:] = math.log(plan.dropped) if plan.dropped else 0.0

    def gathered(score, b, h, q_idx, kv_idx):
        return score + bias[kv_idx]

    flex = _compiled_flex()
    variants = {"gathered score_mod (before)": gathered, "score_mod from kv_idx": plan.score_mod(),
                "no score_mod (bound)": None}
    out = {}
    for name, mod in variants.items():
        ms = timed(lambda: flex(q, k, v, score_mod=mod, block_mask=plan.block_mask), args.repeats)
        out[name] = flex(q, k, v, score_mod=mod, block_mask=plan.block_mask)
        print(f"S={args.frames} keep={args.keep} {name:28s} {ms:9.2f} ms  {flops / ms / 1e9:6.1f} TFLOP/s", flush=True)
    a, b = out["gathered score_mod (before)"].float(), out["score_mod from kv_idx"].float()
    print(f"max |gathered - from kv_idx| = {(a - b).abs().max().item():.3e}")


if __name__ == "__main__":
    main()
