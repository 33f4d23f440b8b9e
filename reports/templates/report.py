# %% [markdown]
# # vggt-bench report
#
# Where VGGT's aggregator spends time and memory as the number of frames S grows. Its global
# attention runs over all S × ~1000 tokens at once, so its cost grows as S²: the *scaling wall*.
# Every number below is computed from this directory's tidy tables (`results.parquet`, and
# `profile_summary.csv` / `profile_ranges.csv` where present); figures are also written to
# `figures/` as PNG and SVG.
#
# Built by `vggt_bench.report` from `reports/templates/report.py` (jupytext percent format).

# %% tags=["parameters"]
RESULTS_DIR = "reports/runs/latest"  # a results directory
REFERENCE = "upstream_h100"          # published reference points on the scaling wall; None: none
BASELINE_DIR = None                  # a results directory to compare against (report baseline=DIR); None: none
IGNORE = []                          # columns left out of that match (report ignore=model.frame_exec)

# %%
import pandas as pd
from IPython.display import Markdown, display

from vggt_bench.analysis import approximations, findings as report, memory, profiles, scaling, tidy, upstream
from vggt_bench.report import notebook, plots

pd.set_option("display.max_columns", 40)
pd.set_option("display.width", 200)
pd.set_option("display.max_colwidth", 120)
tables = tidy.load_tables(RESULTS_DIR)
results = tables.results
found = report.findings(results)
display(Markdown(f"Results: `{RESULTS_DIR}`"))

# %% [markdown]
# ## Summary

# %%
if found:
    display(Markdown("\n\n".join(f.markdown() for f in found)))
else:
    display(Markdown("The results table is empty: no point was measured, so there is nothing to summarise."))

# %% [markdown]
# ## Environment

# %%
display(report.environment_table(results))

# %% [markdown]
# ## A against B
#
# With `report results=B baseline=A`: every point of this directory (B) against the same point of A, as
# `python -m vggt_bench compare baseline=A candidate=B` prints it: both medians, the ratio B / A (above 1:
# slower), its 95% interval (bootstrap over both sides' per-repeat samples) and the verdict (`same` within the
# noise floor or where the interval holds 1; `noisy` where a row is flagged; `unmatched`: one side only).

# %%
from vggt_bench.analysis import compare
from vggt_bench.core.errors import UserError
from vggt_bench.core.results import load_results
from vggt_bench.report.compare import compare_figure, stage_figure

against = None
if not BASELINE_DIR:
    display(Markdown("No baseline given (`python -m vggt_bench report results=B baseline=A` adds this section)."))
else:
    try:
        against = compare.compare_dirs(BASELINE_DIR, RESULTS_DIR, load_results(BASELINE_DIR), load_results(RESULTS_DIR),
                                       IGNORE)
    except UserError as exc:
        display(Markdown(f"`{BASELINE_DIR}` against `{RESULTS_DIR}`: {exc}"))
if against is not None:
    ab = against.table
    display(Markdown(f"**A** `{BASELINE_DIR}` against **B** `{RESULTS_DIR}`: {len(ab)} points, {compare.counts(ab)}."))
    if against.environment.empty:
        display(Markdown("Environments: no difference (GPU, driver, versions, host, commit, threads, clocks)."))
    else:
        display(Markdown("Environment differences (A, then B):"))
        display(against.environment.set_index("field"))
    display(ab[["label", "side", "baseline_ms", "candidate_ms", "ratio", "ci_low", "ci_high", "interval", "verdict",
                "act_gib_ratio", "peak_rss_gib_ratio", "changed"]].round(4))
    plot = compare_figure(ab, compare.NOISE_FLOOR)
    if plot.figure is not None:
        notebook.show(plot.figure)
    if len(against.traces):
        display(Markdown("Trace diffs (both sides profiled):\n\n" + "\n".join(
            f"- {ab.loc[ab['point_id'] == pid, 'label'].iloc[0]}: {line}" for pid, line in against.traces.items())))
        notebook.show(stage_figure(against.stages).figure)

# %% [markdown]
# ## Figures
#
# Lines use only points that ran (`status == ok`). The exact model (no global-to-frame conversion, no
# attention approximation) is drawn everywhere except in the conversion and approximations figures.

# %%
for plot in plots.figures(tables, REFERENCE):
    base = plot.name.split("__")[0]
    context = plot.name.split("__")[1] if "__" in plot.name else ""
    display(Markdown(f"### {base.replace('_', ' ')}" + (f" ({context})" if context else "")
                     + f"\n\n{notebook.CAPTIONS.get(base, '')}"))
    if plot.figure is None:
        display(Markdown(f"*Not drawn: {plot.note}.*"))
    else:
        notebook.show(plot.figure)
        if plot.note:
            display(Markdown(f"*Note: {plot.note}.*"))

# %% [markdown]
# ## Latency by frame count and configuration
#
# Median latency of each point; `OOM` ran out of memory, `n/a` means the attention backend is not
# available on this machine.

# %%
if not found:
    display(Markdown("No points."))
for f, (label, rows) in zip(found, report.workloads(results)):
    display(Markdown(f"**{label}**"))
    display(report.latency_pivot(rows))

# %% [markdown]
# ### Fastest exact configuration per frame count

# %%
for f in found:
    if f.fastest.empty:
        display(Markdown(f"**{f.workload}**: {f.unranked}"))
        continue
    table = f.fastest.assign(
        latency=f.fastest["latency_ms"].map(report.fmt_ms),
        vs_slowest=(f.fastest["slowest_ms"] / f.fastest["latency_ms"]).map(report.fmt_x),
    )[["frames", "configuration", "latency", "vs_slowest", "configurations"]]
    display(Markdown(f"**{f.workload}**"))
    display(table.set_index("frames"))

# %% [markdown]
# ### Fused over sequential, and global-to-frame conversion
#
# `noisy`: a timing on either side of the speedup is flagged noisy, so the speedup is no conclusion (the
# summary leaves it out).

# %%
pairs = scaling.speedup_pairs(results)
if pairs.empty:
    display(Markdown("No frame count was measured both fused and sequential."))
else:
    if pairs["noisy"].all():
        display(Markdown("Every pair below has a noisy timing: none of these speedups is a conclusion."))
    display(pairs[["frames", "attention", "prune_depth", "dtype", "latency_ms_slow", "latency_ms_fast", "speedup",
                   "noisy"]]
            .astype({"frames": int, "prune_depth": int})
            .sort_values(["attention", "prune_depth", "frames"]).round(3).reset_index(drop=True))
conversion = approximations.conversion_table(results)
if conversion.empty:
    display(Markdown("No global-to-frame conversion was measured (no `prune_depth > 0` points)."))
else:
    display(conversion[["frames", "frame_exec", "attention", "prune_depth", "prune_weights", "status",
                        "latency_ms", "latency_ms_k0", "speedup", "noisy", "drift_rel"]]
            .astype({"frames": int, "prune_depth": int})
            .sort_values(["frame_exec", "attention", "frames", "prune_depth"]).round(4).reset_index(drop=True))

# %% [markdown]
# ### Ours against upstream's code, and the memory wall

# %%
ratios = upstream.impl_ratios(results)
if ratios.empty:
    display(Markdown("No point of upstream's code beside ours (sweep `model.impl=ours,upstream`)."))
else:
    display(ratios[["frames", "configuration", "ours_ms", "upstream_ms", "speedup", "ours_act_gib", "upstream_act_gib",
                    "memory_ratio", "same_run", "noisy"]].round(3).reset_index(drop=True))
fits = memory.memory_fit(results)
if fits.empty:
    display(Markdown("No series with peak GPU memory at two frame counts or more: no memory wall fitted."))
else:
    ranks = ["context_parallel"] if "context_parallel" in fits and (fits["context_parallel"] > 1).any() else []
    display(fits[[c for c in ["impl", "memory_plan", "attention", "dtype", *ranks, "points", "slope_mb_per_frame",
                              "intercept_gib", "max_residual_gib", "wall_frames_device", "wall_frames_141",
                              "wall_frames_192"]
                  if c in fits]].round(2).reset_index(drop=True))

# %% [markdown]
# ### Approximations: speed against drift
#
# Every approximation (global-to-frame conversion `prune_depth`, K/V subsampling `kv_keep`, token merging
# `merge_ratio`, block-sparse attention `global_sparsity`) against the exact model on the same weights and
# inputs: speedup, and the relative L2 drift of the camera pose encoding, depth, world points and the last
# layer's tokens (`measure.drift=true`). `front`: on the Pareto front of speedup against depth drift at its
# frame count (camera-pose drift where depth was not measured). Each speedup is over the exact model with the
# same backend (`speedup`) and over the fastest exact setting of the run (`speedup_fastest`, `fastest_setting`):
# the baseline a user would otherwise run. With random weights drift says how far the
# outputs move, not how accurate they are.

# %%
approx = approximations.approximation_table(results)
if approx.empty:
    display(Markdown("No approximation was measured (no `prune_depth > 0`, `kv_keep < 1`, `merge_ratio > 0` or "
                     "`global_sparsity > 0` points)."))
else:
    ruler = "drift_depth_rel" if approx["drift_depth_rel"].notna().any() else "drift_pose_rel"
    approx = approximations.pareto_front(approx, ruler).rename(columns={"on_front": "front"})
    display(approx[["frames", "frame_exec", "attention", "technique", "setting", "status", "latency_ms",
                    "latency_ms_exact", "speedup", "speedup_fastest", "fastest_setting", "noisy", "drift_pose_rel",
                    "drift_depth_rel", "drift_points_rel", "drift_tokens_rel", "front"]]
            .astype({"frames": int}).sort_values(["frames", "technique", "speedup"])
            .round(4).reset_index(drop=True))
    best = approximations.best_within_yardstick(approx)
    if best is not None:
        display(Markdown(f"At S={best['frames']} the fastest approximation whose camera-pose and depth drift stay "
                         f"below prune_depth={approximations.YARDSTICK_DEPTH}'s is **{best['setting']}**: "
                         f"{best['speedup']:.2f}× over the exact model"
                         + (f" with the same backend, {best['speedup_fastest']:.2f}× over the fastest exact setting "
                            f"measured ({best['fastest_setting']})."
                            if abs(best["speedup_fastest"] - best["speedup"]) > 1e-9 * best["speedup"]
                            else " (also the fastest exact setting measured).")
                         + (" A timing behind its speedups is flagged noisy (`noisy`): an estimate, "
                            "not a ranking to rely on." if best["noisy"] else "")))
    if approximations.drift_is_rounding(approx):
        pose = approximations.best_within_yardstick(approx, outputs=("drift_pose_rel",))
        display(Markdown("Random weights with the heads in half precision: the depth map is under one bf16 step, so "
                         "`drift_depth_rel` and `drift_points_rel` are rounding (about one value for every setting; "
                         "`benchmarks/drift_floor.py`) and rank nothing. `drift_pose_rel` still ranks the settings"
                         + (f": on it alone the fastest below prune_depth={approximations.YARDSTICK_DEPTH}'s at "
                            f"S={pose['frames']} is **{pose['setting']}**, {pose['speedup']:.2f}×." if pose else ".")))

# %% [markdown]
# ## One scene across GPUs
#
# Points run with `model.context_parallel=N` (the scene's frames sharded over N ranks, global attention exact
# across them), each against its one-rank point (same knobs and GPU otherwise): `speedup` (one-rank latency /
# N-rank latency), `efficiency` (speedup / N), `memory_ratio` (busiest rank's peak / one-rank peak) and
# `comm_share` (time in collectives / latency). Then, per N, a line through the busiest rank's peak against
# frames and the frame count where it meets the device's memory (`wall_frames_device`) and larger cards: a
# prediction past the frame counts measured (`wall_vs_one_rank`: that wall over the one-rank line's).

# %%
spread = scaling.context_parallel_speedup(results)
if spread.empty:
    display(Markdown("No point ran on several ranks (sweep `model.context_parallel=1,2,4`)."))
else:
    display(spread[["frames", "context_parallel", "frame_exec", "attention", "dtype", "status", "latency_ms",
                    "latency_ms_1", "speedup", "efficiency", "rank_peak_gib_max", "rank_peak_gib_1", "memory_ratio",
                    "comm_ms", "comm_mib", "comm_share"]]
            .astype({"frames": int, "context_parallel": int})
            .sort_values(["frame_exec", "attention", "dtype", "frames", "context_parallel"])
            .round(3).reset_index(drop=True))
    walls = memory.context_parallel_memory_fit(results)
    if walls.empty:
        display(Markdown("No world size has a per-rank peak at two frame counts or more: no wall fitted."))
    else:
        display(walls[["device", "context_parallel", "frame_exec", "attention", "dtype", "points", "slope_mb_per_frame",
                       "intercept_gib", "max_residual_gib", "wall_frames_device", "wall_frames_141", "wall_frames_192",
                       "wall_vs_one_rank"]]
                .astype({"context_parallel": int}).round(2).reset_index(drop=True))

# %% [markdown]
# ## Points that did not run

# %%
failed = report.status_table(results)
if failed.empty:
    display(Markdown("Every point ran."))
else:
    display(failed)

# %% [markdown]
# ## Profiles across the grid
#
# A sweep run with `profiler=torch|nsys|external` profiles every point in a capture of its own, after
# measuring it: the latencies above never come from a profiled run. One row per point: each stage's time
# per forward (GPU-projected where the profiles have GPU times, else CPU time), the GPU's idle share and the
# kernels launched per forward (`profile_grid.parquet`; per-point tables in `profiles/<point_id>/`).

# %%
grid = tables.profile_grid
if grid.empty:
    display(Markdown("No profiled sweep in this directory (no `profile_grid.parquet`)."))
else:
    display(profiles.grid_pivot(grid).round(3))
    failed_profiles = grid.drop_duplicates("point_id")
    failed_profiles = failed_profiles[failed_profiles["profile_status"] != "ok"]
    if len(failed_profiles):
        display(failed_profiles[["point_id", "frames", "frame_exec", "attention", "prune_depth", "profiler",
                                 "profile_status", "profile_message"]].reset_index(drop=True))
