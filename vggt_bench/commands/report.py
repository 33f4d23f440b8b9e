"""``python -m vggt_bench report results=DIR``: figures and the report notebook of a results directory."""

from __future__ import annotations

import os

from ..analysis.compare import ignore_columns
from ..core.errors import EXIT_USER_ERROR, UserError, say_error
from ..core.results import load_results
from ..report import REFERENCE_NAMES, notebook, render


def main(cfg) -> int:
    """``python -m vggt_bench report results=DIR [baseline=DIR] [notebook=false] [execute=false] [reference=null]``."""

    def error(message: str) -> int:
        say_error(message)
        return EXIT_USER_ERROR

    results = cfg.get("results")
    if not results:
        return error("results=DIR is required: the directory a sweep wrote (with results.parquet)")
    if not os.path.isdir(results):
        return error(f"results={results} is not a directory")
    try:
        load_results(results)  # a damaged or missing table is rebuilt from the points here, said once
    except (FileNotFoundError, UserError) as exc:
        return error(str(exc))
    baseline = cfg.get("baseline")
    if baseline and not os.path.isdir(baseline):
        return error(f"baseline={baseline} is not a directory")
    if baseline:
        try:
            load_results(baseline)
        except FileNotFoundError:
            return error(f"no results.parquet or results.csv in baseline={baseline}: give the results directory to "
                         f"compare against")
        except UserError as exc:
            return error(str(exc))
    try:
        ignore = ignore_columns(list(cfg.get("ignore") or []))
    except UserError as exc:
        return error(str(exc))
    reference = cfg.get("reference")
    if reference is not None and reference not in REFERENCE_NAMES:
        return error(f"reference={reference} is unknown; choose one of {', '.join(REFERENCE_NAMES)} or null")
    try:
        written = render(results, notebook=bool(cfg.get("notebook", True)), execute=bool(cfg.get("execute", True)),
                         reference=reference, baseline=baseline, ignore=ignore)
    except OSError as exc:
        return error(f"cannot write the report into {results} ({exc.strerror or exc})")
    for path in written:
        print(path)
    wanted_notebook = bool(cfg.get("notebook", True))
    have_notebook = any(p.endswith(notebook.NOTEBOOK) for p in written)
    if wanted_notebook and not have_notebook:
        return 1
    return 0
