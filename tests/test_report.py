"""The report: figures from results tables (real CPU sweep, synthetic GPU-like tables, degenerate
ones) and the executed notebook."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pandas as pd
import pytest

from conftest import run_cli
from vggt_bench.commands.report import main as report_main
from vggt_bench.analysis import findings
from vggt_bench.analysis.approximations import conversion_table
from vggt_bench.analysis.labels import device_label
from vggt_bench.analysis.memory import memory_fit
from vggt_bench.analysis.profiles import stage_times
from vggt_bench.analysis.scaling import speedup_pairs
from vggt_bench.analysis.tidy import load_tables, tidy_results
from vggt_bench.analysis.upstream import impl_ratios
from vggt_bench.report import common, notebook, plots, render
from vggt_bench.report.plots import render_figures
from vggt_bench.core.schema import KNOBS, RESULT_COLUMNS

REPO = Path(__file__).resolve().parents[1]
H100_GIB = 79.1


# ---- synthetic GPU-like tables ------------------------------------------------------------------
def _row(**values) -> dict:
    row = {c: None for c in RESULT_COLUMNS}
    row.update(
        point_id="p", experiment="synthetic", arch="vggt1b", device="cuda", batch=1, height=336, width=518,
        part="aggregator", frame_exec="fused", frame_chunk=8, prune_depth=0, prune_weights="global",
        attention="sdpa", dtype="bf16_autocast", tf32=False, compile="off", cuda_graph=False, inputs="synthetic",
        gpu_name="NVIDIA H100 80GB HBM3", gpu_mem_gib=H100_GIB, driver="550.54", torch_version="2.6.0+cu124",
        cuda_version="12.4", cudnn_version="90100", python_version="3.11.7", cpu="x", git_commit="abc1234",
        host="gpu-node", timestamp="2026-01-02T03:04:05+00:00", random_weights=True, checkpoint="",
        status="ok", message="", warmup=1, repeats=3, tokens_per_frame=893, peak_tflops=989.4,
        peak_source="NVIDIA H100 SXM5 datasheet, dense, bf16", drift_rel=math.nan, gpu_uuid="GPU-test",
        impl="ours", memory_plan="lean",
    )
    row.update(values)
    return row


# Per backend: seconds per frame (linear part), per frame² (global attention), memory GiB per frame
# and per frame² (a backend that materialises the attention matrix).
BACKENDS = {"sdpa_flash": (0.010, 0.00020, 0.19, 0.0), "sdpa_efficient": (0.011, 0.00028, 0.22, 0.0),
            "eager": (0.012, 0.00060, 0.19, 0.0009)}
FRAMES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]


def _point(frames, backend, exec_, k=0, **extra):
    lin, quad, mem, mem2 = BACKENDS[backend]
    depth = 24
    latency = lin * frames + quad * frames**2 * (depth - k) / depth + (0.004 * frames if exec_ == "sequential" else 0)
    peak = 2.0 + mem * frames + mem2 * frames**2
    if peak > H100_GIB:
        return _row(frames=frames, attention=backend, frame_exec=exec_, prune_depth=k, status="oom",
                    message="CUDA out of memory. Tried to allocate 20.00 GiB", **extra)
    flops = 2.2e12 * frames + 4.0e9 * frames**2
    ms = latency * 1e3
    return _row(frames=frames, attention=backend, frame_exec=exec_, prune_depth=k, latency_ms_median=ms,
                latency_ms_p10=ms * 0.97, latency_ms_p90=ms * 1.04, latency_ms_mean=ms, latency_ms_min=ms * 0.96,
                peak_alloc_gib=peak, peak_reserved_gib=peak * 1.1 + 0.5, static_gib=1.9, act_gib=peak - 1.9, peak_rss_gib=3.0,
                device_mem_gib=H100_GIB, fps=frames / latency, flops=flops, achieved_tflops=flops / latency / 1e12,
                frac_of_peak=flops / latency / 1e12 / 989.4, **extra)


def synthetic_gpu_results() -> pd.DataFrame:
    """A scaling wall over three backends (eager OOMs from 256 frames, every backend at 512),
    two unavailable backends, a conversion sweep with drift."""
    rows = []
    for backend in BACKENDS:
        for exec_ in ("fused", "sequential"):
            rows += [_point(s, backend, exec_) for s in FRAMES]
    for backend, reason in (("sdpa_cudnn", "cuDNN attention needs head_dim <= 128 on sm90 and cuDNN >= 9"),
                            ("flash_attn", "flash_attn is not installed")):
        rows.append(_row(frames=32, attention=backend, status="unavailable", message=reason))
    for s in (8, 32, 100):
        for k in (0, 2, 4, 8):
            rows.append(_point(s, "sdpa_flash", "fused", k=k, drift_rel=0.004 * k * (1 + s / 100) if k else math.nan))
    for s in FRAMES[:6]:  # upstream's code in the same run: 10% slower, 30% more memory
        row = _point(s, "sdpa_flash", "fused", impl="upstream", memory_plan="upstream")
        row.update(latency_ms_median=row["latency_ms_median"] * 1.1, act_gib=row["act_gib"] * 1.3)
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["point_id"] = [f"p{i:03d}" for i in range(len(frame))]
    return frame.drop_duplicates(KNOBS, keep="last").reset_index(drop=True)


def synthetic_profiles() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(profile_summary, profile_ranges) of nsys profiles at 8/32/128 frames, fused and sequential."""
    summary, ranges = [], []
    iterations = 3
    for s in (8, 32, 128):
        for exec_ in ("fused", "sequential"):
            knobs = {k: v for k, v in _row(frames=s, frame_exec=exec_, attention="sdpa_flash").items() if k in KNOBS}
            tag = f"s{s}_{exec_}"
            per_layer = 14 if exec_ == "fused" else 14 * s
            frame_ms, global_ms, patch_ms = 0.4 * s, 0.02 * s * s + 0.3 * s, 0.15 * s
            window = iterations * (patch_ms + 24 * (frame_ms + global_ms)) * (1.4 if exec_ == "sequential" else 1.02)
            busy = iterations * (patch_ms + 24 * (frame_ms + global_ms))
            summary.append({**knobs, "tag": tag, "profiler": "nsys", "iterations": iterations, "window_ms": window,
                            "busy_ms": busy, "idle_frac": 1 - busy / window, "kernels": per_layer * 48 * iterations,
                            "gap_median_us": 3.0 if exec_ == "fused" else 9.0, "gap_p90_us": 20.0,
                            "kernels_per_frame_layer": per_layer})
            stage = {"vggt": busy / iterations, "aggregator": busy / iterations, "patch_embed": patch_ms,
                     "frame_block": 24 * frame_ms, "global_block": 24 * global_ms}
            for name, ms in stage.items():
                calls = 24 * iterations if name.endswith("_block") else iterations
                ranges.append({**knobs, "tag": tag, "profiler": "nsys", "iterations": iterations, "range": name,
                               "domain": "vggt", "calls": calls, "cpu_ms": ms * iterations * 0.5,
                               "gpu_ms": ms * iterations, "kernels": 100, "gpu_ops": 110, "cpu_gpu_ratio": 0.5,
                               "disagree": False})
    return pd.DataFrame(summary), pd.DataFrame(ranges)


def write_results(folder: Path, frame: pd.DataFrame, profiles=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(folder / "results.parquet", index=False)
    frame.to_csv(folder / "results.csv", index=False)
    if profiles is not None:
        summary, ranges = profiles
        summary.to_csv(folder / "profile_summary.csv", index=False)
        ranges.to_csv(folder / "profile_ranges.csv", index=False)
    return folder


def cpu_profiles(results: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Profile tables as a torch-profiler run on the CPU leaves them: gpu_ms NaN, no kernels."""
    knobs = results.iloc[0].reindex(KNOBS).to_dict()
    summary = pd.DataFrame([{**knobs, "tag": "cpu", "profiler": "torch", "iterations": 2, "window_ms": math.nan,
                             "busy_ms": math.nan, "idle_frac": math.nan, "kernels": 0, "gap_median_us": math.nan,
                             "gap_p90_us": math.nan, "kernels_per_frame_layer": math.nan}])
    ranges = pd.DataFrame([{**knobs, "tag": "cpu", "profiler": "torch", "iterations": 2, "range": name,
                            "domain": "", "calls": 2, "cpu_ms": ms, "gpu_ms": math.nan, "kernels": 0, "gpu_ops": 0,
                            "cpu_gpu_ratio": math.nan, "disagree": False}
                           for name, ms in (("aggregator", 40.0), ("patch_embed", 6.0), ("frame_block", 14.0),
                                            ("global_block", 16.0))])
    return summary, ranges


# ---- helpers ------------------------------------------------------------------------------------
def texts(fig) -> list[str]:
    """Every text drawn in a figure (titles, labels, legend entries, annotations)."""
    from matplotlib.text import Text

    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def notebook_text(path: Path) -> str:
    """All markdown and plain-text outputs of an executed notebook, joined."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            data = o.get("data", {})
            out.append(data.get("text/markdown", "") + data.get("text/plain", "") + o.get("text", ""))
    return "\n".join(out)


def error_outputs(path: Path) -> list:
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    return [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]


def pngs(paths) -> set[str]:
    return {Path(p).stem for p in paths if p.endswith(".png")}


def assert_files(paths) -> None:
    assert paths
    for p in paths:
        assert os.path.getsize(p) > 0, p


# ---- a real CPU sweep ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cpu_sweep(tmp_path_factory):
    """The smoke sweep plus a converted layer with drift (8 points, ~10 s), rendered once."""
    out = tmp_path_factory.mktemp("cpu_sweep")
    run = run_cli("sweep", "experiment=smoke", f"out={out}", "report=false", "model.prune_depth=0,2",
                  "measure.drift=true", timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    # The noise flags depend on how busy this machine is (and smoke times 2 repeats: flagged); these
    # tests are about the figures and the narrative's numbers, so the rows are taken as trusted here.
    # test_noisy_points_are_listed_and_left_out_of_conclusions covers noisy rows.
    import json

    for path in (out / "points").glob("*.json"):
        row = json.loads(path.read_text())
        row.update(noisy=False, noise_reason="")
        path.write_text(json.dumps(row))
    from vggt_bench.core.results import ResultStore

    ResultStore(str(out)).rebuild()
    logged = []
    written = render(str(out), log=logged.append)
    return out, written, logged


def test_cpu_sweep_renders_every_figure_with_data_and_an_executed_notebook(cpu_sweep):
    out, written, logged = cpu_sweep
    assert_files(written)
    assert pngs(written) == {"scaling_wall", "fused_speedup", "memory", "conversion", "approximations", "backends"}
    assert {Path(p).stem for p in written if p.endswith(".svg")} == pngs(written)
    assert str(out / "report.ipynb") in written and str(out / "report.html") in written
    assert error_outputs(out / "report.ipynb") == []
    # No profile tables in a sweep: those figures are skipped with a note, not a crash.
    assert any(line.startswith("report: profile_stages: skipped:") for line in logged)
    assert any(line.startswith("report: profile_launches: skipped:") for line in logged)


def test_cpu_notebook_states_the_numbers_computed_from_the_table(cpu_sweep):
    out, _, _ = cpu_sweep
    from vggt_bench.core.results import load_results

    (found,) = findings.findings(load_results(str(out)))
    text = notebook_text(out / "report.ipynb")
    assert found.largest_ok["frames"] == 2 and found.first_oom is None
    assert "The wall was not reached" in text and "S=2" in text
    assert found.fusing is not None and found.fusing["pairs"] == 2
    assert findings.fmt_x(found.fusing["min"]) in text and findings.fmt_x(found.fusing["max"]) in text
    assert found.conversion["k"] == 2 and not math.isnan(found.conversion["drift_max"])
    assert "at k=2 converted layers" in text
    assert findings.fmt_frac(found.conversion["drift_max"]) in text
    assert re.search(r"^device\s+CPU$", text, re.M)          # environment table
    assert re.search(r"^random weights\s+yes$", text, re.M)
    assert re.search(r"^CUDA\s+— \(CPU build\)$", text, re.M)
    html = (out / "report.html").read_text()
    assert "Fastest exact configuration" in html and "data:image/png;base64" in html


def test_cpu_figures_never_show_the_gpu_reference(cpu_sweep):
    from vggt_bench.core.results import load_results

    table = load_results(str(cpu_sweep[0]))
    for fn in (plots.scaling_wall, plots.memory):
        fig, _ = fn(table, "upstream_h100")
        drawn = " ".join(texts(fig))
        assert "reference" not in drawn and "upstream" not in drawn
        assert "CPU" in fig._suptitle.get_text()
        assert common.CPU_TIMINGS in fig._suptitle.get_text()  # the guide: CPU timings back no claim, say so
    fig, _ = plots.memory(table)
    assert any("peak resident set" in t for t in texts(fig))  # CPU memory is the process RSS


# ---- synthetic GPU-like tables ------------------------------------------------------------------
def test_gpu_table_with_profiles_draws_all_seven_figures(tmp_path):
    out = write_results(tmp_path / "gpu", synthetic_gpu_results(), synthetic_profiles())
    written, notes = render_figures(str(out))
    assert_files(written)
    assert pngs(written) == set(plots.FIGURE_NAMES) - {"context_parallel"}  # no point on several ranks
    assert [n for n in notes if "skipped" in n] == [
        "context_parallel: skipped: no point ran on several ranks (sweep model.context_parallel=1,2,4)"]


def test_gpu_scaling_wall_marks_oom_and_labels_the_reference():
    table = synthetic_gpu_results()
    fig, note = plots.scaling_wall(table, "upstream_h100")
    drawn = texts(fig)
    assert "OOM" in drawn and "out of memory (top strip)" in drawn
    assert any("published, not measured here" in t for t in drawn)
    assert "NVIDIA H100 80GB HBM3" in fig._suptitle.get_text() and "bf16_autocast" in fig._suptitle.get_text()
    assert "336×518" in fig._suptitle.get_text()
    assert any("(s, log scale)" in t for t in drawn)
    # Not at another resolution, nor when asked for none.
    other = table.assign(height=252, width=378)
    assert not any("published" in t for t in texts(plots.scaling_wall(other, "upstream_h100").figure))
    assert not any("published" in t for t in texts(plots.scaling_wall(table, None).figure))


def test_gpu_memory_backends_and_conversion_figures_say_what_they_show():
    table = synthetic_gpu_results()
    mem = texts(plots.memory(table).figure)
    assert any("79.1 GiB" in t for t in mem) and "peak reserved" in mem and "out of memory" in mem
    fig, _ = plots.backends(table)
    drawn = texts(fig)
    # eager runs out of memory at 256 frames: 128 is the largest count every backend ran.
    assert "S = 128" in fig._suptitle.get_text()
    assert drawn.count("n/a") == 2                         # sdpa_cudnn, flash_attn
    assert any("% of peak" in t for t in drawn)
    fig, note = plots.conversion(table)
    drawn = texts(fig)
    assert "output drift vs k=0" in drawn and "1.29×" in drawn
    speedups = conversion_table(table).dropna(subset=["speedup"])
    assert set(speedups["prune_depth"]) == {2, 4, 8}


def test_profile_figures_from_gpu_and_cpu_profiles():
    summary, ranges = synthetic_profiles()
    stages = stage_times(ranges)
    s8 = stages[(stages["frames"] == 8) & (stages["frame_exec"] == "fused")].set_index("stage")["ms_per_forward"]
    assert s8["global_block"] == pytest.approx(24 * (0.02 * 64 + 0.3 * 8))   # per forward, not per 3 iterations
    fig, _ = plots.profile_stages(ranges)
    assert any("GPU-projected time per forward (ms)" in t for t in texts(fig))  # synthetic tables: no gpu_busy_ms
    fig, _ = plots.profile_launches(summary, ranges)
    assert any("kernel launches per frame layer" in t for t in texts(fig))
    # A CPU torch-profiler run: stage times from CPU wall time, said on the axis; no launch figure.
    cpu_summary, cpu_ranges = cpu_profiles(synthetic_gpu_results().assign(device="cpu", gpu_name=""))
    fig, _ = plots.profile_stages(cpu_ranges)
    assert any("CPU wall time" in t for t in texts(fig))
    fig, note = plots.profile_launches(cpu_summary, cpu_ranges)
    assert fig is None and "no GPU kernels" in note


def test_gpu_notebook_narrative(tmp_path):
    table = synthetic_gpu_results()
    out = write_results(tmp_path / "gpu", table, synthetic_profiles())
    written = render(str(out), log=lambda _: None)
    assert pngs(written) == set(plots.FIGURE_NAMES) - {"context_parallel"}
    assert error_outputs(out / "report.ipynb") == []
    (found,) = findings.findings(table)
    text = notebook_text(out / "report.ipynb")
    assert found.first_oom["frames"] == 256 and found.largest_ok["frames"] == 256
    assert "the first out-of-memory is at S=256" in text
    assert "fused · sdpa_flash · bf16_autocast (S=1–256)" in text
    assert f"{findings.fmt_x(found.fusing['min'])} (S=128, eager)" in text
    assert "at k=8 converted layers" in text and "1.29×" in text and "6.4%" in text
    assert "NVIDIA H100 80GB HBM3" in text and "OOM" in text and "n/a" in text
    assert "No point ran on several ranks (sweep `model.context_parallel=1,2,4`)." in text


# ---- degenerate tables --------------------------------------------------------------------------
def test_empty_table_skips_every_figure_with_a_note(tmp_path):
    out = write_results(tmp_path / "empty", pd.DataFrame(columns=RESULT_COLUMNS))
    written, notes = render_figures(str(out))
    assert written == []
    assert len(notes) == len(plots.FIGURE_NAMES) and all(": skipped: " in n for n in notes)
    assert "scaling_wall: skipped: no result rows" in notes
    assert findings.findings(pd.DataFrame(columns=RESULT_COLUMNS)) == []


def test_all_oom_table_skips_lines_but_reports_the_wall(tmp_path):
    table = pd.DataFrame([_row(frames=s, attention=b, status="oom", message="CUDA out of memory")
                          for s in (512, 1024) for b in ("sdpa", "eager")])
    written, notes = render_figures(str(write_results(tmp_path / "oom", table)))
    assert written == []
    assert "scaling_wall: skipped: no ok latency to draw (statuses: {'oom': 4})" in notes
    (found,) = findings.findings(table)
    assert found.first_oom["frames"] == 512 and found.largest_ok is None
    assert "No exact point ran; the first out-of-memory is at S=512." in found.lines


def test_single_row_table(tmp_path):
    table = pd.DataFrame([_point(8, "sdpa_flash", "fused")])
    written, notes = render_figures(str(write_results(tmp_path / "one", table)))
    assert pngs(written) == {"scaling_wall", "memory", "backends"}
    assert any(n.startswith("fused_speedup: skipped: no frame count measured (ok) both fused and sequential")
               for n in notes)
    assert any(n.startswith("conversion: skipped: no global-to-frame conversion measured") for n in notes)


def test_csv_only_cpu_table_and_cpu_profiles(tmp_path):
    """A directory with results.csv only (all-missing GPU columns come back as NaN/empty strings)."""
    table = synthetic_gpu_results().assign(
        device="cpu", gpu_name="", gpu_mem_gib=math.nan, peak_alloc_gib=math.nan, peak_reserved_gib=math.nan,
        peak_tflops=math.nan, frac_of_peak=math.nan, peak_source="no GPU (CPU peak not tabulated)",
        device_mem_gib=23.5, arch="small", dtype="fp32", height=126, width=196)
    out = tmp_path / "csv"
    out.mkdir()
    table.to_csv(out / "results.csv", index=False)
    summary, ranges = cpu_profiles(table)
    summary.to_csv(out / "profile_summary.csv", index=False)
    ranges.to_csv(out / "profile_ranges.csv", index=False)
    written, notes = render_figures(str(out))
    # CPU: no GPU memory; one rank only
    assert pngs(written) == set(plots.FIGURE_NAMES) - {"profile_launches", "memory_wall", "context_parallel"}
    assert any(n.startswith("profile_launches: skipped: profiles hold no GPU kernels") for n in notes)
    loaded = load_tables(str(out)).results
    assert device_label(loaded) == "CPU"
    fig, _ = plots.backends(loaded)
    assert not any("% of peak" in t for t in texts(fig))  # no CPU peak: no fraction claimed
    assert any("dense peak unknown" in t for t in texts(fig))


def test_mixed_dtypes_get_one_figure_each(tmp_path):
    table = pd.concat([synthetic_gpu_results(), synthetic_gpu_results().assign(dtype="fp16")])
    written, notes = render_figures(str(write_results(tmp_path / "mixed", table)))
    walls = sorted(p for p in pngs(written) if p.startswith("scaling_wall"))
    assert walls == ["scaling_wall__bf16_autocast", "scaling_wall__fp16"]
    # A figure function handed both draws one and says so.
    fig, note = plots.scaling_wall(table)
    assert "mixes 2 settings" in note


# ---- failures and the CLI -----------------------------------------------------------------------
def test_a_failing_notebook_keeps_the_figures(tmp_path, monkeypatch, capsys):
    broken = tmp_path / "broken.py"
    broken.write_text('# %% tags=["parameters"]\nRESULTS_DIR = None\n\n# %%\nraise RuntimeError("boom in cell")\n')
    monkeypatch.setattr(notebook, "template", lambda name: str(broken))
    out = write_results(tmp_path / "gpu", synthetic_gpu_results())
    (out / "report.html").write_text("stale")
    written = render(str(out), log=lambda _: None)
    assert pngs(written) == {"scaling_wall", "fused_speedup", "memory", "conversion", "approximations", "backends",
                             "memory_wall", "upstream_ratio"}
    assert not any(p.endswith((".ipynb", ".html")) for p in written)
    err = capsys.readouterr().err
    assert "notebook failed" in err and "boom in cell" in err
    assert (out / "report.failed.ipynb").exists() and not (out / "report.html").exists()


def test_cli_requires_results_and_renders_figures(tmp_path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"results": None, "notebook": True, "execute": True, "reference": "upstream_h100"})
    assert report_main(cfg) == 2
    cfg.results = str(tmp_path / "missing")
    assert report_main(cfg) == 2
    out = write_results(tmp_path / "gpu", synthetic_gpu_results())
    run = run_cli("report", f"results={out}", "notebook=false")
    assert run.returncode == 0, run.stderr
    assert (out / "figures" / "scaling_wall.png").stat().st_size > 0
    assert not (out / "report.ipynb").exists()
    run = run_cli("report")
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "vggt_bench: error: results=DIR is required: the directory a sweep wrote (with results.parquet)"]


def test_profiles_read_with_analyze_have_no_configuration(tmp_path):
    """`profile analyze=` of a foreign trace: no knobs, upstream's range names. Skipped, saying why."""
    summary, ranges = synthetic_profiles()
    ranges = ranges.assign(range=ranges["range"].map({"frame_block": "Frame_Attention",
                                                      "global_block": "Global_Attention"}).fillna("VGGT_Aggregator"))
    for table in (summary, ranges):
        table[[k for k in KNOBS]] = None
        table["profiler"] = "analyze"
    summary["kernels_per_frame_layer"] = math.nan
    out = write_results(tmp_path / "foreign", synthetic_gpu_results(), (summary, ranges))
    written, notes = render_figures(str(out))
    assert not any("profile_" in p for p in written)
    assert any(n.startswith("profile_stages: skipped: profile ranges hold none of our stage ranges") and
               "Frame_Attention" in n for n in notes)
    assert any(n.startswith("profile_launches: skipped: no profile has a frame count") for n in notes)
    # Our own range names without a configuration: one bar per profile, named by its tag.
    _, ours = synthetic_profiles()
    ours[[k for k in KNOBS]] = None
    fig, _ = plots.profile_stages(ours)
    assert {"s8_fused", "s128_sequential"} <= set(texts(fig))



def test_noisy_points_are_listed_and_left_out_of_conclusions(tmp_path):
    table = synthetic_gpu_results()
    fastest = table[(table["status"] == "ok") & (table["frames"] == 256)].sort_values("latency_ms_median").iloc[0]
    table.loc[fastest.name, ["noisy", "noise_reason"]] = [True, "spread p90/p10 1.40 > 1.10"]
    table.loc[table["noisy"].isna(), "noisy"] = False
    (found,) = findings.findings(table)
    assert any("noisy point(s) are left out" in line and "1.40" in line for line in found.lines)
    # a table from before backs_claim keeps its noisy verdicts and gets backs_claim from them
    tidy = tidy_results(table)
    assert tidy.loc[fastest.name, "noisy"] and not tidy.loc[fastest.name, "backs_claim"]
    clean = tidy[(tidy["status"] == "ok") & ~tidy["noisy"].astype(bool) & tidy["device"].str.startswith("cuda")]
    assert len(clean) and clean["backs_claim"].astype(bool).all()
    at256 = found.fastest[found.fastest["frames"] == 256]
    assert at256.empty or float(at256["latency_ms"].iloc[0]) != float(fastest["latency_ms_median"])
    fig, _ = plots.scaling_wall(table)
    assert any(h.get_label().startswith("noisy") for h in fig.axes[-1].get_legend().legend_handles)


def test_upstream_in_the_same_run_is_its_own_series_with_ratios():
    table = synthetic_gpu_results()
    ratios = impl_ratios(table)
    assert len(ratios) == 36  # the exact configurations only (6 frame counts x 6): no prune_depth > 0 compared
    ratios = ratios[ratios["configuration"] == "fused · sdpa_flash · bf16_autocast"]
    assert len(ratios) == 6 and ratios["same_run"].all()
    assert ratios["speedup"].round(6).eq(1.1).all() and ratios["memory_ratio"].round(6).eq(round(1 / 1.3, 6)).all()
    (found,) = findings.findings(table)
    assert any("Against upstream's code in the same run" in line and "1.10×" in line for line in found.lines)
    fits = memory_fit(table)
    lean = fits[(fits["impl"] == "ours") & (fits["attention"] == "sdpa_flash") & (fits["frame_exec"] == "fused")
                & (fits["prune_depth"] == 0)]
    assert len(lean) == 1 and abs(float(lean["slope_gib_per_frame"].iloc[0]) - 0.19) < 1e-9
    assert abs(float(lean["wall_frames_device"].iloc[0]) - (H100_GIB - 2.0) / 0.19) < 1e-6


def test_the_h200_wall_is_the_memory_an_h200_reports():
    """The memory wall's '141 GB (H200)' card was 141e9 bytes (131.3 GiB), while the H200 of the
    2026-12-06 study reports 139.80 GiB: on that card's own rows its predicted wall fell 6% short of the
    device's. Fitted on those committed rows, the two walls now agree."""
    study = Path(__file__).resolve().parents[1] / "reports" / "h200-2026-12-06" / "nsys_managed"
    fits = memory_fit(pd.read_parquet(study / "results.parquet"))
    assert len(fits) and (fits["device_mem_gib"].round(2) == 139.80).all()
    assert ((fits["wall_frames_141"] / fits["wall_frames_device"] - 1).abs() < 1e-3).all(), fits[["wall_frames_141", "wall_frames_device"]]
    assert (fits["wall_frames_192"] > fits["wall_frames_141"]).all()



def test_only_noisy_rows_conclude_nothing_in_figures_tables_or_summary():
    # 2026-12-07, every row flagged noisy (two CPU hogs): the fused_speedup and conversion figures and the
    # "Fused over sequential" table showed a 2.20x callout and cells from 0.04x to 27.45x, unmarked; the
    # summary said "No configuration of the exact model ran (no ok rows)" although 28 ok rows ran
    from matplotlib.colors import to_hex

    table = synthetic_gpu_results().assign(noisy=True, noise_reason="other processes took 67% of the CPU")
    (found,) = findings.findings(table)
    text = " ".join(found.lines)
    assert "no `ok` rows" not in text and "Fastest exact configuration" not in text
    assert "Every exact point that ran (59 ok) has a noisy timing, so no configuration is ranked" in found.unranked
    assert text.count("no speedup is concluded") == 2  # fusing, conversion
    assert found.largest_ok["frames"] == 256 and found.first_oom["frames"] == 256  # what ran still ran
    pairs = speedup_pairs(table)
    assert len(pairs) and pairs["noisy"].all()
    conv = conversion_table(table).dropna(subset=["speedup"])
    assert len(conv) and conv["noisy"].all()
    fig, _ = plots.fused_speedup(table)
    (ax,) = fig.axes
    assert not [t for t in ax.texts if t.get_text().endswith("×")]  # no callout
    assert any(h.get_label().startswith("noisy") for h in ax.get_legend().legend_handles)
    assert any("no speedup here is a conclusion" in t for t in texts(fig))
    fig, _ = plots.conversion(table)
    outlined = [p for ax in fig.axes for p in ax.patches if to_hex(p.get_edgecolor()) == common.NOISY_RED]
    assert len(outlined) == len(conv) and any("none is a conclusion" in t for t in texts(fig))
    fig, _ = plots.backends(table)
    assert any("noisy timing" in t for t in texts(fig)) and any(t.endswith("(noisy)") for t in texts(fig))
    # one noisy pair among trusted ones: ringed, and the callout moves to the largest trusted frame count
    table = synthetic_gpu_results().assign(noisy=False)
    table.loc[(table["frames"] == 256) & (table["attention"] == "sdpa_flash") & (table["impl"] == "ours")
              & (table["prune_depth"] == 0), "noisy"] = True
    pairs = speedup_pairs(table)
    flash = pairs[(pairs["attention"] == "sdpa_flash") & (pairs["prune_depth"] == 0)].set_index("frames")
    assert flash.loc[256.0, "noisy"] and not flash.loc[128.0, "noisy"]
    fig, _ = plots.fused_speedup(table)
    callouts = {t.get_text(): t.xy[0] for t in fig.axes[0].texts}
    assert callouts.get(f"{flash.loc[128.0, 'speedup']:.2f}×") == 128


def test_the_notebook_marks_noisy_speedups_and_says_why_nothing_is_ranked(tmp_path):
    table = synthetic_gpu_results().assign(noisy=True, noise_reason="load 2.8 on 2 cores")
    out = write_results(tmp_path / "noisy", table)
    notebook.write(str(out))
    text = notebook_text(out / "report.ipynb")
    assert "Every pair below has a noisy timing: none of these speedups is a conclusion." in text
    assert "no configuration of the exact model ran" not in text.lower()
    assert "has a noisy timing, so no configuration is ranked" in text


def test_the_sweeps_summary_marks_noisy_rows():
    from vggt_bench.commands.sweep import summary

    table = synthetic_gpu_results().head(4).assign(noisy=[True, False, False, False])
    header, first = summary(table).splitlines()[:2]
    assert header.split()[header.split().index("status") + 1] == "noisy"
    assert "noisy" not in summary(table.assign(noisy=False)).splitlines()[0]


def figure_problems(fig) -> list[str]:
    """Axes whose visible tick labels repeat, and point labels (annotations) reaching outside their axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Annotation

    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    found = []
    for ax in [a for a in fig.axes if a.axison]:
        for axis, (lo, hi), i in ((ax.xaxis, sorted(ax.get_xlim()), 0), (ax.yaxis, sorted(ax.get_ylim()), 1)):
            labels = [t.get_text() for t in axis.get_ticklabels()
                      if t.get_text() and lo - 1e-12 <= t.get_position()[i] <= hi + 1e-12]
            if len(labels) != len(set(labels)):
                found.append(f"{ax.get_ylabel() or ax.get_title()}: {axis.axis_name} ticks {labels}")
        box = ax.get_window_extent(renderer)
        for text in [t for t in ax.texts if isinstance(t, Annotation) and t.get_text()]:
            extent = text.get_window_extent(renderer)
            if extent.x0 < box.x0 - 1 or extent.x1 > box.x1 + 1 or extent.y0 < box.y0 - 1 or extent.y1 > box.y1 + 1:
                found.append(f"{ax.get_title()}: label {text.get_text()!r} outside the axes")
    return found


def test_every_figures_tick_labels_are_distinct_and_its_point_labels_inside_the_axes():
    # 2026-12-07: the approximations figure's depth-drift ticks read "3e-06, 3e-06, 2e-06" (an axis under
    # a decade falls back to linear ticks, written with one digit), and its point labels were clipped
    from test_approximations import _row

    drifts = [(4, 84_000.0, 2.1e-6), ("kv_keep", 60_000.0, 3.3e-6), ("kv_keep", 40_000.0, 4.6e-6),
              ("merge_ratio", 20_000.0, 2.9e-6), ("global_sparsity", 9_000.0, 2.5e-6)]
    rows = [_row(latency_ms_median=100_000.0)]
    for i, (knob, ms, depth) in enumerate(drifts):
        setting = {"prune_depth": knob} if knob == 4 else {knob: 0.25 if knob == "kv_keep" and i == 2 else 0.5}
        rows.append(_row(**setting, latency_ms_median=ms, drift_pose_rel=0.03 + 0.01 * i, drift_depth_rel=depth))
    tables = [pd.DataFrame(rows), synthetic_gpu_results(),
              pd.read_parquet(REPO / "reports" / "h100-2026-11-24" / "pruning" / "results.parquet")]
    problems = []
    for table in tables:
        for name, fn in plots.RESULT_FIGURES:
            plot = fn(table, None) if name in ("scaling_wall", "memory") else fn(table)
            problems += [f"{name}: {p}" for p in figure_problems(plot.figure)] if plot.figure else []
    assert problems == []
