"""Reports of a results directory: figures and an executed notebook (``notebook``).

Figures are drawn by family (``scaling``, ``memory``, ``approximations``, ``upstream``,
``profiles``; ``memory_profile`` for ``profile profiler=memory``, ``compare`` for ``compare`` and the
notebook's "A against B") with what ``common`` shares;
``plots`` registers them and writes them (``render_figures``).

``render(out)`` writes ``<out>/figures/*.png|svg``, ``<out>/report.ipynb`` and
``<out>/report.html``; ``python -m vggt_bench report results=DIR`` runs it from the CLI
(``vggt_bench.commands.report``).
"""

from __future__ import annotations

import os
import sys
from typing import Callable, List, Optional, Sequence

REFERENCE_NAMES = ("upstream_h100",)


def render(out_dir: str, *, notebook: bool = True, execute: bool = True,
           reference: Optional[str] = "upstream_h100", log: Callable[[str], None] = print,
           baseline: Optional[str] = None, ignore: Sequence[str] = ()) -> List[str]:
    """Render every figure with data, then the report notebook; return the paths written.
    ``baseline``: a results directory the notebook compares ``out_dir`` against ("A against B"), matched
    without the ``ignore`` columns (``analysis.compare.ignore_columns``).

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
            written += report_notebook.write(out_dir, reference=reference, execute=execute, baseline=baseline,
                                            ignore=ignore)
        except Exception as exc:  # the figures are already on disk: keep them, say what broke
            print(f"vggt_bench: report: notebook failed, figures kept in {os.path.join(out_dir, 'figures')}: "
                  f"{type(exc).__name__}: {exc}", file=sys.stderr)
    return written
