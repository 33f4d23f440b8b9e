"""Micro-benchmarks: each attention backend, and one aggregator block, at fixed shapes.

    python -m pytest benchmarks -q --benchmark-autosave            # save a run (.benchmarks/)
    python -m pytest benchmarks -q --benchmark-compare             # compare with the last saved run
    python -m pytest benchmarks -q --benchmark-compare=0001 --benchmark-compare-fail=median:10%

On a GPU the shapes are VGGT-1B's (16 heads x 64, 893 tokens per 336x518 frame); on a CPU
they shrink so a run takes seconds. Timings are what pytest-benchmark measures around a
synchronised call; numbers for the record live in docs/BENCHMARKS.md, not in assertions.
"""

import pytest
import torch

import vggt_model
from vggt_model.layers import Block

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPE = torch.bfloat16 if CUDA else torch.float32
HEADS, HEAD_DIM = (16, 64) if CUDA else (2, 64)
TOKENS = 893 if CUDA else 45  # one frame at 336x518 (GPU) / 70x112 (CPU)
FRAMES = 8 if CUDA else 2


def sync():
    if CUDA:
        torch.cuda.synchronize()


def _available(name):
    return vggt_model.attention.why_unavailable(name, DEVICE, DTYPE, HEAD_DIM)


@pytest.mark.parametrize("layout", ["frame", "global"])
@pytest.mark.parametrize("name", list(vggt_model.attention.BACKENDS))
def test_attention_backend(benchmark, name, layout):
    reason = _available(name)
    if reason:
        pytest.skip(reason)
    batch, seq = (FRAMES, TOKENS) if layout == "frame" else (1, FRAMES * TOKENS)
    q, k, v = (torch.randn(batch, HEADS, seq, HEAD_DIM, device=DEVICE, dtype=DTYPE) for _ in range(3))
    backend = vggt_model.attention.BACKENDS[name]
    benchmark.extra_info.update(device=DEVICE, dtype=str(DTYPE), batch=batch, seq=seq, heads=HEADS, head_dim=HEAD_DIM)

    def run():
        with backend.context():
            backend.fn(q, k, v)
        sync()

    benchmark.pedantic(run, warmup_rounds=2, rounds=10, iterations=1)


@pytest.mark.parametrize("layout", ["frame", "global"])
def test_aggregator_block(benchmark, layout):
    dim = HEADS * HEAD_DIM
    block = Block(dim, HEADS, init_values=0.01, qk_norm=True).to(DEVICE, DTYPE).eval()
    agg = vggt_model.build(vggt_model.VGGTConfig.small(), "cpu").aggregator
    rows, cols = (24, 37) if CUDA else (5, 8)
    rope = agg.rope_tables(rows, cols, DEVICE)
    shape = (FRAMES, TOKENS, dim) if layout == "frame" else (1, FRAMES * TOKENS, dim)
    x = torch.randn(*shape, device=DEVICE, dtype=DTYPE)
    attend = vggt_model.attention.BACKENDS["sdpa"].fn

    def run():
        with torch.inference_mode():
            block(x, attend, rope)
        sync()

    benchmark.extra_info.update(device=DEVICE, dtype=str(DTYPE), shape=list(shape))
    benchmark.pedantic(run, warmup_rounds=2, rounds=10, iterations=1)
