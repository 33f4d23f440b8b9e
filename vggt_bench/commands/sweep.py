"""The `run` and `sweep` commands: one point per Hydra job, every point kept.

A sweep is a Hydra multirun; its grid is the preset's ``hydra.sweeper.params`` plus any
command-line sweeps (``frames=1,8,32``). ``SweepCallback`` checks the profiler settings before
any point runs, shows a progress bar with an ETA (fed by ``progress``, whichever launcher runs the jobs), prints a summary when
the sweep ends and renders the report.

With ``profiler=torch|nsys|external`` every point is first measured as without it (its timing
row, ``profiled`` false) and then captured separately (``profile.profile_point``): per-point
tables in ``<out>/profiles/<point_id>/`` and one table across the grid, ``profile_grid``. A
resumed sweep skips a point only when it is measured and, with a profiler, profiled too.
``launchers`` adds what the submitit launchers (local, Slurm) need.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, List, Tuple

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ..analysis.tidy import missing, read_grid
from ..core import claims
from ..core.config import approx_label
from ..core.errors import UserError, fail
from ..core.migrate import migrate
from ..core.results import ResultStore, new_run_dir
from ..launch import launchers, progress
from ..launch.progress import say
from ..measure import ranks
from ..measure.point import resolve, resolve_device
from ..measure.run import Method, run_point, stop_if_stuck
from ..measure.timing import SettingsError
from ..profiling.capture import check_profiler
from ..profiling.store import profile_done
from .profile import profile_point

SUMMARY_COLUMNS = [
    "frames", "frame_exec", "prune_depth", "attention", "dtype", "status",
    "latency_ms_median", "peak_alloc_gib", "peak_rss_gib", "fps", "achieved_tflops",
]
# shown only when some row has an attention approximation on
APPROX_SUMMARY_COLUMNS = ["kv_keep", "merge_ratio", "global_sparsity", "approx_layers", "drift_tokens_rel",
                          "drift_pose_rel", "drift_depth_rel"]


def open_store(out: str) -> ResultStore:
    """The results store of ``out``, writable, its points in the current format (``core.migrate``:
    a directory written by an older version resumes)."""
    store = ResultStore(out)
    try:
        store.ensure_writable()
        migrate(out)
    except OSError as exc:
        fail(f"cannot write results to out={out} ({exc}); choose a writable directory with out=PATH")
    return store


def _measured_otherwise(row: dict, how: Method) -> str:
    """What a skip line adds when the kept row was timed with other warm-up or repeat counts than this
    sweep asks for (a point's id is its configuration, not how it was timed): the counts, and how to
    measure it again. Empty when they agree, for adaptive timing (its repeats are a minimum) and for
    rows that did not run (oom, unavailable)."""
    if row.get("status") != "ok" or how.adaptive is not None:
        return ""
    asked = {"warmup": how.warmup, "repeats": how.repeats}
    kept = {k: row.get(k) for k in asked}
    if any(missing(v) for v in kept.values()):
        return ""
    if all(int(kept[k]) == asked[k] for k in asked):
        return ""
    return (f", with warmup={int(kept['warmup'])} repeats={int(kept['repeats'])} where this sweep asks for "
            f"warmup={asked['warmup']} repeats={asked['repeats']} (resume=false measures it again, replacing the row)")


def run_job(cfg: DictConfig) -> dict:
    """Measure the job's point (or skip it when already measured) and persist its row; with a
    profiler, then profile it in a separate capture (or skip that when already profiled)."""
    try:
        point = resolve(cfg)
        how = Method.from_config(cfg.measure, str(cfg.out))
        profiler = check_profiler(cfg, point.device)
    except (UserError, SettingsError) as exc:
        fail(str(exc))
    if not ranks.writes_rows():  # another rank of torchrun/srun: measures with rank 0, writes nothing
        return _as_other_rank(cfg, point, how)
    store = open_store(cfg.out)
    point_file = os.path.join(store.points_dir, f"{point.point_id}.json")
    with progress.writes_into(cfg.out, point_file, f"the row of {_describe(point)}"):
        progress.job_started(point, cfg.experiment)
        # ranks of an external launch measure a context-parallel point together: rank 0 alone cannot
        # decide to skip it, so such points are not claimed
        if point.execution.context_parallel > 1 and ranks.launched() is not None:
            return _measure_job(cfg, point, how, profiler, store)
        if not _done(cfg, store, point.point_id, profiler):
            holder, taken = claims.claim(cfg.out, point.point_id)
            if holder is not None:
                say(f"{'held':<5} {_describe(point)}: another sweep is measuring it ({claims.describe(holder)}); its "
                    f"row lands in {cfg.out}")
                return {}
            if taken is not None:
                say(f"{'claim':<5} {_describe(point)}: took it over from {claims.describe(taken)} ({taken['why']})")
        try:
            return _measure_job(cfg, point, how, profiler, store)
        finally:
            claims.release(cfg.out, point.point_id)


def _done(cfg: DictConfig, store: ResultStore, pid: str, profiler: str) -> bool:
    """Whether a resumed sweep has nothing left to do at point ``pid``: measured, and profiled if asked."""
    return bool(cfg.resume) and store.is_done(pid) and (profiler == "none" or profile_done(cfg.out, pid, profiler))


def _measure_job(cfg: DictConfig, point, how: Method, profiler: str, store: ResultStore) -> dict:
    """Measure (and profile) the point, or skip what is already done: this process holds its claim."""
    pid = point.point_id
    measured = bool(cfg.resume) and store.is_done(pid)
    profiled = profiler == "none" or (bool(cfg.resume) and profile_done(cfg.out, pid, profiler))
    if measured and profiled:
        row = store.existing(pid)
        say(f"skip  {_describe(point)}: already measured ({row['status']})" + ("" if profiler == "none" else " and profiled")
             + _measured_otherwise(row, how))
        return row
    if measured:
        row = store.existing(pid)
        say(f"skip  {_describe(point)}: already measured ({row['status']}){_measured_otherwise(row, how)}; profiling it")
    else:
        try:
            row = run_point(point, how, cfg.experiment)
        except UserError as exc:
            fail(str(exc))
        row["profiled"] = False  # headline timings never come from a profiled run
        store.add(row)
        say(f"{row['status']:<5} {_describe(point)}: {_result(row)}")
        stop_if_stuck()
    if profiler != "none":
        status = profile_point(cfg, point, row)
        message = f": {status['profile_message']}" if status["profile_status"] in ("error", "skipped") else ""
        say(f"{'profile':<5} {_describe(point)}: {profiler} {status['profile_status']}{message}")
    if _single_run():
        say(f"row: {os.path.join(store.points_dir, pid + '.json')}; table: {os.path.join(cfg.out, 'results.parquet')} "
             f"(and results.csv)")
    return row


def _as_other_rank(cfg: DictConfig, point, how) -> dict:
    """A rank other than 0 under torchrun/srun: take part in the context-parallel points (and skip
    those rank 0 skips as measured); one-rank points are rank 0's alone."""
    if point.execution.context_parallel == 1:
        return {}
    if bool(cfg.resume) and os.path.isdir(str(cfg.out)):
        migrate(str(cfg.out))  # as rank 0 does before deciding to skip: both see the points' current ids
        if ResultStore(cfg.out).is_done(point.point_id):
            return {}
    return run_point(point, dataclasses.replace(how, reference_dir=None), cfg.experiment)  # rank 0 keeps the outputs


def _single_run() -> bool:
    """True under `run` (one point), False under `sweep` (the summary names the table)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return HydraConfig.get().mode == RunMode.RUN
    except ValueError:  # called outside Hydra (tests, the API)
        return False


def _describe(point) -> str:
    ex = point.execution
    return (f"{point.arch} S={point.frames} {ex.frame_exec} k={ex.prune_depth}{approx_label(ex)} {ex.attention} "
            f"{ex.dtype} {point.part}")


def _result(row: dict) -> str:
    if row["status"] != "ok":
        return row.get("message", "")
    mem = row.get("peak_alloc_gib")
    mem = mem if not missing(mem) else row.get("peak_rss_gib")
    noisy = f" NOISY ({row['noise_reason']})" if row.get("noisy") else ""
    if str(row.get("claim_note") or "").startswith("CPU timing"):
        noisy += " (CPU timing: backs no claim)"
    return f"{row['latency_ms_median']:.1f} ms (p10 {row['latency_ms_p10']:.1f}, p90 {row['latency_ms_p90']:.1f}), {mem:.2f} GiB peak{noisy}"


def summary(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "no results"
    cols = [c for c in SUMMARY_COLUMNS if c in frame.columns]
    if any(approx_label(row) for row in frame.to_dict("records")):
        cols[cols.index("prune_depth") + 1:cols.index("prune_depth") + 1] = [
            c for c in APPROX_SUMMARY_COLUMNS[:4] if c in frame.columns]
        cols += [c for c in APPROX_SUMMARY_COLUMNS[4:] if c in frame.columns]
    if "context_parallel" in frame and (pd.to_numeric(frame["context_parallel"], errors="coerce") > 1).any():
        cols.insert(cols.index("status"), "context_parallel")  # ranks, where some points ran on several
    if "noisy" in frame and frame["noisy"].map(lambda v: v is True or v == 1).any():
        cols.insert(cols.index("status") + 1, "noisy")  # a noisy latency is listed, never a conclusion
    view = frame[cols].copy()
    for c in ("latency_ms_median", "peak_alloc_gib", "peak_rss_gib", "fps", "achieved_tflops", "drift_tokens_rel",
              "drift_pose_rel", "drift_depth_rel"):
        if c in view:
            view[c] = pd.to_numeric(view[c], errors="coerce").round(3)
    view = view.sort_values([c for c in ("frame_exec", "attention", "prune_depth", "frames") if c in view])
    return view.to_string(index=False)


def grid_axes(config: DictConfig) -> List[Tuple[str, List[str], str]]:
    """The axes of a multirun, ``[(key, values, source)]``: the preset's ``hydra.sweeper.params``
    (source ``experiment=NAME``) with the command line's sweeps over them (source ``the command line``;
    a single value there ends the preset's axis of that key)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    preset = config.hydra.sweeper.get("params")
    params = {k: (v, f"experiment={config.get('experiment')}")
              for k, v in (OmegaConf.to_container(preset, resolve=False) if preset else {}).items()}
    for text in config.hydra.overrides.task:
        key, _, value = text.partition("=")
        params[key.lstrip("+~")] = (value, "the command line")
    parser = OverridesParser.create()
    axes = []
    for (key, (value, source)), o in zip(params.items(),
                                         parser.parse_overrides([f"{k}={v}" for k, (v, _) in params.items()])):
        if o.is_sweep_override():
            axes.append((key, list(o.sweep_string_iterator()), source))
    return axes


def grid_size(config: DictConfig) -> int:
    """Number of jobs of a multirun: the product of the sweep lengths, command line over preset."""
    total = 1
    for _, values, _ in grid_axes(config):
        total *= len(values)
    return total


def grid_line(axes: List[Tuple[str, List[str], str]]) -> str:
    """``frames=4,8 from the command line x model.prune_depth=0,4 from experiment=default; pass
    experiment=adhoc for only yours``: each axis and where it comes from."""
    sources = list(dict.fromkeys(source for _, _, source in axes))
    parts = [" x ".join(f"{key}={','.join(values)}" for key, values, s in axes if s == source) + f" from {source}"
             for source in sorted(sources, key=lambda s: s != "the command line")]
    hint = "; pass experiment=adhoc for only yours" if len(sources) > 1 else ""
    return " x ".join(parts) + hint


def preflight(config: DictConfig) -> None:
    """Refuse profiler settings that cannot work before any point runs (one line, exit 2)."""
    try:
        try:
            device = resolve_device(str(config.device))
        except UserError:
            device = None  # each job says what is wrong with its device
        check_profiler(config, device)
    except UserError as exc:
        fail(str(exc))


def profile_summary(out: str) -> str:
    """One line per profile status of a profiled sweep, and each failure's reason."""
    grid = read_grid(out)
    if grid.empty:
        return ""
    points = grid.drop_duplicates("point_id")
    counts = points["profile_status"].value_counts().to_dict()
    lines = [f"profiles: {', '.join(f'{n} {s}' for s, n in sorted(counts.items()))} -> "
             f"{os.path.join(out, 'profile_grid.parquet')} (and .csv), {os.path.join(out, 'profiles')}/<point_id>/"]
    for _, p in points[points["profile_status"].isin(["error", "captured"])].iterrows():
        lines.append(f"  {p['profile_status']} S={p['frames']:g} {p['frame_exec']} {p['attention']} "
                     f"k={p['prune_depth']:g} ({p['point_id']}): {p['profile_message']}")
    return "\n".join(lines[:12])


class SweepCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not ranks.writes_rows():  # torchrun/srun: rank 0 shows the progress and the summary
            return
        preflight(config)
        os.makedirs(config.out, exist_ok=True)
        try:
            axes = grid_axes(config)
            total = grid_size(config)
        except Exception:  # the bar is a convenience; Hydra itself reports bad overrides
            axes, total = [], None
        grid = f" ({grid_line(axes)})" if axes else ""
        print(f"vggt_bench sweep: {total or '?'} points{grid} -> {config.out}", flush=True)
        launchers.prepare(config)
        progress.start_bar(total, str(config.hydra.sweep.dir), launchers.runs_elsewhere(config))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        launchers.in_job()

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if ranks.writes_rows():
            with progress.writes_into(config.out):
                progress.job_ended(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        progress.end_progress()
        if not ranks.writes_rows():
            return
        store = ResultStore(config.out)
        if not os.path.isdir(store.points_dir):
            return
        with progress.writes_into(config.out):
            tables_and_report(config, store)


def tables_and_report(config: DictConfig, store: ResultStore) -> None:
    """The end of a sweep: the tables rebuilt from every point, the summary, the report."""
    frame = store.rebuild()
    print(f"\n{len(frame)} points in {os.path.join(config.out, 'results.parquet')} (and results.csv)")
    print(summary(frame))
    others = claims.held_by_others(config.out)
    if others:
        holders = sorted({claims.describe({**h, "started": ""}) for h in others})
        print(f"{len(others)} point{'s are' if len(others) != 1 else ' is'} still being measured by another sweep "
              f"({'; '.join(holders)}): {'their rows land' if len(others) != 1 else 'its row lands'} in {config.out} "
              f"as it finishes, and its own report covers them")
    if config.get("profiler", "none") != "none":
        print(profile_summary(config.out))
    if config.get("report", True):
        from ..report import render

        written = render(config.out)
        print(f"report: {len(written)} files in {config.out} (figures, report.ipynb, report.html)")


# Where reports/runs/ points at the latest results of each command that names no out=: `latest` is
# always a sweep's, so `report results=reports/runs/latest` renders the latest sweep.
LATEST = {"sweep": "latest", "run": "latest-run", "profile": "latest-profile"}


def stamped_out(command: str = "sweep") -> List[str]:
    """``out=reports/runs/<timestamp>`` (the default the schema and ``--help`` name) for a command that
    names none; ``reports/runs/<LATEST[command]>`` is made to point at it."""
    return [f"out={new_run_dir('reports/runs', LATEST[command])}"]
