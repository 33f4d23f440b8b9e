"""The memory profiler: stage tracker, snapshot parser, tables, figures and the CLI (CPU only)."""

import json
import os
import pickle
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

import vggt_model
from conftest import run_cli as cli
from vggt_model.config import ExecutionConfig
from vggt_bench.commands import profile_memory
from vggt_bench.profiling import memory_capture
from vggt_bench.profiling import memory as mem
from vggt_bench.report import memory_profile
from vggt_bench.core.errors import UserError
from vggt_bench.core.schema import (
    MEMORY_AT_PEAK_COLUMNS,
    MEMORY_BY_CATEGORY_COLUMNS,
    MEMORY_STAGE_COLUMNS,
    MEMORY_SUMMARY_COLUMNS,
    MEMORY_TIMELINE_COLUMNS,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GiB = 2**30
MiB = 2**20


# ---- stage tracker -------------------------------------------------------------------------------
class FakeAllocator:
    """A counter source like the CUDA allocator's: bytes now, peak since reset, request counts."""

    def __init__(self, allocated=0):
        self.current = self.peak = allocated
        self.allocs = self.frees = 0
        self.resets = 0

    def alloc(self, n):
        self.current += n
        self.peak = max(self.peak, self.current)
        self.allocs += 1

    def free(self, n):
        self.current -= n
        self.frees += 1

    def read(self):
        return mem.Counters(self.current, self.peak, self.allocs, self.frees)

    def reset_peak(self):
        self.peak = self.current
        self.resets += 1


def test_stage_tracker_nested_peaks_entries_exits_and_paths():
    a = FakeAllocator(10 * GiB)  # weights
    r = mem.MemoryRanges(a)
    r.start()
    r.on_enter("vggt")
    r.on_enter("aggregator")
    for layer in range(2):
        r.on_enter(f"layer_{layer:02d}")
        r.on_enter("frame_block")
        a.alloc(4 * GiB)  # transient inside the block
        a.alloc(1 * GiB)  # its output, kept
        a.free(4 * GiB)
        r.on_exit("frame_block")
        r.on_exit(f"layer_{layer:02d}")
    # between children: the aggregator's own peak, above any child's
    a.alloc(8 * GiB)
    a.free(8 * GiB)
    r.on_exit("aggregator")
    r.on_enter("camera_head")
    a.alloc(2 * GiB)
    r.on_exit("camera_head")
    r.on_exit("vggt")
    r.stop()

    calls = r.calls_table()
    assert list(calls["path"]) == [
        "vggt", "vggt/aggregator", "vggt/aggregator/layer_00", "vggt/aggregator/layer_00/frame_block",
        "vggt/aggregator/layer_01", "vggt/aggregator/layer_01/frame_block", "vggt/camera_head"]
    assert list(calls["depth"]) == [0, 1, 2, 3, 2, 3, 1]
    by = calls.set_index("path")
    # frame_block of layer 0: entry 10, peak 15 (10 + 4 + 1), exit 11
    fb0 = by.loc["vggt/aggregator/layer_00/frame_block"]
    assert (fb0["entry_gib"], fb0["peak_gib"], fb0["exit_gib"]) == (10, 15, 11)
    fb1 = by.loc["vggt/aggregator/layer_01/frame_block"]
    assert (fb1["entry_gib"], fb1["peak_gib"], fb1["exit_gib"]) == (11, 16, 12)
    # the layer's peak is its child's: handed up when the child closed
    assert by.loc["vggt/aggregator/layer_01", "peak_gib"] == 16
    # the aggregator's peak came between children (12 + 8), after the last reset
    assert by.loc["vggt/aggregator", "peak_gib"] == 20
    assert by.loc["vggt", "peak_gib"] == 20 and r.peak_bytes == 20 * GiB
    assert by.loc["vggt/camera_head", "exit_gib"] == 14
    for _, row in calls.iterrows():  # a parent's peak is never below a child's
        for _, child in calls[calls["path"].str.startswith(row["path"] + "/")].iterrows():
            assert row["peak_gib"] >= child["peak_gib"]
    # allocation/free counts since start place the boundaries in the trace
    assert list(by.loc["vggt/aggregator/layer_01", ["enter_allocs", "enter_frees", "exit_allocs", "exit_frees"]]) == [2, 1, 4, 2]

    stages = mem.stage_table(calls)
    assert list(stages.columns) == MEMORY_STAGE_COLUMNS
    assert stages.set_index("path").loc["vggt/aggregator/layer_00/frame_block", "calls"] == 1
    assert stages.set_index("path").loc["vggt/aggregator/layer_01/frame_block", "peak_above_entry_gib"] == 5


def test_stage_tracker_aggregates_repeated_calls_and_closes_unbalanced_ranges():
    a = FakeAllocator(0)
    r = mem.MemoryRanges(a)
    r.on_enter("global_block")  # starts on the first range
    for _ in range(3):
        r.on_enter("attention")
        a.alloc(2 * GiB)
        r.on_exit("attention")
    r.on_enter("mlp")
    r.on_exit("global_block")  # mlp never closed: closed here, with a note
    r.on_exit("nope")
    r.stop()
    stages = mem.stage_table(r.calls_table()).set_index("path")
    att = stages.loc["global_block/attention"]
    assert att["calls"] == 3 and att["entry_gib"] == 0 and att["exit_gib"] == 6 and att["delta_gib"] == 6
    assert att["peak_gib"] == 6 and att["peak_above_entry_gib"] == 2
    assert stages.loc["global_block", "peak_gib"] == 6
    assert any("still open" in n for n in r.notes) and any("'nope'" in n for n in r.notes)


def test_tracker_hooks_the_models_ranges_and_detaches():
    net = vggt_model.build(vggt_model.VGGTConfig.small(), "cpu")
    net.configure(ExecutionConfig(nvtx=True, frame_exec="sequential"))
    assert net.ranges is net.aggregator.ranges and net.ranges.recorder is None
    a = FakeAllocator(0)
    r = mem.MemoryRanges(a)
    with mem.attached(r, net.ranges, net.aggregator.ranges):
        r.start()
        with torch.inference_mode():
            net(torch.rand(1, 2, 3, 28, 42))
        r.stop()
    assert net.ranges.recorder is None
    stages = mem.stage_table(r.calls_table()).set_index("path")
    depth = net.config.aggregator.depth
    layers = [p for p in stages.index if p.startswith("vggt/aggregator/layer_") and p.count("/") == 2]
    assert len(layers) == depth
    assert stages.loc["vggt/aggregator/layer_00/frame_block/attention", "calls"] == 2  # sequential: once per frame
    assert stages.loc["vggt/aggregator/layer_00/global_block/mlp", "calls"] == 1
    assert stages.loc["vggt/aggregator/patch_embed/vit_block", "calls"] == net.config.vit_config().depth
    for head in ("camera_head", "depth_head", "point_head"):
        assert f"vggt/{head}" in stages.index
    assert a.resets == 2 * len(r.calls) + 2  # a reset at every boundary, start and stop


def test_attach_refuses_ranges_that_are_off():
    net = vggt_model.build(vggt_model.VGGTConfig.small(), "cpu")
    net.configure(ExecutionConfig(nvtx=False))
    with pytest.raises(ValueError, match="nvtx=True"):
        with mem.attached(mem.MemoryRanges(FakeAllocator()), net.ranges):
            pass
    # ranges off never call a recorder, even one set by hand
    net.ranges.recorder = mem.MemoryRanges(FakeAllocator())
    with torch.inference_mode():
        net.aggregate(torch.rand(1, 1, 3, 28, 28))
    assert net.ranges.recorder.calls == []


def test_cuda_counters_refuse_the_cpu():
    with pytest.raises(ValueError, match="CPU memory per stage is not available"):
        mem.CudaCounters("cpu")


# ---- snapshot parser -----------------------------------------------------------------------------
LAYERS = "/repo/model/layers.py"
ATTENTION = "/repo/model/attention.py"
TORCH_FN = "/venv/lib/python3.11/site-packages/torch/nn/functional.py"
RUNNER = "/repo/vggt_bench/runner.py"


@pytest.fixture
def aggregator_py(tmp_path):
    """Where the hand-built snapshot's kept output was made (a path inside a `model` folder)."""
    path = tmp_path / "model" / "aggregator.py"
    path.parent.mkdir()
    path.write_text("def forward(self, images):\n    pass\n")
    return str(path)


def frame(filename, name, line):
    return {"filename": filename, "name": name, "line": line}


def hand_built_snapshot(aggregator):
    """Weights W (live throughout), pre-existing P (freed in the trace), input I (allocated just
    before the forward), then in the forward: an activation, a kept output, a library workspace,
    an attention buffer; the peak is after event 5."""
    outer = [frame(RUNNER, "<lambda>", 201)]
    W, K, I, P, A1, WS, AT, SEG = 0x10000000, 0x11000000, 0x20000000, 0x40000000, 0x30000000, 0x30C00000, 0x31200000, 0x30000000
    trace = [
        dict(action="alloc", addr=I, size=4 * MiB, frames=[frame(RUNNER, "make_inputs", 180)] + outer),  # 0
        dict(action="segment_alloc", addr=SEG, size=32 * MiB, frames=outer),  # 1: the forward starts here
        dict(action="alloc", addr=A1, size=12 * MiB, frames=[frame(TORCH_FN, "linear", 10), frame(LAYERS, "forward", 50)] + outer),
        dict(action="alloc", addr=K, size=8 * MiB, frames=[frame(aggregator, "new_output", 3),
                                                            frame(aggregator, "_forward_upstream", 170)] + outer),
        dict(action="alloc", addr=WS, size=6 * MiB, frames=[frame(TORCH_FN, "layer_norm", 99)]),
        dict(action="alloc", addr=AT, size=2 * MiB, frames=[frame(ATTENTION, "sdpa", 52), frame(LAYERS, "forward", 77)] + outer),
        dict(action="free_requested", addr=A1, size=12 * MiB, frames=outer),  # 6
        dict(action="free_completed", addr=A1, size=12 * MiB, frames=outer),
        dict(action="free_requested", addr=AT, size=2 * MiB, frames=outer),  # 8
        dict(action="free_completed", addr=AT, size=2 * MiB, frames=outer),
        dict(action="free_requested", addr=WS, size=6 * MiB, frames=outer),  # 10
        dict(action="free_completed", addr=WS, size=6 * MiB, frames=outer),
        dict(action="free_requested", addr=P, size=1 * MiB, frames=outer),  # 12: allocated before the trace
        dict(action="segment_free", addr=SEG, size=32 * MiB, frames=outer),  # 13
    ]
    for i, e in enumerate(trace):
        e.update(stream=0, time_us=1_000_000 + 10 * i)
    segments = [
        dict(device=0, address=W, total_size=64 * MiB, stream=0, segment_type="large", allocated_size=24 * MiB,
             active_size=24 * MiB, blocks=[
                 dict(address=W, size=16 * MiB, requested_size=16 * MiB, state="active_allocated", frames=[]),
                 dict(address=K, size=8 * MiB, requested_size=8 * MiB, state="active_allocated", frames=trace[3]["frames"]),
                 dict(address=K + 8 * MiB, size=40 * MiB, requested_size=0, state="inactive", frames=[]),
             ]),
        dict(device=0, address=I, total_size=4 * MiB, stream=0, segment_type="large", allocated_size=4 * MiB,
             active_size=4 * MiB, blocks=[
                 dict(address=I, size=4 * MiB, requested_size=4 * MiB, state="active_allocated", frames=trace[0]["frames"]),
             ]),
    ]
    return {"segments": segments, "device_traces": [trace]}


def stage_calls():
    """Tracker rows for the hand-built forward (counts since the forward began)."""
    rows = [  # path, depth, entry, peak, exit (MiB), enter allocs/frees, exit allocs/frees
        ("vggt", 0, 21, 49, 28, 0, 0, 4, 4),
        ("vggt/aggregator", 1, 21, 41, 41, 0, 0, 2, 0),
        ("vggt/aggregator/layer_00", 2, 21, 33, 33, 0, 0, 1, 0),
        ("vggt/camera_head", 1, 41, 49, 35, 2, 0, 4, 2),
    ]
    return pd.DataFrame([dict(call=i, path=p, range=p.split("/")[-1], depth=d, entry_gib=e * MiB / GiB,
                              peak_gib=pk * MiB / GiB, exit_gib=x * MiB / GiB, enter_allocs=ea, enter_frees=ef,
                              exit_allocs=xa, exit_frees=xf)
                         for i, (p, d, e, pk, x, ea, ef, xa, xf) in enumerate(rows)])


def mib(values):
    return [round(v * GiB / MiB, 6) for v in values]


def test_snapshot_tables_timeline_peak_categories_and_stages(aggregator_py):
    tables = mem.memory_tables(hand_built_snapshot(aggregator_py), stage_calls(), forward_start=1)
    assert tables["memory_summary"].attrs["notes"] == []
    t = tables["memory_timeline"]
    assert list(t.columns) == MEMORY_TIMELINE_COLUMNS
    assert mib(t["allocated_gib"]) == [21, 21, 33, 41, 47, 49, 37, 37, 35, 35, 29, 29, 28, 28]
    assert mib(t["reserved_gib"]) == [68, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 68]
    assert list(t["in_forward"]) == [False] + [True] * 13
    assert t["time_us"].iloc[3] == 1_000_030
    assert list(t["stage"]) == ["", "vggt/aggregator/layer_00", "vggt/aggregator/layer_00", "vggt/aggregator"] + \
        ["vggt/camera_head"] * 5 + ["vggt"] * 4 + [""]

    s = tables["memory_summary"].iloc[0]
    assert list(tables["memory_summary"].columns) == MEMORY_SUMMARY_COLUMNS
    assert s["peak_event"] == 5 and mib([s["peak_allocated_gib"], s["reserved_at_peak_gib"], s["peak_reserved_gib"],
                                         s["allocated_before_gib"], s["end_allocated_gib"]]) == [49, 100, 100, 21, 28]
    assert s["peak_stage"] == "vggt/camera_head" and not s["oom"]
    assert mib([s["tracker_peak_gib"]]) == [49]

    at = tables["memory_at_peak"]
    assert list(at.columns) == MEMORY_AT_PEAK_COLUMNS
    cat = {int(r["address"]): r for _, r in at.iterrows()}
    assert len(cat) == 7
    assert cat[0x10000000]["category"] == "weights and inputs" and cat[0x10000000]["alloc_event"] == -1
    assert cat[0x40000000]["category"] == "weights and inputs"  # freed later in the trace, live at the peak
    assert cat[0x20000000]["category"] == "weights and inputs"  # allocated before the forward start
    assert cat[0x11000000]["category"] == "kept layer outputs"
    assert cat[0x11000000]["frame"] == "model/aggregator.py:new_output:3" and cat[0x11000000]["stage"] == "vggt/aggregator"
    assert cat[0x30000000]["category"] == "activations" and cat[0x30000000]["frame"] == "model/layers.py:forward:50"
    assert cat[0x30C00000]["category"] == "workspace" and cat[0x30C00000]["frame"] == "nn/functional.py:layer_norm:99"
    assert cat[0x31200000]["category"] == "workspace" and cat[0x31200000]["stage"] == "vggt/camera_head"
    assert list(at["size_gib"]) == sorted(at["size_gib"], reverse=True)

    by = tables["memory_by_category"].set_index("category")
    assert list(tables["memory_by_category"].columns) == MEMORY_BY_CATEGORY_COLUMNS
    assert mib(by["size_gib"]) == [21, 8, 12, 8, 0, 51]
    assert list(by["blocks"]) == [3, 1, 1, 2, 0, 0]
    assert by["share_of_reserved"].sum() == pytest.approx(1.0)

    st = tables["memory_stages"].set_index("path")
    assert st.loc["vggt", "first_event"] == 1 and st.loc["vggt", "last_event"] == 13
    assert (st.loc["vggt/camera_head", "first_event"], st.loc["vggt/camera_head", "last_event"]) == (4, 9)


def test_kept_output_rule_names_the_functions_that_build_them_and_the_real_model_has_them():
    for where in (frame("/x/model/aggregator.py", "new_output", 143), frame("/x/model/aggregator.py", "snapshot", 150),
                  frame("/site/vggt_model/offload.py", "snapshot", 40)):
        assert mem.categorize(mem.Allocation(False, [where])) == "kept layer outputs", where
        assert mem.categorize(mem.Allocation(True, [where])) == "weights and inputs"
    other = [frame("/x/model/aggregator.py", "run_per_frame", 110)]
    assert mem.categorize(mem.Allocation(False, other)) == "activations"
    elsewhere = [frame("/x/someone_else/aggregator.py", "new_output", 1)]  # not one of our packages
    assert mem.categorize(mem.Allocation(False, elsewhere)) == "workspace"
    cpp = [frame("??", "at::cuda::getCUDABlasLtWorkspace()", 0), frame(LAYERS, "forward", 50)]
    assert mem.categorize(mem.Allocation(False, cpp)) == "workspace"
    # every plan's kept outputs are made in those functions of our model
    import vggt_model
    from vggt_model.aggregator import Aggregator
    from vggt_model.offload import Offloader

    assert callable(Aggregator.new_output) and callable(Aggregator.snapshot) and callable(Offloader.snapshot)
    net = vggt_model.build(vggt_model.VGGTConfig.small(), "cpu")
    made = []
    real = Aggregator.new_output
    for plan in ("upstream", "lean"):
        net.configure(vggt_model.ExecutionConfig(memory_plan=plan))
        net.aggregator.new_output = lambda *a, _real=real, _plan=plan: made.append(_plan) or _real(*a)
        with torch.inference_mode():
            out, _ = net.aggregate(torch.rand(1, 2, 3, 28, 42))
        del net.aggregator.new_output
        outputs = [t for t in out if t is not None]
        assert made.count(plan) == len(outputs) == 4, plan
        assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in outputs)  # nothing else held


def test_missing_stacks_are_unattributed(aggregator_py):
    snapshot = hand_built_snapshot(aggregator_py)
    for e in snapshot["device_traces"][0]:
        e.pop("frames")
    for seg in snapshot["segments"]:
        for b in seg["blocks"]:
            b.pop("frames")
    tables = mem.memory_tables(snapshot, forward_start=1)
    by = tables["memory_by_category"].set_index("category")
    assert mib(by["size_gib"]) == [21, 0, 0, 0, 28, 51]
    assert set(tables["memory_at_peak"]["frame"]) == {""}
    assert tables["memory_stages"].empty and set(tables["memory_timeline"]["stage"]) == {""}


def test_stage_counts_that_do_not_match_the_trace_are_not_placed(aggregator_py):
    calls = stage_calls()
    calls.loc[0, "exit_allocs"] = 99
    tables = mem.memory_tables(hand_built_snapshot(aggregator_py), calls, forward_start=1)
    assert tables["memory_stages"]["first_event"].isna().all()
    assert any("not placed" in n for n in tables["memory_summary"].attrs["notes"])
    assert len(tables["memory_stages"]) == 4  # the tracker's numbers stay


def test_snapshot_without_a_trace_is_refused():
    with pytest.raises(ValueError, match="_record_memory_history"):
        mem.memory_tables({"segments": []})


def test_parser_reads_a_snapshot_torch_itself_builds():
    """torch's own converter (profiler memory events -> the snapshot format MemoryViz reads):
    blocks without addresses, a tensor live before the trace, frees as requested+completed."""
    from torch.cuda._memory_viz import _profile_to_snapshot

    x = torch.randn(500, 500)  # 1e6 bytes, allocated before the trace

    def f():
        a = torch.randn(1000, 1000)  # 4e6
        b = a @ a                    # 4e6
        c = torch.cat([a, b])        # 8e6: a, b and c live together
        del b
        return c

    # on one intra-op thread (OMP_NUM_THREADS=1: Slurm jobs, the pytest-xdist workers) torch 2.13's profiler
    # records no allocation for the cat, and the trace peaks at 8e6: this checks our reading, on two threads
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.profiler.profile(profile_memory=True, record_shapes=True, with_stack=True) as prof:
            c = f()
    finally:
        torch.set_num_threads(threads)
    snapshot = _profile_to_snapshot(prof)
    tables = mem.memory_tables(snapshot)
    notes = tables["memory_summary"].attrs["notes"]
    assert not any("incomplete" in n for n in notes), notes
    s = tables["memory_summary"].iloc[0]
    assert s["peak_allocated_gib"] * GiB >= 16e6
    at = tables["memory_at_peak"]
    assert (at["size_gib"] * GiB).round().isin([8e6]).any()
    assert s["end_allocated_gib"] * GiB >= 8e6
    del x, c


# ---- files and figures ---------------------------------------------------------------------------
def test_tables_round_trip_and_figures_render(aggregator_py, tmp_path):
    tables = mem.memory_tables(hand_built_snapshot(aggregator_py), stage_calls(), forward_start=1)
    tables["memory_summary"].attrs["notes"] = ["a note"]
    written = mem.write_memory_tables(tables, str(tmp_path / "p"))
    assert {os.path.basename(p) for p in written} == {f"{n}.csv" for n in mem.MEMORY_TABLES} | {"memory_notes.txt"}
    back = mem.read_memory_tables(str(tmp_path / "p"))
    assert back["memory_summary"].attrs["notes"] == ["a note"]
    assert back["memory_timeline"]["in_forward"].dtype == bool
    assert back["memory_timeline"]["stage"].iloc[0] == ""
    pd.testing.assert_frame_equal(back["memory_by_category"], tables["memory_by_category"], check_dtype=False)
    for source in (tables, back):
        for make in (memory_profile.memory_timeline_figure, memory_profile.memory_at_peak_figure):
            plot = make(source, {"arch": "vggt1b", "device": "cuda", "gpu_name": "NVIDIA H100", "dtype": "bf16_autocast",
                                 "height": 336, "width": 518, "frames": 8, "frame_exec": "fused", "attention": "sdpa"})
            assert isinstance(plot.figure, Figure), plot.note
            path = tmp_path / f"{make.__name__}.png"
            plot.figure.savefig(path)
            assert path.stat().st_size > 10_000
    texts = [t.get_text() for t in memory_profile.memory_timeline_figure(tables).figure.axes[0].texts]
    assert any("peak 0.05 GiB" in t and "vggt/camera_head" in t for t in texts)
    paths, notes = memory_profile.render_memory_figures(back, str(tmp_path / "figs"))
    assert sorted(os.path.basename(p) for p in paths) == [
        "memory_at_peak.png", "memory_at_peak.svg", "memory_timeline.png", "memory_timeline.svg"]
    assert notes == []


def test_figures_skip_without_data():
    empty = {name: pd.DataFrame(columns=cols) for name, cols in mem.COLUMNS.items()}
    for make in (memory_profile.memory_timeline_figure, memory_profile.memory_at_peak_figure):
        plot = make(empty)
        assert plot.figure is None and "profiler=memory" in plot.note


def test_summary_lines_name_the_peak_categories_and_innermost_top_stages(aggregator_py):
    tables = mem.memory_tables(hand_built_snapshot(aggregator_py), stage_calls(), forward_start=1)
    lines = mem.summary_lines(tables)
    assert lines[0].startswith("peak allocated 0.048 GiB") and "vggt/camera_head" in lines[0]
    assert "weights and inputs 0.021 GiB" in lines[1] and "allocator slack 0.050 GiB" in lines[1]
    # vggt shares camera_head's peak: only the innermost is listed
    assert lines[2].split(": ", 1)[1].split(", ")[0].startswith("vggt/camera_head ")
    assert "vggt 0.048" not in lines[2]


# ---- command line --------------------------------------------------------------------------------
def test_memory_profiler_on_the_cpu_is_one_line_and_exit_2(tmp_path):
    done = cli("profile", "profiler=memory", "model.arch=small", "frames=1", f"out={tmp_path}")
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [l for l in done.stderr.strip().splitlines() if l.strip()]
    assert lines == [f"vggt_bench: error: {memory_capture.CPU_MESSAGE}"]
    assert not (tmp_path / "profiles").exists()  # refused before anything was built or written


def test_graph_replays_are_refused():
    def point(device, **ex):
        return SimpleNamespace(device=device, execution=ExecutionConfig(**ex))

    with pytest.raises(UserError, match="cuda_graph=false"):
        memory_capture.check_point(point("cuda", cuda_graph=True))
    with pytest.raises(UserError, match="needs device=cuda"):
        memory_capture.check_point(point("cpu"))
    memory_capture.check_point(point("cuda", compile="default"))


def test_analyze_a_kept_snapshot_on_the_cpu(aggregator_py, tmp_path):
    kept = tmp_path / "gpu" / "profiles" / "fused_S2_memory"
    kept.mkdir(parents=True)
    with open(kept / "memory_snapshot.pickle", "wb") as f:
        pickle.dump(hand_built_snapshot(aggregator_py), f)
    stage_calls().to_csv(kept / "memory_stage_calls.csv", index=False)
    (kept / "point.json").write_text(json.dumps({"profiler": "memory", "forward_start_event": 1, "device_index": 0}))
    out = tmp_path / "out"
    done = cli("profile", f"analyze={kept / 'memory_snapshot.pickle'}", f"out={out}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "peak allocated 0.048 GiB" in done.stdout and "memory_viz" in done.stdout
    directory = out / "profiles" / "fused_S2_memory"
    for name in mem.MEMORY_TABLES:
        assert (directory / f"{name}.csv").exists()
    assert (directory / "memory_timeline.png").exists() and (directory / "memory_at_peak.png").exists()
    by = pd.read_csv(directory / "memory_by_category.csv").set_index("category")
    assert by.loc["kept layer outputs", "size_gib"] * GiB == 8 * MiB
    assert json.loads((directory / "point.json").read_text())["forward_start_event"] == 1
    bad = tmp_path / "bad.pickle"
    bad.write_bytes(b"not a pickle")
    done = cli("profile", f"analyze={bad}", f"out={out}")
    assert done.returncode == 2 and "not a readable memory snapshot" in done.stderr


def test_an_unrecorded_free_ends_the_earlier_allocation_at_that_address():
    trace = [dict(action="alloc", addr=0x1000, size=3 * MiB), dict(action="alloc", addr=0x1000, size=1 * MiB)]
    tables = mem.memory_tables({"segments": [], "device_traces": [trace]})
    assert mib(tables["memory_timeline"]["allocated_gib"]) == [3, 1]
    assert any("already live" in n for n in tables["memory_summary"].attrs["notes"])


class StandInCuda:
    """Stand-ins for the torch.cuda calls of the GPU path, so its glue runs on the CPU: the
    allocator history calls, two snapshots (a marker before the forward, then the full one),
    the allocator counters the stage tracker reads."""

    def __init__(self, monkeypatch, snapshot, net, fail_forward=False):
        from vggt_bench.measure import build, env

        self.history, self.allocator = [], FakeAllocator(21 * MiB)
        marker = {"segments": [], "device_traces": [snapshot["device_traces"][0][:1]]}
        snapshots = iter([marker, snapshot])
        calls = {"n": 0}

        def forward():
            calls["n"] += 1
            if fail_forward and calls["n"] == 2:  # the recorded one, after one warm-up
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.\nmore text")
            return net.aggregate(torch.rand(1, 1, 3, 28, 28))

        m = monkeypatch
        m.setattr(torch.cuda.memory, "_record_memory_history", lambda *a, **k: self.history.append(k or a))
        m.setattr(torch.cuda.memory, "_snapshot", lambda *a, **k: next(snapshots))
        m.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
        m.setattr(torch.cuda, "current_device", lambda: 0)
        a = self.allocator
        m.setattr(torch.cuda, "memory_stats_as_nested_dict", lambda device=None: {
            "allocated_bytes": {"all": {"current": a.current, "peak": a.peak}},
            "allocation": {"all": {"allocated": a.allocs, "freed": a.frees}}})
        m.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: a.reset_peak())
        m.setattr(build.MODELS, "get", lambda point: net)
        m.setattr(build, "make_inputs", lambda point: (None, None))
        m.setattr(build, "forward_fn", lambda net_, point, images, queries: forward)
        m.setattr(env, "environment", lambda device: {"gpu_name": "stand-in GPU"})


def cuda_point():
    return SimpleNamespace(device="cuda", part="aggregator", execution=ExecutionConfig(),
                           knobs=lambda: {"arch": "small", "frames": 1})


def test_gpu_path_glue_with_stand_ins(monkeypatch, tmp_path, capsys, aggregator_py):
    net = vggt_model.build(vggt_model.VGGTConfig.small(), "cpu")
    cuda = StandInCuda(monkeypatch, hand_built_snapshot(aggregator_py), net)
    cfg = SimpleNamespace(measure=SimpleNamespace(warmup=1))
    assert profile_memory.profile_memory(cfg, cuda_point(), str(tmp_path / "p")) == 0
    assert cuda.history[0]["stacks"] == "python" and cuda.history[0]["context"] == "all"
    assert cuda.history[-1] == {"enabled": None}  # recording stopped
    assert net.ranges.recorder is None  # tracker detached
    with open(tmp_path / "p" / "memory_snapshot.pickle", "rb") as f:
        assert pickle.load(f) == hand_built_snapshot(aggregator_py)
    meta = json.loads((tmp_path / "p" / "point.json").read_text())
    assert meta["forward_start_event"] == 1 and meta["profiler"] == "memory" and meta["gpu_name"] == "stand-in GPU"
    calls = pd.read_csv(tmp_path / "p" / "memory_stage_calls.csv")
    assert calls["path"].iloc[0] == "aggregator" and (calls["path"] == "aggregator/layer_07/global_block").any()
    out = capsys.readouterr().out
    assert "peak allocated 0.048 GiB" in out and "memory_viz" in out
    assert (tmp_path / "p" / "memory_timeline.png").exists()


def test_gpu_path_out_of_memory_keeps_the_snapshot_and_exits_1(monkeypatch, tmp_path, capsys, aggregator_py):
    net = vggt_model.build(vggt_model.VGGTConfig.small(), "cpu")
    StandInCuda(monkeypatch, hand_built_snapshot(aggregator_py), net, fail_forward=True)
    cfg = SimpleNamespace(measure=SimpleNamespace(warmup=1))
    with pytest.raises(SystemExit) as info:
        profile_memory.profile_memory(cfg, cuda_point(), str(tmp_path / "p"))
    assert info.value.code == 1
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(err) == 1 and "ran out of GPU memory (OutOfMemoryError: CUDA out of memory." in err[0]
    assert (tmp_path / "p" / "memory_snapshot.pickle").exists() and (tmp_path / "p" / "memory_at_peak.csv").exists()


def test_gpu_path_failure_is_one_line(monkeypatch, tmp_path, capsys, aggregator_py):
    net = vggt_model.build(vggt_model.VGGTConfig.small(), "cpu")
    StandInCuda(monkeypatch, hand_built_snapshot(aggregator_py), net)
    monkeypatch.setattr(torch.cuda.memory, "_record_memory_history",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("Record context stack not supported\nx")))
    with pytest.raises(SystemExit) as info:
        profile_memory.profile_memory(SimpleNamespace(measure=SimpleNamespace(warmup=0)), cuda_point(),
                                      str(tmp_path / "p"))
    assert info.value.code == 1
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert err == ["vggt_bench: error: profiler=memory: recording the allocator history failed: "
                   "RuntimeError: Record context stack not supported"]
    assert net.ranges.recorder is None
