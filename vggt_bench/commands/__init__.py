"""The commands behind ``python -m vggt_bench``, one module each: ``sweep`` (run and sweep),
``profile`` (and ``profile_memory`` for ``profiler=memory``), ``verify``, ``report`` and
``backends``. The layer above everything else but ``cli``: they wire measuring, profiling,
analysis, reports and launchers into what a user runs.
"""
