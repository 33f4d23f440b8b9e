"""Analysis of vggt-bench's tables: DataFrame in, DataFrame (or numbers and sentences) out.

``tables``: loading and tidying the results and profile tables, and every derived table
(comparable rows, exact-model rows, fused/sequential pairs, conversion vs k=0, stage times,
launch counts). ``findings``: the report's narrative and summary tables built from those.
Figures (``vggt_bench.report.plots``) and the notebook read only these.
"""
