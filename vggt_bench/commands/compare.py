"""``python -m vggt_bench compare baseline=A candidate=B``: did B make it faster, by how much, how sure.

The analysis is ``vggt_bench.analysis.compare`` (matching, ratios, intervals, verdicts, trace diffs);
the figures are ``vggt_bench.report.compare``. This module reads the two directories, says what
differs in their environments, prints the table, writes ``<out>/compare.parquet|csv`` and the
figures, and applies the gate: exit 0, 1 when ``fail_above`` is given and a point's interval lies
wholly above 1 + fail_above, 2 for a user error (one line, ``core.errors``).
"""

from __future__ import annotations

import math
import os
import sys

import pandas as pd

from ..analysis import compare as analysis
from ..analysis.labels import shorten
from ..core.errors import EXIT_USER_ERROR, UserError, one_line, say_error
from ..core.results import atomic_write, load_results, unwritable
from ..report.common import save
from ..report.compare import compare_figure, stage_figure

EXIT_GATE = 1  # fail_above: a point slower by more than it, beyond doubt
TABLE = "compare"
STAGES = "compare_stages"
KERNELS = "compare_kernels"


def read_side(flag: str, directory) -> pd.DataFrame:
    """A side's results table (older store formats upgraded); UserError in one line for a directory
    that is missing, holds no table, or a table that cannot be read."""
    if not directory:
        raise UserError(f"{flag}=DIR is required: a results directory (a sweep's out, or a study under reports/)")
    directory = str(directory)
    if not os.path.isdir(directory):
        raise UserError(f"{flag}={directory} is not a directory")
    try:
        table = load_results(directory)
    except FileNotFoundError:
        raise UserError(f"{flag}={directory} holds no results.parquet or results.csv (the out= of a sweep holds them)")
    except UserError as exc:  # load_results: a damaged table and no points to rebuild it from; its line has the fix
        raise UserError(f"{flag}={directory}: its results table cannot be read ({exc})")
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid, pandas' ParserError, UnicodeDecodeError: ValueErrors
        raise UserError(f"{flag}={directory}: its results table cannot be read ({one_line(exc, 160)}): a damaged "
                        f"table, or not one a sweep wrote")
    absent = [c for c in ("point_id", "status", "latency_ms_median", "frames") if c not in table]
    if absent:
        raise UserError(f"{flag}={directory}: its results table has no {', '.join(absent)} column: not a table a "
                        f"sweep wrote")
    return table


def _write_table(frame: pd.DataFrame, stem: str, parquet: bool = True) -> list:
    written = []
    if parquet:
        atomic_write(f"{stem}.parquet", lambda f: frame.to_parquet(f, index=False))
        written.append(f"{stem}.parquet")
    text = frame.to_csv(index=False).encode()
    atomic_write(f"{stem}.csv", lambda f: f.write(text))
    return written + [f"{stem}.csv"]


def _ms(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value / 1e3:.3f} s" if value >= 1e3 else f"{value:.2f} ms"


def console_table(table: pd.DataFrame) -> str:
    """The comparison as a reader's table: one line per point."""
    memory = next((c for c in ("act_gib_ratio", "peak_rss_gib_ratio") if table[c].notna().any()), None)
    view = pd.DataFrame({
        "point": table["label"].map(lambda s: shorten(s, 60)),
        "baseline": table["baseline_ms"].map(_ms),
        "candidate": table["candidate_ms"].map(_ms),
        "ratio": table["ratio"].map(lambda r: "-" if pd.isna(r) else f"{r:.3f}"),
        "95% interval": [("-" if pd.isna(lo) else f"{lo:.3f}-{hi:.3f}") for lo, hi in zip(table["ci_low"],
                                                                                      table["ci_high"])],
        "verdict": [v if v != "unmatched" else f"unmatched ({s})" for v, s in zip(table["verdict"], table["side"])],
    })
    if memory:
        view[memory.replace("_ratio", " ratio")] = table[memory].map(lambda r: "-" if pd.isna(r) else f"{r:.3f}")
    changed = table["changed"].fillna("")
    if (changed != "").any():
        view["changed"] = changed.map(lambda s: shorten(s, 50))
    return view.to_string(index=False)


def main(cfg) -> int:
    try:
        return _run(cfg)
    except UserError as exc:
        say_error(str(exc))
        return EXIT_USER_ERROR


def _run(cfg) -> int:
    fail_above = cfg.get("fail_above")
    if fail_above is not None and float(fail_above) < 0:
        raise UserError(f"fail_above={fail_above} must be a fraction >= 0 (0.05: 5% slower beyond doubt), or null")
    floor = float(cfg.get("noise_floor", analysis.NOISE_FLOOR))
    if not 0 <= floor < 1:
        raise UserError(f"noise_floor={floor} must be in [0, 1) (0.02: a change under 2% is `same`)")
    ignore = analysis.ignore_columns(list(cfg.get("ignore") or []))
    baseline = read_side("baseline", cfg.get("baseline"))
    candidate = read_side("candidate", cfg.get("candidate"))
    found = analysis.compare_dirs(str(cfg.baseline), str(cfg.candidate), baseline, candidate, ignore, floor)
    table = found.table
    out = str(cfg.get("out") or os.path.join(str(cfg.candidate), "compare"))
    problem = unwritable(out)  # after the comparison: a refused one leaves no empty folder behind
    if problem:
        raise UserError(f"cannot write the comparison to out={out} ({problem}); choose a writable directory with out=PATH")

    print(f"vggt_bench compare: baseline {cfg.baseline} ({len(baseline)} points) against candidate {cfg.candidate} "
          f"({len(candidate)} points)" + (f", matched without {', '.join(analysis.CONFIG_KEYS[c] for c in ignore)}"
                                          if ignore else ""))
    env = found.environment
    if env.empty:
        print("environment: no difference (GPU, driver, versions, host, commit, threads, clocks)")
    else:
        print("environment differences (baseline -> candidate):")
        for _, row in env.iterrows():
            print(f"  {row['field']}: {shorten(row['baseline'], 70)} -> {shorten(row['candidate'], 70)}")
    print()
    print(console_table(table))
    print()
    print(f"{len(table)} points: {analysis.counts(table)}")
    print(f"ratio = candidate / baseline (above 1: slower); `same` within {floor:.0%} of 1 or where the interval "
          f"holds 1")
    medians_only = table[(table["side"] == "both") & table["ratio"].notna() & table["ci_low"].isna()]
    if len(medians_only):
        why = "; ".join(sorted({r.split(": ", 1)[-1] for r in medians_only["interval"]}))
        print(f"note: {len(medians_only)} point(s) have no interval ({why}): their verdicts come from the medians "
              f"alone")

    written = _write_table(table, os.path.join(out, TABLE))
    plot = compare_figure(table, floor)
    if plot.figure is not None:
        written += save(plot.figure, os.path.join(out, TABLE))
    stages, kernels, lines = found.stages, found.kernels, found.traces
    if not stages.empty:
        written += _write_table(stages, os.path.join(out, STAGES), parquet=False)
        written += _write_table(kernels, os.path.join(out, KERNELS), parquet=False)
        figure = stage_figure(stages)
        if figure.figure is not None:
            written += save(figure.figure, os.path.join(out, STAGES))
        print(f"\ntraces of {len(lines)} matched point(s) on both sides:")
        for pid, line in lines.items():
            label = table.loc[table["point_id"] == pid, "label"].iloc[0]
            print(f"  {label}: {line}")
    print(f"\nwritten: {', '.join(written)}")

    if fail_above is None:
        return 0
    failing = analysis.gate(table, float(fail_above))
    if failing.empty:
        print(f"gate: no point slower by more than {float(fail_above):.0%} beyond doubt")
        return 0
    # a noisy point still fails the gate (something on the machine or in the run is wrong), and says why:
    # on 2026-12-07 a process left on the GPU made a check 1.39x slower, steady and flagged noisy
    named = [f"{r['label']} ({r['ratio']:.3f}x" + (f", interval {r['ci_low']:.3f}-{r['ci_high']:.3f}"
                                                  if not pd.isna(r["ci_low"]) else ", medians only")
             + (f"; noisy, {r['noise_reason']}: measure again on a quiet machine" if r["verdict"] == "noisy" else "")
             + ")" for _, r in failing.iterrows()]
    print(f"vggt_bench: compare: {len(named)} point(s) slower by more than {float(fail_above):.0%} beyond doubt: "
          f"{'; '.join(named)}", file=sys.stderr)
    return EXIT_GATE

