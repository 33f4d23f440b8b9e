"""Analysis of vggt-bench's tables: DataFrame in, DataFrame (or numbers and sentences) out.

``tidy``: reading and typing the results and profile tables, and which rows to use (ok, trusted,
the exact model's, one context each). ``labels``: what rows, settings and numbers are called.
One module per analysis: ``scaling`` (fused vs sequential, context-parallel speed-up),
``memory`` (the memory wall), ``approximations`` (speed against drift), ``upstream`` (ours
against upstream's code), ``profiles`` (stages, launches, the profile grid). ``findings``: the
report's narrative and summary tables built from those. Figures (``vggt_bench.report``) and the
notebook read only these.
"""
