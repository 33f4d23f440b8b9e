"""Reports of a results directory: figures and an executed notebook (``notebook``).

Figures are drawn by family (``scaling``, ``memory``, ``approximations``, ``upstream``,
``profiles``; ``memory_profile`` for ``profile profiler=memory``) with what ``common`` shares;
``plots`` registers them and writes them (``render_figures``).

``render(out)`` writes ``<out>/figures/*.png|svg``, ``<out>/report.ipynb`` and
``<out>/report.html``; ``python -m vggt_bench report results=DIR`` runs it from the CLI.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, List, Optional

REFERENCE_NAMES = ("upstream_h100",)


def render(out_dir: str, *, notebook: bool = True, execute: bool = True,
           reference: Optional[str] = "upstream_h100", log: Callable[[str], None] = print) -> List[str]:
    """Render every figure with data, then the report notebook; return the paths written.

    Notes on skipped figures are passed to ``log``. A failing notebook never costs the figures:
    the error is logged (to stderr) and the figure paths are still returned.
    Raises FileNotFoundError when ``out_dir`` holds no results table.
    """
    from . import notebook as report_notebook
    from .plots import render_figures

    written, notes = render_figures(out_dir, reference=reference)
    for note in notes:
        log(f"report: {note}")
    if notebook:
        try:
            written += report_notebook.write(out_dir, reference=reference, execute=execute)
        except Exception as exc:  # the figures are already on disk: keep them, say what broke
            print(f"vggt_bench: report: notebook failed, figures kept in {os.path.join(out_dir, 'figures')}: "
                  f"{type(exc).__name__}: {exc}", file=sys.stderr)
    return written


def main(cfg) -> int:
    """``python -m vggt_bench report results=DIR [notebook=false] [execute=false] [reference=null]``."""
    from . import notebook as report_notebook

    def error(message: str) -> int:
        print(f"vggt_bench: error: {message}", file=sys.stderr)
        return 2

    results = cfg.get("results")
    if not results:
        return error("results=DIR is required: the directory a sweep wrote (with results.parquet)")
    if not os.path.isdir(results):
        return error(f"results={results} is not a directory")
    if not any(os.path.exists(os.path.join(results, n)) for n in ("results.parquet", "results.csv")):
        return error(f"no results.parquet or results.csv in {results} (run a sweep with out={results} first)")
    reference = cfg.get("reference")
    if reference is not None and reference not in REFERENCE_NAMES:
        return error(f"reference={reference} is unknown; choose one of {', '.join(REFERENCE_NAMES)} or null")
    try:
        written = render(results, notebook=bool(cfg.get("notebook", True)), execute=bool(cfg.get("execute", True)),
                         reference=reference)
    except OSError as exc:
        return error(f"cannot write the report into {results} ({exc.strerror or exc})")
    for path in written:
        print(path)
    wanted_notebook = bool(cfg.get("notebook", True))
    have_notebook = any(p.endswith(report_notebook.NOTEBOOK) for p in written)
    if wanted_notebook and not have_notebook:
        return 1
    return 0
