"""Communication of one exact global layer over N ranks: all-to-all over heads (Ulysses, what
model.context_parallel runs) against a ring that passes key/value blocks (ring attention's traffic).

    python benchmarks/cp_comm.py                      # VGGT-1B width (C=1024, 16 heads), 2 frames per rank
    python benchmarks/cp_comm.py --frames 1 --ranks 2 3 4

Only the collectives are timed (no attention math): each rank's bytes handed to others and the
median time of 5 exchanges, on gloo (CPU) here; on CUDA, NCCL. docs/CONTEXT_PARALLEL.md has the
numbers and the formulas they check.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.distributed as dist

from vggt_bench.measure import ranks as distributed
from vggt_model.context_parallel import ContextParallel


def exchange(frames_per_rank: int, tokens_per_frame: int, width: int, heads: int, repeats: int) -> dict:
    """In every rank: one global layer's traffic both ways; rank 0's numbers come back."""
    ranks = dist.get_world_size()
    D = width // heads
    cp = ContextParallel(ranks, heads)
    cp.shard(torch.empty(1, frames_per_rank * ranks, 1))
    n = frames_per_rank * tokens_per_frame
    q, k, v = (torch.randn(1, heads, n, D) for _ in range(3))
    cp.wrap(lambda q, k, v: q)  # the heads' attention would run here; only the traffic is timed

    def ulysses():
        counts = cp.tokens_per_rank(n)
        parts = [cp.to_heads(t, counts) for t in (q, k, v)]
        cp.from_heads(cp.inner(*parts), counts)

    def ring():  # every rank passes its current key/value block on, N - 1 times
        kv = torch.stack((k, v))
        recv = torch.empty_like(kv)
        right, left = (cp.rank + 1) % ranks, (cp.rank - 1) % ranks
        for _ in range(ranks - 1):
            with cp.comm.timed(kv.device, kv.numel() * kv.element_size()):
                ops = [dist.P2POp(dist.isend, kv, right), dist.P2POp(dist.irecv, recv, left)]
                for op in dist.batch_isend_irecv(ops):
                    op.wait()
            kv, recv = recv, kv

    out = {}
    for name, fn in (("ulysses", ulysses), ("ring", ring)):
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            dist.barrier()
            cp.comm.reset()
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        out[name] = (cp.comm.bytes_sent, statistics.median(times))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--frames", type=int, default=2, help="frames per rank")
    parser.add_argument("--tokens", type=int, default=893, help="tokens per frame (893: 336 x 518 frames)")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"one global layer, {args.frames} frame(s) of {args.tokens} tokens per rank, C={args.width}, "
          f"{args.heads} heads, fp32, gloo")
    print(f"{'ranks':>5}  {'ulysses MiB':>11}  {'ulysses ms':>10}  {'ring MiB':>9}  {'ring ms':>8}  {'ring/ulysses bytes':>18}")
    for ranks in args.ranks:
        got = distributed.launch(ranks, exchange, (args.frames, args.tokens, args.width, args.heads, args.repeats))
        res = distributed.first_result(got)
        (ub, ut), (rb, rt) = res["ulysses"], res["ring"]
        print(f"{ranks:>5}  {ub / 2**20:>11.2f}  {ut:>10.1f}  {rb / 2**20:>9.2f}  {rt:>8.1f}  {rb / ub:>18.2f}")


if __name__ == "__main__":
    main()
