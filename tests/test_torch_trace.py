"""PyTorch profiler Chrome trace -> tables.

A CPU trace is made here, from a small module run under record_function ranges whose calls
and sleeps we know. A CUDA trace (tests/fixtures/torch_trace, made on an H100 with torch
2.11: 4 steps of step > forward > mlp, queue_matmuls, wait, to_host, host_sleep) is checked
against what torch's own key_averages() said for it and against kineto's gpu_user_annotation
spans.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile, record_function

from vggt_bench.profiling import nsys_sqlite as ns
from vggt_bench.profiling import torch_trace as tt
from vggt_bench.core.schema import CUDA_API_COLUMNS, GPU_ACTIVITY_COLUMNS, KERNEL_COLUMNS, NVTX_RANGE_COLUMNS

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "torch_trace"
STEPS, BLOCKS, SLEEP_S = 3, 2, 0.03


class Block(torch.nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.attn = torch.nn.Linear(dim, dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 2 * dim), torch.nn.GELU(),
                                       torch.nn.Linear(2 * dim, dim))

    def forward(self, x):
        with record_function("attention"):
            x = x + self.attn(x)
        with record_function("mlp"):
            return x + self.mlp(x)


class Tiny(torch.nn.Module):
    def __init__(self, dim: int = 32):
        super().__init__()
        self.blocks = torch.nn.ModuleList(Block(dim) for _ in range(BLOCKS))

    def forward(self, x):
        with record_function("aggregator"):
            for block in self.blocks:
                x = block(x)
        with record_function("host_wait"):
            time.sleep(SLEEP_S)
        return x


@pytest.fixture(scope="module")
def cpu_trace(tmp_path_factory):
    path = tmp_path_factory.mktemp("trace") / "cpu_trace.json"
    model, x = Tiny(), torch.randn(4, 32)
    with torch.no_grad():
        model(x)  # warm-up outside the profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(STEPS):
                with record_function("vggt"):
                    model(x)
    prof.export_chrome_trace(str(path))
    return path, prof


def test_cpu_trace_ranges(cpu_trace):
    path, _ = cpu_trace
    tables = tt.read_trace(path)
    assert list(tables) == list(ns.TABLES)
    ranges = tables["nvtx_ranges"]
    assert list(ranges.columns) == NVTX_RANGE_COLUMNS
    by = ranges.set_index("range")
    assert (ranges["domain"] == "").all()
    assert by.loc["vggt", "calls"] == STEPS
    assert by.loc["aggregator", "calls"] == STEPS
    assert by.loc["attention", "calls"] == STEPS * BLOCKS
    assert by.loc["mlp", "calls"] == STEPS * BLOCKS
    assert by.loc["host_wait", "calls"] == STEPS
    # the sleep is the range's time, give or take the scheduler
    assert STEPS * SLEEP_S * 1e3 <= by.loc["host_wait", "cpu_ms"] < STEPS * (SLEEP_S * 1e3 + 25)
    # nesting: a parent lasts at least as long as its children together
    assert by.loc["vggt", "cpu_ms"] >= by.loc["aggregator", "cpu_ms"] + by.loc["host_wait", "cpu_ms"]
    assert by.loc["aggregator", "cpu_ms"] >= by.loc["attention", "cpu_ms"] + by.loc["mlp", "cpu_ms"]
    # CPU only: no GPU time known, nothing flagged
    assert ranges["gpu_ms"].isna().all()
    assert ranges["cpu_gpu_ratio"].isna().all()
    assert not ranges["disagree"].any()
    assert (ranges["kernels"] == 0).all() and (ranges["gpu_ops"] == 0).all()


def test_cpu_trace_ranges_match_torch_key_averages(cpu_trace):
    path, prof = cpu_trace
    ranges = tt.read_trace(path)["nvtx_ranges"].set_index("range")
    averages = {e.key: e for e in prof.key_averages()}
    for name in ["vggt", "aggregator", "attention", "mlp", "host_wait"]:
        assert ranges.loc[name, "calls"] == averages[name].count
        assert ranges.loc[name, "cpu_ms"] == pytest.approx(averages[name].cpu_time_total / 1e3, rel=0.01)


def test_cpu_trace_kernel_table_is_cpu_ops(cpu_trace):
    path, prof = cpu_trace
    tables = tt.read_trace(path)
    kernels = tables["kernels"]
    assert list(kernels.columns) == KERNEL_COLUMNS
    assert kernels.attrs["kernel_source"] == "cpu_op"
    assert any("CPU-only" in n for n in kernels.attrs["notes"])
    by = kernels.set_index("kernel")
    linears = STEPS * BLOCKS * 3
    assert by.loc["aten::linear", "calls"] == linears
    assert by.loc["aten::gelu", "calls"] == STEPS * BLOCKS
    assert kernels["pct"].sum() == pytest.approx(100.0)
    # self times: an op's time less its children's, as torch's self_cpu_time_total
    averages = {e.key: e for e in prof.key_averages()}
    for name in ["aten::addmm", "aten::linear", "aten::gelu"]:
        assert by.loc[name, "total_ms"] == pytest.approx(
            averages[name].self_cpu_time_total / 1e3, rel=0.02, abs=0.005)
    # self times add up: together they are less than the whole profiled run
    assert kernels["total_ms"].sum() < tables["nvtx_ranges"].set_index("range").loc["vggt", "cpu_ms"]
    assert tables["cuda_api"].empty and list(tables["cuda_api"].columns) == CUDA_API_COLUMNS
    activity = tables["gpu_activity"]
    assert list(activity.columns) == GPU_ACTIVITY_COLUMNS
    assert math.isnan(activity["window_ms"].iloc[0]) and activity["kernels"].iloc[0] == 0


def test_empty_trace_raises(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text(json.dumps({"traceEvents": [{"ph": "M", "name": "process_name", "pid": 1}]}))
    with pytest.raises(ns.NoProfileData, match="no record_function ranges, no GPU kernels"):
        tt.read_trace(path)


# ------------------------------------------------------------------------------------------
# a real CUDA trace (H100)


@pytest.fixture(scope="module")
def cuda_trace():
    path = FIXTURES / "h100_cuda_trace.json.gz"
    truth = json.loads((FIXTURES / "h100_cuda_key_averages.json").read_text())["key_averages"]
    return tt.read_trace(path), tt.load_events(path), truth


def test_cuda_trace_ranges(cuda_trace):
    tables, _, truth = cuda_trace
    ranges = tables["nvtx_ranges"].set_index("range")
    for name in ["step", "forward", "mlp", "queue_matmuls", "wait", "to_host", "host_sleep"]:
        assert ranges.loc[name, "calls"] == truth[name]["count"]
    # queue_matmuls only queues 8 big matmuls a step: microseconds on the CPU, ~21 ms on the GPU
    q = ranges.loc["queue_matmuls"]
    assert q["gpu_ms"] > 20 * q["cpu_ms"] and q["disagree"]
    assert q["kernels"] == 8 * truth["queue_matmuls"]["count"]
    # wait (cudaDeviceSynchronize) launches nothing and lasts as long as that work: disagree
    w = ranges.loc["wait"]
    assert w["gpu_ms"] == 0 and w["gpu_ops"] == 0 and w["disagree"]
    assert w["cpu_ms"] == pytest.approx(truth["wait"]["cpu_time_total_us"] / 1e3, rel=1e-6)
    # a parent holds its children's GPU work
    assert ranges.loc["step", "gpu_ops"] >= ranges.loc["forward", "gpu_ops"] + q["gpu_ops"]
    assert ranges.loc["forward", "gpu_ops"] == ranges.loc["mlp", "gpu_ops"]


def test_cuda_projection_matches_kineto_gpu_annotations(cuda_trace):
    """Kineto draws its own GPU span for the innermost ranges: ours must agree."""
    _, events, _ = cuda_trace
    ranges = events[events["cat"] == "user_annotation"].reset_index(drop=True)
    projected = ns.project_ranges(ranges[["thread", "start_ns", "end_ns"]], tt._launch_calls(events))
    ours = ranges.join(projected)
    kineto = events[events["cat"] == "gpu_user_annotation"]
    assert len(kineto) > 0
    for _, span in kineto.iterrows():
        match = ours[(ours["name"] == span["name"])
                     & ((ours["gpu_start_ns"] - span["start_ns"]).abs() <= 5)]
        assert len(match) == 1, span["name"]
        assert match["gpu_ms"].iloc[0] * 1e6 == pytest.approx(span["end_ns"] - span["start_ns"], abs=5)


def test_cuda_kernels_and_api_match_key_averages(cuda_trace):
    tables, _, truth = cuda_trace
    kernels = tables["kernels"]
    assert kernels.attrs["kernel_source"] == "kernel"
    for row in kernels.itertuples():
        assert row.calls == truth[row.kernel]["count"]
        assert row.total_ms * 1e3 == pytest.approx(truth[row.kernel]["device_time_total_us"], rel=1e-4)
    api = tables["cuda_api"]
    for row in api.itertuples():
        assert row.calls == truth[row.api]["count"]
        assert row.total_ms * 1e3 == pytest.approx(truth[row.api]["cpu_time_total_us"], rel=1e-4)
    activity = tables["gpu_activity"].iloc[0]
    assert activity["kernels"] == kernels["calls"].sum()
    assert kernels["total_ms"].sum() <= activity["busy_ms"] <= activity["window_ms"]
