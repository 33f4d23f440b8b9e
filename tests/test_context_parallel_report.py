"""The report of context-parallel rows: the per-world-size memory fit, the `context_parallel` figure and
the notebook's "One scene across GPUs" section (synthetic GPU tables; one real CPU sweep over 2 ranks)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from conftest import run_cli
from test_report import H100_GIB, _row, error_outputs, notebook_text, pngs, texts, write_results
from vggt_bench.analysis.labels import fmt_percent
from vggt_bench.analysis.memory import context_parallel_memory_fit, memory_fit
from vggt_bench.analysis.scaling import context_parallel_speedup
from vggt_bench.analysis.tidy import load_tables
from vggt_bench.report import plots, render
from vggt_bench.report.plots import render_figures

STATIC_GIB = 2.0       # weights and inputs: whole on every rank
ACT_GIB = 0.19         # activations per frame on one rank: 1/N of it per rank on N ranks
WORLDS = (1, 2, 4)
FRAMES = (8, 16, 32, 64)


def _cp_point(frames: int, n: int, **extra) -> dict:
    """A point on n GPUs: each rank holds the weights and 1/n of the activations; time falls as 1/n plus
    the collectives. One-rank rows leave rank_peak_gib_max empty (as tables from before it), so the fit
    must fall back to peak_alloc_gib; on n ranks rank 0's own peak (peak_alloc_gib) is below the busiest's."""
    busiest = STATIC_GIB + ACT_GIB * frames / n
    comm = 0.0 if n == 1 else 0.2 * frames * (n - 1) / n
    ms = 10.0 * frames / n + comm
    return _row(frames=frames, context_parallel=n, world_size=n, latency_ms_median=ms, latency_ms_p10=ms * 0.97,
                latency_ms_p90=ms * 1.03, latency_ms_mean=ms, latency_ms_min=ms * 0.96,
                peak_alloc_gib=busiest if n == 1 else busiest - 0.05, static_gib=STATIC_GIB,
                device_mem_gib=H100_GIB, comm_ms=comm, comm_mib=3.0 * frames * (n > 1),
                rank_peak_gib_max=math.nan if n == 1 else busiest,
                rank_peak_gib_mean=math.nan if n == 1 else busiest - 0.02, **extra)


def synthetic_cp_results() -> pd.DataFrame:
    rows = [_cp_point(s, n) for n in WORLDS for s in FRAMES]
    rows.append(_row(frames=128, context_parallel=1, status="oom", message="CUDA out of memory"))
    frame = pd.DataFrame(rows)
    frame["point_id"] = [f"cp{i:03d}" for i in range(len(frame))]
    return frame


def test_the_fit_per_world_size_has_the_slope_and_wall_the_data_implies():
    fits = context_parallel_memory_fit(synthetic_cp_results()).set_index("context_parallel")
    assert sorted(fits.index) == list(WORLDS)
    for n in WORLDS:
        f = fits.loc[n]
        assert f["points"] == len(FRAMES)
        # the busiest rank's peak (one rank: peak_alloc_gib), not rank 0's: slope ACT/N, the weights as intercept
        assert f["slope_gib_per_frame"] == pytest.approx(ACT_GIB / n)
        assert f["intercept_gib"] == pytest.approx(STATIC_GIB) and f["max_residual_gib"] < 1e-9
        assert f["device_mem_gib"] == pytest.approx(H100_GIB)
        assert f["wall_frames_device"] == pytest.approx(n * (H100_GIB - STATIC_GIB) / ACT_GIB)
        assert f["wall_frames_141"] == pytest.approx(n * (139.80 - STATIC_GIB) / ACT_GIB)
        # the same weights on every rank: the wall grows as N exactly
        assert f["wall_vs_one_rank"] == pytest.approx(n)
    # memory_fit itself is unchanged: rank 0's peak on 2 ranks is 0.05 GiB lower throughout
    plain = memory_fit(synthetic_cp_results()).set_index("context_parallel")
    assert plain.loc[2, "intercept_gib"] == pytest.approx(STATIC_GIB - 0.05)


def test_cpu_rows_are_fitted_on_each_ranks_rss_without_a_wall():
    cpu = synthetic_cp_results().assign(device="cpu", gpu_name="", peak_alloc_gib=math.nan, device_mem_gib=62.0)
    cpu["rank_peak_gib_max"] = cpu["rank_peak_gib_max"].fillna(STATIC_GIB + ACT_GIB * cpu["frames"])  # RSS, 1 rank
    fits = context_parallel_memory_fit(cpu).set_index("context_parallel")
    assert fits.loc[2, "slope_gib_per_frame"] == pytest.approx(ACT_GIB / 2)
    assert fits[["device_mem_gib", "wall_frames_device", "wall_frames_192", "wall_vs_one_rank"]].isna().all().all()
    assert memory_fit(cpu).empty  # no GPU peak: no memory wall, as before
    fig, _ = plots.context_parallel(cpu)
    drawn = texts(fig)
    assert "CPU memory: busiest rank's peak resident set (GiB)" in drawn and "N = 2 ranks" in drawn
    assert not any(": wall " in t or "predicted wall" in t or "GiB memory" in t for t in drawn)
    assert any("the ranks share one machine's memory, so no wall is predicted" in t for t in drawn)


def test_a_bad_column_for_the_fit_is_one_line():
    with pytest.raises(ValueError, match=r"^memory_fit: column='peak_gib' is not in the results table$"):
        memory_fit(synthetic_cp_results(), column="peak_gib")


def test_the_figure_draws_every_world_size_with_its_wall_and_comm_share():
    fig, note = plots.context_parallel(synthetic_cp_results())
    drawn = texts(fig)
    assert note == ""
    wall = {n: n * (H100_GIB - STATIC_GIB) / ACT_GIB for n in WORLDS}
    for n in WORLDS:
        unit = "GPU" if n == 1 else "GPUs"
        assert f"N = {n} {unit}: wall {wall[n]:,.0f} frames" in drawn
        assert f"N={n}: {wall[n]:,.0f}" in drawn
    # comm share at 64 frames: 0.2*64*(n-1)/n over 640/n + that
    for n in (2, 4):
        comm = 0.2 * 64 * (n - 1) / n
        assert f"{fmt_percent(comm / (640 / n + comm))} comm" in drawn
    assert any("NVIDIA H100 80GB HBM3 memory: 79.1 GiB" in t for t in drawn) and "out of memory" in drawn
    assert "GPU memory, busiest rank's peak allocated (GiB)" in drawn
    # the right panel runs out to the largest wall
    assert fig.axes[1].get_xlim()[1] >= wall[4]


def test_the_figure_is_written_with_cp_rows_only_and_other_figures_split_by_world_size(tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "RESULT_FIGURES", [("scaling_wall", plots.scaling_wall),
                                                  ("context_parallel", plots.context_parallel)])
    out = write_results(tmp_path / "cp", synthetic_cp_results())
    written, notes = render_figures(str(out), reference=None)
    # one figure across the world sizes; the others one per world size
    assert pngs(written) == {"context_parallel", "scaling_wall__cp1", "scaling_wall__cp2", "scaling_wall__cp4"}
    one = write_results(tmp_path / "one", synthetic_cp_results().query("context_parallel == 1"))
    written, notes = render_figures(str(one), reference=None)
    assert pngs(written) == {"scaling_wall"}
    assert "context_parallel: skipped: no point ran on several ranks (sweep model.context_parallel=1,2,4)" in notes
    # several workloads: one figure each, named by what varies (not by the world size)
    mixed = pd.concat([synthetic_cp_results(), synthetic_cp_results().assign(dtype="fp16")])
    written, _ = render_figures(str(write_results(tmp_path / "mixed", mixed)), reference=None)
    assert {p for p in pngs(written) if p.startswith("context_parallel")} == {
        "context_parallel__bf16_autocast", "context_parallel__fp16"}


def test_the_notebook_shows_the_speedup_and_the_walls(tmp_path):
    out = write_results(tmp_path / "cp", synthetic_cp_results())
    written = render(str(out), log=lambda _: None)
    assert str(out / "report.ipynb") in written
    assert error_outputs(out / "report.ipynb") == []
    text = notebook_text(out / "report.ipynb")
    assert "No point ran on several ranks" not in text
    speedup = context_parallel_speedup(synthetic_cp_results())
    at64 = speedup[(speedup["frames"] == 64) & (speedup["context_parallel"] == 4)].iloc[0]
    assert at64["speedup"] == pytest.approx(640 / (160 + 9.6))
    # the one-rank rows have no rank_peak_gib_max (older tables): their peak_alloc_gib is the one-rank peak
    assert at64["memory_ratio"] == pytest.approx((STATIC_GIB + ACT_GIB * 16) / (STATIC_GIB + ACT_GIB * 64))
    for column in ("efficiency", "memory_ratio", "comm_share", "wall_frames_device", "wall_vs_one_rank"):
        assert column in text
    assert f"{round(4 * (H100_GIB - STATIC_GIB) / ACT_GIB, 2):.2f}" in text  # N=4's wall, as the table rounds it
    # the memory-wall table names the world size of each line (else its lines per N look like duplicates)
    import nbformat

    cell = next(c for c in nbformat.read(str(out / "report.ipynb"), as_version=4).cells
                if "memory.memory_fit(results)" in c.get("source", ""))
    assert "context_parallel" in "".join(o.get("data", {}).get("text/plain", "") for o in cell["outputs"])


def test_a_cpu_sweep_on_1_and_2_ranks_renders_the_section(tmp_path):
    """Real rows: smoke points at 2 and 4 frames on one rank and on two (gloo), then the report."""
    done = run_cli("sweep", "experiment=smoke", f"out={tmp_path}", "frames=2,4", "model.frame_exec=fused",
                   "model.context_parallel=1,2", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = pngs(str(p) for p in (tmp_path / "figures").glob("*.png"))
    assert "context_parallel" in figures
    assert error_outputs(tmp_path / "report.ipynb") == []
    text = notebook_text(tmp_path / "report.ipynb")
    assert "No point ran on several ranks" not in text and "comm_share" in text and "wall_vs_one_rank" in text
    fits = context_parallel_memory_fit(load_tables(str(tmp_path)).results)
    assert sorted(fits["context_parallel"]) == [1, 2] and fits["wall_frames_device"].isna().all()  # CPU: no wall
