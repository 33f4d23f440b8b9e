"""The report notebook: a template (``reports/templates/report.py``, installed as the package data
``vggt_bench.templates``; jupytext percent format) filled with a results directory, executed with
nbclient in this interpreter and saved as ``<out>/report.ipynb`` and ``<out>/report.html``.

The notebook calls the same analysis functions as the figures (``vggt_bench.analysis``); its
narrative is ``analysis.findings``, computed from the tidy tables, not written in the template.
"""

from __future__ import annotations

import io
import os
import sys
from typing import List, Optional, Sequence

from ..core.resources import template

NOTEBOOK = "report.ipynb"
HTML = "report.html"
FAILED_NOTEBOOK = "report.failed.ipynb"

CAPTIONS = {
    "scaling_wall": "Latency of the exact model (no conversion) against the number of frames, log-log. "
                    "A slope of 1 is linear in S; the global attention's S² shows as the slope turning to 2.",
    "fused_speedup": "What running the frame attention of all frames in one call buys over a Python loop over frames.",
    "memory": "Peak memory against frames; the horizontal line is the device's memory, x marks points that ran "
              "out of it.",
    "conversion": "Converting the first k global-attention layers to frame attention: speedup over k=0 and how far "
                  "the output moves (relative L2 of the last layer's tokens).",
    "approximations": "Every approximation against the exact model on the same weights and inputs: speedup (x) "
                      "against the relative L2 drift of camera pose, depth and world points, per frame count. The "
                      "line is the Pareto front (nothing else is both faster and closer); the dotted line is the "
                      "drift of converting the first 4 global layers (prune_depth=4), the yardstick.",
    "backends": "Achieved throughput of each attention backend at one shape.",
    "context_parallel": "One scene's frames sharded over N GPUs (model.context_parallel=N): time per forward and the "
                        "share spent in collectives (left), the busiest rank's peak memory with a line fitted per N "
                        "and the frame count where it meets the device's memory (right): a prediction past the "
                        "frame counts measured.",
    "profile_stages": "Per-forward time in each named stage (NVTX / profiler ranges).",
    "profile_launches": "Kernel launches per frame layer and GPU idle time: the launch overhead that fusing removes.",
    "profile_grid_stages": "Every point of a profiled sweep: each stage's time per forward against frames, fused vs "
                           "sequential, per backend (from profile_grid; timings in the tables above come from separate, "
                           "unprofiled runs).",
    "profile_grid_activity": "Every point of a profiled sweep: the GPU's idle share of the captured window and the kernels "
                             "launched per forward, against frames.",
}


def show(fig) -> None:
    """Display a matplotlib Figure in a notebook as an embedded PNG (no pyplot state involved)."""
    from IPython.display import Image, display

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", pad_inches=0.15)
    display(Image(data=buffer.getvalue()))


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


def build(out_dir: str, reference: Optional[str] = "upstream_h100", path: Optional[str] = None,
          baseline: Optional[str] = None, ignore: Sequence[str] = ()):
    """The template at ``path`` (default: the installed ``report.py``) with this run's parameters injected after its
    ``parameters`` cell (``baseline``: a results directory to compare against, or None, matched without the
    ``ignore`` columns)."""
    import nbformat

    nb = read_percent(path or template("report.py"))
    params = (
        "# Parameters (injected by vggt_bench.report.notebook)\n"
        f"RESULTS_DIR = {os.path.abspath(out_dir)!r}\n"
        f"REFERENCE = {reference!r}\n"
        f"BASELINE_DIR = {os.path.abspath(baseline) if baseline else None!r}\n"
        f"IGNORE = {list(ignore)!r}"
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
          timeout: int = 600, baseline: Optional[str] = None, ignore: Sequence[str] = ()) -> List[str]:
    """Write ``<out>/report.ipynb`` (executed unless ``execute=False``) and, when executed,
    ``<out>/report.html`` (code hidden; the .ipynb keeps it). Returns the paths written.

    On a failing cell the partly executed notebook goes to ``report.failed.ipynb``, earlier
    report files are removed (they would describe other data) and NotebookFailed is raised.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = build(out_dir, reference, baseline=baseline, ignore=ignore)
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
