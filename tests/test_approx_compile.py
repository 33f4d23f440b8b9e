"""model.compile covers the approximated global layers' per-token work, not only the exact blocks.

``model.compile`` compiles each block's ``forward``. The approximations compute their attention outside
the block, and used to run the block's norm, QKV projection, RoPE, output projection, LayerScale and MLP
by calling its submodules directly, so under compile all of that stayed eager in every approximated
global layer (half the model's non-attention work; the 2026-12-07 H100 studies: about 7 s of a 16.9 s
forward at 1,000 frames). They now run through the block's call (modes ``qkv``, ``q``, ``finish``)."""

import pytest
import torch

import vggt_model
from vggt_model import execution as EX
from vggt_model.config import ExecutionConfig, VGGTConfig
from vggt_model.layers import Block, LayerScale, Mlp

SETTINGS = [dict(kv_keep=0.25, approx_kernel="dense"), dict(kv_keep=0.25, approx_kernel="flex"),
            dict(merge_ratio=0.3), dict(global_sparsity=0.5)]


def _small(frames=6):
    net = vggt_model.build(VGGTConfig.small(), "cpu", seed=3)
    images = torch.rand(1, frames, 3, 70, 112, generator=torch.Generator().manual_seed(0))
    return net, images


@pytest.mark.parametrize("plan", ["lean", "upstream"])
@pytest.mark.parametrize("knobs", SETTINGS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_every_per_token_step_of_an_approximated_layer_runs_inside_the_blocks_call(knobs, plan, monkeypatch):
    """Every MLP and LayerScale call happens inside ``Block.forward`` (what compile wraps), and the
    approximated layers use the modes that carry their projections and tail."""
    depth, modes, outside = [0], [], []
    forward = Block.forward

    def counting_forward(self, x, *args, **kwargs):
        modes.append(kwargs.get("mode", args[3] if len(args) > 3 else "return"))
        depth[0] += 1
        try:
            return forward(self, x, *args, **kwargs)
        finally:
            depth[0] -= 1

    def watched(method):
        def call(self, *args, **kwargs):
            if depth[0] == 0:
                outside.append(type(self).__name__)
            return method(self, *args, **kwargs)
        return call

    monkeypatch.setattr(Block, "forward", counting_forward)
    for cls, name in ((Mlp, "forward"), (Mlp, "forward_inplace_act"), (LayerScale, "forward")):
        monkeypatch.setattr(cls, name, watched(getattr(cls, name)))
    net, images = _small()
    net.configure(ExecutionConfig(memory_plan=plan, token_chunk=2 * 84, **knobs))
    with torch.inference_mode():
        net.aggregate(images)
    assert outside == [], f"run outside a block's call (so never compiled): {sorted(set(outside))}"
    assert "finish" in modes
    wanted = {"qkv", "q"} if knobs.get("approx_kernel") == "dense" else {"qkv"}
    if "merge_ratio" in knobs or "global_sparsity" in knobs:
        # the lean plan's merging and block-sparse layers: K and V in one pass, Q in another; under upstream's
        # plan merging keeps the normalised input too, so its projections run beside the block
        wanted = {"kv", "q"} if plan == "lean" else ({"qkv"} if "global_sparsity" in knobs else set())
    assert wanted <= set(modes), modes


def test_the_parts_through_the_blocks_call_compute_what_the_block_computes():
    """``project`` and ``finish`` together are the block (exact attention in between)."""
    torch.manual_seed(0)
    block = Block(64, 4, init_values=0.1, qk_norm=True).eval()
    x = torch.randn(2, 10, 64)
    attend = torch.nn.functional.scaled_dot_product_attention
    with torch.inference_mode():
        whole = block(x.clone(), attend)
        q, k, v = block(x, None, None, mode="qkv")
        assert torch.equal(block(x, None, None, mode="q"), q)
        o = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
        parts = block(x.clone(), None, None, mode="finish", attended=o)
    torch.testing.assert_close(parts, whole, rtol=0, atol=1e-6)
    assert not torch.equal(parts, x)  # the check can fail: the tail did change the stream


def test_compiling_keeps_entries_for_every_block_mode():
    """dynamo caps the compiled entries of one code object (Block.forward, shared by every block and
    mode) at its recompile limit, then runs eager without a word; compile raises it."""
    torch._dynamo.config.recompile_limit = 8
    net, _ = _small(frames=2)
    EX.apply_compile(net, "default")
    try:
        assert torch._dynamo.config.recompile_limit >= EX.BLOCK_RECOMPILES >= 32
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize("knobs", [dict(kv_keep=0.25, approx_kernel="dense"), dict(global_sparsity=0.5, approx_kernel="dense")],
                         ids=["kv_keep-dense", "global_sparsity-dense"])
def test_compiled_approximated_layers_compute_what_the_eager_ones_do(knobs):
    """model.compile claims the same function: the lean plan's approximated layers compiled (inductor, CPU)
    against the same model eager, fp32, several chunks so the lean passes' chunk shapes all compile."""
    net, images = _small(frames=6)
    net.configure(ExecutionConfig(memory_plan="lean", token_chunk=2 * 84, **knobs))
    with torch.inference_mode():
        layers = net.aggregate(images)[0]
    eager = layers[-1]
    EX.apply_compile(net, "default")
    try:
        with torch.inference_mode():
            compiled = net.aggregate(images)[0][-1]
    finally:
        torch._dynamo.reset()  # no compiled state left to the tests after this one
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-5)
    kept = [t for t in layers if t is not None]
    assert len(kept) > 1 and (kept[0] - eager).abs().max() > 1e-2  # the tolerance separates layers' outputs
