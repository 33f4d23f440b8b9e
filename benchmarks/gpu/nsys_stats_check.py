#!/usr/bin/env python
"""Check a profiled sweep's per-stage GPU times against what `nsys stats` says, point by point.

    python benchmarks/gpu/nsys_stats_check.py OUT [OUT ...] [--nsys PATH] [--tolerance 0.01]

For every point of ``OUT/profile_grid.parquet`` whose profile is ``ok`` and came from nsys:

* ``profiler=nsys`` points: the ``nsys_stats.txt`` the sweep kept beside the point's tables;
* ``profiler=external`` points: ``nsys stats --report nvtx_gpu_proj_sum --format csv`` run now on
  the report the point was read from. That report must hold exactly this point (one
  ``point:<point_id>`` range naming it, as ``--capture-range-end=repeat`` writes them): a report
  holding several points cannot be compared stage by stage, and is said so.

Compared per stage: our GPU-projected time times the captured forwards (``gpu_ms x iterations``,
the capture's total) against nsys's "Total Proj Time" of the stage's range (``vggt:patch_embed``,
``vggt:frame_block``, ``vggt:global_block``, ``vggt:converted_block``, the heads summed, and the
top range ``vggt:vggt`` / ``vggt:aggregator`` as ``forward``), and our GPU op count against
"Total GPU Ops". Prints one line per (point, stage) and the worst relative difference; exits 1
when any stage differs by more than the tolerance (default 1%; the fixtures agree to the ns),
or when there was nothing to compare. Also prints, for point ids present in more than one OUT,
the ratio of their timing rows' median latencies (e.g. the external run, timed with nsys
attached but not capturing, against the managed one, timed without nsys).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

import pandas as pd

from vggt_bench.profiling.nsys_cli import parse_stats

STAGE_RANGES = {
    "patch_embed": ["patch_embed"], "frame_block": ["frame_block"], "global_block": ["global_block"],
    "converted_block": ["converted_block"], "heads": ["camera_head", "depth_head", "point_head", "track_head"],
}


def projection(text: str) -> pd.DataFrame:
    """nvtx_gpu_proj_sum of a stats output, indexed by range name without its domain."""
    stats = parse_stats(text)
    if not isinstance(stats.get("nvtx_gpu_proj_sum"), pd.DataFrame):
        raise ValueError("no nvtx_gpu_proj_sum table in the nsys stats output")
    proj = stats["nvtx_gpu_proj_sum"]
    proj = proj.assign(domain=proj["Range"].str.partition(":")[0], name=proj["Range"].str.partition(":")[2])
    return proj.groupby("name")[["Total Proj Time (ns)", "Total GPU Ops", "Range Instances"]].sum()


def stats_for(point: pd.Series, out: str, nsys: str) -> str:
    if point["profiler"] == "nsys":
        path = os.path.join(out, "profiles", point["point_id"], "nsys_stats.txt")
        with open(path) as f:
            return f.read()
    source = point["source"]
    done = subprocess.run([nsys, "stats", "--report", "nvtx_gpu_proj_sum", "--format", "csv", source],
                          capture_output=True, text=True)
    return done.stdout + done.stderr


def check(out: str, nsys: str, tolerance: float) -> tuple[list, list]:
    """(rows compared, problems) for one results directory."""
    rows, problems = [], []
    path = os.path.join(out, "profile_grid.parquet")
    if not os.path.exists(path):
        return rows, [f"{out}: no profile_grid.parquet (was the sweep run with a profiler, and analyzed?)"]
    grid = pd.read_parquet(path)
    points = grid[(grid["profile_status"] == "ok") & grid["profiler"].isin(["nsys", "external"])]
    if points.empty:
        problems.append(f"{out}: no ok nsys/external point in profile_grid")
    for pid, stages in points.groupby("point_id"):
        first = stages.iloc[0]
        try:
            proj = projection(stats_for(first, out, nsys))
        except (OSError, ValueError) as exc:
            problems.append(f"{pid}: {exc}")
            continue
        named = [n for n in proj.index if n.startswith("point:")]
        if named != [f"point:{pid}"]:
            problems.append(f"{pid}: its report holds point ranges {named}, not exactly this point: not comparable")
            continue
        iterations = float(first["iterations"])
        top = "vggt" if "vggt" in proj.index else "aggregator"
        for _, stage in stages.iterrows():
            names = [top] if stage["stage"] == "forward" else STAGE_RANGES.get(stage["stage"], [])
            names = [n for n in names if n in proj.index]
            if not names:
                problems.append(f"{pid} {stage['stage']}: nsys lists none of its ranges")
                continue
            theirs_ms = proj.loc[names, "Total Proj Time (ns)"].sum() / 1e6
            ours_ms = stage["gpu_ms"] * iterations
            ops = int(proj.loc[names, "Total GPU Ops"].sum())
            rel = abs(ours_ms - theirs_ms) / theirs_ms if theirs_ms else (0.0 if ours_ms == 0 else float("inf"))
            rows.append({"out": os.path.basename(out.rstrip("/")), "point_id": pid, "profiler": first["profiler"],
                         "frames": first["frames"], "frame_exec": first["frame_exec"], "attention": first["attention"],
                         "stage": stage["stage"], "ours_ms": ours_ms, "nsys_ms": theirs_ms, "rel_diff": rel,
                         "ours_ops": stage["gpu_ops"] * iterations, "nsys_ops": ops})
            if rel > tolerance or round(stage["gpu_ops"] * iterations) != ops:
                problems.append(f"{pid} {stage['stage']}: ours {ours_ms:.4f} ms / {stage['gpu_ops'] * iterations:g} ops, "
                                f"nsys {theirs_ms:.4f} ms / {ops} ops")
    return rows, problems


def latencies(outs: list) -> pd.DataFrame:
    frames = []
    for out in outs:
        path = os.path.join(out, "results.parquet")
        if os.path.exists(path):
            r = pd.read_parquet(path)
            frames.append(r[r["status"] == "ok"][["point_id", "frames", "frame_exec", "attention", "latency_ms_median"]]
                          .assign(out=os.path.basename(out.rstrip("/"))))
    if len(frames) < 2:
        return pd.DataFrame()
    table = pd.concat(frames).pivot_table(index=["point_id", "frames", "frame_exec", "attention"], columns="out",
                                          values="latency_ms_median")
    return table.dropna()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outs", nargs="+")
    parser.add_argument("--nsys", default=shutil.which("nsys") or "nsys")
    parser.add_argument("--tolerance", type=float, default=0.01)
    args = parser.parse_args()
    rows, problems = [], []
    for out in args.outs:
        r, p = check(out, args.nsys, args.tolerance)
        rows += r
        problems += p
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    if len(table):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        print(f"\n{len(table)} (point, stage) pairs compared; worst relative difference "
              f"{table['rel_diff'].max():.2e} (tolerance {args.tolerance:g})")
    lat = latencies(args.outs)
    if len(lat) and lat.shape[1] >= 2:
        a, b = lat.columns[:2]
        print(f"\nmedian latency of the same points, {b} / {a} (timing rows; never from a capture):")
        print(lat.assign(ratio=lat[b] / lat[a]).round(3).to_string())
    for p in problems:
        print(f"MISMATCH: {p}")
    if not rows:
        print("nothing compared")
        return 1
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
