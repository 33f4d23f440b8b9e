"""Files the package ships besides code: the Hydra presets and the report template.

They live in the repository as ``experiments/`` and ``reports/templates/`` (the user's layout)
and are installed as the package data ``vggt_bench.experiments`` and ``vggt_bench.templates``
(see pyproject.toml), so an installed wheel finds them wherever it runs from.
"""

from __future__ import annotations

from importlib import resources


def experiments_dir() -> str:
    """Absolute path of the Hydra config directory (``bench.yaml``, ``experiment/*.yaml``, ...)."""
    return str(resources.files("vggt_bench.experiments"))


def template(name: str) -> str:
    """Absolute path of a report template, e.g. ``report.py``."""
    return str(resources.files("vggt_bench.templates").joinpath(name))
