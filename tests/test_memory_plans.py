"""Memory plans compute the same function as upstream's plan, in less memory."""

import os

import pytest
import torch

import vggt_model
from conftest import run_cli as cli
from vggt_bench.profiling.tensor_memory import LiveTensorMemory
from vggt_bench.core.results import load_results
from vggt_bench.commands.verify import verify_case

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "reference")
CASES = ["tiny_vggt", "tiny_dinov2_aggregator"]


def settings(**kw):
    from vggt_bench.core.config import ModelSettings

    return ModelSettings(**{"dtype": "fp32", "attention": "sdpa_math", **kw})


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("plan", ["lean", "offload"])
@pytest.mark.parametrize("frame_exec", ["fused", "sequential"])
@pytest.mark.parametrize("token_chunk", [40, 32768])  # 40: several chunks in every stage of the tiny cases
def test_every_plan_passes_every_reference_case_bitwise_like_upstreams_plan(case, plan, frame_exec, token_chunk):
    path = os.path.join(FIXTURES, case)
    ours = verify_case(path, "cpu", settings(memory_plan=plan, frame_exec=frame_exec, token_chunk=token_chunk))
    ref = verify_case(path, "cpu", settings(memory_plan="upstream", frame_exec=frame_exec))
    assert all(c.passed for c in ours), [(c.name, c.worst) for c in ours if not c.passed]
    # the arithmetic is unchanged: every output's error against the reference is the same to the bit
    assert [(c.name, c.max_abs) for c in ours] == [(c.name, c.max_abs) for c in ref]


def _peak(net, images, **execution):
    net.configure(vggt_model.ExecutionConfig(**execution))
    with torch.inference_mode(), LiveTensorMemory() as counter:
        out, _ = net.aggregate(images)
    return counter.peak_bytes, out


@pytest.mark.parametrize("precision", ["fp32", "bf16_autocast"])
def test_lean_holds_less_memory_than_upstreams_plan(precision):
    net = vggt_model.build(vggt_model.VGGTConfig.small(), "cpu", seed=1)
    vggt_model.set_precision(net, precision)
    images = torch.rand(1, 64, 3, 70, 112)
    upstream, ref = _peak(net, images, memory_plan="upstream")
    lean, out = _peak(net, images, memory_plan="lean", token_chunk=1024)
    kept = sum(t.numel() * t.element_size() for t in ref if t is not None)
    assert all(torch.equal(a, b) for a, b in zip(out, ref) if a is not None)
    # what the kept outputs cannot give back aside, lean holds well under half of upstream's activations
    assert lean - kept < 0.5 * (upstream - kept), (lean, upstream, kept)
    # measured 0.69 (fp32) and 0.79 (bf16 autocast); this was 0.65 while the counter charged upstream's
    # plan with a view of the input images (6 MB here), which is no memory of the forward's own
    assert lean < {"fp32": 0.72, "bf16_autocast": 0.82}[precision] * upstream, (lean, upstream)


def test_host_layer_indexing_gives_the_concatenated_halves():
    first, second = torch.arange(24.0).view(1, 2, 3, 4), -torch.arange(24.0).view(1, 2, 3, 4)
    layer = vggt_model.HostLayer(first, second, (1, 2, 3, 8), "cpu", vggt_model.offload.Offloader("cpu"))
    assert torch.equal(layer[...], torch.cat((first, second), -1))
    assert torch.equal(layer[:, 1:, 1:], torch.cat((first, second), -1)[:, 1:, 1:])
    assert torch.equal(layer[:, :, 0], torch.cat((first, second), -1)[:, :, 0])
    assert layer.nbytes == 2 * first.numel() * 4 and vggt_model.materialize(None) is None


def test_offload_on_the_cpu_runs_and_says_so(tmp_path):
    done = cli("run", "experiment=smoke", "frames=2", "model.memory_plan=offload", f"out={tmp_path}")
    assert done.returncode == 0, done.stderr[-2000:]
    row = load_results(str(tmp_path)).iloc[0]
    assert row["status"] == "ok" and row["memory_plan"] == "offload"
    assert "host memory already" in row["message"]
    assert row["kept_gib"] > 0 and row["host_gib"] == 0


def test_an_unknown_plan_is_one_line():
    done = cli("run", "experiment=smoke", "model.memory_plan=tiny")
    assert done.returncode == 2
    assert done.stderr.strip() == ("vggt_bench: error: unknown model.memory_plan 'tiny'; choose one of "
                                   "['upstream', 'lean', 'offload']")


@pytest.mark.parametrize("precision", ["bf16_autocast", "bf16"])
@pytest.mark.parametrize("case", CASES)
def test_half_precision_plans_equal_upstreams_plan_bitwise(case, precision):
    """The conv patch embed makes bf16 tokens under autocast; upstream's first residual add turns
    the stream into fp32 (its LayerScale is fp32). An in-place stream must be fp32 from the start:
    on the GPU it was bf16 once, and the fp32 camera head refused it."""
    path = os.path.join(FIXTURES, case)
    base = dict(dtype=precision, attention="sdpa")
    # the tracker in pure bf16 on the CPU differs between two runs of the same plan: not compared
    unstable = {"track", "track_list", "vis", "conf"} if precision == "bf16" else set()
    ours = {c.name: c.max_abs for c in verify_case(path, "cpu", settings(memory_plan="lean", token_chunk=40, **base))
            if c.name not in unstable}
    ref = {c.name: c.max_abs for c in verify_case(path, "cpu", settings(memory_plan="upstream", **base))
           if c.name not in unstable}
    assert ours == ref and "aggregated_tokens.3" in ours
