"""Context parallelism (model.context_parallel): the same function over 2 and 3 ranks (gloo, CPU).

Each launch of ranks costs seconds (every process imports torch), so one launch runs many checks.
Functions that run in the ranks are top-level here: the spawned processes import this module.
"""

import functools
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import vggt_model
from conftest import ROOT, run_cli as cli
from vggt_bench.measure import ranks as distributed
from vggt_bench.analysis.scaling import context_parallel_speedup
from vggt_bench.core.errors import UserError
from vggt_bench.core.results import load_results
from vggt_bench.commands.verify import HALF_REL_L2, case_outputs, check_outputs, read_case
from vggt_model.context_parallel import ShardPlan

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "reference")
CASES = ["tiny_vggt", "tiny_dinov2_aggregator"]  # B=2, S=3: 2 ranks hold 2+1 frames, 3 ranks 1+1+1; 4 heads

# Every reference case under each of these on 2 ranks, and under the first four on 3 ranks. The lean
# plan with token_chunk=40 runs global layers in rounds of one frame per rank and call, so on 2 ranks
# the rank with two frames plays a round the other joins with no queries: the uneven chunked path.
# The last three run the lean plan's default (one chunk per rank).
SETTINGS = [
    dict(memory_plan="upstream"),
    dict(memory_plan="lean", token_chunk=40),
    dict(memory_plan="offload", token_chunk=40),
    dict(dtype="bf16_autocast", attention="sdpa"),
    dict(memory_plan="upstream", frame_exec="sequential"),
    dict(attention="eager", global_attention="sdpa_math"),
    dict(attention="sdpa", global_attention="auto"),
    dict(prune_depth=2),  # converted layers are frame attention: local; compared with one process only
]
THREE_RANKS = 4


@functools.lru_cache(maxsize=None)
def _one_process(case: str, kw: tuple):
    return case_outputs(os.path.join(FIXTURES, case), "cpu", settings(**dict(kw)))


def settings(**kw):
    from vggt_bench.core.config import ModelSettings

    return ModelSettings(**{"dtype": "fp32", "attention": "sdpa_math", **kw})


def _outputs_on_ranks(jobs):
    """In every rank: our outputs of each (case, settings); rank 0's come back."""
    return [case_outputs(directory, "cpu", s) for directory, s in jobs]


@pytest.mark.parametrize("ranks", [2, 3])
def test_every_reference_case_gives_the_one_process_outputs_on_2_and_3_ranks(ranks):
    runs = [(case, kw) for kw in (SETTINGS if ranks == 2 else SETTINGS[:THREE_RANKS]) for case in CASES]
    jobs = [(os.path.join(FIXTURES, case), settings(context_parallel=ranks, **kw)) for case, kw in runs]
    sharded = distributed.first_result(distributed.launch(ranks, _outputs_on_ranks, (jobs,)))
    assert len(sharded) == len(jobs)
    for (name, kw), (directory, s), ours in zip(runs, jobs, sharded):
        case, _, io = read_case(directory)
        single = _one_process(name, tuple(sorted(kw.items())))
        rel_l2_max = HALF_REL_L2.get(s.dtype)
        label = f"{name} on {ranks} ranks with {kw}"
        for prefix, outputs in ours.items():
            assert sorted(outputs) == sorted(single[prefix]), label
            # the same outputs as one process, within the case's tolerances ...
            same = check_outputs(case, io, prefix, outputs, rel_l2_max=rel_l2_max, reference=single[prefix])
            assert all(c.passed for c in same), (label, [(c.name, c.worst) for c in same if not c.passed])
            # ... and every reference check passes, as `verify ... model.context_parallel=N` reports
            if s.prune_depth == 0:
                checks = check_outputs(case, io, prefix, outputs, rel_l2_max=rel_l2_max)
                assert all(c.passed for c in checks), (label, [(c.name, c.worst) for c in checks if not c.passed])


def test_shard_plan_splits_frames_and_heads_unevenly():
    plan = ShardPlan(frames=3, ranks=2, rank=1, heads=4)
    assert plan.frame_counts == (2, 1) and plan.local == slice(2, 3) and plan.head_counts == (2, 2)
    plan = ShardPlan(frames=7, ranks=3, rank=0, heads=16)
    assert plan.frame_counts == (3, 2, 2) and plan.head_counts == (5, 5, 6)  # the extra head away from the extra frame
    assert [plan.frames_of(r) for r in range(3)] == [slice(0, 3), slice(3, 5), slice(5, 7)]
    assert [plan.heads_of(r) for r in range(3)] == [slice(0, 5), slice(5, 10), slice(10, 16)]


def _pieces_on_ranks():
    """In every rank: Ulysses attention, a chunked global block and the frame gather against the same
    computed whole in this process, and the bytes each collective hands to others."""
    from vggt_model.context_parallel import ContextParallel
    from vggt_model.layers import Block, Rope2D

    B, S, P, H, D = 2, 7, 6, 5, 8  # 7 frames over 3 ranks: 3 + 2 + 2; 5 heads: 1 + 2 + 2
    cp = ContextParallel(3, heads=H, token_chunk=2 * P)  # chunks of 2 frames: rank 0 plays 2 rounds, the others 1
    rank = cp.rank
    cp.shard(torch.empty(B, S, 1))
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, S * P, D, generator=gen) for _ in range(3))
    local = slice(cp.plan.local.start * P, cp.plan.local.stop * P)
    attend = cp.wrap(F.scaled_dot_product_attention)
    cp.comm.reset()
    out = attend(q[:, :, local], k[:, :, local], v[:, :, local])
    whole = F.scaled_dot_product_attention(q, k, v)
    n = [c * P for c in cp.plan.frame_counts]
    h = cp.plan.head_counts
    sent = 4 * D * B * (3 * n[rank] * (H - h[rank]) + h[rank] * (S * P - n[rank]))  # fp32: q, k, v out; o back
    result = {"attention": float((out - whole[:, :, local]).abs().max()), "bytes": cp.comm.bytes_sent,
              "expected_bytes": sent, "calls": cp.comm.calls, "heads": h}

    torch.manual_seed(1)
    block = Block(H * D, H, qk_norm=True, init_values=0.1).eval()
    grid = torch.cartesian_prod(torch.arange(2), torch.arange(3)) + 1
    rope = Rope2D(grid, D, 100.0, 4)
    x = torch.randn(B, S * P, H * D, generator=gen)
    with torch.inference_mode():
        ref = block(x, F.scaled_dot_product_attention, rope)
        mine = x[:, local].clone()
        cp.global_block(block, mine, rope)
    result["chunked_block"] = float((mine - ref[:, local]).abs().max())
    frames = torch.arange(B * S * 2.0).view(B, S, 2)
    result["gathered"] = torch.equal(cp.gather_frames(frames[:, cp.plan.local].contiguous()), frames)
    return result


def test_all_to_all_attention_chunked_rounds_and_gather_equal_the_whole_on_uneven_ranks():
    got = distributed.launch(3, _pieces_on_ranks)
    results = {r: value for r, (state, value) in got.items() if state == "ok"}
    assert sorted(results) == [0, 1, 2], got
    for r, res in results.items():
        assert res["heads"] == (1, 2, 2)
        assert res["attention"] < 1e-5 and res["chunked_block"] < 1e-5 and res["gathered"], (r, res)
        # per global layer a rank hands others q, k, v of its tokens for their heads and the output of
        # its heads for their tokens: 4 B S_r P C (N-1)/N on even shards (docs/CONTEXT_PARALLEL.md)
        assert res["bytes"] == res["expected_bytes"] and res["calls"] == 4, (r, res)


def _on_copies(collective):
    """``collective(out, inp, ...)`` run on copies the memory counter does not see, the result copied
    into ``out``. gloo's worker thread lets go of the tensors a collective was handed some time after
    the call returns (the CI machine's two cores: through the next projection and MLP), and until it
    does they are alive: the count of a rank's own tensors then depended on thread scheduling (peaks
    of 0.50, 0.53 and 0.55 of one process's, same input). With copies each of the code's tensors ends
    where the code drops it."""
    from torch.utils._python_dispatch import _disable_current_modes

    def call(out, inp, *args, **kwargs):  # out: one tensor (all_to_all_single) or a list (all_gather)
        outs = out if isinstance(out, list) else [out]
        with _disable_current_modes():
            staged = [torch.empty_like(t) for t in outs]
            collective(staged if isinstance(out, list) else staged[0], inp.clone(), *args, **kwargs)
            for t, copy in zip(outs, staged):
                t.copy_(copy)

    return call


def _peaks_on_ranks(images, staged=True):
    import torch.distributed as dist
    from vggt_bench.profiling.tensor_memory import LiveTensorMemory

    if staged:  # this spawned process's own module: the ranks' ContextParallel calls it as self.dist
        dist.all_to_all_single, dist.all_gather = _on_copies(dist.all_to_all_single), _on_copies(dist.all_gather)
    net = vggt_model.build(vggt_model.VGGTConfig.small(), "cpu", seed=1)
    net.configure(vggt_model.ExecutionConfig(context_parallel=2, token_chunk=1024))
    with torch.inference_mode(), LiveTensorMemory() as counter:
        net.aggregate(images)
    return counter.peak_bytes


def test_live_tensor_memory_does_not_count_views_of_tensors_made_before_it():
    """A rank slices its frames out of the input inside the forward: a view, not new memory (the
    counter counted it, which made context parallelism look 20% heavier than it is)."""
    from vggt_bench.profiling.tensor_memory import LiveTensorMemory

    x = torch.rand(4, 1000)
    with torch.inference_mode(), LiveTensorMemory() as counter:
        half = x[:2]
        doubled = half * 2
        part = doubled[:1]
    assert counter.peak_bytes == doubled.numel() * 4 and part.shape == (1, 1000)


def test_each_rank_holds_about_half_the_memory_of_one_process():
    from vggt_bench.profiling.tensor_memory import LiveTensorMemory

    images = torch.rand(1, 16, 3, 70, 112, generator=torch.Generator().manual_seed(0))
    net = vggt_model.build(vggt_model.VGGTConfig.small(), "cpu", seed=1)
    net.configure(vggt_model.ExecutionConfig(token_chunk=1024))
    with torch.inference_mode(), LiveTensorMemory() as counter:
        net.aggregate(images)
    got = distributed.launch(2, _peaks_on_ranks, (images,))
    peaks = [value for _, (state, value) in sorted(got.items())]
    assert len(peaks) == 2 and all(state == "ok" for state, _ in got.values()), got
    # every tensor a rank holds is per frame or per head: half (the head group's K, V over every frame are
    # [B, H/2, S P, D]); 0.5016 on each rank, every run, with the collectives on copies (_on_copies)
    assert max(peaks) < 0.52 * counter.peak_bytes, (peaks, counter.peak_bytes)
    assert peaks[0] == peaks[1], peaks  # 8 frames and 1 head each: the same tensors (without copies, not always)


def test_run_writes_one_row_from_rank_0_with_the_rank_columns(tmp_path):
    done = cli("run", "experiment=smoke", "frames=3", "model.context_parallel=2", f"out={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(os.listdir(tmp_path / "points")) == 1
    row = load_results(str(tmp_path)).iloc[0]
    assert row["status"] == "ok" and row["context_parallel"] == 2 and row["world_size"] == 2
    assert row["comm_ms"] > 0 and row["rank_peak_gib_max"] >= row["rank_peak_gib_mean"] > 0
    assert row["params"] > 0 and row["latency_ms_median"] > 0
    # the smoke preset: small arch (C=128, 2 heads, 8 global layers), 56x84 frames: P = 4*6 + 5 = 29
    # tokens; rank 0 holds 2 frames. Per layer it hands rank 1 q, k, v of its 58 tokens for rank 1's
    # head and its head's output for rank 1's 29 tokens, in fp32 (one round: token_chunk is 8192).
    C, heads, layers, per_frame = 128, 2, 8, 29
    D = C // heads
    per_layer = 4 * D * (3 * 2 * per_frame + 1 * per_frame)
    assert row["comm_mib"] == pytest.approx(layers * per_layer / 2**20)


def test_verify_runs_the_ranks_itself():
    done = cli("verify", f"case={os.path.join(FIXTURES, 'tiny_vggt')}", "model.context_parallel=2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "context_parallel=2" in done.stdout and "PASS: all 18 outputs within tolerance" in done.stdout


def test_context_parallel_speedup_matches_each_point_with_its_one_rank_point():
    base = dict(impl="ours", arch="small", device="cpu", frames=8, batch=1, height=70, width=112, part="aggregator",
                query_points=0, inputs="synthetic", gpu_name="", status="ok", comm_mib=0.0)
    rows = pd.DataFrame([
        {**base, "context_parallel": 1, "latency_ms_median": 100.0, "rank_peak_gib_max": 4.0, "comm_ms": 0.0},
        {**base, "context_parallel": 2, "latency_ms_median": 62.5, "rank_peak_gib_max": 2.2, "comm_ms": 5.0},
        {**base, "context_parallel": 2, "frames": 16, "latency_ms_median": 300.0, "rank_peak_gib_max": 3.0,
         "comm_ms": 9.0},  # no one-rank point at 16 frames
    ])
    table = context_parallel_speedup(rows).set_index("frames")
    assert table.loc[8, "speedup"] == pytest.approx(1.6) and table.loc[8, "efficiency"] == pytest.approx(0.8)
    assert table.loc[8, "memory_ratio"] == pytest.approx(0.55) and table.loc[8, "comm_share"] == pytest.approx(0.08)
    assert pd.isna(table.loc[16, "speedup"]) and table.loc[16, "status_1"] == ""


def test_the_sweep_summary_shows_the_ranks_when_some_point_had_several():
    from vggt_bench.commands.sweep import summary

    rows = pd.DataFrame([dict(frames=4, frame_exec="fused", status="ok", latency_ms_median=9.0, context_parallel=n)
                         for n in (1, 2)])
    assert "context_parallel" in summary(rows).splitlines()[0]
    assert "context_parallel" not in summary(rows[rows["context_parallel"] == 1]).splitlines()[0]


def _external_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                                    "MASTER_", "TORCHELASTIC", "OMP_NUM_THREADS"))}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def test_under_torchrun_every_rank_runs_and_rank_0_writes_the_row(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "vggt_bench",
               "run", "experiment=smoke", "frames=3", "model.context_parallel=2", f"out={tmp_path}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT, env=_external_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("row: ") == 1  # rank 1 prints nothing
    assert len(os.listdir(tmp_path / "points")) == 1
    row = load_results(str(tmp_path)).iloc[0]
    assert row["status"] == "ok" and row["world_size"] == 2


def test_under_srun_the_slurm_variables_form_the_group(tmp_path):
    """srun starts every task with SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID and the step's nodes; the
    master is the first node. Two tasks as srun would start them on one node."""
    port = str(distributed._free_port())
    procs = [subprocess.Popen([sys.executable, "-m", "vggt_bench", "run", "experiment=smoke", "frames=3",
                               "model.context_parallel=2", f"out={tmp_path}"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env=_external_env(SLURM_PROCID=str(r), SLURM_NTASKS="2", SLURM_LOCALID=str(r),
                                                SLURM_STEP_NODELIST="localhost", SLURM_JOB_ID="77", MASTER_PORT=port))
             for r in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert "row: " in outs[0][0] and outs[1][0].strip() == ""
    assert len(os.listdir(tmp_path / "points")) == 1
    assert load_results(str(tmp_path)).iloc[0]["world_size"] == 2


def test_slurm_node_lists_name_their_first_host():
    assert distributed.first_node("gpu[03-04,07],cpu1") == "gpu03"
    assert distributed.first_node("node7,node8") == "node7" and distributed.first_node("") == "127.0.0.1"


@pytest.mark.parametrize("args, message", [
    (["frames=3", "model.context_parallel=0"], "model.context_parallel must be >= 1, got 0"),
    (["frames=2", "model.context_parallel=3"],
     "model.context_parallel=3 needs at least 3 frames (every rank holds whole frames), got frames=2"),
    (["frames=4", "model.context_parallel=3"],
     "model.context_parallel=3 exceeds the 2 attention heads of the global layers"),
])
def test_bad_rank_counts_are_one_line(args, message, tmp_path):
    done = cli("run", "experiment=smoke", *args, f"out={tmp_path}")
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_verify_with_more_ranks_than_frames_is_one_line():
    done = cli("verify", f"case={os.path.join(FIXTURES, 'tiny_vggt')}", "model.context_parallel=4")
    assert done.returncode == 2
    assert done.stderr.strip() == ("vggt_bench: error: model.context_parallel=4 needs at least 4 frames (every rank "
                                   "holds whole frames), got frames=3; use model.context_parallel <= 3")


def test_a_launcher_with_another_number_of_ranks_is_one_line(tmp_path):
    done = cli("run", "experiment=smoke", "frames=4", "model.context_parallel=2", f"out={tmp_path}",
               env=_external_env(RANK="0", WORLD_SIZE="4", LOCAL_RANK="0"))
    assert done.returncode == 2
    assert done.stderr.strip() == ("vggt_bench: error: model.context_parallel=2 but torchrun started 4 ranks; start 2 "
                                   "(torchrun --nproc-per-node / srun --ntasks) or set model.context_parallel=4")


def test_no_distributed_backend_is_one_line(monkeypatch):
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_gloo_available", lambda: False)
    with pytest.raises(UserError, match=r"^model.context_parallel=2 on the CPU needs the gloo backend, which this "
                                        r"PyTorch build .* lacks; install a build with gloo or use model.context_parallel=1$"):
        distributed.check(2, frames=3, heads=4, device="cpu")
    monkeypatch.setattr(dist, "is_available", lambda: False)
    with pytest.raises(UserError, match="needs torch.distributed, which this PyTorch build"):
        distributed.check(2, frames=3, heads=4, device="cpu")


def test_what_context_parallelism_does_not_combine_with_is_an_unavailable_reason():
    from vggt_bench.measure.point import Point

    point = Point("small", "cpu", 4, 1, 56, 84, "aggregator", 0, "synthetic",
                  vggt_model.ExecutionConfig(context_parallel=2, cuda_graph=True))
    assert "cuda_graph" in distributed.unavailable(point)
    point.execution = vggt_model.ExecutionConfig(context_parallel=2)
    point.impl = "upstream"
    assert "upstream's code runs on one device" in distributed.unavailable(point)
    point.impl = "ours"
    assert distributed.unavailable(point) is None
    point.execution = vggt_model.ExecutionConfig(context_parallel=2, prune_depth=3)
    assert distributed.unavailable(point) is None  # converted layers are frame attention: local


def test_profiling_is_refused_in_one_line_and_a_profiled_sweep_skips_such_points(tmp_path):
    from omegaconf import OmegaConf

    from vggt_bench.commands.profile import profile_point
    from vggt_bench.measure.point import Point

    done = cli("profile", "frames=3", "model.arch=small", "model.context_parallel=2", f"out={tmp_path}")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "vggt_bench: error: profile runs one process; model.context_parallel > 1 runs several (run/sweep rows have "
        "comm_ms): profile its ranks with torchrun under your own nsys, or use context_parallel=1"]
    point = Point("small", "cpu", 3, 1, 56, 84, "aggregator", 0, "synthetic", vggt_model.ExecutionConfig(context_parallel=2))
    cfg = OmegaConf.create({"out": str(tmp_path), "profiler": "torch", "iterations": 1})
    status = profile_point(cfg, point, {"status": "ok", "point_id": point.point_id})
    assert status["profile_status"] == "skipped" and "context_parallel > 1" in status["profile_message"]


def test_the_model_outside_a_group_says_how_to_start_one():
    net = vggt_model.VGGT(vggt_model.VGGTConfig.small())
    with pytest.raises(vggt_model.ConfigError, match=r"^context_parallel=2 needs torch.distributed initialised with "
                                                       r"2 ranks"):
        net.configure(vggt_model.ExecutionConfig(context_parallel=2))
