"""nsys SQLite export -> tables: checked against what `nsys stats` printed for the same reports.

The fixtures in tests/fixtures/nsys are the seed project's four A40 reports, trimmed by
scripts/trim_nsys_sqlite.py, beside the output of
`nsys stats --report nvtx_sum,nvtx_gpu_proj_sum,cuda_gpu_kern_sum,cuda_api_sum --format csv`
(nsys 2025.3.1) for each. Every expected number comes from those stats files.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vggt_bench.profiling.nsys_cli import parse_stats as parse_stats_text
from vggt_bench.profiling import nsys_sqlite as ns
from vggt_bench.core.schema import (
    CUDA_API_COLUMNS,
    GPU_ACTIVITY_COLUMNS,
    KERNEL_COLUMNS,
    NVTX_RANGE_COLUMNS,
)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "nsys"
WITH_DATA = [
    "vggt_report_A40", "vggt_100report_A40", "vggt_optimized100report_A40",
    # our own VGGT-1B captures (H100, nsys 2025.3.1, bf16, 2 frames, one forward), with our `vggt` NVTX domain
    "vggt1b_fused_S2_H100", "vggt1b_sequential_S2_H100",
]
EMPTY = "vggt_20report_A40"
REL = 0.01  # agreement required with nsys; the tables are in fact exact to the ns (asserts below)


# ------------------------------------------------------------------------------------------
# reading the `nsys stats` output


def parse_stats(path: Path) -> dict[str, object]:
    """{report name: DataFrame | "SKIPPED: ..." | None (printed nothing)} of one stats file."""
    return parse_stats_text(path.read_text())


STATS = {name: parse_stats(FIXTURES / f"{name}.stats.txt") for name in WITH_DATA + [EMPTY]}


@pytest.fixture(scope="module", params=WITH_DATA)
def report(request):
    name = request.param
    tables = ns.read_report(FIXTURES / f"{name}.sqlite.gz")
    instances = ns.nvtx_instances(FIXTURES / f"{name}.sqlite.gz")
    return name, tables, instances, STATS[name]


def split_range(nsys_name: str) -> tuple[str, str]:
    domain, _, name = nsys_name.partition(":")
    return domain, name


def row_of(table: pd.DataFrame, nsys_name: str) -> pd.Series:
    domain, name = split_range(nsys_name)
    rows = table[(table["domain"] == domain) & (table["range"] == name)]
    assert len(rows) == 1, f"{nsys_name}: {len(rows)} rows"
    return rows.iloc[0]


def close(ours_ms: float, theirs_ns: float) -> bool:
    return abs(ours_ms * 1e6 - theirs_ns) <= REL * abs(theirs_ns)


# ------------------------------------------------------------------------------------------
# the four tables against nsys stats


def test_tables_have_schema_columns(report):
    _, tables, _, _ = report
    assert list(tables) == list(ns.TABLES)
    assert list(tables["nvtx_ranges"].columns) == NVTX_RANGE_COLUMNS
    assert list(tables["kernels"].columns) == KERNEL_COLUMNS
    assert list(tables["cuda_api"].columns) == CUDA_API_COLUMNS
    assert list(tables["gpu_activity"].columns) == GPU_ACTIVITY_COLUMNS


def test_nvtx_cpu_time_matches_nvtx_sum(report):
    _, tables, instances, stats = report
    nvtx_sum = stats["nvtx_sum"]
    ranges = tables["nvtx_ranges"]
    assert len(ranges) == len(nvtx_sum)
    for _, theirs in nvtx_sum.iterrows():
        ours = row_of(ranges, theirs["Range"])
        assert ours["calls"] == theirs["Instances"]
        assert close(ours["cpu_ms"], theirs["Total Time (ns)"])
        assert ours["cpu_ms"] * 1e6 == pytest.approx(theirs["Total Time (ns)"], abs=1)  # exact
        domain, name = split_range(theirs["Range"])
        inst = instances[(instances["domain"] == domain) & (instances["range"] == name)]
        assert (inst["style"] == theirs["Style"]).all()
        assert inst["cpu_ms"].median() * 1e6 == pytest.approx(theirs["Med (ns)"], abs=1)
        assert inst["cpu_ms"].min() * 1e6 == pytest.approx(theirs["Min (ns)"], abs=1)
        assert inst["cpu_ms"].max() * 1e6 == pytest.approx(theirs["Max (ns)"], abs=1)


def test_nvtx_gpu_projection_matches_nvtx_gpu_proj_sum(report):
    _, tables, instances, stats = report
    proj = stats["nvtx_gpu_proj_sum"]
    ranges = tables["nvtx_ranges"]
    for _, theirs in proj.iterrows():
        ours = row_of(ranges, theirs["Range"])
        assert close(ours["gpu_ms"], theirs["Total Proj Time (ns)"])
        assert ours["gpu_ms"] * 1e6 == pytest.approx(theirs["Total Proj Time (ns)"], abs=1)
        assert ours["gpu_ops"] == theirs["Total GPU Ops"]
        domain, name = split_range(theirs["Range"])
        inst = instances[(instances["domain"] == domain) & (instances["range"] == name)]
        projected = inst[inst["gpu_ms"].notna()]
        assert len(projected) == theirs["Range Instances"]
        assert projected["cpu_ms"].sum() * 1e6 == pytest.approx(theirs["Total Range Time (ns)"], abs=1)
        assert projected["gpu_ms"].median() * 1e6 == pytest.approx(theirs["Proj Med (ns)"], abs=1)
        assert projected["gpu_ms"].min() * 1e6 == pytest.approx(theirs["Proj Min (ns)"], abs=1)
        assert projected["gpu_ms"].max() * 1e6 == pytest.approx(theirs["Proj Max (ns)"], abs=1)
        assert projected["gpu_ops"].mean() == pytest.approx(theirs["Avg GPU Ops"], abs=0.051)  # nsys rounds to 0.1
        assert inst["level"].mean() == pytest.approx(theirs["Avg Range Lvl"], abs=0.051)


def test_kernels_match_cuda_gpu_kern_sum(report):
    name, tables, _, stats = report
    kern_sum = stats["cuda_gpu_kern_sum"]
    if not isinstance(kern_sum, pd.DataFrame):
        pytest.skip(f"nsys stats printed no cuda_gpu_kern_sum for {name} (nothing to compare)")
    kernels = tables["kernels"]
    assert len(kernels) == len(kern_sum)
    # same order as nsys: total time descending
    assert list(kernels["kernel"][:10]) == list(kern_sum["Name"][:10])
    ours = kernels.set_index("kernel")
    for _, theirs in kern_sum.iterrows():
        row = ours.loc[theirs["Name"]]
        assert row["calls"] == theirs["Instances"]
        assert close(row["total_ms"], theirs["Total Time (ns)"])
        assert row["total_ms"] * 1e6 == pytest.approx(theirs["Total Time (ns)"], abs=1)
        assert row["mean_ms"] * 1e6 == pytest.approx(theirs["Avg (ns)"], abs=0.1)
        assert row["median_ms"] * 1e6 == pytest.approx(theirs["Med (ns)"], abs=0.1)
        assert row["min_ms"] * 1e6 == pytest.approx(theirs["Min (ns)"], abs=1)
        assert row["max_ms"] * 1e6 == pytest.approx(theirs["Max (ns)"], abs=1)
        assert row["pct"] == pytest.approx(theirs["Time (%)"], abs=0.05)


def test_kernels_without_nsys_summary_are_consistent(report):
    """Where nsys printed no kernel summary, the table still accounts for every kernel."""
    _, tables, _, stats = report
    kernels, activity = tables["kernels"], tables["gpu_activity"]
    assert kernels["calls"].sum() == activity["kernels"].iloc[0]
    assert kernels["pct"].sum() == pytest.approx(100.0)
    assert kernels["total_ms"].is_monotonic_decreasing
    # kernels launched inside the outermost range cannot exceed all kernels
    outer = tables["nvtx_ranges"].sort_values("kernels").iloc[-1]  # the outermost range
    assert 0 < outer["kernels"] <= kernels["calls"].sum()
    assert outer["kernels"] <= outer["gpu_ops"]


def test_cuda_api_matches_cuda_api_sum(report):
    _, tables, _, stats = report
    api_sum = stats["cuda_api_sum"]
    api = tables["cuda_api"].set_index("api")
    assert sorted(api.index) == sorted(api_sum["Name"])
    for _, theirs in api_sum.iterrows():
        row = api.loc[theirs["Name"]]
        assert row["calls"] == theirs["Num Calls"]
        assert close(row["total_ms"], theirs["Total Time (ns)"])
        assert row["total_ms"] * 1e6 == pytest.approx(theirs["Total Time (ns)"], abs=1)
        assert row["mean_ms"] * 1e6 == pytest.approx(theirs["Avg (ns)"], abs=0.1)
        assert row["pct"] == pytest.approx(theirs["Time (%)"], abs=0.05)


def test_gpu_activity_is_sane(report):
    _, tables, _, _ = report
    row = tables["gpu_activity"].iloc[0]
    assert 0 < row["busy_ms"] <= row["window_ms"]
    assert row["idle_frac"] == pytest.approx(1 - row["busy_ms"] / row["window_ms"])
    # the union of GPU work lasts at least as long as all executions of any one kernel
    assert row["busy_ms"] >= tables["kernels"]["total_ms"].max()
    assert 0 <= row["gap_median_us"] <= row["gap_p90_us"]


# ------------------------------------------------------------------------------------------
# what the reports are evidence of


@pytest.mark.parametrize("name", ["vggt_100report_A40", "vggt_optimized100report_A40"])
def test_100_frames_cpu_and_gpu_disagree(name):
    """On the CPU frame attention looks ~5x global attention; on the GPU it is the reverse."""
    ranges = ns.nvtx_ranges(FIXTURES / f"{name}.sqlite.gz")
    frame, glob = row_of(ranges, ":Frame_Attention"), row_of(ranges, ":Global_Attention")
    whole = row_of(ranges, ":VGGT_Aggregator")
    assert frame["cpu_ms"] > 3 * frame["gpu_ms"]
    assert glob["gpu_ms"] > 3 * glob["cpu_ms"]
    assert glob["gpu_ms"] > 3 * frame["gpu_ms"]
    assert frame["disagree"] and glob["disagree"]
    assert not whole["disagree"]  # the whole forward is synchronised: both clocks agree
    assert frame["cpu_gpu_ratio"] > 2 and glob["cpu_gpu_ratio"] < 0.5
    # and nsys says the same
    proj = STATS[name]["nvtx_gpu_proj_sum"].set_index("Range")
    assert proj.loc[":Frame_Attention", "Total Range Time (ns)"] > 3 * proj.loc[":Frame_Attention", "Total Proj Time (ns)"]
    assert proj.loc[":Global_Attention", "Total Proj Time (ns)"] > 3 * proj.loc[":Global_Attention", "Total Range Time (ns)"]


def test_capture_that_missed_the_work_raises():
    stats = STATS[EMPTY]
    assert str(stats["nvtx_sum"]).startswith("SKIPPED")
    assert str(stats["cuda_gpu_kern_sum"]).startswith("SKIPPED")
    with pytest.raises(ns.NoProfileData) as err:
        ns.read_report(FIXTURES / f"{EMPTY}.sqlite.gz")
    message = str(err.value)
    assert "\n" not in message
    assert "no NVTX ranges and no GPU kernels" in message
    assert "missed the work" in message
    assert isinstance(err.value, RuntimeError)
    # the parts are still readable one by one: the API calls were captured
    api = ns.cuda_api_summary(FIXTURES / f"{EMPTY}.sqlite.gz").set_index("api")
    for _, theirs in stats["cuda_api_sum"].iterrows():
        assert api.loc[theirs["Name"], "calls"] == theirs["Num Calls"]


# ------------------------------------------------------------------------------------------
# domains, nesting and the projection rules, on a hand-made export with nsys's schema

TID = (7 << 24) | 7  # globalTid: pid 7, tid 7
TID2 = (7 << 24) | 8
PID = 7 << 24  # globalPid


def make_export(path: Path, nvtx=True, kernels=True) -> Path:
    """A tiny export in nsys's table layout; times in ns.

    Thread TID, domain "vggt" (id 1) plus one default-domain range:
        vggt:vggt        [0, 1000]  push/pop
          vggt:layer_00  [100, 400]
            vggt:attention [110, 200]  launches k1 (call 120-130) -> GPU [500, 600]
            vggt:mlp       [210, 300]  launches k2 (call 220-230) -> GPU [550, 900] (overlaps k1)
          vggt:layer_01  [400, 700]
            vggt:attention [410, 500]  launches memcpy (call 420-430) -> GPU [950, 1000]
                                       and a call 490-510 that ends after the range -> GPU [2000, 2100]
                                       (so it is layer_01's and vggt's, not attention's)
          :step (default domain) [0, 1001]  same thread, contains everything
        thread TID2: vggt:attention [0, 50] launches nothing
    """
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE StringIds (id INTEGER PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE NVTX_EVENTS (start INTEGER NOT NULL, end INTEGER, eventType INTEGER NOT NULL,
            rangeId INTEGER, text TEXT, globalTid INTEGER, endGlobalTid INTEGER, textId INTEGER,
            domainId INTEGER);
        CREATE TABLE CUPTI_ACTIVITY_KIND_RUNTIME (start INTEGER NOT NULL, end INTEGER NOT NULL,
            eventClass INTEGER, globalTid INTEGER, correlationId INTEGER, nameId INTEGER NOT NULL);
        CREATE TABLE CUPTI_ACTIVITY_KIND_MEMCPY (start INTEGER NOT NULL, end INTEGER NOT NULL,
            deviceId INTEGER, streamId INTEGER, correlationId INTEGER, globalPid INTEGER,
            bytes INTEGER, copyKind INTEGER);
        """
    )
    conn.executemany("INSERT INTO StringIds VALUES (?, ?)", [
        (1, "cudaLaunchKernel_v7000"), (2, "cudaMemcpyAsync_v3020"), (3, "k_one"), (4, "k_two"),
        (5, "attention"), (6, "cudaStreamIsCapturing_v10000"),
    ])
    if nvtx:
        conn.executemany(
            "INSERT INTO NVTX_EVENTS (start, end, eventType, text, globalTid, textId, domainId) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (0, None, 75, "vggt", TID, None, 1),  # domain create: no end
                (0, 1000, 59, "vggt", TID, None, 1),
                (100, 400, 59, "layer_00", TID, None, 1),
                (110, 200, 59, None, TID, 5, 1),  # registered string
                (210, 300, 59, "mlp", TID, None, 1),
                (400, 700, 59, "layer_01", TID, None, 1),
                (410, 500, 59, "attention", TID, None, 1),
                (0, 1001, 59, "step", TID, None, 0),
                (0, 50, 59, "attention", TID2, None, 1),
                (5, None, 59, "never_ended", TID, None, 0),
            ],
        )
    conn.executemany("INSERT INTO CUPTI_ACTIVITY_KIND_RUNTIME VALUES (?, ?, 0, ?, ?, ?)", [
        (120, 130, TID, 1, 1), (220, 230, TID, 2, 1), (420, 430, TID, 3, 2),
        (490, 510, TID, 4, 1), (600, 610, TID, 5, 6),
    ])
    conn.executemany("INSERT INTO CUPTI_ACTIVITY_KIND_MEMCPY VALUES (?, ?, 0, 7, ?, ?, 4, 2)", [
        (950, 1000, 3, PID),
    ])
    if kernels:
        conn.executescript(
            """
            CREATE TABLE CUPTI_ACTIVITY_KIND_KERNEL (start INTEGER NOT NULL, end INTEGER NOT NULL,
                deviceId INTEGER, streamId INTEGER, correlationId INTEGER, globalPid INTEGER,
                demangledName INTEGER NOT NULL, shortName INTEGER NOT NULL);
            """
        )
        conn.executemany("INSERT INTO CUPTI_ACTIVITY_KIND_KERNEL VALUES (?, ?, 0, 7, ?, ?, ?, ?)", [
            (500, 600, 1, PID, 3, 3), (550, 900, 2, PID, 4, 4), (2000, 2100, 4, PID, 3, 3),
        ])
    conn.commit()
    conn.close()
    return path


def test_domains_nesting_and_projection_rules(tmp_path):
    export = make_export(tmp_path / "synthetic.sqlite")
    ranges = ns.nvtx_ranges(export)
    by = {(r.domain, r.range): r for r in ranges.itertuples()}
    assert set(by) == {("vggt", "vggt"), ("vggt", "layer_00"), ("vggt", "layer_01"),
                       ("vggt", "attention"), ("vggt", "mlp"), ("", "step")}
    # a parent counts its children's ops; its projection spans first start to last end:
    # vggt holds every launch, the one at 490-510 too (GPU 2000-2100)
    assert by["vggt", "vggt"].gpu_ms == pytest.approx((2100 - 500) / 1e6)
    assert by["vggt", "vggt"].kernels == 3 and by["vggt", "vggt"].gpu_ops == 4
    assert by["", "step"].gpu_ms == by["vggt", "vggt"].gpu_ms  # nesting ignores domains
    # overlap inside a range: one span (500..900), not a sum (100 + 350)
    assert by["vggt", "layer_00"].gpu_ms == pytest.approx(400 / 1e6)
    # ... while gpu_busy_ms is the work itself: the summed op durations
    assert by["vggt", "layer_00"].gpu_busy_ms == pytest.approx((100 + 350) / 1e6)
    assert by["vggt", "layer_01"].gpu_busy_ms == pytest.approx((50 + 100) / 1e6)  # idle 1000..2000 not counted
    assert by["vggt", "vggt"].gpu_busy_ms == pytest.approx((100 + 350 + 50 + 100) / 1e6)
    # the call 490-510 ends after layer_01/attention [410, 500]: not its, but layer_01's
    assert by["vggt", "layer_01"].gpu_ms == pytest.approx((2100 - 950) / 1e6)
    assert by["vggt", "layer_01"].kernels == 1 and by["vggt", "layer_01"].gpu_ops == 2
    # attention: three instances over two threads; the one on TID2 launched nothing
    attention = by["vggt", "attention"]
    assert attention.calls == 3
    assert attention.cpu_ms == pytest.approx((90 + 90 + 50) / 1e6)
    assert attention.gpu_ms == pytest.approx((100 + 50) / 1e6)
    assert attention.gpu_ops == 2
    # never-ended range is left out, and said so
    assert ("", "never_ended") not in by
    assert any("never ended" in n for n in ranges.attrs["notes"])

    inst = ns.nvtx_instances(export).set_index("start_ns")
    assert inst.loc[210, "path"] == "step/vggt/layer_00/mlp"  # nesting crosses domains
    assert inst.loc[210, "level"] == 3
    assert np.isnan(inst[inst["thread"] == TID2]["gpu_ms"]).all()

    # ratio and disagreement: layer_00 spends 300 ns on the CPU for 400 on the GPU (agree),
    # the outer vggt range 1000 vs 1600 (agree), mlp 90 vs 350 (disagree)
    assert not by["vggt", "layer_00"].disagree
    assert not by["vggt", "vggt"].disagree
    assert by["vggt", "mlp"].disagree and by["vggt", "mlp"].cpu_gpu_ratio == pytest.approx(90 / 350)

    api = ns.cuda_api_summary(export).set_index("api")
    assert api.loc["cudaLaunchKernel", "calls"] == 3  # "_v7000" dropped as nsys does
    assert "cudaStreamIsCapturing_v10000" in api.index  # longer suffixes stay, as nsys prints


def test_gpu_activity_union_and_gaps(tmp_path):
    export = make_export(tmp_path / "synthetic.sqlite")
    row = ns.gpu_activity(export).iloc[0]
    # ops: [500,600] [550,900] [950,1000] [2000,2100]: union 400+50+100 over [500, 2100]
    assert row["window_ms"] == pytest.approx(1600 / 1e6)
    assert row["busy_ms"] == pytest.approx(550 / 1e6)
    assert row["kernels"] == 3
    # gaps between consecutive ops: 0 (overlap), 50, 1000 ns
    assert row["gap_median_us"] == pytest.approx(0.05)
    window = ns.gpu_activity(export, window=(0, 1000)).iloc[0]
    assert window["window_ms"] == pytest.approx(1000 / 1e6)
    assert window["busy_ms"] == pytest.approx(450 / 1e6)
    assert window["kernels"] == 2


def test_only_ranges_missing_gives_tables_and_a_note(tmp_path):
    tables = ns.read_report(make_export(tmp_path / "no_nvtx.sqlite", nvtx=False))
    assert tables["nvtx_ranges"].empty
    assert list(tables["nvtx_ranges"].columns) == NVTX_RANGE_COLUMNS
    assert len(tables["kernels"]) == 2
    notes = tables["kernels"].attrs["notes"]
    assert any("no NVTX ranges" in n for n in notes)
    assert all(t.attrs["notes"] == notes for t in tables.values())


def test_only_kernels_missing_gives_tables_and_a_note(tmp_path):
    tables = ns.read_report(make_export(tmp_path / "no_kernels.sqlite", kernels=False))
    assert tables["kernels"].empty
    assert any("no GPU kernels" in n for n in tables["nvtx_ranges"].attrs["notes"])
    by = tables["nvtx_ranges"].set_index(["domain", "range"])
    assert by.loc[("vggt", "layer_01"), "gpu_ops"] == 1  # the memcpy still projects


# ------------------------------------------------------------------------------------------
# the fixture script


def test_trim_script_keeps_the_tables(tmp_path):
    src = FIXTURES / "vggt_report_A40.sqlite.gz"
    dst = tmp_path / "again.sqlite.gz"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "trim_nsys_sqlite.py"), str(src),
                    "-o", str(dst)], check=True, capture_output=True)
    before, after = ns.read_report(src), ns.read_report(dst)
    for name in ns.TABLES:
        pd.testing.assert_frame_equal(before[name], after[name])
    conn = ns.connect(dst)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert "TARGET_INFO_SYSTEM_ENV" not in tables  # the target's environment never travels


def test_fixtures_stay_small():
    total = sum(p.stat().st_size for p in FIXTURES.iterdir())
    assert total < 8 * 2**20
