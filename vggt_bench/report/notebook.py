"""The report notebook: a template (``reports/templates/report.py``, jupytext percent format)
filled with a results directory, executed with nbclient in this interpreter and saved as
``<out>/report.ipynb`` and ``<out>/report.html``.

The narrative is computed here from the tidy tables (``findings``), not written in the
template, so tests can check the numbers the notebook prints.
"""

from __future__ import annotations

import io
import math
import os
import sys
from dataclasses import dataclass, field
from typing import List, Optional

import pandas as pd

from . import plots

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEMPLATE = os.path.join(REPO_ROOT, "reports", "templates", "report.py")
NOTEBOOK = "report.ipynb"
HTML = "report.html"
FAILED_NOTEBOOK = "report.failed.ipynb"

# What sets a workload (the same work): rows of different workloads are never compared.
WORKLOAD = ["device", "gpu_name", "arch", "height", "width", "batch", "part", "inputs"]
# What a configuration chooses for one workload.
CONFIG = ["frame_exec", "attention", "prune_depth", "dtype", "compile", "cuda_graph", "tf32", "frame_chunk"]

CAPTIONS = {
    "scaling_wall": "Latency of the exact model (no conversion) against the number of frames, log-log. "
                    "A slope of 1 is linear in S; the global attention's S² shows as the slope turning to 2.",
    "fused_speedup": "What running the frame attention of all frames in one call buys over a Python loop over frames.",
    "memory": "Peak memory against frames; the horizontal line is the device's memory, x marks points that ran "
              "out of it.",
    "conversion": "Converting the first k global-attention layers to frame attention: speedup over k=0 and how far "
                  "the output moves (relative L2 of the last layer's tokens).",
    "backends": "Achieved throughput of each attention backend at one shape.",
    "profile_stages": "Per-forward time in each named stage (NVTX / profiler ranges).",
    "profile_launches": "Kernel launches per frame layer and GPU idle time: the launch overhead that fusing removes.",
}


# ---- formatting ---------------------------------------------------------------------------------
def fmt_ms(ms: float) -> str:
    """12.3 ms, 1.23 s."""
    if ms is None or (isinstance(ms, float) and math.isnan(ms)):
        return "—"
    return f"{ms / 1e3:.3g} s" if ms >= 1000 else f"{ms:.3g} ms"


def fmt_x(value: float) -> str:
    return f"{value:.2f}×"


def fmt_frac(value: float) -> str:
    return plots._percent(value)


def config_label(row, columns=("frame_exec", "attention", "prune_depth", "dtype", "compile", "cuda_graph")) -> str:
    """``fused · sdpa_flash · k=0 · bf16_autocast`` (compile and CUDA graph only when on)."""
    parts = []
    for col in columns:
        value = row.get(col) if hasattr(row, "get") else row[col]
        if col == "prune_depth":
            parts.append(f"k={int(value)}" if not plots._missing(value) else "k=?")
        elif col == "compile":
            if value and value != "off":
                parts.append(f"compile={value}")
        elif col == "cuda_graph":
            if value is True:
                parts.append("CUDA graph")
        elif col == "frame_exec" and value == "chunked":
            parts.append(f"chunked({int(row['frame_chunk'])})")
        elif value not in (None, ""):
            parts.append(str(value))
    return " · ".join(parts)


def workloads(results: pd.DataFrame) -> List[tuple]:
    """``[(label, rows)]`` per workload (device, arch, resolution, batch, part, inputs), biggest first."""
    frame = plots.tidy_results(results)
    if frame.empty:
        return []
    keyed = frame.assign(**{f"_w_{c}": frame[c].map(lambda v: "" if plots._missing(v) else v) for c in WORKLOAD})
    out = []
    for _, rows in keyed.groupby([f"_w_{c}" for c in WORKLOAD], sort=True, dropna=False):
        rows = rows.drop(columns=[f"_w_{c}" for c in WORKLOAD])
        first = rows.iloc[0]
        label = (f"{plots.device_label(rows)} · {first['arch']} · {plots._int(first['height'])}×"
                 f"{plots._int(first['width'])} px · {first['part']}"
                 + (f" · batch {plots._int(first['batch'])}" if first["batch"] != 1 else ""))
        out.append((label, rows))
    out.sort(key=lambda item: -len(item[1]))
    return out


# ---- findings -----------------------------------------------------------------------------------
@dataclass
class Findings:
    """What the results say about one workload, as numbers and as sentences."""

    workload: str
    statuses: dict
    fastest: pd.DataFrame                  # frames, configuration, latency_ms, slowest_ms, spread
    largest_ok: Optional[dict] = None      # frames, configurations
    first_oom: Optional[dict] = None       # frames, configurations
    largest_tried: Optional[int] = None
    fusing: Optional[dict] = None          # min, max, frames_min, frames_max, pairs, faster
    conversion: Optional[dict] = None      # k, min, max, frames_min, frames_max, drift_min, drift_max
    lines: List[str] = field(default_factory=list)

    def markdown(self) -> str:
        return "\n".join(f"- {line}" for line in self.lines)


def findings(results: pd.DataFrame) -> List[Findings]:
    """One Findings per workload in the results (none for an empty table)."""
    return [_findings(label, rows) for label, rows in workloads(results)]


EXACT_CONFIG = ("frame_exec", "attention", "dtype", "compile", "cuda_graph")  # the exact model: k is 0


def _join_configs(rows: pd.DataFrame, limit: int = 4) -> str:
    labels = sorted({config_label(r, EXACT_CONFIG) for _, r in rows.iterrows()})
    text = ", ".join(labels[:limit])
    return text + (f" (+{len(labels) - limit} more)" if len(labels) > limit else "")


def _findings(label: str, rows: pd.DataFrame) -> Findings:
    statuses = rows["status"].value_counts().to_dict()
    exact, _ = plots._exact(rows)
    ok = plots.ok_rows(exact)
    lines = []
    status_text = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
    lines.append(f"**{label}**: {len(rows)} points ({status_text}).")
    # Fastest exact configuration per frame count.
    fastest = []
    for frames, at in ok.groupby("frames"):
        best = at.sort_values("latency_ms_median", kind="stable").iloc[0]
        fastest.append({"frames": int(frames), "configuration": config_label(best, EXACT_CONFIG),
                        "latency_ms": float(best["latency_ms_median"]),
                        "slowest_ms": float(at["latency_ms_median"].max()), "configurations": len(at)})
    fastest = pd.DataFrame(fastest, columns=["frames", "configuration", "latency_ms", "slowest_ms", "configurations"])
    found = Findings(workload=label, statuses=statuses, fastest=fastest, lines=lines)
    if fastest.empty:
        lines.append("No configuration of the exact model ran (no `ok` rows): nothing to rank.")
    else:
        runs = []
        for _, r in fastest.iterrows():
            if runs and runs[-1][0] == r["configuration"]:
                runs[-1][2] = r["frames"]
            else:
                runs.append([r["configuration"], r["frames"], r["frames"]])
        parts = [f"{cfg} (S={a})" if a == b else f"{cfg} (S={a}–{b})" for cfg, a, b in runs]
        top = fastest.iloc[-1]
        lines.append(
            "Fastest exact configuration per frame count: " + "; ".join(parts) + ". "
            f"At the largest frame count that ran, S={top['frames']}, it takes {fmt_ms(top['latency_ms'])}"
            + (f", {top['slowest_ms'] / top['latency_ms']:.2f}× faster than the slowest of "
               f"{int(top['configurations'])} configurations." if top["configurations"] > 1 else ".")
        )
    # The wall.
    tried = exact["frames"].dropna()
    found.largest_tried = int(tried.max()) if len(tried) else None
    if len(ok):
        s = int(ok["frames"].max())
        found.largest_ok = {"frames": s, "configurations": _join_configs(ok[ok["frames"] == s])}
    ooms = exact[exact["status"] == "oom"]
    if len(ooms):
        s = int(ooms["frames"].min())
        found.first_oom = {"frames": s, "configurations": _join_configs(ooms[ooms["frames"] == s])}
    if found.largest_ok and found.first_oom:
        lines.append(
            f"The wall: the largest frame count that ran is S={found.largest_ok['frames']} "
            f"({found.largest_ok['configurations']}); the first out-of-memory is at S={found.first_oom['frames']} "
            f"({found.first_oom['configurations']})."
        )
    elif found.largest_ok:
        lines.append(
            f"The wall was not reached: nothing ran out of memory; the largest frame count that ran is "
            f"S={found.largest_ok['frames']} ({found.largest_ok['configurations']})."
        )
    elif found.first_oom:
        lines.append(f"No exact point ran; the first out-of-memory is at S={found.first_oom['frames']}.")
    else:
        lines.append("No exact point ran and none ran out of memory: see the table of points that did not run.")
    # Fusing.
    pairs = plots.speedup_pairs(exact)
    if len(pairs):
        lo, hi = pairs.loc[pairs["speedup"].idxmin()], pairs.loc[pairs["speedup"].idxmax()]
        faster = int((pairs["speedup"] > 1).sum())
        found.fusing = {"min": float(lo["speedup"]), "max": float(hi["speedup"]), "frames_min": int(lo["frames"]),
                        "frames_max": int(hi["frames"]), "pairs": len(pairs), "faster": faster}
        lines.append(
            f"Fusing frame attention (one call for all frames instead of a loop): sequential / fused latency is "
            f"{fmt_x(lo['speedup'])} (S={int(lo['frames'])}, {lo['attention']}) to {fmt_x(hi['speedup'])} "
            f"(S={int(hi['frames'])}, {hi['attention']}); fused is faster in {faster} of {len(pairs)} pairs."
        )
    else:
        lines.append("Fusing: no frame count was measured both fused and sequential (ok), so there is no speedup "
                     "to report.")
    # Conversion.
    conv = plots.conversion_table(rows)
    conv = conv[conv["speedup"].notna()]
    if len(conv):
        k = int(conv["prune_depth"].max())
        at = conv[conv["prune_depth"] == k]
        lo, hi = at.loc[at["speedup"].idxmin()], at.loc[at["speedup"].idxmax()]
        drift = at["drift_rel"].dropna()
        found.conversion = {"k": k, "min": float(lo["speedup"]), "max": float(hi["speedup"]),
                            "frames_min": int(lo["frames"]), "frames_max": int(hi["frames"]),
                            "drift_min": float(drift.min()) if len(drift) else math.nan,
                            "drift_max": float(drift.max()) if len(drift) else math.nan}
        speed = (fmt_x(lo["speedup"]) + f" (S={int(lo['frames'])})" if len(at) == 1 else
                 f"{fmt_x(lo['speedup'])} (S={int(lo['frames'])}, {lo['frame_exec']}) to {fmt_x(hi['speedup'])} "
                 f"(S={int(hi['frames'])}, {hi['frame_exec']})")
        drift_text = (f"the output drifts by {fmt_frac(drift.min())} to {fmt_frac(drift.max())} "
                      f"(relative L2 of the last layer's tokens against k=0)" if len(drift) else
                      "its output drift was not measured (sweep with measure.drift=true)")
        lines.append(
            f"Global-to-frame conversion: at k={k} converted layers, the largest depth measured, the speedup over "
            f"k=0 is {speed}; "
            + drift_text + "."
        )
    else:
        lines.append("Global-to-frame conversion: not measured (no prune_depth > 0 point with an ok k=0 partner).")
    if statuses.get("error"):
        lines.append(f"{statuses['error']} point(s) failed with an error: see the status table below.")
    return found


# ---- tables -------------------------------------------------------------------------------------
def latency_pivot(rows: pd.DataFrame) -> pd.DataFrame:
    """Median latency by frames (rows) x configuration (columns), as text: ``12.3 ms``, or
    the status (``OOM``, ``n/a``, ``error``) where the point did not run. One workload."""
    rows = plots.tidy_results(rows)
    if rows.empty:
        return pd.DataFrame()
    varying = [c for c in ("frame_exec", "attention", "prune_depth", "dtype", "compile", "cuda_graph")
               if rows[c].nunique(dropna=False) > 1] or ["frame_exec", "attention"]
    cells = rows.assign(configuration=[config_label(r, varying) for _, r in rows.iterrows()])
    cells["value"] = [fmt_ms(r["latency_ms_median"]) if r["status"] == "ok" else
                      {"oom": "OOM", "unavailable": "n/a"}.get(r["status"], r["status"])
                      for _, r in cells.iterrows()]
    pivot = cells.pivot_table(index="frames", columns="configuration", values="value", aggfunc="last")
    pivot.index = pivot.index.astype(int)
    pivot.index.name = "frames S"
    return pivot.fillna("")


def environment_table(results: pd.DataFrame) -> pd.DataFrame:
    """What the results were measured on, one row per field (values joined where they differ)."""
    frame = plots.tidy_results(results)

    def values(col):
        return sorted({str(v) for v in frame[col] if not plots._missing(v) and str(v) != ""}) if col in frame else []

    stamps = values("timestamp")
    random = {bool(v) for v in frame["random_weights"] if v is not None}
    gpu_mem = frame["gpu_mem_gib"].dropna()
    rows = [
        ("device", plots.device_label(frame)),
        ("GPU memory", f"{gpu_mem.max():.1f} GiB" if len(gpu_mem) else "—"),
        ("CPU", " / ".join(values("cpu")) or "—"),
        ("torch", " / ".join(values("torch_version")) or "—"),
        ("CUDA", " / ".join(values("cuda_version")) or "— (CPU build)"),
        ("cuDNN", " / ".join(values("cudnn_version")) or "—"),
        ("driver", " / ".join(values("driver")) or "—"),
        ("Python", " / ".join(values("python_version")) or "—"),
        ("git commit", " / ".join(values("git_commit")) or "—"),
        ("host", " / ".join(values("host")) or "—"),
        ("date", (stamps[0] if len(stamps) == 1 else f"{stamps[0]} … {stamps[-1]}") if stamps else "—"),
        ("random weights", "yes" if random == {True} else "no" if random == {False} else "mixed" if random else "—"),
        ("checkpoint", " / ".join(values("checkpoint")) or "none"),
        ("experiments", " / ".join(values("experiment")) or "—"),
        ("points", f"{len(frame)} ({', '.join(f'{n} {s}' for s, n in frame['status'].value_counts().items())})"),
    ]
    return pd.DataFrame(rows, columns=["field", "value"]).set_index("field")


def status_table(results: pd.DataFrame) -> pd.DataFrame:
    """Points that did not run (oom, unavailable, error) with their message."""
    frame = plots.tidy_results(results)
    bad = frame[frame["status"] != "ok"]
    cols = ["frames", "frame_exec", "attention", "prune_depth", "dtype", "status", "message"]
    bad = bad[cols].copy()
    bad["frames"] = bad["frames"].astype("Int64")
    bad["prune_depth"] = bad["prune_depth"].astype("Int64")
    bad["message"] = bad["message"].map(lambda m: plots._shorten(m, 120))
    return bad.sort_values(["status", "attention", "frames"]).reset_index(drop=True)


def show(fig) -> None:
    """Display a matplotlib Figure in a notebook as an embedded PNG (no pyplot state involved)."""
    from IPython.display import Image, display

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", pad_inches=0.15)
    display(Image(data=buffer.getvalue()))


# ---- building and executing ---------------------------------------------------------------------
def read_percent(path: str):
    """A notebook from a jupytext percent-format script: ``# %%`` starts a code cell,
    ``# %% [markdown]`` a markdown cell (its lines' leading ``# `` removed), and
    ``tags=["a", "b"]`` after the marker sets the cell's tags."""
    import json
    import re

    import nbformat

    with open(path) as f:
        text = f.read()
    cells, kind, tags, lines = [], None, [], []

    def flush():
        if kind is None:
            return
        body = "\n".join(lines).strip("\n")
        if kind == "markdown":
            body = "\n".join(re.sub(r"^# ?", "", line) for line in body.splitlines())
            cell = nbformat.v4.new_markdown_cell(body)
        else:
            cell = nbformat.v4.new_code_cell(body)
        if tags:
            cell.metadata["tags"] = tags
        cells.append(cell)

    for line in text.splitlines():
        marker = re.match(r"^# %%(.*)$", line)
        if marker:
            flush()
            rest = marker.group(1)
            kind = "markdown" if "[markdown]" in rest else "code"
            found = re.search(r"tags=(\[[^\]]*\])", rest)
            tags = json.loads(found.group(1)) if found else []
            lines = []
        elif kind is not None:
            lines.append(line)
    flush()
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def build(out_dir: str, reference: Optional[str] = "upstream_h100", template: Optional[str] = None):
    """The template (default ``TEMPLATE``) with this run's parameters injected after its
    ``parameters`` cell."""
    import nbformat

    nb = read_percent(template or TEMPLATE)
    params = (
        "# Parameters (injected by vggt_bench.report.notebook)\n"
        f"RESULTS_DIR = {os.path.abspath(out_dir)!r}\n"
        f"REFERENCE = {reference!r}\n"
        f"REPO_ROOT = {REPO_ROOT!r}"
    )
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["injected-parameters"]
    at = next((i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])), -1)
    nb.cells.insert(at + 1, cell)
    return nb


def _kernel_manager(socket_dir: str):
    """A kernel manager that starts ipykernel in this very interpreter, whatever ``python3``
    kernelspec the Jupyter paths of this machine might point at. It talks to the kernel over
    unix sockets in ``socket_dir`` (an absolute path: the kernel runs in the results directory)
    rather than TCP on localhost, so nothing listens on a port."""
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from jupyter_client.manager import KernelManager

    class ThisInterpreter(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):
            return KernelSpec(
                argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                display_name=f"Python 3 ({sys.executable})", language="python", resource_dir="",
            )

    return KernelManager(kernel_name="python3", kernel_spec_manager=ThisInterpreter(), transport="ipc",
                         ip=os.path.join(socket_dir, "kernel"))


class NotebookFailed(RuntimeError):
    """A cell raised; ``path`` is the partly executed notebook, saved for reading the error."""

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.path = path


def error_outputs(nb) -> List[str]:
    """``"ename: evalue"`` of every error output in the notebook."""
    return [f"{o.get('ename')}: {o.get('evalue')}" for c in nb.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if o.get("output_type") == "error"]


def write(out_dir: str, reference: Optional[str] = "upstream_h100", execute: bool = True,
          timeout: int = 600) -> List[str]:
    """Write ``<out>/report.ipynb`` (executed unless ``execute=False``) and, when executed,
    ``<out>/report.html`` (code hidden; the .ipynb keeps it). Returns the paths written.

    On a failing cell the partly executed notebook goes to ``report.failed.ipynb``, earlier
    report files are removed (they would describe other data) and NotebookFailed is raised.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = build(out_dir, reference)
    nb_path, html_path = os.path.join(out_dir, NOTEBOOK), os.path.join(out_dir, HTML)
    failed_path = os.path.join(out_dir, FAILED_NOTEBOOK)
    for stale in (nb_path, html_path, failed_path):
        if os.path.exists(stale):
            os.unlink(stale)
    if not execute:
        nbformat.write(nb, nb_path)
        return [nb_path]
    import shutil
    import tempfile

    sockets = tempfile.mkdtemp(prefix="vggt-report-")
    km = _kernel_manager(sockets)
    client = NotebookClient(nb, km=km, kernel_name="python3", timeout=timeout,
                            startup_timeout=120, resources={"metadata": {"path": os.path.abspath(out_dir)}})
    try:
        client.execute()
    except CellExecutionError as exc:
        nbformat.write(nb, failed_path)
        first = str(exc).strip().splitlines()
        reason = "; ".join(error_outputs(nb)) or (first[-1] if first else type(exc).__name__)
        raise NotebookFailed(f"a report notebook cell failed ({reason}); see {failed_path}", failed_path) from exc
    finally:
        # nbclient leaves a kernel manager it was handed running: shut the kernel down here.
        if km.has_kernel:
            km.shutdown_kernel(now=False)
        shutil.rmtree(sockets, ignore_errors=True)
    errors = error_outputs(nb)
    if errors:  # allow_errors is off, so this only happens if a cell opted in; still a failure
        nbformat.write(nb, failed_path)
        raise NotebookFailed(f"report notebook has error outputs ({'; '.join(errors)}); see {failed_path}", failed_path)
    nbformat.write(nb, nb_path)
    return [nb_path, _html(nb, html_path)]


def _html(nb, path: str) -> str:
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": "vggt-bench report"}})
    with open(path, "w", encoding="utf-8") as f:
        f.write(body)
    return path
