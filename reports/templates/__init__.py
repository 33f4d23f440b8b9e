"""Report templates, installed as the package data ``vggt_bench.templates``."""
